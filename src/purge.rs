//! When idle memory goes back to the OS: the idle purge of `purge_delay_ms`, run from the
//! allocation slow paths and, with `background_purge:1`, from a thread of its own.
//!
//! What a pass gives back is the backend's business (`Backend::purge_idle`: the middle layer's
//! batches untouched since the previous pass, then the central heap's runs unchanged since it
//! and the free tops of the break); this module only decides when, on the coarse monotonic
//! clock.

use core::ffi::c_void;
use core::ptr;

use crate::config;
use crate::os::MemorySource;
use crate::sync::{AtomicUsize, Ordering};
use crate::transfer::Backend;

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

/// The idle purge, from a slow path: once `purge_delay_ms` has passed since the last pass,
/// free memory that came back since is returned to the OS. Never waits for the lock.
#[cold]
pub fn maybe_purge_idle<S: MemorySource>(back: &Backend<S>) {
    let now = now_ms();
    let r = Ordering::Relaxed;
    let last = LAST_PURGE_MS.load(r);
    if now.wrapping_sub(last) < config::PURGE_DELAY_MS.load(r) {
        return;
    }
    LAST_PURGE_MS.store(now, r);
    crate::large_cache::decay();
    // An idle purge is not worth a stall.
    purge(back, false);
}

/// Runs the backend's idle pass; a damaged block found on the way is fatal.
fn purge<S: MemorySource>(back: &Backend<S>, wait: bool) {
    if let Err(e) = back.purge_idle(wait).map(|_| ()) {
        crate::diag::fatal("free", e.message(), 0);
    }
}

/// Starts the background purge thread (`background_purge:1`): it wakes every
/// `purge_delay_ms` and returns idle memory of `heap` even when the program stops
/// allocating. Call from a constructor, not from inside `malloc` (creating a thread
/// allocates).
pub fn start_background<S: MemorySource + Send>(back: &'static Backend<S>) {
    extern "C" fn run<S: MemorySource>(arg: *mut c_void) -> *mut c_void {
        // SAFETY: `arg` is the `&'static Backend` passed below.
        let back = unsafe { &*arg.cast::<Backend<S>>() };
        loop {
            let ms = config::PURGE_DELAY_MS.load(Ordering::Relaxed).max(1);
            let ts = libc::timespec {
                tv_sec: (ms / 1000) as libc::time_t,
                tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: valid timespec; an interrupted sleep just purges early.
            unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
            purge(back, true);
            crate::large_cache::decay();
            LAST_PURGE_MS.store(now_ms(), Ordering::Relaxed);
        }
    }
    // SAFETY: an all-zero pthread_t is a valid out slot.
    let mut tid: libc::pthread_t = unsafe { core::mem::zeroed() };
    let arg = ptr::from_ref(back).cast_mut().cast::<c_void>();
    // SAFETY: default attributes; `run` lives forever; `arg` points to a static.
    if unsafe { libc::pthread_create(&mut tid, ptr::null(), run::<S>, arg) } == 0 {
        // SAFETY: the thread is never joined.
        unsafe { libc::pthread_detach(tid) };
    } else {
        crate::diag::warn("background_purge: cannot create the purge thread");
    }
}
