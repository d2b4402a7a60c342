//! `fork` safety: `pthread_atfork` handlers that hold every allocator lock across `fork`, so
//! the child never inherits a lock held by a thread that does not exist there.
//!
//! The handlers must be registered from an `.init_array` constructor (the preload crate does),
//! never lazily from inside `malloc`: glibc holds its atfork lock while it grows its handler
//! list, and that growth calls `malloc` (seen as a hang; shared/toolchain-notes.md §1e).
//! Rust programs that use [`crate::BrkMalloc`] get them registered on their first allocation,
//! since no constructor of an rlib is guaranteed to be linked in.

use crate::global::HEAP;
use crate::large::REGISTRY;
use crate::large_cache::CACHE;
use crate::sync::Claim;

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

/// Before `fork`: take every lock in the documented order (`sync.rs`): CENTRAL, LARGE,
/// LARGE_CACHE.
extern "C" fn prepare() {
    HEAP.raw().lock();
    REGISTRY.raw().lock();
    CACHE.raw().lock();
}

/// In the parent after `fork`: release in reverse order.
extern "C" fn parent() {
    // SAFETY: `prepare` took the locks on this thread.
    unsafe {
        CACHE.raw().unlock();
        REGISTRY.raw().unlock();
        HEAP.raw().unlock();
    }
}

/// In the child after `fork`: the locks were taken by `prepare` in the thread that forked,
/// which is the child's only thread; release them. The heap and the registry are consistent
/// (nobody was inside them). The forking thread's cache stays valid; the other threads'
/// caches are gone with their threads, and the blocks they held stay allocated (leaked) in the
/// child.
extern "C" fn child() {
    // SAFETY: see above; no other thread exists in the child.
    unsafe {
        CACHE.raw().unlock();
        REGISTRY.raw().unlock();
        HEAP.raw().unlock();
    }
}
