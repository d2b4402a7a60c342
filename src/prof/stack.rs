//! Stack capture for heap profile samples: libgcc's `_Unwind_Backtrace`, which follows the
//! `.eh_frame` unwind tables that every Debian library carries (they are built without frame
//! pointers, so a frame-pointer walk stops or goes astray in them; measured in DESIGN.md).
//!
//! The unwinder does not allocate on this path (it finds unwind tables with
//! `_dl_find_object`, glibc ≥ 2.35 and libgcc ≥ 12, or `dl_iterate_phdr`); should it ever
//! call `malloc`, the caller's per-thread re-entrancy guard keeps that allocation from being
//! sampled. Never call it while holding an allocator lock: the loader lock it may take is
//! also held by threads that allocate inside `dlopen`.

use core::ffi::{c_int, c_void};

use crate::sync::{AtomicUsize, Ordering};

/// Deepest stack recorded; deeper frames (the outermost ones) are cut.
pub const MAX_DEPTH: usize = 64;

/// `_URC_NO_REASON`: keep unwinding.
const URC_NO_REASON: c_int = 0;
/// `_URC_NORMAL_STOP`: stop here.
const URC_NORMAL_STOP: c_int = 4;

#[allow(non_camel_case_types)]
type _Unwind_Trace_Fn = extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;

unsafe extern "C" {
    /// gcc's unwinder (static in `libbrkmalloc.so`, `preload/build.rs`; libgcc_s in a Rust
    /// program): calls `trace` once per frame, innermost first.
    fn _Unwind_Backtrace(trace: _Unwind_Trace_Fn, arg: *mut c_void) -> c_int;
    /// The return address of the frame `ctx` (the call's next instruction).
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

/// The address range of the object that holds this code (`libbrkmalloc.so`), whose frames are
/// left out of every stack: `[SELF_LO, SELF_HI)`, empty when the allocator is linked into the
/// main program (a Rust program using `BrkMalloc`), where no range separates it.
static SELF_LO: AtomicUsize = AtomicUsize::new(0);
static SELF_HI: AtomicUsize = AtomicUsize::new(0);
/// Whether the range was looked up (0: no, 1: yes).
static SELF_KNOWN: AtomicUsize = AtomicUsize::new(0);

/// A stack under construction.
///
/// # Invariants
/// - K1: `depth <= MAX_DEPTH`; `frames[..depth]` are return addresses outside `[lo, hi)`.
struct Walk<'a> {
    frames: &'a mut [usize; MAX_DEPTH],
    depth: usize,
    lo: usize,
    hi: usize,
    /// Still inside the allocator's own frames.
    leading: bool,
}

extern "C" fn trace(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `capture` passed, alive for the whole unwind.
    let w = unsafe { &mut *arg.cast::<Walk>() };
    // SAFETY: `ctx` is the unwinder's context for the current frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return URC_NORMAL_STOP;
    }
    if w.leading && ip >= w.lo && ip < w.hi {
        return URC_NO_REASON;
    }
    w.leading = false;
    w.frames[w.depth] = ip;
    w.depth += 1;
    if w.depth == MAX_DEPTH { URC_NORMAL_STOP } else { URC_NO_REASON }
}

/// Fills `frames` with the calling program's return addresses, innermost first, leaving out
/// the allocator's own frames; returns the depth (K1).
pub fn capture(frames: &mut [usize; MAX_DEPTH]) -> usize {
    let (lo, hi) = self_range();
    let mut w = Walk { frames, depth: 0, lo, hi, leading: true };
    // SAFETY: `trace` only touches the `Walk` it is given, which outlives the call.
    unsafe { _Unwind_Backtrace(trace, (&raw mut w).cast()) };
    w.depth
}

/// The address range of the object holding this code; see [`SELF_LO`].
fn self_range() -> (usize, usize) {
    // Relaxed: the range is computed the same by every thread; a race computes it twice.
    if SELF_KNOWN.load(Ordering::Relaxed) == 0 {
        find_self();
    }
    (SELF_LO.load(Ordering::Relaxed), SELF_HI.load(Ordering::Relaxed))
}

/// Looks up the object that contains [`capture`] among the loaded objects (no allocation).
#[cold]
pub fn find_self() {
    /// The search's state: K2: `lo..hi` is the range of the object holding `me` once found
    /// (left empty for the main program), and `first` is true only before the first object.
    struct Find {
        me: usize,
        first: bool,
        lo: usize,
        hi: usize,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the `Find` passed below; `info` is valid during the callback.
        let (f, info) = unsafe { (&mut *arg.cast::<Find>(), &*info) };
        let first = f.first;
        f.first = false;
        let (mut lo, mut hi, mut mine) = (usize::MAX, 0, false);
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` holds `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD {
                continue;
            }
            let a = info.dlpi_addr as usize + ph.p_vaddr as usize;
            let b = a + ph.p_memsz as usize;
            lo = lo.min(a);
            hi = hi.max(b);
            mine |= f.me >= a && f.me < b;
        }
        if !mine {
            return 0;
        }
        // Linked into the main program: its frames cannot be told from the allocator's.
        if !first {
            f.lo = lo;
            f.hi = hi;
        }
        1
    }
    let mut f = Find {
        me: capture as fn(&mut [usize; MAX_DEPTH]) -> usize as usize,
        first: true,
        lo: 0,
        hi: 0,
    };
    // SAFETY: `each` only touches the `Find` it is given; dl_iterate_phdr does not allocate.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut f).cast()) };
    SELF_LO.store(f.lo, Ordering::Relaxed);
    SELF_HI.store(f.hi, Ordering::Relaxed);
    SELF_KNOWN.store(1, Ordering::Relaxed);
}
