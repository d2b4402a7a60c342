//! `libbrkmalloc.so`: the complete C malloc family over brkmalloc, for `LD_PRELOAD`.
//!
//! This crate holds only the exports; every function is a one-line call into
//! `brkmalloc::api`, where the semantics live and are documented. Nothing here may unwind:
//! the release profile aborts on panic, and the core never panics on these paths.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use core::ffi::{c_int, c_void};

use brkmalloc_core::api;

/// Registers the fork handlers before `main`, from `.init_array` (never lazily from inside
/// `malloc`: see `brkmalloc::fork`).
extern "C" fn brkmalloc_init() {
    brkmalloc_core::fork::install();
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = brkmalloc_init;

/// C `malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    api::malloc(size)
}

/// C `free`.
///
/// # Safety
/// `p` is NULL or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { api::free(p) }
}

/// `cfree`, an old alias of `free`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { api::free(p) }
}

/// C23 `free_sized`: the size is a hint; the block is freed as by `free`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { api::free(p) }
}

/// C23 `free_aligned_sized`: freed as by `free`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { api::free(p) }
}

/// C `calloc`.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    api::calloc(n, size)
}

/// C `realloc`.
///
/// # Safety
/// `p` is NULL or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { api::realloc(p, size) }
}

/// C `reallocarray`.
///
/// # Safety
/// As [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { api::reallocarray(p, n, size) }
}

/// POSIX `posix_memalign`.
///
/// # Safety
/// `out` is valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { api::posix_memalign(out, align, size) }
}

/// C11 `aligned_alloc`.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    api::memalign(align, size)
}

/// `memalign`.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    api::memalign(align, size)
}

/// `valloc`.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    api::valloc(size)
}

/// `pvalloc`.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    api::pvalloc(size)
}

/// `malloc_usable_size`.
///
/// # Safety
/// `p` is NULL or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded contract.
    unsafe { api::malloc_usable_size(p) }
}

/// `malloc_trim`: returns 1 if memory went back to the OS.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    api::malloc_trim(pad)
}
