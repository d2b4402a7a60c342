//! The front end: the one routing of allocate / free / realloc / usable size between the
//! thread cache, the central heap and large blocks.
//!
//! It is written over a seam, [`Env`]: the central heap, this thread's cache, the large-block
//! mappings and the options come from the environment it is given. The process's allocator
//! (`process.rs`: the `sbrk` heap, the thread-local caches, `large.rs`, `BRKMALLOC_CONF`)
//! is one environment; the loom models and the fuzz driver give it a heap over a fixed arena and
//! caches of their own, so they run this very code. The C ABI (`api.rs`) adds only C semantics
//! (`errno`, overflow, alignment rules) and `GlobalAlloc` (`global_alloc.rs`) only layouts.
//!
//! # Fast paths
//!
//! `alloc`: a request of at most [`MAX_CLASS_REQUEST`] bytes, this thread's cache, the class
//! (one table load), a pop. `dealloc`: the page test, the header's tag and class code in one
//! load and three operations ([`UserPtr::cache_class`]), this thread's cache, the key compare,
//! a push. Every other case is a tail call into a `#[cold]` function, so the fast paths save no
//! registers and take no lock.

use core::ptr::{self, NonNull};

use crate::block::{ALIGN, BlockPtr, HARDENED, HEADER, SAMPLED, UserPtr, block_size_for};
use crate::central::{CentralHeap, HeapError};
use crate::diag::{self, Misuse};
use crate::os::MemorySource;
use crate::quarantine::{self, Quarantine};
use crate::size_class::{
    MAX_CLASS_REQUEST, NCLASSES, class_for_alloc, class_for_request, class_size, realloc_keeps,
    realloc_move_size,
};
use crate::stats::{self, Counter};
use crate::sync::Mutex;
use crate::thread_cache::{State, ThreadCache};
use crate::transfer::Backend;

/// What the front end runs over: a central heap, a way to find this thread's cache, the
/// large-block mappings, and the options. Methods with a default describe an environment
/// without large blocks, options or hooks (the models' and the fuzz driver's).
pub trait Env {
    /// The central heap's memory source.
    type Source: MemorySource;

    /// The middle layer and the central heap behind the caches.
    fn backend(&self) -> &Backend<Self::Source>;

    /// The central heap.
    fn central(&self) -> &Mutex<CentralHeap<Self::Source>> {
        &self.backend().central
    }

    /// This thread's cache, if it has one; the fast paths call it, so it must be cheap. The
    /// cache may be `Uninit` (no room: the slow paths then call [`Env::activate`]).
    fn cache(&self) -> Option<*mut ThreadCache>;

    /// [`Env::cache`] as the free fast path wants it (the process's differs only in the
    /// register it uses, `tls.rs`).
    fn cache_on_free(&self) -> Option<*mut ThreadCache> {
        self.cache()
    }

    /// Activates this thread's `Uninit` cache `tc` (or tears it down when caches are off).
    ///
    /// # Safety
    /// `tc` is this thread's cache, as returned by [`Env::cache`].
    unsafe fn activate(&self, tc: *mut ThreadCache) {
        // SAFETY: forwarded contract.
        unsafe { (*tc).activate(crate::thread_cache::DEFAULT_MAX_BYTES) };
    }

    /// Largest request the slow paths route to a cache (the fast path takes anything up to
    /// [`MAX_CLASS_REQUEST`] that a list already holds).
    fn small_limit(&self) -> usize {
        MAX_CLASS_REQUEST
    }

    /// Requests at least this large get a mapping of their own.
    fn mmap_threshold(&self) -> usize {
        usize::MAX
    }

    /// Runs at the start of every slow path (options, idle purge).
    fn on_slow_path(&self) {}

    /// Runs at the start of every central-heap operation (`check:N`).
    fn on_central(&self) {}

    /// The bytes new and freed memory are filled with (`junk:1`, `M_PERTURB`), if any.
    fn junk(&self) -> Option<(u8, u8)> {
        None
    }

