//! brkmalloc as a Rust global allocator: [`BrkMalloc`], over the process's front end.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use crate::block::ALIGN;
use crate::process::FRONT;

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
// size. These follow from the front end (`heap.rs`, F1), which the test suite checks.
unsafe impl GlobalAlloc for BrkMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        crate::fork::ensure_installed();
        let r = if layout.align() <= ALIGN {
            FRONT.alloc(layout.size())
        } else {
            FRONT.alloc_aligned(layout.size(), layout.align())
        };
        r.map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        if let Some(p) = NonNull::new(p) {
            // SAFETY: a live block of ours (GlobalAlloc contract).
            unsafe { FRONT.dealloc(p) };
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        crate::fork::ensure_installed();
        if layout.align() <= ALIGN {
            return FRONT.alloc_zeroed(layout.size()).map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        match FRONT.alloc_aligned(layout.size(), layout.align()) {
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
            return unsafe { FRONT.realloc(old, new_size) }
                .map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        // Over-aligned: a move must keep the alignment, which the front end's realloc does not
        // promise.
        let Some(new) = FRONT.alloc_aligned(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: both blocks are live and distinct; the old one holds `layout.size()` bytes.
        unsafe {
            ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), layout.size().min(new_size));
            FRONT.dealloc_as(old, "realloc");
        }
        new.as_ptr()
    }
}
