//! The process's allocator: the one central heap over `sbrk`, this thread's cache in TLS, the
//! large-block mappings and the `BRKMALLOC_CONF` options, as the front end's environment
//! ([`Process`], [`FRONT`]); the thread-cache life cycle (activation, the thread-exit
//! destructor); and the options applied to the heap.
//!
//! The heap is a zero-initialised `const` static: it works from the very first `malloc`, which
//! may come from the dynamic loader or another library's constructor before ours runs.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use crate::central::{CentralHeap, HeapError, HeapStats};
use crate::config;
use crate::diag::{self, Misuse};
use crate::heap::{Env, Front};
use crate::large;
use crate::large_cache;
use crate::os::{Grown, MemorySource, Sbrk};
use crate::prof;
use crate::quarantine::Quarantine;
use crate::purge;
use crate::size_class::{NCLASSES, class_size};
use crate::sync::{AtomicBool, AtomicUsize, Mutex, MutexGuard, Once, Ordering};
use crate::thread_cache::{State, ThreadCache};
use crate::tls;
use crate::transfer::Backend;

/// The process's memory source: the program break (`Sbrk`), except that before the heap grows
/// the cache of freed large mappings gives back as much as the growth (`large_cache::give_way`):
/// memory the heap needs is not also kept for large blocks. Lock order: `CENTRAL` (held by the
/// heap's caller) before `LARGE_CACHE`, as documented.
///
/// # Invariants
/// - PS1: every call is `Sbrk`'s, preceded on `grow` by the cache giving way.
#[derive(Debug)]
pub struct ProcessSource(Sbrk);

impl ProcessSource {
    /// The program break, not yet touched.
    pub const fn new() -> Self {
        Self(Sbrk::new())
    }
}

impl Default for ProcessSource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource for ProcessSource {
    fn grow(&mut self, min_len: usize) -> Option<Grown> {
        large_cache::give_way(min_len);
        self.0.grow(min_len)
    }

    fn shrink(&mut self, end: NonNull<u8>, len: usize) -> bool {
        self.0.shrink(end, len)
    }

    unsafe fn release(&mut self, base: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded contract (PS1).
        unsafe { self.0.release(base, len) }
    }

    unsafe fn purge(&mut self, start: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded contract (PS1).
        unsafe { self.0.purge(start, len) }
    }
}

/// The middle layer and the central heap of the process (locks `CENTRAL` and `TRANSFER` in
/// the lock order, DESIGN.md). All zero bytes (C8), so in `.bss`.
pub static BACKEND: Backend<ProcessSource> =
    Backend::new(CentralHeap::unconfigured(ProcessSource::new()));

/// The process's quarantine (`quarantine:N`; lock `QUARANTINE`, taken before `CENTRAL`).
pub static QUARANTINE: Mutex<Quarantine> = Mutex::new(Quarantine::new());

/// The front end over the process's heap, caches and mappings: what `api.rs` and
/// `global_alloc.rs` call.
pub static FRONT: Front<Process> = Front(Process);

/// Locks the process-wide central heap.
#[inline]
pub fn heap() -> MutexGuard<'static, CentralHeap<ProcessSource>> {
    BACKEND.central.lock()
}

/// The process as the front end's environment (zero-sized: every call inlines).
#[derive(Clone, Copy, Debug, Default)]
pub struct Process;

impl Env for Process {
    type Source = ProcessSource;

    #[inline(always)]
    fn backend(&self) -> &Backend<ProcessSource> {
        &BACKEND
    }

    #[inline(always)]
    fn cache(&self) -> Option<*mut ThreadCache> {
        tls::cache()
    }

    #[inline(always)]
    fn cache_on_free(&self) -> Option<*mut ThreadCache> {
        tls::cache_any_reg()
    }

    unsafe fn activate(&self, tc: *mut ThreadCache) {
        activate(tc);
    }

    #[inline]
    fn small_limit(&self) -> usize {
        // Relaxed: a tuning value (config.rs).
        config::SMALL_LIMIT.load(Ordering::Relaxed)
    }

    #[inline]
    fn mmap_threshold(&self) -> usize {
        // Relaxed: a tuning value.
        config::MMAP_THRESHOLD.load(Ordering::Relaxed)
    }

