//! The process-wide heap and the `GlobalAlloc` for Rust programs.
//!
//! The heap is a zero-initialised `const` static: it works from the very first `malloc`, which
//! may come from the dynamic loader or another library's constructor before ours runs.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use core::cell::UnsafeCell;
use core::ffi::c_void;

use crate::api;
use crate::block::ALIGN;
use crate::central::{CentralHeap, Misuse};
use crate::config;
use crate::os::Sbrk;
use crate::sync::{AtomicBool, AtomicUsize, Claim, Mutex, MutexGuard, Once, Ordering};
use crate::thread_cache::{State, ThreadCache, has_cache_key};
use core::sync::atomic::AtomicIsize;

/// The central heap of the process (lock `CENTRAL` in the lock order, `sync.rs`).
pub(crate) static HEAP: Mutex<CentralHeap<Sbrk>> = Mutex::new(CentralHeap::new(Sbrk::new()));

/// Locks the process-wide central heap.
#[inline]
pub(crate) fn heap() -> MutexGuard<'static, CentralHeap<Sbrk>> {
    HEAP.lock()
}

std::thread_local! {
    /// This thread's cache. `const`-initialised and without `Drop`, so first use allocates
    /// nothing (a `Drop` type would register a TLS destructor through
    /// `__cxa_thread_atexit_impl`, which callocs and re-enters malloc before the slot is
    /// live). Thread exit is handled by the pthread key destructor below instead.
    static TCACHE: UnsafeCell<ThreadCache> = const { UnsafeCell::new(ThreadCache::new()) };
}

/// Offset of this library's `TCACHE` from the thread pointer, once known to be usable; 0 means
/// "use `thread_local!`". Relaxed: each thread re-checks the result through the canary (T6).
static TLS_OFFSET: AtomicIsize = AtomicIsize::new(0);
/// Whether the offset was computed already (or found unusable): claimed by the one thread that
/// computes it (`sync::Claim`; loom model `once::first_mallocs_race_for_the_key`).
static TLS_OFFSET_TRIED: Claim = Claim::new();
/// Offsets further below the thread pointer than this are not trusted: a library in the
/// static TLS block sits within its first few KiB.
const TLS_OFFSET_MAX: isize = 256 << 10;

/// This thread's cache, or `None` where TLS is unavailable.
///
/// Stable Rust gives a preloaded cdylib the general-dynamic TLS model: every access calls
/// `__tls_get_addr` (about a dozen instructions). A library loaded at start-up sits in the
/// static TLS block, at the same offset from the thread pointer in every thread, so the fast
/// path reads `%fs:0` and adds that offset (initial-exec speed). The offset is computed once
/// from a `thread_local!` access, and each use is checked by the cache's canary (T6): a thread
/// whose cache is not there (a library loaded late, in dynamic TLS) fails the check and takes
/// the `thread_local!` path.
#[inline(always)]
fn tcache() -> Option<*mut ThreadCache> {
    tcache_fast().or_else(tcache_tls)
}

/// The thread-pointer path of [`tcache`] alone: `None` means "ask `thread_local!`".
#[inline(always)]
pub(crate) fn tcache_fast() -> Option<*mut ThreadCache> {
    #[cfg(target_arch = "x86_64")]
    {
        // Relaxed: a stale 0 only sends us to the slow path; a non-zero value is checked below.
        let off = TLS_OFFSET.load(Ordering::Relaxed);
        if off != 0 {
            let tc: *mut ThreadCache =
                ptr::with_exposed_provenance_mut(thread_pointer().wrapping_add_signed(off));
            // SAFETY: `off` lies within TLS_OFFSET_MAX below the thread pointer, inside this
            // thread's static TLS area (readable); the canary tells whether it is our cache.
            if unsafe { (*tc).this } == tc {
                return Some(tc);
            }
        }
    }
    None
}

/// The `thread_local!` path; also computes the thread-pointer offset the first time.
#[inline(never)]
fn tcache_tls() -> Option<*mut ThreadCache> {
    let tc = TCACHE.try_with(UnsafeCell::get).ok()?;
    #[cfg(target_arch = "x86_64")]
    // One thread wins the claim; others keep using this path until the offset shows.
    if TLS_OFFSET_TRIED.claim() {
        let off = (tc.expose_provenance() as isize).wrapping_sub(thread_pointer() as isize);
        if (-TLS_OFFSET_MAX..0).contains(&off) {
            TLS_OFFSET.store(off, Ordering::Relaxed);
        }
    }
    Some(tc)
}