    /// The quarantine and its byte limit (`quarantine:N`), when it is on: freed heap blocks
    /// wait there before they go back (`quarantine.rs`).
    fn quarantine(&self) -> Option<(&Mutex<Quarantine>, usize)> {
        None
    }

    /// Maps a large block of at least `n` bytes aligned to `align`.
    fn large_alloc(&self, _n: usize, _align: usize) -> Option<NonNull<u8>> {
        None
    }

    /// [`Env::large_alloc`] of zeroed memory (a reused mapping is cleared, a fresh one is
    /// zero already).
    fn large_alloc_zeroed(&self, n: usize) -> Option<NonNull<u8>> {
        self.large_alloc(n, ALIGN)
    }

    /// Unmaps the large block `p` (or keeps its mapping for reuse).
    ///
    /// # Errors
    /// `NotAllocated` for a pointer that is not a live large block.
    fn large_free(&self, _p: NonNull<u8>) -> Result<(), Misuse> {
        Err(Misuse::NotAllocated)
    }

    /// Usable bytes of the large block `p`.
    ///
    /// # Errors
    /// As [`Env::large_free`].
    fn large_usable(&self, _p: NonNull<u8>) -> Result<usize, Misuse> {
        Err(Misuse::NotAllocated)
    }

    /// Resizes the large block `p`: in its mapping, by moving its pages, or (below the mmap
    /// threshold, where a heap block saves memory) `Ok(None)`, and the caller moves it;
    /// `Ok(None)` leaves `p` untouched.
    ///
    /// # Errors
    /// As [`Env::large_free`].
    fn large_realloc(&self, _p: NonNull<u8>, _n: usize) -> Result<Option<NonNull<u8>>, Misuse> {
        Err(Misuse::NotAllocated)
    }

    /// Checks the large-block registry (R1).
    ///
    /// # Errors
    /// The first broken invariant.
    fn check_large(&self) -> Result<(), HeapError> {
        Ok(())
    }

    /// Runs when an allocation fails for want of memory (the process sets `errno` to `ENOMEM`,
    /// as glibc's allocation failure does, so the C functions need no wrapper around the fast
    /// path).
    fn out_of_memory(&self) {}

    /// Reports a misuse found in `func` (abort, or report and go on: `diag::misuse`).
    fn misuse(&self, func: &str, what: Misuse, p: NonNull<u8>) {
        diag::misuse(func, what, p.addr().get());
    }

    /// Whether the heap profiler is on: sampled blocks may carry `SAMPLED` and the blocks
    /// that bypass the caches count towards the next sample.
    fn profiling(&self) -> bool {
        false
    }

    /// Records the fresh block `p` (`n` bytes asked for, `counted` bytes counted towards the
    /// sample) as a heap profile sample and draws this thread's next sampling interval into
    /// `tc`'s countdown. Sampling stays disarmed meanwhile (allocations made while the stack is
    /// unwound are not sampled).
    ///
    /// # Safety
    /// `tc` is this thread's cache; `p` a block just allocated and not yet handed out.
    unsafe fn sample(&self, _tc: *mut ThreadCache, _p: NonNull<u8>, _n: usize, _counted: usize) {}

    /// Drops the profiler's record of `p` (a sampled block being freed or resized).
    fn forget_sample(&self, _p: NonNull<u8>) {}
}

/// An environment over an explicit central heap and an explicit cache: the one the loom models,
/// the fuzz driver and the unit tests give the front end, so they drive the code the process
/// runs. No large blocks (every request goes to the heap), no options, no hooks; a quarantine
/// if one is given.
///
/// # Invariants
/// - X1: `cache`, when set, is the only cache this environment's calls use, and no other
///   reference to it is live during a call (each simulated thread has its own).
pub struct Explicit<'a, S> {
    /// The middle layer and the central heap.
    pub heap: &'a Backend<S>,
    /// The calling (simulated) thread's cache, if it has one.
    pub cache: Option<*mut ThreadCache>,
    /// `tcache_max_bytes` of a cache this environment activates.
    pub cache_bytes: usize,
    /// Called on a detected misuse (tests make it panic: a correct program never reaches it).
    pub on_misuse: fn(&str, Misuse, NonNull<u8>),
    /// The quarantine and its byte limit, if frees on the central path go through one.
    pub quarantine: Option<(&'a Mutex<Quarantine>, usize)>,
}

