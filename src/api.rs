//! The C malloc family's semantics over the front end (`heap.rs`, which does all routing and
//! misuse detection): `errno`, overflow checks, alignment rules, `mallopt`. The preload
//! crate's `extern "C"` functions are one-line calls into here; the tests call these directly
//! too.
//!
//! glibc-compatible behaviour (each tested in `tests/`):
//! - failure returns NULL with `errno = ENOMEM`; `free` preserves `errno`;
//! - `malloc(0)` returns a unique pointer; `realloc(NULL, n)` is `malloc(n)`;
//!   `realloc(p, 0)` frees `p` and returns NULL; a failed realloc leaves `p` untouched;
//! - `calloc`/`reallocarray` detect multiplication overflow;
//! - `posix_memalign` returns `EINVAL` unless the alignment is a power of two multiple of
//!   `sizeof(void *)`, and never changes `errno`; `aligned_alloc`/`memalign` accept any power
//!   of two and fail with `EINVAL` otherwise; `pvalloc(0)` gives one page.
//! - misuse (double free, foreign or interior pointer, broken tags) prints one line naming the
//!   function and the check, then aborts.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use crate::config;
use crate::diag::{errno, set_errno};
use crate::os::{PAGE, align_up};
use crate::process::{FRONT, apply_config, ensure_config};
use crate::sync::Ordering;

#[cold]
#[inline(never)]
fn out_of_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// The C result: the pointer, or NULL (the front end set `errno` already).
#[inline(always)]
fn to_c(r: Option<NonNull<u8>>) -> *mut c_void {
    r.map_or(ptr::null_mut(), |p| p.as_ptr().cast())
}

/// C `malloc`: the front end's fast path; only a failure (`errno`) adds a call.
#[inline(always)]
pub fn malloc(n: usize) -> *mut c_void {
    to_c(FRONT.alloc(n))
}

/// C `free`: NULL is ignored; `errno` is preserved.
///
/// # Safety
/// `p` is NULL or a live block of ours (anything else is detected where cheaply possible and
/// aborts with a message).
#[inline(always)]
pub unsafe fn free(p: *mut c_void) {
    // errno can only change on the slow paths (syscalls, a contended lock), which save and
    // restore it themselves.
    // SAFETY: forwarded contract.
    unsafe { FRONT.free(p.cast()) };
}

/// C `calloc`: overflow of `n * size` fails with `ENOMEM`.
pub fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => to_c(FRONT.alloc_zeroed(total)),
        None => out_of_memory(),
    }
}

/// C `realloc`.
///
/// # Safety
/// `p` is NULL or a live block of ours.
pub unsafe fn realloc(p: *mut c_void, n: usize) -> *mut c_void {
    let Some(old) = NonNull::new(p.cast::<u8>()) else { return malloc(n) };
    if n == 0 {
        // glibc: realloc(p, 0) frees p and returns NULL.
        // SAFETY: forwarded contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // One `__errno_location` call for the save and the restore (it showed at 5 % of a
    // realloc-heavy program's profile with two).
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid as long as the
    // thread lives.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *slot };
    // SAFETY: forwarded contract.
    let r = unsafe { FRONT.realloc(old, n) };
    match r {
        Some(p) => {
            // SAFETY: as above.
            unsafe { *slot = saved };
            p.as_ptr().cast()
        }
        None => out_of_memory(),
    }
}

/// C `reallocarray`: `realloc(p, n * size)` with overflow detection (`ENOMEM`, `p` untouched).
///
/// # Safety
/// As [`realloc`].
pub unsafe fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { realloc(p, total) },
        None => out_of_memory(),
    }
}

/// C `posix_memalign`: returns 0, `EINVAL` or `ENOMEM`. `errno` is unchanged on success and
/// for `EINVAL`; out of memory also sets it to `ENOMEM`, as glibc's allocation failure does.
///
/// # Safety
/// `out` is valid for a pointer write.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, n: usize) -> i32 {
    if !align.is_power_of_two() || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    match FRONT.alloc_aligned(n, align) {
        Some(p) => {
            set_errno(saved);
            // SAFETY: forwarded contract.
            unsafe { out.write(p.as_ptr().cast()) };
            0
        }
        None => {
            set_errno(libc::ENOMEM);
            libc::ENOMEM
        }
    }
}

