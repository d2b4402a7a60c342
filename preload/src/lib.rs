//! `libbrkmalloc.so`: the complete C malloc family over brkmalloc, for `LD_PRELOAD`.
//!
//! This crate holds only the exports; every function is a one-line call into
//! `brkmalloc::api`, where the semantics live and are documented. Nothing here may unwind:
//! the release profile aborts on panic, and the core never panics on these paths.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use core::ffi::{c_int, c_void};

use brkmalloc_core::api;

/// Before `main`, from `.init_array`: registers the fork handlers (never lazily from inside
/// `malloc`: see `brkmalloc::fork`), reads `BRKMALLOC_CONF`, and starts the background purge
/// thread if asked to (creating a thread allocates, so not from inside `malloc` either).
extern "C" fn brkmalloc_init() {
    brkmalloc_core::fork::install();
    brkmalloc_core::process::ensure_config();
    brkmalloc_core::prof::init();
    if brkmalloc_core::config::BACKGROUND_PURGE.load(core::sync::atomic::Ordering::Relaxed) {
        brkmalloc_core::process::start_background_purge();
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = brkmalloc_init;

/// At exit, from `.fini_array`: the statistics of `stats:1` / `stats:json`, the heap profile
/// and the leak summary of `prof:1` / `prof_leak:1`.
extern "C" fn brkmalloc_fini() {
    brkmalloc_core::report::at_exit();
    brkmalloc_core::prof::at_exit();
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = brkmalloc_fini;

/// glibc's `malloc_stats`: heap and mmap totals on stderr, in glibc's layout.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    brkmalloc_core::report::malloc_stats();
}

/// glibc's `mallinfo2`, with brkmalloc's numbers.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    brkmalloc_core::report::mallinfo2()
}

/// glibc's `mallinfo` (fields truncated to `int`, as in glibc).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    brkmalloc_core::report::mallinfo()
}

/// glibc's `malloc_info(options, stream)`: XML in glibc's format. Returns 0, or -1 with
/// `EINVAL` for non-zero options.
///
/// # Safety
/// `stream` is a valid `FILE *` open for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 || stream.is_null() {
        brkmalloc_core::diag::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: forwarded contract: a valid stream, open for writing during the call.
    let mut out = unsafe { brkmalloc_core::report::CFile::new(stream) };
    brkmalloc_core::report::malloc_info(&mut out);
    0
}

/// Writes the heap profile (`prof:1`) to `path`, or with NULL to the next
/// `<prof_prefix>.<pid>.<seq>.heap`. Returns 0, `ENOENT` when profiling is off, or the errno of
/// the failed open or write (jemalloc's `prof.dump`).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn brkmalloc_prof_dump(path: *const core::ffi::c_char) -> c_int {
    // SAFETY: forwarded contract.
    let path = (!path.is_null()).then(|| unsafe { core::ffi::CStr::from_ptr(path) });
    brkmalloc_core::prof::dump(path)
}

/// glibc's `mallopt`: 1 on success, 0 for what it does not support.
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    api::mallopt(param, value)
}

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