impl<'a, S> Explicit<'a, S> {
    /// The environment of a thread with cache `cache` (or none) over `heap`; misuse aborts as
    /// in the process (`diag::misuse`).
    pub fn new(heap: &'a Backend<S>, cache: Option<&mut ThreadCache>) -> Self {
        Self {
            heap,
            cache: cache.map(ptr::from_mut),
            cache_bytes: crate::thread_cache::DEFAULT_MAX_BYTES,
            on_misuse: |func, what, p| diag::misuse(func, what, p.addr().get()),
            quarantine: None,
        }
    }
}

impl<S: MemorySource> Env for Explicit<'_, S> {
    type Source = S;

    fn backend(&self) -> &Backend<S> {
        self.heap
    }

    fn cache(&self) -> Option<*mut ThreadCache> {
        self.cache
    }

    unsafe fn activate(&self, tc: *mut ThreadCache) {
        // SAFETY: forwarded contract (X1).
        unsafe { (*tc).activate(self.cache_bytes) };
    }

    fn misuse(&self, func: &str, what: Misuse, p: NonNull<u8>) {
        (self.on_misuse)(func, what, p);
    }

    fn quarantine(&self) -> Option<(&Mutex<Quarantine>, usize)> {
        self.quarantine
    }
}

/// The front end over the environment `E` (a zero-sized one for the process: every call
/// inlines into the C exports).
///
/// # Invariants
/// - F1: every block handed out is 16-byte aligned, has at least the requested bytes, and is
///   live in exactly one place: held by the program, in one cache list, or free in the heap.
#[derive(Clone, Copy, Debug, Default)]
pub struct Front<E>(pub E);

impl<E: Env> Front<E> {
    // ---------------------------------------------------------------------------------------
    // Allocation
    // ---------------------------------------------------------------------------------------

    /// Allocates `n` bytes, 16-byte aligned; `None` when memory is exhausted.
    #[inline(always)]
    pub fn alloc(&self, n: usize) -> Option<NonNull<u8>> {
        if n <= MAX_CLASS_REQUEST
            && let Some(tc) = self.0.cache()
        {
            // SAFETY: `n <= MAX_CLASS_REQUEST`.
            let c = unsafe { class_for_request(n) };
            // SAFETY: this thread's cache; no other reference to it is live (a re-entrant
            // malloc from inside `pthread_setspecific` only runs in a slow path, between our
            // accesses).
            if let Some(p) = unsafe { (*tc).pop(c) } {
                // SAFETY: as above.
                if unsafe { (*tc).event_due() } {
                    return self.thread_event(n, tc, p);
                }
                return Some(p.ptr());
            }
        }
        self.alloc_slow(n)
    }

    /// A thread event is due after a pop of `p` for `n` bytes: a collection and/or a heap
    /// profile sample of `p`. Runs them, hands out `p`. (`n` comes first: `malloc`'s argument
    /// register, so the fast path moves nothing to keep it.)
    #[cold]
    #[inline(never)]
    fn thread_event(&self, n: usize, tc: *mut ThreadCache, p: UserPtr) -> Option<NonNull<u8>> {
        // A program that only ever hits its cache still gets here every GC_INTERVAL
        // allocations: the idle purge must not depend on refills.
        self.0.on_slow_path();
        // SAFETY: this thread's cache (see `alloc`).
        let ev = unsafe { (*tc).events.take_events(0) };
        if ev.collect {
            // SAFETY: as above.
            if let Err(e) = unsafe { (*tc).collect(self.0.backend()) } {
                diag::fatal("malloc", e.message(), 0);
            }
        }
        if ev.sample {
            // SAFETY: `n` was served from a cache list, so it is a class request; `tc` is this
            // thread's cache and `p` not handed out yet. The countdown counted the class's
            // usable size.
            unsafe {
                let counted = class_size(class_for_request(n)) - HEADER;
                self.0.sample(tc, p.ptr(), n, counted);
            }
        }
        // Opaque to the caller, which then tail-calls this function instead of keeping `p` in
        // a callee-saved register (a push and a pop on every malloc).
        Some(core::hint::black_box(p).ptr())
    }

