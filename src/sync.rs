//! The one place where brkmalloc gets its locks, atomics and cells.
//!
//! Under `--cfg loom` every type here is loom's, so the `loom-tests` crate model-checks the
//! allocator's real code; otherwise they are `core`'s plus a small futex mutex. No other module
//! names `core::sync::atomic` or `core::cell::UnsafeCell` directly.
//!
//! # Lock order
//!
//! Outer to inner: `CENTRAL` (the one [`Mutex`] around the central heap, `global.rs`). There is
//! no other lock today; large blocks (`large.rs`) take none, and the thread-cache fast path will
//! take none. A lock is never held across anything that can allocate, print, or touch a
//! thread-local. The fork handlers (`fork.rs`) take every lock in this order in `prepare` and
//! release them in reverse in `parent` and `child`.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use core::ops::{Deref, DerefMut};

/// An `UnsafeCell` with loom's `with`/`with_mut` access API, so that the same code runs under
/// loom (which tracks every access) and natively.
///
/// # Invariants
/// - U1: callers uphold Rust's aliasing rules for the closure's pointer; the cell itself adds
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

/// Lock word states of [`RawLock`].
const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and some thread may sleep in `futex_wait`: the unlocker must wake one.
const CONTENDED: u32 = 2;

/// A three-state futex lock (Drepper, "Futexes Are Tricky", mutex 2). It allocates nothing,
/// is `const`-constructible, and can be force-released in a forked child.
///
/// # Invariants
/// - L1: `state` is `UNLOCKED`, `LOCKED` or `CONTENDED`; it is not `UNLOCKED` while an owner
///   holds the lock.
/// - L2: a thread sleeps in `futex_wait` only after it observed or set `CONTENDED`, so an
///   unlock that swaps out `CONTENDED` wakes at least one sleeper.
#[derive(Debug)]
pub struct RawLock {
    state: AtomicU32,
    /// Counts acquisitions that found the lock taken (statistics only).
    contended: AtomicUsize,
    /// Counts acquisitions (statistics only; written only by the lock's holder).
    acquisitions: AtomicUsize,
    /// loom has no futex: a mutex and condvar stand in, so a lost wake-up is a loom deadlock.
    #[cfg(loom)]
    park: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl RawLock {
    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            state: AtomicU32::new(UNLOCKED),
            contended: AtomicUsize::new(0),
            acquisitions: AtomicUsize::new(0),
        }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            state: AtomicU32::new(UNLOCKED),
            contended: AtomicUsize::new(0),
            acquisitions: AtomicUsize::new(0),
            park: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) {
        // Acquire: pairs with the Release swap in `unlock`, so the previous owner's writes to
        // the protected data are visible to us.
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        self.count_acquisition();
    }

    /// Counts one acquisition. Only the holder writes the counter, so a relaxed load and store
    /// suffice (no read-modify-write); readers may see a slightly old value.
    #[inline(always)]
    fn count_acquisition(&self) {
        #[cfg(not(loom))]
        self.acquisitions.store(self.acquisitions.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Number of acquisitions so far.
    pub fn acquisitions(&self) -> usize {
        // Relaxed: a statistic.
        self.acquisitions.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        // Relaxed: a statistic, read only for reports.
        self.contended.fetch_add(1, Ordering::Relaxed);
        // Spin briefly: critical sections of the central heap are short.
        for _ in 0..64 {
            spin_hint();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Acquire: as in `lock`. Having set CONTENDED, we may sleep (L2).
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            self.futex_wait();
        }
    }

    /// Tries to acquire the lock without waiting.
    #[inline]
    pub fn try_lock(&self) -> bool {
        // Acquire: as in `lock`.
        let ok = self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.count_acquisition();
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
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            self.futex_wake();
        }
    }

    /// Number of acquisitions that had to wait.
    pub fn contended_count(&self) -> usize {
        // Relaxed: a statistic.
        self.contended.load(Ordering::Relaxed)
    }

    #[cfg(not(loom))]
    fn futex_wait(&self) {
        // SAFETY: FUTEX_WAIT on a valid, aligned u32 that lives as long as `self`; the kernel
        // returns at once if the word is no longer CONTENDED (no lost wake-up, L2).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                CONTENDED,
                core::ptr::null::<libc::timespec>(),
            );
        }
    }

    #[cfg(not(loom))]
    fn futex_wake(&self) {
        // SAFETY: FUTEX_WAKE on a valid, aligned u32; waking nobody is harmless.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            );
        }
    }

    #[cfg(loom)]
    fn futex_wait(&self) {
        let guard = self.park.0.lock().unwrap_or_else(|e| e.into_inner());
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

#[cfg(not(loom))]
impl Default for RawLock {
    fn default() -> Self {
        Self::new()
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
    /// A new unlocked mutex.
    #[cfg(not(loom))]
    pub const fn new(data: T) -> Self {
        Self { lock: RawLock::new(), data: UnsafeCell::new(data) }
    }

    /// A new unlocked mutex.
    #[cfg(loom)]
    pub fn new(data: T) -> Self {
        Self { lock: RawLock::new(), data: UnsafeCell::new(data) }
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
}

/// Proof that the current thread holds a [`Mutex`]; derefs to the data.
///
/// # Invariants
/// - G1: while a guard exists, its thread holds `mutex.lock` (M1).
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
            // SAFETY: G1 — we hold the lock, so no other reference to the data exists.
            self.mutex.data.with(|p| unsafe { &*p })
        }
        #[cfg(loom)]
        {
            // SAFETY: G1; loom tracks the access through `ptr`.
            unsafe { (*self.ptr).deref() }
        }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            // SAFETY: G1 — we hold the lock, and `&mut self` makes this the only reference.
            self.mutex.data.with_mut(|p| unsafe { &mut *p })
        }
        #[cfg(loom)]
        {
            // SAFETY: G1; loom tracks the access through `ptr`.
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
        // SAFETY: G1 — this thread holds the lock.
        unsafe { self.mutex.lock.unlock() };
    }
}
