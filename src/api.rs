//! The C malloc family's semantics, in Rust: routing between the central heap and large
//! blocks, `errno`, overflow checks, alignment rules and misuse reports. The preload crate's
//! `extern "C"` functions are one-line calls into here; the tests call these directly too.
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

use crate::block::{ALIGN, BlockPtr, block_size_for};
use crate::central::Misuse;
use crate::config;
use crate::diag::{errno, fatal, report, set_errno};
use crate::global::{
    cache_alloc, cache_free, cache_free_slow, cache_free_suspect, collect_and_return,
    ensure_config, heap, maybe_purge_idle, tcache_fast,
};
use crate::large;
use crate::os::{PAGE, align_up};
use crate::size_class::{MAX_CLASS_REQUEST, class_for_alloc, class_for_free, class_for_request};
use crate::stats::{self, Counter};
use crate::sync::{AtomicUsize, Ordering};
use crate::thread_cache::{ThreadCache, has_cache_key, header_for_free};

/// The mmap threshold in force (`config::MMAP_THRESHOLD`).
#[inline(always)]
fn mmap_threshold() -> usize {
    // Relaxed: a tuning value, no data depends on its order.
    config::MMAP_THRESHOLD.load(Ordering::Relaxed)
}

/// Counts central-path operations for `check:N` (Relaxed: a counter).
static CHECK_OPS: AtomicUsize = AtomicUsize::new(0);

/// The debugging options that act on the central paths: `check:N` runs the heap verifier
/// every N operations. (`junk` and `check` turn the thread caches off, so every operation
/// comes through here.)
#[cold]
fn debug_hooks() {
    let every = config::CHECK_EVERY.load(Ordering::Relaxed);
    if every != 0 && CHECK_OPS.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
        let r = heap().check(true);
        if let Err(e) = r {
            fatal("check", e.what, e.addr);
        }
    }
}

/// Allocates `n` bytes, 16-byte aligned; `None` when memory is exhausted.
///
/// The fast path is straight-line code: class lookup, thread-pointer cache lookup, pop. Every
/// slow path is a tail call, so the fast path saves no registers.
#[inline(always)]
pub fn alloc(n: usize) -> Option<NonNull<u8>> {
    // Relaxed: a tuning value (config.rs); at most MAX_CLASS_REQUEST.
    if n > config::SMALL_LIMIT.load(Ordering::Relaxed) {
        return alloc_central(n);
    }
    // SAFETY: `n <= MAX_CLASS_REQUEST`.
    let c = unsafe { class_for_request(n) };
    let Some(tc) = tcache_fast() else { return alloc_small_slow(n, c) };
    // SAFETY: this thread's cache; no other reference to it is live.
    match unsafe { (*tc).pop(c) } {
        // SAFETY: as above.
        Some(p) if unsafe { (*tc).gc_due() } => collect_and_return(tc, p),
        Some(p) => Some(p),
        None => alloc_small_slow(n, c),
    }
}

/// A small allocation that missed the fast path: the `thread_local!` lookup, refill, or the
/// central heap.
#[cold]
#[inline(never)]
fn alloc_small_slow(n: usize, c: usize) -> Option<NonNull<u8>> {
    cache_alloc(c).or_else(|| alloc_central(n))
}

/// Allocates from the central heap or a mapping, bypassing the thread cache.
#[cold]
#[inline(never)]
fn alloc_central(n: usize) -> Option<NonNull<u8>> {
    ensure_config();
    maybe_purge_idle();
    debug_hooks();
    let p = if n >= mmap_threshold() {
        large::alloc(n, ALIGN).or_else(|| heap().alloc(n, false).map(|(p, _)| p))
    } else {
        let r = heap().alloc(n, false);
        match r {
            Some((p, _)) => Some(p),
            None => large::alloc(n, ALIGN),
        }
    }?;
    if n <= MAX_CLASS_REQUEST {
        // SAFETY: `n <= MAX_CLASS_REQUEST`.
        stats::add(unsafe { class_for_request(n) }, Counter::DirectAllocs, 1);
    }
    if config::JUNK.load(Ordering::Relaxed) {
        // SAFETY: a fresh block with at least `n` usable bytes.
        unsafe { ptr::write_bytes(p.as_ptr(), config::JUNK_ALLOC, n) };
    }
    Some(p)
}

