//! `fork` safety: `pthread_atfork` handlers that hold every allocator lock across `fork`, so
//! the child never inherits a lock held by a thread that does not exist there.
//!
//! The handlers must be registered from an `.init_array` constructor (the preload crate does),
//! never lazily from inside `malloc`: glibc holds its atfork lock while it grows its handler
//! list, and that growth calls `malloc` (seen as a hang; shared/toolchain-notes.md §1e).
//! Rust programs that use [`crate::BrkMalloc`] get them registered on their first allocation,
//! since no constructor of an rlib is guaranteed to be linked in.
//!
//! Two of glibc's own `fork` behaviours are kept:
//! - Lock order with stdio. glibc's `fork` runs the prepare handlers, *then* takes its stdio
//!   list lock (`_IO_list_lock`), then its malloc locks. A thread that holds the list lock
//!   (`fflush(NULL)`) may wait for a stream whose holder (`getline`) waits for our heap lock:
//!   had `prepare` taken the heap lock first, `fork` would then wait for the list lock
//!   forever. So `prepare` takes the list lock first (it is recursive, so glibc's own
//!   acquisition in `fork` just counts up), then ours; `parent` releases it after ours, and
//!   `child` resets it, as glibc does in the child. glibc exports the three functions; they
//!   are linked directly (looking them up with `dlsym` would allocate inside `prepare`).
//! - `fork` from a signal handler that interrupted `fork` (POSIX lists `fork` as
//!   async-signal-safe; glibc supports it in single-threaded programs): the nested `prepare`
//!   finds that its own thread already holds the fork locks (`OWNER`) and only counts the
//!   nesting (`DEPTH`); the nested `parent`/`child` handlers count down without unlocking.

use crate::large::REGISTRY;
use crate::large_cache::CACHE;
use crate::process::{BACKEND, QUARANTINE};
use crate::prof::PROF;
use crate::sync::{AtomicUsize, Claim, Ordering};

#[cfg(target_env = "gnu")]
unsafe extern "C" {
    /// glibc: takes the (recursive) lock of the list of all stdio streams.
    fn _IO_list_lock();
    /// glibc: releases it once.
    fn _IO_list_unlock();
    /// glibc: re-initialises it (unlocked), as glibc's `fork` does in the child.
    fn _IO_list_resetlock();
}

/// The thread (`pthread_self`) that holds the fork locks, or 0. Written by the holder only:
/// set after it took the locks, cleared before it releases them, so another thread never
/// reads its own id here (Relaxed: compared only with the reader's own id).
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// Nested `fork`s in progress on the `OWNER` thread (1 for a plain `fork`). Touched only by
/// the owner (Relaxed).
static DEPTH: AtomicUsize = AtomicUsize::new(0);

fn self_id() -> usize {
    // SAFETY: pthread_self has no preconditions; it is the same in a forked child.
    unsafe { libc::pthread_self() as usize }
}

/// A nested handler: `true` (and one level counted off) when this call belongs to a `fork`
/// made while the calling thread already held the fork locks.
fn leave_nested() -> bool {
    if OWNER.load(Ordering::Relaxed) == self_id() && DEPTH.load(Ordering::Relaxed) > 1 {
        DEPTH.fetch_sub(1, Ordering::Relaxed);
        return true;
    }
    false
}

/// Claimed by the thread that registers the handlers (`sync::Claim`; loom model
/// `once::claim_has_one_winner`). Another thread's first allocation may return before the
/// winner has registered them: a `fork` in that window runs without the handlers. Programs
/// using the preload library register from its constructor and never see the window.
static INSTALLED: Claim = Claim::new();