/// The x86-64 thread pointer (`%fs:0` holds its own address, as the TLS ABI requires).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reading %fs:0 is always valid on x86-64 Linux: it is the TCB's self pointer.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, readonly, preserves_flags, pure));
    }
    tp
}

/// Pops a cached block of class `c`: the malloc fast path. `None` sends the caller to the
/// central heap (torn-down cache, or memory exhausted).
#[inline(always)]
pub(crate) fn cache_alloc(c: usize) -> Option<NonNull<u8>> {
    let tc = tcache()?;
    // SAFETY: the cache belongs to this thread and no reference to it outlives this call (a
    // re-entrant malloc from inside pthread_setspecific only runs in the slow path, between
    // our accesses).
    let p = unsafe { (*tc).pop(c) };
    match p {
        Some(p) => {
            // SAFETY: as above.
            if unsafe { (*tc).gc_due() } {
                collect(tc);
            }
            Some(p)
        }
        None => cache_alloc_slow(tc, c),
    }
}

#[cold]
#[inline(never)]
fn cache_alloc_slow(tc: *mut ThreadCache, c: usize) -> Option<NonNull<u8>> {
    // SAFETY: this thread's cache; see `cache_alloc`.
    if unsafe { (*tc).state() } == State::Uninit {
        activate(tc);
    }
    maybe_purge_idle();
    // SAFETY: as above; `alloc_slow` neither allocates nor touches TLS.
    let p = unsafe { (*tc).alloc_slow(c, &HEAP) };
    // SAFETY: as above.
    if p.is_some() && unsafe { (*tc).gc_due() } {
        collect(tc);
    }
    p
}

/// Runs a due collection and hands `p` back (a tail call from the malloc fast path).
#[cold]
#[inline(never)]
pub(crate) fn collect_and_return(tc: *mut ThreadCache, p: NonNull<u8>) -> Option<NonNull<u8>> {
    collect(tc);
    Some(p)
}

#[cold]
#[inline(never)]
fn collect(tc: *mut ThreadCache) {
    // A program that only ever hits its cache still reaches here every 1024 allocations:
    // the idle purge must not depend on refills.
    maybe_purge_idle();
    // SAFETY: this thread's cache.
    if let Err(e) = unsafe { (*tc).collect(&HEAP) } {
        crate::diag::fatal("malloc", e.message(), 0);
    }
}

/// Pushes the freed block `p` (class `c`) into this thread's cache: the free fast path. A
/// block already in this cache is a double free. `false` sends the caller to the central heap.
///
/// # Safety
/// As [`ThreadCache::push`].
#[inline(always)]
pub(crate) unsafe fn cache_free(p: NonNull<u8>, c: usize) -> bool {
    let Some(tc) = tcache() else { return false };
    // SAFETY: an in-use heap block (contract).
    if unsafe { has_cache_key(p) } {
        // SAFETY: forwarded; `tc` is this thread's cache.
        return unsafe { cache_free_suspect(tc, p, c) };
    }
    // SAFETY: this thread's cache (see `cache_alloc`); block contract forwarded.
    if unsafe { (*tc).push(p, c) } {
        return true;
    }
    // SAFETY: forwarded.
    unsafe { cache_free_slow(tc, p, c) }
}

/// A freed block that carries the cache key: a double free if it is in this cache, otherwise
/// (the program stored the key value) an ordinary push.
///
/// # Safety
/// As [`ThreadCache::push`]; `tc` is this thread's cache.
#[cold]
#[inline(never)]
pub(crate) unsafe fn cache_free_suspect(tc: *mut ThreadCache, p: NonNull<u8>, c: usize) -> bool {
    // SAFETY: this thread's cache.
    if unsafe { (*tc).contains(p, c) } {
        // Reported (and, with abort_on_error:0, leaked: it stays cached once).
        crate::api::misuse("free", Misuse::DoubleFree, p);
        return true;
    }
    // SAFETY: forwarded.
    if unsafe { (*tc).push(p, c) } {
        return true;
    }
    // SAFETY: forwarded.
    unsafe { cache_free_slow(tc, p, c) }
}

/// Whether block `p` (class `c`) sits in this thread's cache (realloc of a freed block).
pub(crate) fn cache_holds(p: NonNull<u8>, c: usize) -> bool {
    // SAFETY: this thread's cache.
    tcache().is_some_and(|tc| unsafe { (*tc).contains(p, c) })
}