/// Allocates `n` zeroed bytes, skipping the memset on memory known to be fresh.
pub fn alloc_zeroed(n: usize) -> Option<NonNull<u8>> {
    // Small: a cached block and a memset beat a trip through the lock for fresh memory.
    if n <= config::SMALL_LIMIT.load(Ordering::Relaxed) {
        let p = alloc(n)?;
        // SAFETY: a block of ours with at least `n` usable bytes.
        unsafe { ptr::write_bytes(p.as_ptr(), 0, n) };
        return Some(p);
    }
    if n >= mmap_threshold() {
        // Only the reused part of a cached mapping is cleared.
        if let Some(p) = large::alloc_zeroed(n) {
            return Some(p);
        }
    }
    let r = heap().alloc(n, true);
    match r {
        Some((p, fresh)) => {
            if !fresh {
                // SAFETY: a block of ours with at least `n` payload bytes; the lock is released.
                unsafe { ptr::write_bytes(p.as_ptr(), 0, n) };
            }
            Some(p)
        }
        None => large::alloc_zeroed(n),
    }
}

/// Allocates `n` bytes aligned to `align` (any power of two).
pub fn alloc_aligned(n: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two());
    if align <= ALIGN {
        return alloc(n);
    }
    if n >= mmap_threshold() || align >= mmap_threshold() {
        return large::alloc(n, align);
    }
    let r = heap().alloc_aligned(n, align);
    r.or_else(|| large::alloc(n, align))
}

/// Reports `what` for `p` in `func`, then aborts; with `abort_on_error:0` it returns, and
/// the caller leaks the block and carries on.
#[cold]
#[inline(never)]
pub(crate) fn misuse(func: &str, what: Misuse, p: NonNull<u8>) {
    if config::ABORT_ON_ERROR.load(Ordering::Relaxed) {
        fatal(func, what.message(), p.addr().get());
    }
    report(func, what.message(), p.addr().get());
}

/// Whether the fast paths may read the header word before `p` without checking ranges
/// first: `p` is more than 16 bytes into its page. A page-aligned pointer's header lies on the
/// previous page, which may not be mapped for a pointer we never handed out; and every large
/// block's pointer is 0 or 16 bytes into a page (`large::alloc`), so a large block freed twice
/// goes to the registry check instead of reading its unmapped header. Heap blocks at those
/// offsets (one in 128) just take the central path.
#[inline(always)]
fn header_on_same_page(p: NonNull<u8>) -> bool {
    p.addr().get() % PAGE > 2 * crate::block::HEADER
}

/// Frees `p` (a block of ours), aborting with a message naming `func` on misuse.
#[inline(always)]
pub fn dealloc(p: NonNull<u8>, func: &str) {
    // A page-aligned pointer's header word lies on the previous page, which may not be
    // mapped for a pointer we never handed out: validate such pointers (rare: only page-
    // aligned allocations) on the central path, which checks ranges before reading.
    if crate::thread_cache::HARDENED && !header_on_same_page(p) {
        return dealloc_central(p, func);
    }
    // SAFETY: `p - 8` lies on the same page as `p`, which the program can access.
    let Ok(h) = (unsafe { header_for_free(p) }) else { return dealloc_central(p, func) };
    let Some(c) = class_for_free(BlockPtr::size_of(h)) else { return dealloc_central(p, func) };
    let Some(tc) = tcache_fast() else { return dealloc_small_slow(p, c, func) };
    // SAFETY: an ordinary in-use heap block of class `c`, given up by the program.
    if unsafe { has_cache_key(p) } {
        return dealloc_suspect(tc, p, c, func);
    }
    // SAFETY: as above.
    if !unsafe { (*tc).push(p, c) } {
        dealloc_push_slow(tc, p, c, func);
    }
}

