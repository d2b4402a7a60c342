//! The process-wide heap and the `GlobalAlloc` for Rust programs.
//!
//! The heap is a zero-initialised `const` static: it works from the very first `malloc`, which
//! may come from the dynamic loader or another library's constructor before ours runs.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use crate::api;
use crate::block::ALIGN;
use crate::central::CentralHeap;
use crate::os::Sbrk;
use crate::sync::{Mutex, MutexGuard};

/// The central heap of the process (lock `CENTRAL` in the lock order, `sync.rs`).
pub(crate) static HEAP: Mutex<CentralHeap<Sbrk>> = Mutex::new(CentralHeap::new(Sbrk::new()));

/// Locks the process-wide central heap.
#[inline]
pub(crate) fn heap() -> MutexGuard<'static, CentralHeap<Sbrk>> {
    HEAP.lock()
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