/// The free slow path: activation, flush of a full list, or a torn-down cache (`false`: the
/// caller frees to the central heap).
///
/// # Safety
/// As [`ThreadCache::push`]; `tc` is this thread's cache.
#[cold]
#[inline(never)]
pub(crate) unsafe fn cache_free_slow(tc: *mut ThreadCache, p: NonNull<u8>, c: usize) -> bool {
    // `free` preserves errno; the flush may make syscalls.
    let saved = crate::diag::errno();
    maybe_purge_idle();
    // SAFETY: this thread's cache.
    if unsafe { (*tc).state() } == State::Uninit {
        activate(tc);
    }
    // SAFETY: this thread's cache; block contract forwarded.
    let done = match unsafe { (*tc).free_slow(p, c, &HEAP) } {
        Ok(done) => done,
        Err(e) => report_flush_error(e, p),
    };
    crate::diag::set_errno(saved);
    done
}

#[cold]
fn report_flush_error(e: Misuse, p: NonNull<u8>) -> ! {
    crate::diag::fatal("free", e.message(), p.addr().get())
}

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
/// cache down at once and uses the central heap.
#[cold]
fn activate(tc: *mut ThreadCache) {
    ensure_config();
    let enabled = config::caches_enabled();
    let key = if enabled { exit_key() } else { None };
    let Some(key) = key else {
        // SAFETY: this thread's cache.
        let _ = unsafe { (*tc).tear_down(&HEAP) };
        return;
    };
    // SAFETY: this thread's cache; no reference is held across the call below.
    unsafe { (*tc).activate(config::TCACHE_MAX_BYTES.load(Ordering::Relaxed)) };
    // SAFETY: a valid key; the value is a round counter, never dereferenced.
    if unsafe { libc::pthread_setspecific(key, ptr::without_provenance::<c_void>(1)) } != 0 {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { (*tc).tear_down(&HEAP) } {
            crate::diag::fatal("free", e.message(), 0);
        }
    }
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
    let Some(tc) = tcache() else { return };
    if round < TEAR_DOWN_ROUND {
        if let Some(key) = exit_key() {
            // SAFETY: a valid key; the value is a round counter.
            unsafe { libc::pthread_setspecific(key, ptr::without_provenance::<c_void>(round + 1)) };
        }
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { (*tc).flush_all(&HEAP) } {
            crate::diag::fatal("free", e.message(), 0);
        }
    } else {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { (*tc).tear_down(&HEAP) } {
            crate::diag::fatal("free", e.message(), 0);
        }
    }
}

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
pub(crate) fn apply_config() {
    let r = Ordering::Relaxed;
    let mut h = HEAP.lock();
    h.trim_threshold = config::TRIM_THRESHOLD.load(r);
    h.top_pad = config::TOP_PAD.load(r);
}

/// Milliseconds on the coarse monotonic clock (a vDSO read, no syscall).
fn now_ms() -> usize {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as usize * 1000 + ts.tv_nsec as usize / 1_000_000
}

/// When the last idle purge ran (ms, coarse monotonic clock). Relaxed: a timestamp; a race
/// only makes two threads try the (locked, idempotent) purge.
static LAST_PURGE_MS: AtomicUsize = AtomicUsize::new(0);

/// The idle purge of `purge_delay_ms`, run from the allocation slow paths: once the delay has
/// passed since the last pass, free memory that came back since is returned to the OS.
#[cold]
pub(crate) fn maybe_purge_idle() {
    let now = now_ms();
    let r = Ordering::Relaxed;
    let last = LAST_PURGE_MS.load(r);
    if now.wrapping_sub(last) < config::PURGE_DELAY_MS.load(r) {
        return;
    }
    LAST_PURGE_MS.store(now, r);
    crate::large_cache::decay();
    // Never wait for the lock here: an idle purge is not worth a stall.
    if let Some(mut h) = HEAP.try_lock() {
        h.purge_idle();
    }
}