/// A freed block that carries the cache key (a double free, or a coincidence).
#[cold]
#[inline(never)]
fn dealloc_suspect(tc: *mut ThreadCache, p: NonNull<u8>, c: usize, func: &str) {
    // SAFETY: as in `dealloc`; `tc` is this thread's cache.
    if !unsafe { cache_free_suspect(tc, p, c) } {
        dealloc_central(p, func);
    }
}

/// A small free that missed the fast path's cache lookup.
#[cold]
#[inline(never)]
fn dealloc_small_slow(p: NonNull<u8>, c: usize, func: &str) {
    // SAFETY: an ordinary in-use heap block of class `c` (checked by `dealloc`).
    if !unsafe { cache_free(p, c) } {
        stats::add(c, Counter::DirectFrees, 1);
        dealloc_central(p, func);
    }
}

/// A push the cache refused (list full, or cache not active).
#[cold]
#[inline(never)]
fn dealloc_push_slow(tc: *mut ThreadCache, p: NonNull<u8>, c: usize, func: &str) {
    // SAFETY: as in `dealloc`; `tc` is this thread's cache.
    if !unsafe { cache_free_slow(tc, p, c) } {
        stats::add(c, Counter::DirectFrees, 1);
        dealloc_central(p, func);
    }
}

/// Frees to the central heap or unmaps, with full validation.
#[cold]
#[inline(never)]
fn dealloc_central(p: NonNull<u8>, func: &str) {
    let saved = errno();
    dealloc_validated(p, func);
    set_errno(saved);
}

fn dealloc_validated(p: NonNull<u8>, func: &str) {
    ensure_config();
    maybe_purge_idle();
    debug_hooks();
    if config::JUNK.load(Ordering::Relaxed) {
        let r = heap().usable_size(p);
        if let Ok(n) = r {
            // SAFETY: a validated in-use block of ours with `n` usable bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), config::JUNK_FREE, n) };
        }
    }
    let r = heap().free(p);
    match r {
        Ok(()) => {}
        // Not in a heap segment: a large block, checked against the registry before its
        // memory is touched.
        Err(Misuse::NotOurs) => match large::free(p) {
            Ok(len) => raise_mmap_threshold(len),
            Err(e) => misuse(func, e, p),
        },
        Err(e) => misuse(func, e, p),
    }
}

/// glibc's dynamic mmap threshold: freeing a mapped block larger than the threshold (up to
/// 32 MiB) raises the threshold to its size, and the trim threshold to twice that, so a
/// program that keeps allocating blocks of that size gets them from the heap, not from an
/// mmap/munmap pair (and its page faults) each time. Off once the user sets a threshold.
fn raise_mmap_threshold(len: usize) {
    let r = Ordering::Relaxed;
    if config::MMAP_THRESHOLD_FIXED.load(r)
        || len <= mmap_threshold()
        || len > config::MMAP_THRESHOLD_MAX
    {
        return;
    }
    config::MMAP_THRESHOLD.store(len, r);
    config::SMALL_LIMIT.store(config::small_limit(len), r);
    config::TRIM_THRESHOLD.store(2 * len, r);
    crate::global::apply_config();
}

/// Usable size of the live block `p`.
pub fn usable_size(p: NonNull<u8>, func: &str) -> usize {
    // An ordinary in-use heap block: its header says, no lock needed.
    if header_on_same_page(p)
        // SAFETY: as in `dealloc`: `p - 8` is on `p`'s page.
        && let Ok(h) = unsafe { header_for_free(p) }
    {
        return BlockPtr::size_of(h) - crate::block::HEADER;
    }
    let r = heap().usable_size(p);
    match r {
        Ok(n) => n,
        Err(Misuse::NotOurs) => match large::usable(p) {
            Ok(n) => n,
            Err(e) => {
                misuse(func, e, p);
                0
            }
        },
        Err(e) => {
            misuse(func, e, p);
            0
        }
    }
}