/// C `aligned_alloc` and `memalign`: any power of two; others fail with `EINVAL`.
pub fn memalign(align: usize, n: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    to_c(FRONT.alloc_aligned(n, align))
}

/// C `valloc`: page-aligned.
pub fn valloc(n: usize) -> *mut c_void {
    to_c(FRONT.alloc_aligned(n, PAGE))
}

/// C `pvalloc`: page-aligned, size rounded up to a whole page (`pvalloc(0)` gives one page).
pub fn pvalloc(n: usize) -> *mut c_void {
    match align_up(n.max(1), PAGE) {
        Some(total) => to_c(FRONT.alloc_aligned(total, PAGE)),
        None => out_of_memory(),
    }
}

/// C `malloc_usable_size`: 0 for NULL.
///
/// # Safety
/// `p` is NULL or a live block of ours.
pub unsafe fn malloc_usable_size(p: *mut c_void) -> usize {
    match NonNull::new(p.cast::<u8>()) {
        // SAFETY: forwarded contract.
        Some(p) => unsafe { FRONT.usable_size(p, "malloc_usable_size") },
        None => 0,
    }
}

/// C `malloc_trim`: flushes the calling thread's cache, then gives back every free page it
/// can; returns 1 if memory went back.
pub fn malloc_trim(pad: usize) -> i32 {
    let saved = errno();
    FRONT.flush_cache();
    let released = crate::process::heap().trim(pad);
    let uncached = pad == 0 && crate::large_cache::release_all();
    set_errno(saved);
    i32::from(released || uncached)
}

/// glibc's `M_MXFAST` limit (`80 * sizeof(size_t) / 4`): larger values are refused.
const MXFAST_MAX: usize = 160;

/// glibc's `mallopt`, with glibc 2.36's return values: 1, except 0 for `M_MXFAST` above 160
/// (negative values count as huge, as glibc's `size_t` conversion makes them). Effects: `M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD` (negative: never
/// trim) and `M_TOP_PAD` as in glibc; `M_PERTURB` fills new memory with the byte's complement
/// and freed memory with the byte (the calling thread's cache is torn down so that its
/// operations are filled; other threads' active caches are not, as glibc's tcache is not);
/// `M_MXFAST`, `M_MMAP_MAX`, `M_CHECK_ACTION`, `M_ARENA_TEST`, `M_ARENA_MAX` and unknown
/// parameters are accepted and ignored (one central heap, no fastbins, misuse always checked).
pub fn mallopt(param: i32, value: i32) -> i32 {
    ensure_config();
    let r = Ordering::Relaxed;
    // glibc converts to size_t: -1 is SIZE_MAX.
    let v = value as isize as usize;
    match param {
        libc::M_MMAP_THRESHOLD => {
            config::MMAP_THRESHOLD_FIXED.store(true, r);
            config::MMAP_THRESHOLD.store(v, r);
            config::SMALL_LIMIT.store(config::small_limit(v), r);
        }
        libc::M_TRIM_THRESHOLD => {
            config::MMAP_THRESHOLD_FIXED.store(true, r);
            config::TRIM_THRESHOLD.store(v, r);
        }
        // A negative pad would be SIZE_MAX bytes per growth: ignored (still 1, as glibc).
        libc::M_TOP_PAD if value >= 0 => config::TOP_PAD.store(v, r),
        libc::M_MXFAST => return i32::from(v <= MXFAST_MAX),
        libc::M_PERTURB => {
            config::set_perturb(value as u8);
            if value as u8 != 0 {
                crate::process::tear_down_thread_cache();
            }
            return 1;
        }
        _ => return 1,
    }
    apply_config();
    1
}