    fn on_slow_path(&self) {
        ensure_config();
        purge::maybe_purge_idle(&BACKEND);
    }

    fn on_central(&self) {
        check_hook();
    }

    fn junk(&self) -> Option<(u8, u8)> {
        config::JUNK
            .load(Ordering::Relaxed)
            .then(|| (config::junk_alloc_byte(), config::junk_free_byte()))
    }

    fn quarantine(&self) -> Option<(&Mutex<Quarantine>, usize)> {
        // Relaxed: a tuning value.
        let limit = config::QUARANTINE_BYTES.load(Ordering::Relaxed);
        (limit != 0).then_some((&QUARANTINE, limit))
    }

    fn large_alloc(&self, n: usize, align: usize) -> Option<NonNull<u8>> {
        large::alloc(n, align)
    }

    fn large_free(&self, p: NonNull<u8>) -> Result<(), Misuse> {
        // Large blocks carry no SAMPLED mark: the record is looked up, before the unmap (while
        // no other thread can be handed the address).
        if prof::active() {
            prof::forget(p);
        }
        large::free(p).map(raise_mmap_threshold)
    }

    fn large_alloc_zeroed(&self, n: usize) -> Option<NonNull<u8>> {
        large::alloc_zeroed(n)
    }

    fn large_usable(&self, p: NonNull<u8>) -> Result<usize, Misuse> {
        large::usable(p)
    }

    fn large_realloc(&self, p: NonNull<u8>, n: usize) -> Result<Option<NonNull<u8>>, Misuse> {
        // The block may move: its record goes (a realloc counts as a free and an allocation).
        if prof::active() {
            prof::forget(p);
        }
        large::realloc(p, n, config::MMAP_THRESHOLD.load(Ordering::Relaxed))
    }

    fn check_large(&self) -> Result<(), HeapError> {
        large::check_registry()
    }

    fn out_of_memory(&self) {
        diag::set_errno(libc::ENOMEM);
    }

    #[inline]
    fn profiling(&self) -> bool {
        prof::active()
    }

    unsafe fn sample(&self, tc: *mut ThreadCache, p: NonNull<u8>, n: usize, counted: usize) {
        prof::sample(&BACKEND.central, p, n, counted);
        // SAFETY: this thread's cache (the caller's contract); no other reference is live.
        unsafe { arm_sampling(tc) };
    }

    fn forget_sample(&self, p: NonNull<u8>) {
        prof::forget(p);
    }
}

/// Draws this thread's next sampling interval (`prof:1`) into its countdown.
///
/// # Safety
/// `tc` is this thread's cache, with no other reference to it live.
unsafe fn arm_sampling(tc: *mut ThreadCache) {
    // SAFETY: forwarded contract.
    unsafe {
        let next = prof::next_interval((*tc).events.rng(), tc.addr());
        (*tc).events.start_sampling(next);
    }
}

/// Counts central-path operations for `check:N` (Relaxed: a counter).
static CHECK_OPS: AtomicUsize = AtomicUsize::new(0);

/// `check:N`: the whole verifier (`Front::check`) every N central operations. (`junk` and
/// `check` turn the thread caches off, so every operation comes through here.)
fn check_hook() {
    let every = config::CHECK_EVERY.load(Ordering::Relaxed);
    if every != 0
        && CHECK_OPS.fetch_add(1, Ordering::Relaxed) % every == every - 1
        && let Err(e) = FRONT.check()
    {
        diag::fatal("check", e.what, e.addr);
    }
}

/// glibc's dynamic mmap threshold: freeing a mapped block larger than the threshold (up to
/// 32 MiB) raises the threshold to its size, and the trim threshold to twice that, so a
/// program that keeps allocating blocks of that size gets them from the heap, not from an
/// mmap/munmap pair (and its page faults) each time. Off once the user sets a threshold.
fn raise_mmap_threshold(len: usize) {
    let r = Ordering::Relaxed;
    if config::MMAP_THRESHOLD_FIXED.load(r)
        || len <= config::MMAP_THRESHOLD.load(r)
        || len > config::MMAP_THRESHOLD_MAX
    {
        return;
    }
    config::MMAP_THRESHOLD.store(len, r);
    config::SMALL_LIMIT.store(config::small_limit(len), r);
    config::TRIM_THRESHOLD.store(2 * len, r);
    apply_config();
}