/// Resizes the live block `p` to `n > 0` bytes; `None` leaves `p` untouched.
///
/// # Safety
/// `p` is a live block of ours; on `Some`, the old pointer must no longer be used (unless equal
/// to the result).
pub unsafe fn realloc_raw(p: NonNull<u8>, n: usize) -> Option<NonNull<u8>> {
    if header_on_same_page(p)
        // SAFETY: as in `dealloc`: `p - 8` is on `p`'s page.
        && let Ok(h) = unsafe { header_for_free(p) }
    {
        let bs = BlockPtr::size_of(h);
        let old_usable = bs - crate::block::HEADER;
        if let Some(have) = class_for_free(bs) {
            // A block sitting in this thread's cache was freed already.
            // SAFETY: an in-use heap block, as the header says.
            if unsafe { has_cache_key(p) } && crate::global::cache_holds(p, have) {
                misuse("realloc", Misuse::DoubleFree, p);
                return None;
            }
            // Same size class: nothing to do, no lock taken.
            if let Some(need) = block_size_for(n)
                && need <= bs
                && class_for_alloc(need) == Some(have)
            {
                return Some(p);
            }
            // A cached size class moving to another small one: through the caches, no lock
            // (growing in place would need the central lock on every call).
            if n <= config::SMALL_LIMIT.load(Ordering::Relaxed) {
                return move_block(p, old_usable, n);
            }
        }
        // A larger heap block: try in place (one lock acquisition), else move.
        let r = heap().resize_in_place(p, n);
        return match r {
            Ok(true) => Some(p),
            Ok(false) => move_block(p, old_usable, n),
            Err(e) => {
                misuse("realloc", e, p);
                None
            }
        };
    }
    let r = heap().resize_in_place(p, n);
    let old_usable = match r {
        Ok(true) => return Some(p),
        Ok(false) => usable_size(p, "realloc"),
        Err(Misuse::NotOurs) => {
            let r = large::realloc(p, n, mmap_threshold());
            match r {
                Ok(Some(q)) => return Some(q),
                Ok(None) => match large::usable(p) {
                    Ok(u) => u,
                    Err(_) => return None,
                },
                Err(e) => {
                    misuse("realloc", e, p);
                    return None;
                }
            }
        }
        Err(e) => {
            misuse("realloc", e, p);
            return None;
        }
    };
    move_block(p, old_usable, n)
}

/// realloc by moving: a new block of `n` bytes, the contents copied, the old block freed.
/// `None` (memory exhausted) leaves `p` untouched.
fn move_block(p: NonNull<u8>, old_usable: usize, n: usize) -> Option<NonNull<u8>> {
    let new = alloc(n)?;
    // SAFETY: distinct live blocks; the old one has `old_usable` bytes, the new one >= n.
    unsafe { ptr::copy_nonoverlapping(p.as_ptr(), new.as_ptr(), old_usable.min(n)) };
    dealloc(p, "realloc");
    Some(new)
}

#[cold]
#[inline(never)]
fn out_of_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

#[inline(always)]
fn to_c(r: Option<NonNull<u8>>) -> *mut c_void {
    match r {
        Some(p) => p.as_ptr().cast(),
        None => out_of_memory(),
    }
}

/// C `malloc`: the fast path of [`alloc`] with every other case (and `errno`) in one tail
/// call, so the fast path saves no registers.
#[inline(always)]
pub fn malloc(n: usize) -> *mut c_void {
    // Relaxed: a tuning value (config.rs).
    if n <= config::SMALL_LIMIT.load(Ordering::Relaxed)
        && let Some(tc) = tcache_fast()
    {
        // SAFETY: `n <= MAX_CLASS_REQUEST`.
        let c = unsafe { class_for_request(n) };
        // SAFETY: this thread's cache; no other reference to it is live.
        if let Some(p) = unsafe { (*tc).pop(c) } {
            // SAFETY: as above.
            if !unsafe { (*tc).gc_due() } {
                return p.as_ptr().cast();
            }
            return malloc_collect(tc, p);
        }
    }
    malloc_slow(n)
}

