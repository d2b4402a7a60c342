//! The one place where brkmalloc gets its locks, atomics and cells.
//!
//! Under `--cfg loom` every type here is loom's, so the `loom-tests` crate model-checks the
//! allocator's real code; otherwise they are `core`'s plus a small futex mutex. No other module
//! names `core::sync::atomic` or `core::cell::UnsafeCell` directly.
//!
//! Besides the lock, it holds the crate's other concurrency patterns as small types, so that the
//! loom models run them as they are: [`Once`] (one-time initialisation that publishes a value),
//! [`Claim`] (a flag exactly one caller wins) and [`Counter`] (a relaxed statistic). Every
//! atomic access in this module says why its ordering is enough.
//!
//! # Sabotage twins
//!
//! Built with `--cfg brkmalloc_sabotage` (the loom job's second build, `ci/loom.sh`), the module
//! also contains one deliberate defect per protocol, off until a test arms it with
//! `sabotage::arm`. Each loom model is run once more with a defect armed and must then fail:
//! a model that cannot fail is visible. Without the cfg, [`sabotage::armed`] is a constant
//! `false` and the defects are not compiled.
//!
//! # Lock order
//!
//! Outer to inner: `QUARANTINE` (freed blocks waiting before reuse with `quarantine:N`,
//! `quarantine.rs`), then `CENTRAL` (the [`Mutex`] around the central heap, `process.rs`), then
//! `TRANSFER` (the middle layer's class locks, `transfer.rs`), then `LARGE` (the registry of
//! large blocks, `large.rs`), then `LARGE_CACHE` (the cache of freed large mappings,
//! `large_cache.rs`), then `PROF` (the heap profile table, `prof.rs`). `quarantine::free` takes
//! `CENTRAL` while it holds `QUARANTINE`; the middle layer's idle pass, drain and check take
//! `TRANSFER` locks while they hold `CENTRAL`; `large::realloc` takes `LARGE_CACHE` while it
//! holds `LARGE`; the free of a sampled heap block takes `PROF` while it holds `CENTRAL`; no
//! other code path holds one lock while taking another, except the fork handlers (`fork.rs`),
//! which take every lock in this order in `prepare` and release them in reverse in `parent`
//! and `child`. The thread-cache fast paths take none. A lock is never held across anything
//! that can allocate, print, or touch a thread-local.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use core::ops::{Deref, DerefMut};

/// An `UnsafeCell` with loom's `with`/`with_mut` access API, so that the same code runs under
/// loom (which tracks every access) and natively.
///
/// # Invariants
/// - UC1: callers uphold Rust's aliasing rules for the closure's pointer; the cell itself adds
///   no synchronisation.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Gives `f` a shared raw pointer to the contents.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Gives `f` a mutable raw pointer to the contents.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// Hint inside spin loops; a yield under loom so the model can make progress.
#[inline(always)]
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Defines a constructor that is a `const fn` in the native build (so statics can use it) and a
/// plain `fn` under loom, whose atomics and cells have no `const` constructors. One body serves
/// both builds; a field that exists only under loom takes `#[cfg(loom)]` in the struct literal.
macro_rules! constructor {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$attr])*
        #[cfg(not(loom))]
        $vis const fn $name($($arg: $ty),*) -> $ret $body

        $(#[$attr])*
        #[cfg(loom)]
        $vis fn $name($($arg: $ty),*) -> $ret $body
    };
}
pub(crate) use constructor;

/// Rounds of optimistic spinning before a contended [`RawLock::lock`] sleeps. Under loom one
/// round: every round runs the same load and compare-exchange, and 64 of them would multiply the
/// interleavings (each load may read any store not yet superseded) without adding a new one.
const SPINS: u32 = if cfg!(loom) { 1 } else { 64 };

/// Lock word states of [`RawLock`].
const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and some thread may sleep in `futex_wait`: the unlocker must wake one.
const CONTENDED: u32 = 2;

/// The `Acquire` and `Release` orderings of one synchronising type, both weakened to `Relaxed`
/// while that type's ordering twin (`defect`) is armed (never in a normal build).
///
/// # Invariants
/// None beyond its field's: a plain value, read at every access so that a twin armed at run
/// time takes effect at once.
#[derive(Clone, Copy)]
struct TwinOrderings {
    defect: sabotage::Defect,
}