/// Starts the background purge thread (`background_purge:1`): it wakes every
/// `purge_delay_ms` and returns idle memory even when the program stops allocating. Call
/// from a constructor, not from inside `malloc` (creating a thread allocates).
pub fn start_background_purge() {
    extern "C" fn run(_: *mut c_void) -> *mut c_void {
        loop {
            let ms = config::PURGE_DELAY_MS.load(Ordering::Relaxed).max(1);
            let ts = libc::timespec {
                tv_sec: (ms / 1000) as libc::time_t,
                tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: valid timespec; an interrupted sleep just purges early.
            unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
            HEAP.lock().purge_idle();
            crate::large_cache::decay();
            LAST_PURGE_MS.store(now_ms(), Ordering::Relaxed);
        }
    }
    // SAFETY: an all-zero pthread_t is a valid out slot.
    let mut tid: libc::pthread_t = unsafe { core::mem::zeroed() };
    // SAFETY: default attributes; `run` lives forever and takes no argument.
    if unsafe { libc::pthread_create(&mut tid, ptr::null(), run, ptr::null_mut()) } == 0 {
        // SAFETY: the thread is never joined.
        unsafe { libc::pthread_detach(tid) };
    } else {
        crate::diag::warn("background_purge: cannot create the purge thread");
    }
}

/// Merges the calling thread's cache counters into the global statistics.
pub fn merge_thread_counters() {
    if let Some(tc) = tcache() {
        // SAFETY: this thread's cache.
        unsafe { (*tc).merge_all_counters() };
    }
}

/// The central heap's counters and segment count, under the lock.
pub fn heap_snapshot() -> (crate::central::HeapStats, usize) {
    let h = heap();
    (h.stats(), h.segment_count())
}

/// Free bytes at the top of the break (glibc's `keepcost`).
pub fn top_free_bytes() -> usize {
    heap().top_free_bytes()
}

/// Acquisitions of the central lock.
pub fn lock_acquisitions() -> usize {
    HEAP.raw().acquisitions()
}

/// Acquisitions of the central lock that had to wait.
pub fn lock_contended() -> usize {
    HEAP.raw().contended_count()
}

/// Returns every block in the calling thread's cache to the central heap (`malloc_trim` does
/// this first; tests use it to account for every block).
pub fn flush_thread_cache() {
    if let Some(tc) = tcache() {
        // SAFETY: this thread's cache.
        if let Err(e) = unsafe { (*tc).flush_all(&HEAP) } {
            crate::diag::fatal("malloc_trim", e.message(), 0);
        }
    }
}

/// Runs the heap walker over the process-wide central heap (under its lock) and returns the
/// first broken invariant, if any. Cost: a walk of every block; meant for tests and debugging.
pub fn check_heap() -> Result<(), crate::central::HeapError> {
    heap().check(false)
}

/// Counters of the process-wide central heap.
pub fn heap_stats() -> crate::central::HeapStats {
    heap().stats()
}

/// brkmalloc as a Rust global allocator:
///
/// ```
/// #[global_allocator]
/// static A: brkmalloc::BrkMalloc = brkmalloc::BrkMalloc;
/// ```
///
/// Every alignment is honoured. Using it does not replace the process's C `malloc` symbols;
/// C code in the same process keeps its own allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct BrkMalloc;

// SAFETY: `alloc` returns blocks of at least `layout.size()` bytes aligned to `layout.align()`
// or null; blocks stay valid until `dealloc`; `realloc` preserves contents up to the smaller
// size. These follow from the C-semantics layer (`api.rs`), which the test suite checks.
unsafe impl GlobalAlloc for BrkMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        crate::fork::ensure_installed();
        let r = if layout.align() <= ALIGN {
            api::alloc(layout.size())
        } else {
            api::alloc_aligned(layout.size(), layout.align())
        };
        r.map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        if let Some(p) = NonNull::new(p) {
            api::dealloc(p, "free");
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        crate::fork::ensure_installed();
        if layout.align() <= ALIGN {
            return api::alloc_zeroed(layout.size()).map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        match api::alloc_aligned(layout.size(), layout.align()) {
            Some(p) => {
                // SAFETY: a fresh block of at least `layout.size()` bytes.
                unsafe { ptr::write_bytes(p.as_ptr(), 0, layout.size()) };
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(old) = NonNull::new(p) else { return ptr::null_mut() };
        if layout.align() <= ALIGN {
            // SAFETY: `old` is a live block of ours (GlobalAlloc contract), new_size > 0.
            return unsafe { api::realloc_raw(old, new_size) }
                .map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        // Over-aligned: a move must keep the alignment, which realloc_raw does not promise.
        let Some(new) = api::alloc_aligned(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: both blocks are live and distinct; the old one holds `layout.size()` bytes.
        unsafe {
            ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), layout.size().min(new_size));
        }
        api::dealloc(old, "realloc");
        new.as_ptr()
    }
}