// -------------------------------------------------------------------------------------------
// The thread-cache life cycle
// -------------------------------------------------------------------------------------------

/// pthread key for the thread-exit flush, created by the first thread that needs it and
/// published to the others (`sync::Once`: Acquire/Release; loom model
/// `once::first_mallocs_race_for_the_key`).
static EXIT_KEY: Once<libc::pthread_key_t> = Once::new();

/// The thread-exit key, created on first need (`pthread_key_create` does not allocate, so the
/// initialiser cannot re-enter `exit_key`).
fn exit_key() -> Option<libc::pthread_key_t> {
    EXIT_KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out slot; the destructor lives forever.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(cache_destructor)) };
        (r == 0).then_some(key)
    })
}

/// `Uninit` → `Active`: sets the limits, then registers the thread-exit destructor. The state
/// changes *before* `pthread_setspecific`, which callocs for keys ≥ 32 and so re-enters malloc;
/// that malloc finds an active cache. A thread whose destructor cannot be registered tears its
/// cache down at once and uses the central heap. Classes above the small limit
/// (`mmap_threshold` below 32 KiB) get no list.
#[cold]
fn activate(tc: *mut ThreadCache) {
    ensure_config();
    let enabled = config::caches_enabled();
    let key = if enabled { exit_key() } else { None };
    let Some(key) = key else {
        // SAFETY: this thread's cache.
        let _ = unsafe { tear_down(tc) };
        if prof::active() {
            // Every allocation then bypasses the cache and counts towards the samples.
            // SAFETY: as above.
            unsafe { arm_sampling(tc) };
        }
        return;
    };
    let max_bytes = config::TCACHE_MAX_BYTES.load(Ordering::Relaxed);
    let limit = config::SMALL_LIMIT.load(Ordering::Relaxed);
    // SAFETY: this thread's cache; no reference is held across the call below.
    unsafe {
        (*tc).activate(max_bytes);
        for c in (0..NCLASSES).filter(|&c| class_size(c) > limit + crate::block::HEADER) {
            (*tc).disable_class(c);
        }
        if prof::active() {
            arm_sampling(tc);
        }
    }
    BACKEND.layer.cache_joined();
    // SAFETY: a valid key; the value is a round counter, never dereferenced.
    if unsafe { libc::pthread_setspecific(key, ptr::without_provenance::<c_void>(1)) } != 0 {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { tear_down(tc) } {
            diag::fatal("free", e.message(), 0);
        }
    }
}

/// In a forked child: the middle layer counts only the forking thread's cache, if it is
/// active (the fork handler `child`). Without this a child of a program with N threads kept
/// N caches' share of the layer's budget for good.
pub fn after_fork_child() {
    // SAFETY: this thread's cache; read only.
    let active = tls::cache().is_some_and(|tc| unsafe { (*tc).state() } == State::Active);
    BACKEND.layer.reset_caches(usize::from(active));
}

/// Tears down this thread's cache `tc` (`ThreadCache::tear_down`), and counts it out of the
/// middle layer's active caches if it was active (`activate` counted it in).
///
/// # Safety
/// `tc` is this thread's cache, with no other reference live.
unsafe fn tear_down(tc: *mut ThreadCache) -> Result<(), Misuse> {
    // SAFETY: forwarded contract.
    let (was_active, r) = unsafe { ((*tc).state() == State::Active, (*tc).tear_down(&BACKEND)) };
    if was_active {
        BACKEND.layer.cache_left();
    }
    r
}

/// Destructor round in which the cache tears down: the second last of glibc's
/// `PTHREAD_DESTRUCTOR_ITERATIONS` (4). The last round is left alone: the sanitizers' runtimes
/// (TSan, ASan/LSan) destroy their per-thread state in their own key's last round, and any
/// instrumented code that runs after that faults (seen: TSan SEGV in `TraceSwitchPart` on
/// entry to this function, in every thread exit of `tests/tsan_stress.rs`).
const TEAR_DOWN_ROUND: usize = 3;