/// [`malloc`] with a collection due: run it, hand out `p`.
#[cold]
#[inline(never)]
fn malloc_collect(tc: *mut ThreadCache, p: NonNull<u8>) -> *mut c_void {
    to_c(collect_and_return(tc, p))
}

/// Everything [`malloc`]'s fast path does not handle.
#[cold]
#[inline(never)]
fn malloc_slow(n: usize) -> *mut c_void {
    to_c(alloc(n))
}

/// C `free`: NULL is ignored; `errno` is preserved.
///
/// # Safety
/// `p` is NULL or a live block of ours (anything else is detected where cheaply possible and
/// aborts with a message).
#[inline(always)]
pub unsafe fn free(p: *mut c_void) {
    if let Some(p) = NonNull::new(p.cast::<u8>()) {
        // errno can only change on the slow paths (syscalls, a contended lock), which save
        // and restore it themselves.
        dealloc(p, "free");
    }
}

/// C `calloc`: overflow of `n * size` fails with `ENOMEM`.
pub fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => to_c(alloc_zeroed(total)),
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
    let saved = errno();
    // SAFETY: forwarded contract.
    let r = unsafe { realloc_raw(old, n) };
    match r {
        Some(p) => {
            set_errno(saved);
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

/// C `posix_memalign`: returns 0, `EINVAL` or `ENOMEM`; never changes `errno`.
///
/// # Safety
/// `out` is valid for a pointer write.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, n: usize) -> i32 {
    if !align.is_power_of_two() || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    let r = alloc_aligned(n, align);
    set_errno(saved);
    match r {
        Some(p) => {
            // SAFETY: forwarded contract.
            unsafe { out.write(p.as_ptr().cast()) };
            0
        }
        None => libc::ENOMEM,
    }
}

/// C `aligned_alloc` and `memalign`: any power of two; others fail with `EINVAL`.
pub fn memalign(align: usize, n: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    to_c(alloc_aligned(n, align))
}

/// C `valloc`: page-aligned.
pub fn valloc(n: usize) -> *mut c_void {
    to_c(alloc_aligned(n, PAGE))
}

/// C `pvalloc`: page-aligned, size rounded up to a whole page (`pvalloc(0)` gives one page).
pub fn pvalloc(n: usize) -> *mut c_void {
    match align_up(n.max(1), PAGE) {
        Some(total) => to_c(alloc_aligned(total, PAGE)),
        None => out_of_memory(),
    }
}

/// C `malloc_usable_size`: 0 for NULL.
///
/// # Safety
/// `p` is NULL or a live block of ours.
pub unsafe fn malloc_usable_size(p: *mut c_void) -> usize {
    match NonNull::new(p.cast::<u8>()) {
        Some(p) => usable_size(p, "malloc_usable_size"),
        None => 0,
    }
}

/// C `malloc_trim`: flushes the calling thread's cache, then gives back every free page it
/// can; returns 1 if memory went back.
pub fn malloc_trim(pad: usize) -> i32 {
    let saved = errno();
    crate::global::flush_thread_cache();
    let released = heap().trim(pad);
    let uncached = pad == 0 && crate::large_cache::release_all();
    set_errno(saved);
    i32::from(released || uncached)
}

/// glibc's `mallopt`: `M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD` and `M_TOP_PAD` take effect;
/// `M_ARENA_MAX` is accepted and ignored (there is one central heap). Returns 1 on success, 0
/// for a parameter it does not support or a negative value.
pub fn mallopt(param: i32, value: i32) -> i32 {
    ensure_config();
    let r = Ordering::Relaxed;
    let Ok(v) = usize::try_from(value) else { return 0 };
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
        libc::M_TOP_PAD => config::TOP_PAD.store(v, r),
        libc::M_ARENA_MAX => return 1,
        _ => return 0,
    }
    crate::global::apply_config();
    1
}