/// Registers the fork handlers once.
pub fn install() {
    // Exactly one caller wins the claim, so pthread_atfork is called once.
    if INSTALLED.claim() {
        // SAFETY: the handlers are `extern "C"` functions that live for the whole process.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    }
}

/// [`install`] unless it already ran; one relaxed load on the fast path.
#[inline(always)]
pub fn ensure_installed() {
    if !INSTALLED.is_claimed() {
        install();
    }
}

/// Before `fork`: take glibc's stdio list lock, then every lock of ours in the documented
/// order (DESIGN.md): QUARANTINE, CENTRAL, the middle layer's class locks, LARGE, the
/// large-mapping cache, then the heap profile table (so that the child's copy is consistent
/// and the child writes its own profile). Nested in a `fork` of the same thread (a signal
/// handler): count the level only.
extern "C" fn prepare() {
    let me = self_id();
    if OWNER.load(Ordering::Relaxed) == me {
        DEPTH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Signals wait until OWNER says who holds the locks: a handler that forks in between
    // would not know that its thread holds them.
    // SAFETY: all-zero sigsets are valid; sigfillset and pthread_sigmask fill valid out slots.
    let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: glibc's recursive list lock; released by `parent`, reset by `child`.
    unsafe {
        _IO_list_lock()
    };
    QUARANTINE.raw().lock();
    BACKEND.lock_all();
    REGISTRY.raw().lock();
    CACHE.raw().lock();
    PROF.raw().lock();
    DEPTH.store(1, Ordering::Relaxed);
    OWNER.store(me, Ordering::Relaxed);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
}

/// Both sides after `fork`: the outer `fork`'s handler releases the allocator locks in reverse
/// order (a nested one only counts off its level); then `stdio` does what that side needs.
///
/// # Safety
/// Called from `parent` or `child`, on the thread whose `prepare` took the locks.
unsafe fn release(stdio: unsafe extern "C" fn()) {
    if leave_nested() {
        return;
    }
    OWNER.store(0, Ordering::Relaxed);
    DEPTH.store(0, Ordering::Relaxed);
    // SAFETY: `prepare` took the locks on this thread (forwarded contract).
    unsafe {
        PROF.raw().unlock();
        CACHE.raw().unlock();
        REGISTRY.raw().unlock();
        BACKEND.unlock_all();
        QUARANTINE.raw().unlock();
        stdio();
    }
}

/// What `parent` does to glibc's stdio list lock after ours: drops `prepare`'s count.
#[cfg(target_env = "gnu")]
const STDIO_PARENT: unsafe extern "C" fn() = _IO_list_unlock;
/// What `child` does to it: resets it, as glibc's `fork` does in the child.
#[cfg(target_env = "gnu")]
const STDIO_CHILD: unsafe extern "C" fn() = _IO_list_resetlock;
/// Other C libraries: their stdio lock is not ours to touch.
#[cfg(not(target_env = "gnu"))]
const STDIO_PARENT: unsafe extern "C" fn() = no_stdio;
/// See [`STDIO_PARENT`].
#[cfg(not(target_env = "gnu"))]
const STDIO_CHILD: unsafe extern "C" fn() = no_stdio;

#[cfg(not(target_env = "gnu"))]
unsafe extern "C" fn no_stdio() {}

/// In the parent after `fork`: release in reverse order, then the list lock `prepare` took once
/// (glibc has already released its own count of it).
extern "C" fn parent() {
    // SAFETY: the thread that ran `prepare`.
    unsafe { release(STDIO_PARENT) };
}

/// In the child after `fork`: the locks were taken by `prepare` in the thread that forked,
/// which is the child's only thread; release them. The heap and the registry are consistent
/// (nobody was inside them). The forking thread's cache stays valid; the other threads'
/// caches are gone with their threads, and the blocks they held stay allocated (leaked) in the
/// child, which counts only the forking thread's cache in the middle layer's budget
/// (`process::after_fork_child`). The stdio list lock is reset (glibc resets it itself in
/// multi-threaded parents, and leaves it as `prepare` took it in single-threaded ones). A child
/// of a nested `fork` keeps every lock: it returns into the outer `fork`'s parent side, whose
/// handler releases them.
extern "C" fn child() {
    // SAFETY: the child's only thread ran `prepare`.
    unsafe { release(STDIO_CHILD) };
    crate::process::after_fork_child();
}