/// Thread exit. glibc calls key destructors in up to `PTHREAD_DESTRUCTOR_ITERATIONS` (4)
/// rounds while values remain set; other destructors of the same round may still allocate
/// and free, so the cache re-arms itself and just flushes in the early rounds, and tears down
/// in round [`TEAR_DOWN_ROUND`] without re-arming. Frees and allocations after that go to the
/// central heap.
extern "C" fn cache_destructor(value: *mut c_void) {
    let round = value.addr();
    let Some(tc) = tls::cache() else { return };
    if round < TEAR_DOWN_ROUND {
        if let Some(key) = exit_key() {
            // SAFETY: a valid key; the value is a round counter.
            unsafe { libc::pthread_setspecific(key, ptr::without_provenance::<c_void>(round + 1)) };
        }
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { (*tc).flush_all(&BACKEND) } {
            diag::fatal("free", e.message(), 0);
        }
    } else {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { tear_down(tc) } {
            diag::fatal("free", e.message(), 0);
        }
    }
}

// -------------------------------------------------------------------------------------------
// Options
// -------------------------------------------------------------------------------------------

/// Whether the options were applied to the heap.
static CONFIG_APPLIED: AtomicBool = AtomicBool::new(false);

/// Reads `BRKMALLOC_CONF` once and applies it to the heap. One relaxed load after that.
#[inline]
pub fn ensure_config() {
    // Relaxed: options are relaxed tuning values; applying them twice is harmless.
    if !CONFIG_APPLIED.load(Ordering::Relaxed) {
        config::ensure_loaded();
        if config::loaded() {
            apply_config();
            CONFIG_APPLIED.store(true, Ordering::Relaxed);
        }
    }
}

/// Copies the heap's tuning options into it (after loading, and after `mallopt`).
pub fn apply_config() {
    let r = Ordering::Relaxed;
    let mut h = BACKEND.central.lock();
    h.configure();
    h.trim_threshold = config::TRIM_THRESHOLD.load(r);
    h.top_pad = config::TOP_PAD.load(r);
}

/// Starts the background purge thread (`background_purge:1`); see `purge::start_background`.
pub fn start_background_purge() {
    purge::start_background(&BACKEND);
}

// -------------------------------------------------------------------------------------------
// Introspection
// -------------------------------------------------------------------------------------------

/// Merges the calling thread's cache counters into the global statistics.
pub fn merge_thread_counters() {
    if let Some(tc) = tls::cache() {
        // SAFETY: this thread's cache.
        unsafe { (*tc).merge_counters() };
    }
}

/// The central heap's counters and segment count, under the lock.
pub fn heap_snapshot() -> (HeapStats, usize) {
    let h = heap();
    (h.stats(), h.segment_count())
}

/// Bytes and batches held in the middle layer.
pub fn layer_held() -> (usize, usize, usize) {
    let h = BACKEND.layer.held();
    (h.bytes, h.batches, BACKEND.layer.budget())
}

/// Free bytes at the top of the break (glibc's `keepcost`).
pub fn top_free_bytes() -> usize {
    heap().top_free_bytes()
}

/// Acquisitions of the central lock.
pub fn lock_acquisitions() -> usize {
    BACKEND.central.raw().acquisitions()
}

/// Acquisitions of the central lock that had to wait.
pub fn lock_contended() -> usize {
    BACKEND.central.raw().contended_count()
}

/// Returns every block in the calling thread's cache to the central heap (`malloc_trim` does
/// this first; tests use it to account for every block).
pub fn flush_thread_cache() {
    FRONT.flush_cache();
}

/// Tears the calling thread's cache down for good: its blocks go back to the central heap and
/// its later operations take the central paths (`mallopt(M_PERTURB)`, whose fills happen
/// there).
pub fn tear_down_thread_cache() {
    if let Some(tc) = tls::cache() {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { tear_down(tc) } {
            diag::fatal("mallopt", e.message(), 0);
        }
    }
}

/// Runs the whole verifier (`Front::check`: the central heap, this thread's cache, the
/// registry of large blocks) and returns the first broken invariant, if any. Cost: a walk of
/// every block; meant for tests and debugging.
pub fn check_heap() -> Result<(), HeapError> {
    FRONT.check()
}

/// Counters of the process-wide central heap.
pub fn heap_stats() -> HeapStats {
    heap().stats()
}