impl TwinOrderings {
    /// `Acquire`, or `Relaxed` in the twin.
    #[inline(always)]
    fn acquire(self) -> Ordering {
        self.weakened(Ordering::Acquire)
    }

    /// `Release`, or `Relaxed` in the twin.
    #[inline(always)]
    fn release(self) -> Ordering {
        self.weakened(Ordering::Release)
    }

    /// `ordering`, or `Relaxed` in the twin.
    #[inline(always)]
    fn weakened(self, ordering: Ordering) -> Ordering {
        if sabotage::armed(self.defect) {
            return Ordering::Relaxed;
        }
        ordering
    }
}

/// The orderings of [`RawLock`]: `acquire` for every access that takes it, `release` for the
/// swap that releases it (twin `LockOrdering`).
const LOCK_ORDER: TwinOrderings = TwinOrderings { defect: sabotage::Defect::LockOrdering };

/// A three-state futex lock (Drepper, "Futexes Are Tricky", mutex 2). It allocates nothing,
/// is `const`-constructible, and can be force-released in a forked child.
///
/// # Invariants
/// - LK1: `state` is `UNLOCKED`, `LOCKED` or `CONTENDED`; it is not `UNLOCKED` while an owner
///   holds the lock.
/// - LK2: a thread sleeps in `futex_wait` only after it observed or set `CONTENDED`, so an
///   unlock that swaps out `CONTENDED` wakes at least one sleeper.
///
/// Every acquisition is an `Acquire` read-modify-write that reads `UNLOCKED`, and every release
/// a `Release` swap that writes it, so each owner's critical section happens before the next
/// owner's (loom models `central`, `thread_cache`, `fork`; twins `Lock`, `LockOrdering`, `Wake`).
#[derive(Debug)]
pub struct RawLock {
    state: AtomicU32,
    /// Acquisitions (statistics only); written only by the owner (`Counter::add_owned`).
    acquisitions: Counter,
    /// Acquisitions that found the lock taken (statistics only).
    contended: Counter,
    /// loom has no futex: a mutex and condvar stand in, so a lost wake-up is a loom deadlock.
    #[cfg(loom)]
    park: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl RawLock {
    constructor! {
        /// An unlocked lock.
        pub fn new() -> Self {
            Self {
                state: AtomicU32::new(UNLOCKED),
                acquisitions: Counter::new(),
                contended: Counter::new(),
                #[cfg(loom)]
                park: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
            }
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) {
        if sabotage::armed(sabotage::Defect::Lock) {
            return self.lock_without_atomicity();
        }
        // Acquire: pairs with the Release swap in `unlock`, so the previous owner's writes to
        // the protected data are visible to us.
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, LOCK_ORDER.acquire(), Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        self.acquisitions.add_owned(1);
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let _ = self.contended.add(1);
        // Spin briefly: critical sections of the central heap are short.
        for _ in 0..SPINS {
            spin_hint();
            // Relaxed load: only a hint; the compare-exchange below is what acquires.
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, LOCK_ORDER.acquire(), Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Acquire: as in `lock`. Having set CONTENDED, we may sleep (LK2).
        while self.state.swap(CONTENDED, LOCK_ORDER.acquire()) != UNLOCKED {
            self.futex_wait();
        }
    }

    /// The `Lock` sabotage twin: a test-and-set split into a load and a store, so two threads
    /// can both see `UNLOCKED` and both enter.
    #[cold]
    fn lock_without_atomicity(&self) {
        while self.state.load(Ordering::Acquire) != UNLOCKED {
            spin_hint();
        }
        self.state.store(LOCKED, Ordering::Relaxed);
        self.acquisitions.add_owned(1);
    }

    /// Tries to acquire the lock without waiting.
    #[inline]
    pub fn try_lock(&self) -> bool {
        // Acquire: as in `lock`.
        let ok = self
            .state
            .compare_exchange(UNLOCKED, LOCKED, LOCK_ORDER.acquire(), Ordering::Relaxed)
            .is_ok();
        if ok {
            self.acquisitions.add_owned(1);
        }
        ok
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread holds the lock, or (after `fork`) the lock was held by a thread of
    /// the parent and no thread of this process can be using the protected data.
    #[inline]
    pub unsafe fn unlock(&self) {
        // Release: publishes our writes to the protected data; pairs with the Acquire in `lock`.
        if self.state.swap(UNLOCKED, LOCK_ORDER.release()) == CONTENDED
            && !sabotage::armed(sabotage::Defect::Wake)
        {
            self.futex_wake();
        }
    }

    /// Number of acquisitions (a snapshot; it may lag the owner's latest by a few).
    pub fn acquisitions(&self) -> usize {
        self.acquisitions.get()
    }

    /// Number of acquisitions that had to wait.
    pub fn contended_count(&self) -> usize {
        self.contended.get()
    }

    /// `futex(2)` operation `op` (private to the process) on the lock word, with value `val`
    /// and no timeout.
    #[cfg(not(loom))]
    fn futex(&self, op: libc::c_int, val: u32) {
        // SAFETY: a futex operation on a valid, aligned u32 that lives as long as `self`; the
        // null timeout means "no timeout" for FUTEX_WAIT and is ignored by FUTEX_WAKE.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                val,
                core::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// Sleeps while the word is `CONTENDED`: the kernel returns at once if it no longer is (no
    /// lost wake-up, LK2).
    #[cfg(not(loom))]
    fn futex_wait(&self) {
        self.futex(libc::FUTEX_WAIT, CONTENDED);
    }

    /// Wakes one sleeper, if any (waking nobody is harmless).
    #[cfg(not(loom))]
    fn futex_wake(&self) {
        self.futex(libc::FUTEX_WAKE, 1);
    }

    /// The futex's "compare and sleep" made atomic with the park mutex: `futex_wake` takes the
    /// same mutex, so it cannot slip between the check and the sleep.
    #[cfg(loom)]
    fn futex_wait(&self) {
        let guard = self.park.0.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: the kernel's compare is not ordered either; the swap in `lock_contended`
        // that follows the wake-up is what acquires.
        if self.state.load(Ordering::Relaxed) == CONTENDED {
            drop(self.park.1.wait(guard));
        }
    }

    #[cfg(loom)]
    fn futex_wake(&self) {
        let _guard = self.park.0.lock().unwrap_or_else(|e| e.into_inner());
        self.park.1.notify_one();
    }
}

impl Default for RawLock {
    fn default() -> Self {
        Self::new()
    }
}

/// A statistic counter: relaxed atomics, read only for reports.
///
/// Relaxed is enough: no other data is published through a counter, so nothing needs its
/// order. [`Self::add`] and [`Self::sub`] are atomic read-modify-writes, so no update is lost
/// and the value read after every writer is joined is exact; and all writes to one counter form
/// one modification order that every thread's reads follow (coherence), so a thread that adds
/// before it subtracts (`large.rs` realloc: `add(new)`, then `sub(old)`) never lets any reader
/// see the sum wrap below zero. [`Self::add_owned`] is for counters whose writers all hold one
/// lock: the lock orders the writers, so a plain load and store lose nothing either (loom
/// model `atomics::counters`, and the lock's own acquisition count in every heap model; twin
/// `Counter`).
#[derive(Debug)]
pub struct Counter(AtomicUsize);

impl Counter {
    constructor! {
        /// A counter at zero.
        pub fn new() -> Self {
            Self(AtomicUsize::new(0))
        }
    }

    /// Adds `n` (wrapping); returns the new value.
    #[inline]
    pub fn add(&self, n: usize) -> usize {
        if sabotage::armed(sabotage::Defect::Counter) {
            // The `Counter` twin: a read and a write, so a concurrent update can be lost.
            let v = self.0.load(Ordering::Relaxed).wrapping_add(n);
            self.0.store(v, Ordering::Relaxed);
            return v;
        }
        // Relaxed: see the type's documentation.
        self.0.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
    }

    /// Raises the value to `v` if it is lower (a peak: `large.rs`'s `MAX_BYTES`).
    #[inline]
    pub fn raise_to(&self, v: usize) {
        // Relaxed: see the type's documentation; the read-modify-write keeps the largest.
        self.0.fetch_max(v, Ordering::Relaxed);
    }

    /// Adds `n` (wrapping) with a load and a store, no locked instruction.
    ///
    /// Every writer of this counter must hold the same lock while it writes (the lock's
    /// happens-before orders the writers); readers need not.
    #[inline]
    pub fn add_owned(&self, n: usize) {
        // Relaxed: the lock orders the writers; see the type's documentation.
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Subtracts `n` (wrapping); returns the new value.
    #[inline]
    pub fn sub(&self, n: usize) -> usize {
        // Relaxed: see the type's documentation.
        self.0.fetch_sub(n, Ordering::Relaxed).wrapping_sub(n)
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> usize {
        // Relaxed: see the type's documentation.
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// A flag that exactly one caller wins, once in the flag's life: "do this once, and nobody
/// waits for it" (registering the fork handlers, computing the TLS offset).
///
/// Relaxed is enough for "exactly one": the winning swap and every other swap are
/// read-modify-writes of one location, so each reads the value the previous one wrote and only
/// the first reads `false`. Relaxed orders nothing else: a loser may go on before the winner has
/// done its work, so a claim must never be used to publish data (use [`Once`]) (loom model
/// `once::claim_has_one_winner`; twin `Claim`).
#[derive(Debug)]
pub struct Claim(AtomicBool);

impl Claim {
    constructor! {
        /// An unclaimed flag.
        pub fn new() -> Self {
            Self(AtomicBool::new(false))
        }
    }

    /// Whether someone claimed the flag (a cheap check before [`Self::claim`]).
    #[inline(always)]
    pub fn is_claimed(&self) -> bool {
        // Relaxed: see the type's documentation.
        self.0.load(Ordering::Relaxed)
    }

    /// Claims the flag: `true` for exactly one caller.
    #[inline]
    pub fn claim(&self) -> bool {
        if self.is_claimed() {
            return false;
        }
        if sabotage::armed(sabotage::Defect::Claim) {
            // The `Claim` twin: the check above and a plain store, so two callers can win.
            self.0.store(true, Ordering::Relaxed);
            return true;
        }
        // Relaxed: see the type's documentation; atomicity, not ordering, picks one winner.
        !self.0.swap(true, Ordering::Relaxed)
    }
}

impl Default for Claim {
    fn default() -> Self {
        Self::new()
    }
}

/// [`Once`] states: `NONE` → `RUNNING` (one thread runs the initialiser) → `READY` (the value is
/// published) or `FAILED` (the initialiser returned `None`; every caller gets `None`).
const ONCE_NONE: u32 = 0;
const ONCE_RUNNING: u32 = 1;
const ONCE_READY: u32 = 2;
const ONCE_FAILED: u32 = 3;

/// One-time initialisation of a `Copy` value from a `const` static, without allocating: the
/// first caller runs the initialiser, concurrent callers spin until it is done, later callers
/// read the value (the thread-exit key in `global.rs`).
///
/// # Invariants
/// - O1: `value` is written once, by the thread that moved `state` from `NONE` to `RUNNING`,
///   before its `Release` store of `READY`; it is read only after an `Acquire` load of `READY`.
///
/// The initialiser must not call `get_or_init` on the same `Once` (it would spin forever).
/// (loom model `once::first_mallocs_race_for_the_key`; twin `OnceOrdering`.)
pub struct Once<T> {
    state: AtomicU32,
    value: UnsafeCell<core::mem::MaybeUninit<T>>,
}

// SAFETY: O1 — the value is written by one thread before the Release store that publishes it
// and read by others only after the pairing Acquire load, so sharing the `Once` only moves a
// copy of `T` between threads (`T: Send`) and lets several threads read it (`T: Sync`).
unsafe impl<T: Send + Sync> Sync for Once<T> {}

/// The orderings of [`Once`]: `acquire` for a read of its state, `release` for the store that
/// publishes its value (twin `OnceOrdering`).
const ONCE_ORDER: TwinOrderings = TwinOrderings { defect: sabotage::Defect::OnceOrdering };

impl<T: Copy> Once<T> {
    constructor! {
        /// Not yet initialised.
        pub fn new() -> Self {
            Self {
                state: AtomicU32::new(ONCE_NONE),
                value: UnsafeCell::new(core::mem::MaybeUninit::uninit()),
            }
        }
    }

    /// The value, running `init` first if no caller has yet. `None` when the initialiser
    /// failed (it is not retried).
    pub fn get_or_init(&self, init: impl FnOnce() -> Option<T>) -> Option<T> {
        loop {
            // Acquire: pairs with the Release store below, so the value is visible (O1).
            match self.state.load(ONCE_ORDER.acquire()) {
                // SAFETY: O1 — READY was published after the value was written.
                ONCE_READY => return Some(self.value.with(|p| unsafe { (*p).assume_init() })),
                ONCE_FAILED => return None,
                ONCE_NONE => {
                    // Relaxed on success: the value is not read by the initialising thread
                    // before it writes it, so nothing needs acquiring here; on failure we loop
                    // and the Acquire load above decides.
                    if self
                        .state
                        .compare_exchange(
                            ONCE_NONE,
                            ONCE_RUNNING,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        let v = init();
                        if let Some(v) = v {
                            // SAFETY: O1 — we moved the state to RUNNING, so we are the only
                            // writer, and no reader looks before READY.
                            self.value
                                .with_mut(|p| unsafe { p.write(core::mem::MaybeUninit::new(v)) });
                        }
                        let done = if v.is_some() { ONCE_READY } else { ONCE_FAILED };
                        // Release: publishes the value (O1); pairs with the Acquire load above.
                        self.state.store(done, ONCE_ORDER.release());
                        return v;
                    }
                }
                _ => spin_hint(),
            }
        }
    }
}

impl<T: Copy> Default for Once<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> core::fmt::Debug for Once<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Once").finish_non_exhaustive()
    }
}

/// Deliberate defects for the loom job's expected-failure twins (`ci/loom.sh`).
///
/// Compiled only with `--cfg brkmalloc_sabotage`; a test arms one defect with `arm` before it
/// runs a model, and that model must then fail. Without the cfg, `armed` is `false` and the
/// defective paths are removed by the compiler. The switch is a plain `core` atomic, not a loom
/// one: it is set before the model starts and is invisible to loom's exploration.
pub mod sabotage {
    /// One defect per protocol.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u8)]
    pub enum Defect {
        /// No defect.
        None = 0,
        /// [`super::RawLock::lock`] tests and sets with a load and a store (no atomicity).
        Lock,
        /// [`super::RawLock`] acquires and releases with `Relaxed` (no happens-before).
        LockOrdering,
        /// [`super::RawLock::unlock`] never wakes a sleeper (a lost wake-up).
        Wake,
        /// [`super::Once`] publishes with `Relaxed`.
        OnceOrdering,
        /// [`super::Claim::claim`] claims with a load and a store.
        Claim,
        /// [`super::Counter::add`] adds with a load and a store.
        Counter,
        /// The front end (`heap.rs`) pushes a freed block into the list of the neighbouring
        /// class code: a routing bug, not a concurrency one, which the models and the fuzz
        /// driver must catch because they drive the front end itself.
        Routing,
        /// The middle layer (`transfer.rs`) hands out a batch without removing it, so two
        /// caches own its blocks.
        Transfer,
    }

    #[cfg(brkmalloc_sabotage)]
    static ARMED: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

    /// Arms `d` for every later operation of this process (until re-armed).
    #[cfg(brkmalloc_sabotage)]
    pub fn arm(d: Defect) {
        // Relaxed: set before the model's threads exist; their spawning orders it.
        ARMED.store(d as u8, core::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `d` is armed.
    #[inline(always)]
    pub fn armed(d: Defect) -> bool {
        #[cfg(brkmalloc_sabotage)]
        {
            // Relaxed: see `arm`.
            ARMED.load(core::sync::atomic::Ordering::Relaxed) == d as u8
        }
        #[cfg(not(brkmalloc_sabotage))]
        {
            let _ = d;
            false
        }
    }
}

/// A mutex over `T` built on [`RawLock`]; the only way to reach the central heap.
///
/// # Invariants
/// - M1: `data` is accessed only through a [`MutexGuard`], which exists only while `lock` is
///   held by the guard's thread.
#[derive(Debug)]
pub struct Mutex<T> {
    lock: RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: M1 — the lock serialises every access to `data`, so sharing the mutex between
// threads only ever moves `T` between them, which `T: Send` allows.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: the mutex owns its `T`; sending the mutex sends the `T`.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    constructor! {
        /// A new unlocked mutex.
        pub fn new(data: T) -> Self {
            Self { lock: RawLock::new(), data: UnsafeCell::new(data) }
        }
    }

    /// Locks and returns the guard.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock.lock();
        MutexGuard::new(self)
    }

    /// Locks if the lock is free.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        if self.lock.try_lock() { Some(MutexGuard::new(self)) } else { None }
    }

    /// The raw lock, for the fork handlers (which hold it across `fork` without a guard).
    pub fn raw(&self) -> &RawLock {
        &self.lock
    }

    /// Runs `f` on the data while the calling thread holds the lock through [`Self::raw`],
    /// without a guard: between the fork handlers' `prepare` and `parent`/`child` (the loom
    /// model of the fork protocol inspects the heap there, as the child would see it).
    ///
    /// # Safety
    /// The calling thread took `self.raw()` with [`RawLock::lock`] or [`RawLock::try_lock`]
    /// and has not released it, and no [`MutexGuard`] of this mutex exists (M1).
    pub unsafe fn with_raw_locked<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: contract — we hold the lock and no guard exists, so this is the only
        // reference to the data (M1).
        self.data.with_mut(|p| f(unsafe { &mut *p }))
    }
}

/// Proof that the current thread holds a [`Mutex`]; derefs to the data.
///
/// # Invariants
/// - MG1: while a guard exists, its thread holds `mutex.lock` (M1).
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    #[cfg(loom)]
    ptr: core::mem::ManuallyDrop<loom::cell::MutPtr<T>>,
}

impl<'a, T> MutexGuard<'a, T> {
    #[inline(always)]
    fn new(mutex: &'a Mutex<T>) -> Self {
        #[cfg(not(loom))]
        {
            Self { mutex }
        }
        #[cfg(loom)]
        {
            Self { mutex, ptr: core::mem::ManuallyDrop::new(mutex.data.get_mut()) }
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        {
            // SAFETY: MG1 — we hold the lock, so no other reference to the data exists.
            self.mutex.data.with(|p| unsafe { &*p })
        }
        #[cfg(loom)]
        {
            // SAFETY: MG1; loom tracks the access through `ptr`.
            unsafe { (*self.ptr).deref() }
        }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: MG1 — we hold the lock, and `&mut self` makes this the only reference.
            self.mutex.data.with_mut(|p| unsafe { &mut *p })
        }
        #[cfg(loom)]
        {
            // SAFETY: MG1; loom tracks the access through `ptr`.
            unsafe { (*self.ptr).deref() }
        }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // loom: end the tracked access before the unlock makes the data available to others.
        #[cfg(loom)]
        // SAFETY: `ptr` is dropped exactly once, here, and never used afterwards.
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.ptr)
        };
        // SAFETY: MG1 — this thread holds the lock.
        unsafe { self.mutex.lock.unlock() };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn once_runs_the_initialiser_once_and_keeps_a_failure() {
        let ok: Once<u32> = Once::new();
        assert_eq!(ok.get_or_init(|| Some(7)), Some(7));
        assert_eq!(ok.get_or_init(|| panic!("ran twice")), Some(7));
        let failed: Once<u32> = Once::new();
        assert_eq!(failed.get_or_init(|| None), None);
        assert_eq!(failed.get_or_init(|| Some(1)), None, "a failure is not retried");
    }

    #[test]
    fn claim_and_counter() {
        let c = Claim::new();
        assert!(!c.is_claimed());
        assert!(c.claim());
        assert!(!c.claim());
        assert!(c.is_claimed());
        let n = Counter::new();
        assert_eq!(n.add(5), 5);
        assert_eq!(n.sub(2), 3);
        n.add_owned(4);
        n.raise_to(2);
        assert_eq!(n.get(), 7);
        n.raise_to(9);
        assert_eq!(n.get(), 9);
    }

    #[test]
    fn lock_counts_acquisitions() {
        let m = Mutex::new(0u32);
        *m.lock() += 1;
        assert!(m.try_lock().is_some());
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert_eq!(m.raw().acquisitions(), 3);
        assert_eq!(m.raw().contended_count(), 0);
        m.raw().lock();
        // SAFETY: taken just above, no guard exists.
        assert_eq!(unsafe { m.with_raw_locked(|v| *v) }, 1);
        // SAFETY: as above.
        unsafe { m.raw().unlock() };
    }
}