    /// Everything [`Self::alloc`]'s fast path does not handle: activation, refill, the central
    /// heap, large blocks.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, n: usize) -> Option<NonNull<u8>> {
        self.0.on_slow_path();
        if n <= self.0.small_limit()
            && let Some(tc) = self.0.cache()
        {
            // SAFETY: `small_limit() <= MAX_CLASS_REQUEST`.
            let c = unsafe { class_for_request(n) };
            // SAFETY: this thread's cache (see `alloc`); `activate` and `alloc_slow` neither
            // allocate nor touch the thread-local slot while a reference is live.
            unsafe {
                if (*tc).state() == State::Uninit {
                    self.0.activate(tc);
                }
                if let Some(p) = (*tc).alloc_slow(c, self.0.backend()) {
                    if (*tc).event_due() {
                        return self.thread_event(n, tc, p);
                    }
                    return Some(p.ptr());
                }
            }
        }
        self.alloc_central(n).or_else(|| self.oom())
    }

    /// An allocation failed for want of memory: tell the environment, return `None`.
    #[cold]
    fn oom<T>(&self) -> Option<T> {
        self.0.out_of_memory();
        None
    }

    /// Allocates from the central heap or a mapping, bypassing the caches.
    fn alloc_central(&self, n: usize) -> Option<NonNull<u8>> {
        self.0.on_central();
        let p = if n >= self.0.mmap_threshold() {
            self.0.large_alloc(n, ALIGN).or_else(|| self.heap_alloc(n, false).map(|(p, _)| p))
        } else {
            self.heap_alloc(n, false).map(|(p, _)| p).or_else(|| self.0.large_alloc(n, ALIGN))
        }?;
        if n <= MAX_CLASS_REQUEST {
            // SAFETY: `n <= MAX_CLASS_REQUEST`.
            stats::add(unsafe { class_for_request(n) }, Counter::DirectAllocs, 1);
        } else {
            stats::add_big_alloc();
        }
        if let Some((fill, _)) = self.0.junk() {
            // SAFETY: a fresh block with at least `n` usable bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), fill, n) };
        }
        self.count_bypass(p, n)
    }

    /// Counts the block `p` of `n` bytes, which bypassed the caches, towards this thread's
    /// next profile sample (profiling on), and samples it when due. Hands `p` back. A thread
    /// whose cache was never used is activated first: that arms its sampling.
    fn count_bypass(&self, p: NonNull<u8>, n: usize) -> Option<NonNull<u8>> {
        if self.0.profiling()
            && let Some(tc) = self.0.cache()
        {
            // SAFETY: this thread's cache; no other reference to it is live, and `p` is not
            // handed out yet.
            unsafe {
                if (*tc).state() == State::Uninit {
                    self.0.activate(tc);
                }
                if (*tc).events.count_bypass(n) {
                    self.0.sample(tc, p, n, n);
                }
            }
        }
        Some(p)
    }

    /// `CentralHeap::alloc` under the lock.
    fn heap_alloc(&self, n: usize, zero: bool) -> Option<(NonNull<u8>, bool)> {
        self.0.central().lock().alloc(n, zero)
    }

    /// Allocates `n` zeroed bytes, skipping the memset on memory known to be fresh.
    pub fn alloc_zeroed(&self, n: usize) -> Option<NonNull<u8>> {
        // Small: a cached block and a memset beat a trip through the lock for fresh memory.
        if n <= self.0.small_limit() {
            let p = self.alloc(n)?;
            // SAFETY: a block of ours with at least `n` usable bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), 0, n) };
            return Some(p);
        }
        self.0.on_slow_path();
        self.0.on_central();
        // A fresh mapping is zero; a reused one is cleared by `large_alloc_zeroed`.
        if n >= self.0.mmap_threshold()
            && let Some(p) = self.0.large_alloc_zeroed(n)
        {
            return self.count_bypass(p, n);
        }
        let p = match self.heap_alloc(n, true) {
            Some((p, fresh)) => {
                if !fresh {
                    // SAFETY: a block of ours with at least `n` payload bytes.
                    unsafe { ptr::write_bytes(p.as_ptr(), 0, n) };
                }
                p
            }
            None => self.0.large_alloc_zeroed(n).or_else(|| self.oom())?,
        };
        self.count_bypass(p, n)
    }

    /// Allocates `n` bytes aligned to `align` (any power of two).
    pub fn alloc_aligned(&self, n: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        if align <= ALIGN {
            return self.alloc(n);
        }
        self.0.on_slow_path();
        self.0.on_central();
        let t = self.0.mmap_threshold();
        let p = if n >= t || align >= t {
            self.0.large_alloc(n, align)
        } else {
            let r = self.0.central().lock().alloc_aligned(n, align);
            r.or_else(|| self.0.large_alloc(n, align))
        };
        self.count_bypass(p.or_else(|| self.oom())?, n)
    }

    // ---------------------------------------------------------------------------------------
    // Free
    // ---------------------------------------------------------------------------------------

    /// Frees `p`; misuse is reported as `free()`'s.
    ///
    /// # Safety
    /// `p` is a live block of ours given up by the caller (anything else is detected where
    /// cheaply possible and reported).
    #[inline(always)]
    pub unsafe fn dealloc(&self, p: NonNull<u8>) {
        // SAFETY: forwarded contract.
        unsafe { self.dealloc_as(p, "free") }
    }

    /// C `free`: NULL is ignored. With `hardening`, NULL fails the page test of the fast path
    /// like any pointer near the start of a page, so it costs the fast path nothing.
    ///
    /// # Safety
    /// As [`Self::dealloc`], or NULL.
    #[inline(always)]
    pub unsafe fn free(&self, p: *mut u8) {
        if HARDENED {
            if !UserPtr::header_on_same_page_addr(p.addr()) {
                return self.free_near_page_start(p);
            }
            // SAFETY: a pointer with bits 5..11 not all zero is not NULL; forwarded contract.
            return unsafe { self.dealloc_as(NonNull::new_unchecked(p), "free") };
        }
        if let Some(p) = NonNull::new(p) {
            // SAFETY: forwarded contract.
            unsafe { self.dealloc_as(p, "free") }
        }
    }

    /// [`Self::free`] of NULL or a pointer whose header may lie on the previous page.
    #[cold]
    #[inline(never)]
    fn free_near_page_start(&self, p: *mut u8) {
        if let Some(p) = NonNull::new(p) {
            Self::dealloc_central(p, self, "free");
        }
    }

    /// Frees `p`, naming `func` in misuse reports. `errno` is unchanged.
    ///
    /// # Safety
    /// As [`Self::dealloc`].
    #[inline(always)]
    pub unsafe fn dealloc_as(&self, p: NonNull<u8>, func: &'static str) {
        let u = UserPtr::new(p);
        // A pointer near the start of its page takes the central path, which checks ranges
        // before it reads memory (`UserPtr::header_on_same_page`).
        if HARDENED && !u.header_on_same_page() {
            return Self::dealloc_central(p, self, func);
        }
        // SAFETY: the header word lies on `p`'s page, which the program can access.
        let Some(c) = (unsafe { u.cache_class() }) else {
            return Self::dealloc_central(p, self, func);
        };
        let Some(tc) = self.0.cache_on_free() else { return Self::dealloc_central(p, self, func) };
        // The `Routing` sabotage twin: a freed block goes to the wrong list (ci/loom.sh and the
        // fuzz driver's twin must catch it). A constant `false` in every other build.
        let c = if crate::sync::sabotage::armed(crate::sync::sabotage::Defect::Routing) {
            c ^ 1
        } else {
            c
        };
        // SAFETY: the header says an in-use heap block (B5, B8), given up by the program.
        if unsafe { u.has_cache_key() } {
            return Self::dealloc_suspect(u, tc, self, c, func);
        }
        Self::push(u, tc, self, c, func);
    }

    /// Pushes `u` into this thread's list `c`, or takes the slow path when the list refuses.
    #[inline(always)]
    fn push(u: UserPtr, tc: *mut ThreadCache, this: &Self, c: usize, func: &'static str) {
        // SAFETY: the callers checked that `u` is an in-use heap block of class code `c`, given
        // up by the program; `tc` is this thread's cache.
        if !unsafe { (*tc).push(u, c) } {
            Self::dealloc_push_slow(u, this, tc, c, func);
        }
    }

    // The free path's cold functions take the pointer first: it arrives in the first argument
    // register and stays there, so the fast path moves nothing before a tail call.

    /// A freed block that carries the cache key: a double free if it is in this cache or in the
    /// middle layer, otherwise (the program stored the key value, or the block sits in another
    /// thread's cache: not detected) an ordinary push.
    #[cold]
    #[inline(never)]
    fn dealloc_suspect(
        u: UserPtr,
        tc: *mut ThreadCache,
        this: &Self,
        c: usize,
        func: &'static str,
    ) {
        // SAFETY: this thread's cache.
        if unsafe { (*tc).contains(u, c) } || this.0.backend().layer.contains(c, u) {
            // Reported (and, with abort_on_error:0, leaked: it stays cached once).
            this.0.misuse(func, Misuse::DoubleFree, u.ptr());
            return;
        }
        Self::push(u, tc, this, c, func);
    }

    /// A push the cache refused: activation, a full list, a code without a list, or a
    /// torn-down cache.
    #[cold]
    #[inline(never)]
    fn dealloc_push_slow(
        u: UserPtr,
        this: &Self,
        tc: *mut ThreadCache,
        c: usize,
        func: &'static str,
    ) {
        if c >= NCLASSES {
            return Self::dealloc_central(u.ptr(), this, func);
        }
        // `free` preserves errno; the flush may make syscalls.
        let saved = diag::errno();
        this.0.on_slow_path();
        // SAFETY: this thread's cache; an in-use heap block of class `c` (`dealloc_as`).
        let done = unsafe {
            if (*tc).state() == State::Uninit {
                this.0.activate(tc);
            }
            (*tc).free_slow(u, c, this.0.backend())
        };
        diag::set_errno(saved);
        match done {
            Ok(true) => {}
            Ok(false) => {
                stats::add(c, Counter::DirectFrees, 1);
                Self::dealloc_central(u.ptr(), this, func);
            }
            Err(e) => diag::fatal(func, e.message(), u.addr()),
        }
    }

    /// Frees to the central heap or unmaps, with full validation; `errno` is unchanged.
    #[cold]
    #[inline(never)]
    fn dealloc_central(p: NonNull<u8>, this: &Self, func: &'static str) {
        let saved = diag::errno();
        this.0.on_slow_path();
        this.0.on_central();
        // `quarantine:N`: heap blocks wait before they go back (the thread caches are off).
        let r = if let Some((q, limit)) = this.0.quarantine() {
            if this.0.profiling() {
                // The block stays in use while it waits: its record can go first.
                let sampled = this.0.central().lock().take_sampled(p) == Ok(true);
                if sampled {
                    this.0.forget_sample(p);
                }
            }
            quarantine::free(q, this.0.central(), p, limit)
        } else {
            let mut heap = this.0.central().lock();
            if let Some((_, fill)) = this.0.junk()
                && let Ok(n) = heap.usable_size(p)
            {
                // SAFETY: a validated in-use block of ours with `n` usable bytes.
                unsafe { ptr::write_bytes(p.as_ptr(), fill, n) };
            }
            // A sampled block's record goes before the block does, under the same lock (PROF
            // nests inside CENTRAL), so no other thread can reuse the address and record a
            // sample there in between. (Large blocks: the environment's `large_free`.)
            if this.0.profiling() && heap.take_sampled(p) == Ok(true) {
                this.0.forget_sample(p);
            }
            heap.free(p).map_err(|e| (e, p))
        };
        match r {
            Ok(()) => {}
            // Not in a heap segment: a large block, checked against the registry before its
            // memory is touched.
            Err((Misuse::NotOurs, _)) => {
                if let Err(e) = this.0.large_free(p) {
                    this.0.misuse(func, e, p);
                }
            }
            Err((e, at)) => this.0.misuse(func, e, at),
        }
        diag::set_errno(saved);
    }

    // ---------------------------------------------------------------------------------------
    // Realloc and queries
    // ---------------------------------------------------------------------------------------

    /// Usable size of the live block `p` (0 after a reported misuse).
    ///
    /// # Safety
    /// `p` is a live block of ours (anything else is detected where cheaply possible).
    pub unsafe fn usable_size(&self, p: NonNull<u8>, func: &'static str) -> usize {
        let u = UserPtr::new(p);
        // An ordinary in-use heap block: its header says, no lock needed.
        if u.header_on_same_page()
            // SAFETY: the header word lies on `p`'s page.
            && let Some(h) = unsafe { u.checked_header() }
        {
            return BlockPtr::size_of(h) - HEADER;
        }
        let r = self.0.central().lock().usable_size(p);
        let r = match r {
            Err(Misuse::NotOurs) => self.0.large_usable(p),
            r => r,
        };
        r.unwrap_or_else(|e| {
            self.0.misuse(func, e, p);
            0
        })
    }

    /// Resizes the live block `p` to `n > 0` bytes; `None` leaves `p` untouched (memory
    /// exhausted, or a reported misuse).
    ///
    /// # Safety
    /// `p` is a live block of ours; on `Some`, the old pointer must no longer be used (unless
    /// equal to the result).
    pub unsafe fn realloc(&self, p: NonNull<u8>, n: usize) -> Option<NonNull<u8>> {
        let u = UserPtr::new(p);
        if u.header_on_same_page()
            // SAFETY: the header word lies on `p`'s page.
            && let Some(h) = unsafe { u.checked_header() }
        {
            let bs = BlockPtr::size_of(h);
            let old_usable = bs - HEADER;
            let have = BlockPtr::class_of(h);
            if have < NCLASSES {
                // A block sitting in this thread's cache was freed already.
                // SAFETY: an in-use heap block, as the header says.
                if unsafe { u.has_cache_key() } && self.cache_holds(u, have) {
                    self.0.misuse("realloc", Misuse::DoubleFree, p);
                    return None;
                }
                // Same size class, or a shrink by less than a quarter: nothing to do, no lock.
                if let Some(need) = block_size_for(n)
                    && need <= bs
                    && (class_for_alloc(need) == Some(have) || realloc_keeps(need, bs))
                {
                    return Some(p);
                }
                // A cached size class moving to another small one: through the caches, no
                // lock (growing in place would need the central lock on every call).
                if n <= self.0.small_limit() {
                    return self.move_block(p, old_usable, n);
                }
            }
            // A larger block that still holds `n` (growth into the headroom a moving realloc
            // gave it, or a shrink by less than a quarter): nothing to do, no lock (a
            // realloc-heavy program grows its buffers this way dozens of times per move), on the
            // header's check and its successor's tags (a freed block merged into its neighbour
            // leaves a header that passes the first but not the second).
            if h & SAMPLED == 0
                && block_size_for(n).is_some_and(|need| realloc_keeps(need, bs))
                // SAFETY: `h` passed `checked_header` above.
                && unsafe { u.successor_confirms_used(h) }
            {
                return Some(p);
            }
            // A sampled block stops being one (a realloc counts as a free and an allocation,
            // as in tcmalloc): otherwise every later realloc of it would take the lock.
            if h & SAMPLED != 0 {
                self.unsample(p);
            }
            // A larger heap block (a sampled one here, if it still fits): validated and kept as
            // it is for a small shrink, else resized in place (one lock acquisition either way),
            // else moved.
            let r = if block_size_for(n).is_some_and(|need| realloc_keeps(need, bs)) {
                self.0.central().lock().usable_size(p).map(|_| true)
            } else {
                self.0.central().lock().resize_in_place(p, n)
            };
            return match r {
                Ok(true) => Some(p),
                Ok(false) => self.move_block(p, old_usable, n),
                Err(e) => {
                    self.0.misuse("realloc", e, p);
                    None
                }
            };
        }
        self.0.on_slow_path();
        if self.0.profiling() {
            self.unsample(p);
        }
        let r = self.0.central().lock().resize_in_place(p, n);
        let old_usable = match r {
            Ok(true) => return Some(p),
            // SAFETY: forwarded contract.
            Ok(false) => unsafe { self.usable_size(p, "realloc") },
            Err(Misuse::NotOurs) => {
                let r = self.0.large_realloc(p, n);
                match r {
                    Ok(Some(q)) => return Some(q),
                    Ok(None) => match self.0.large_usable(p) {
                        Ok(u) => u,
                        Err(_) => return None,
                    },
                    Err(e) => {
                        self.0.misuse("realloc", e, p);
                        return None;
                    }
                }
            }
            Err(e) => {
                self.0.misuse("realloc", e, p);
                return None;
            }
        };
        self.move_block(p, old_usable, n)
    }

    /// Drops the profile sample of the heap block `p`, if it is one (before a realloc).
    /// Misuse is left to the caller's validation.
    #[cold]
    #[inline(never)]
    fn unsample(&self, p: NonNull<u8>) {
        let mut heap = self.0.central().lock();
        if heap.take_sampled(p) == Ok(true) {
            self.0.forget_sample(p);
        }
    }

    /// Whether block `u` (class `c`) sits in this thread's cache (realloc of a freed block).
    fn cache_holds(&self, u: UserPtr, c: usize) -> bool {
        // SAFETY: this thread's cache.
        self.0.cache().is_some_and(|tc| unsafe { (*tc).contains(u, c) })
    }

    /// realloc by moving: a new block of at least `n` bytes (with headroom for small growth,
    /// `realloc_move_size`, unless that would cross the mmap threshold), the contents copied,
    /// the old block freed. `None` (memory exhausted) leaves `p` untouched.
    fn move_block(&self, p: NonNull<u8>, old_usable: usize, n: usize) -> Option<NonNull<u8>> {
        let want = realloc_move_size(old_usable, n);
        let want =
            if want >= self.0.mmap_threshold() && n < self.0.mmap_threshold() { n } else { want };
        let new = self.alloc(want).or_else(|| self.alloc(n))?;
        // SAFETY: distinct live blocks; the old one has `old_usable` bytes, the new one >= n.
        unsafe { ptr::copy_nonoverlapping(p.as_ptr(), new.as_ptr(), old_usable.min(n)) };
        // SAFETY: `p` is a live block of ours (the caller's contract), given up here.
        unsafe { self.dealloc_as(p, "realloc") };
        Some(new)
    }

    // ---------------------------------------------------------------------------------------
    // Maintenance
    // ---------------------------------------------------------------------------------------

    /// Returns every block in this thread's cache and in the middle layer to the central heap
    /// (`malloc_trim`; other threads' caches keep theirs).
    pub fn flush_cache(&self) {
        if let Some(tc) = self.0.cache() {
            // SAFETY: this thread's cache.
            if let Err(e) = unsafe { (*tc).flush_all(self.0.backend()) } {
                diag::fatal("malloc_trim", e.message(), 0);
            }
        }
        let back = self.0.backend();
        if let Err(e) = back.layer.drain(&mut back.central.lock()).map(|_| ()) {
            diag::fatal("malloc_trim", e.message(), 0);
        }
    }

    /// The whole verifier: the central heap (C*, B*, deep), this thread's cache (T*) and the
    /// middle layer (TR*) against it, and the large-block registry (R*). Returns the first
    /// broken invariant.
    ///
    /// # Errors
    /// The first broken invariant, with the address concerned.
    pub fn check(&self) -> Result<(), HeapError> {
        let heap = self.0.central().lock();
        heap.check(true)?;
        if let Some(tc) = self.0.cache() {
            // SAFETY: this thread's cache; no other reference to it is live.
            unsafe { (*tc).check(&heap) }?;
        }
        // Lock order CENTRAL → TRANSFER (`transfer.rs`).
        self.0.backend().layer.check(&heap)?;
        drop(heap);
        self.0.check_large()
    }
}
