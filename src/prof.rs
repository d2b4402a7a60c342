//! Sampled heap profiling (`prof:1`): which call sites hold the memory.
//!
//! - **Sampling** ([`sampling`]): each thread counts allocated bytes down to the next sample
//!   (exponentially distributed intervals of mean `prof_sample`). The countdown is the thread
//!   cache's event countdown (`thread_cache::countdown`), shared with the cache collection:
//!   with profiling on its per-class weights count bytes, so the malloc fast path is the same
//!   either way; a due sample reaches the front end's one cold hook (`Env::sample`), and
//!   from there [`sample`]. Sampling stays disarmed until the next interval is drawn: that
//!   is the re-entrancy guard (allocations made while unwinding are not sampled).
//! - **Stacks** ([`stack`]): libgcc's `_Unwind_Backtrace`, at most `MAX_DEPTH` frames, with no
//!   allocator lock held.
//! - **Records** ([`table`]): distinct stacks and live sampled blocks, in memory mapped for
//!   them, bounded, with a count of dropped samples, behind [`PROF`] (innermost in the lock
//!   order; only the free of a sampled block nests it, inside `CENTRAL`).
//! - **Free**: a sampled heap block carries `SAMPLED` in its header, which makes its class
//!   code `NO_CLASS` (B8), so its `free` reaches the central path, which drops the record
//!   ([`forget`]); large blocks always take that path.
//! - **Output** ([`writer`], [`leak`]): gperftools' heap profile format at exit, on
//!   `brkmalloc_prof_dump(path)`, and every `prof_interval` bytes, to
//!   `<prof_prefix>.<pid>.<seq>.heap`; the leak summary at exit with `prof_leak:1`.

pub mod leak;
pub mod nolibm;
pub mod sampling;
pub mod stack;
pub mod symtab;
pub mod table;
pub mod writer;

use core::ffi::CStr;
use core::ptr::NonNull;

use crate::block::{MAPPED, UserPtr};
use crate::central::CentralHeap;
use crate::config;
use crate::os::MemorySource;
use crate::sync::{Mutex, Ordering};
use table::Table;

/// The profile table (lock `PROF`, innermost in the lock order).
pub static PROF: Mutex<Table> = Mutex::new(Table::new());

/// Whether profiling is on (`prof:1`).
#[inline]
pub fn active() -> bool {
    config::PROF.load(Ordering::Relaxed)
}

/// Bytes until this thread's next sample: an exponential draw with mean `prof_sample`. `rng`
/// is the thread's generator, `salt` tells threads apart when seeding it.
pub fn next_interval(rng: &mut u64, salt: usize) -> u64 {
    if *rng == 0 {
        *rng = sampling::seed(salt);
    }
    sampling::next_interval(rng, config::PROF_SAMPLE.load(Ordering::Relaxed)) as u64
}

/// Records the fresh block `p` of `n` requested bytes, sampled after `counted` bytes were
/// counted for it, as a sample: captures the caller's stack, enters it in the table, and marks
/// a heap block `SAMPLED` in `heap`. The caller holds no allocator lock, and this thread's
/// sampling is disarmed (allocations made meanwhile are not sampled).
#[cold]
#[inline(never)]
pub fn sample<S: MemorySource>(
    heap: &Mutex<CentralHeap<S>>,
    p: NonNull<u8>,
    n: usize,
    counted: usize,
) {
    let mut frames = [0usize; stack::MAX_DEPTH];
    let depth = stack::capture(&mut frames);
    let w = sampling::weight(n, counted, config::PROF_SAMPLE.load(Ordering::Relaxed));
    let recorded = {
        let mut t = PROF.lock();
        let ok = t.insert(p.addr().get(), &frames[..depth], w);
        let every = config::PROF_INTERVAL.load(Ordering::Relaxed) as u64;
        if every != 0 && t.since_dump >= every {
            t.since_dump = 0;
            dump_numbered(&mut t);
        }
        ok
    };
    // SAFETY: `p` is a block we just allocated and nobody else knows yet: its header word is
    // readable (B7: the owner may read it without the lock).
    let mapped = unsafe { UserPtr::new(p).block().flags() } & MAPPED != 0;
    if recorded && !mapped {
        let r = heap.lock().mark_sampled(p);
        if r.is_err() {
            // Not a heap block after all: keep the table honest.
            PROF.lock().remove(p.addr().get());
        }
    }
}

/// Drops the record of the block `p`, which is being freed or moved.
#[cold]
pub fn forget(p: NonNull<u8>) {
    PROF.lock().remove(p.addr().get());
}

/// Longest profile path: the prefix, `.<pid>.<seq>.heap` and the NUL.
const PATH_MAX: usize = config::PROF_PREFIX_MAX + 48;

/// Writes the profile to `<prof_prefix>.<pid>.<seq>.heap` and advances the sequence.
fn dump_numbered(t: &mut Table) -> i32 {
    let mut prefix = [0u8; config::PROF_PREFIX_MAX];
    let plen = config::prof_prefix(&mut prefix);
    let mut path = [0u8; PATH_MAX];
    let mut len = 0;
    let mut put = |b: &[u8]| {
        path[len..len + b.len()].copy_from_slice(b);
        len += b.len();
    };
    put(&prefix[..plen]);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as usize;
    let mut numbers = crate::diag::Line::new();
    numbers.str(".").dec(pid).str(".").dec(t.seq as usize).str(".heap\0");
    put(numbers.as_bytes());
    t.seq += 1;
    let path = CStr::from_bytes_until_nul(&path).unwrap_or(c"brkmalloc.heap");
    write_file(t, path)
}

/// Writes the profile to `path`: 0, or an errno value.
fn write_file(t: &Table, path: &CStr) -> i32 {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path; open does not allocate.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return crate::diag::errno();
    }
    let ok = writer::write_profile(t, fd);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if ok { 0 } else { libc::EIO }
}

/// `brkmalloc_prof_dump(path)`: writes the profile to `path`, or with `None` to the next
/// `<prof_prefix>.<pid>.<seq>.heap`. Returns 0, `ENOENT` when profiling is off, or the errno
/// of the failed open or write. `errno` is preserved.
pub fn dump(path: Option<&CStr>) -> i32 {
    if !active() {
        return libc::ENOENT;
    }
    let saved = crate::diag::errno();
    let mut t = PROF.lock();
    let r = match path {
        Some(p) => write_file(&t, p),
        None => dump_numbered(&mut t),
    };
    drop(t);
    crate::diag::set_errno(saved);
    r
}

/// Set-up from the library's constructor: finds our own code range now, so that the first
/// sample does not walk the loaded objects from inside `malloc`.
pub fn init() {
    if active() {
        stack::find_self();
    }
}

/// At exit (`.fini_array`): the final profile (`prof_final`, on by default) and the leak
/// summary (`prof_leak:1`). A forked child that exits writes its own file (its pid differs).
pub fn at_exit() {
    if active() {
        finish();
    }
}

/// [`at_exit`]'s work, out of line: the check above runs in every process and lies with the
/// hot code (`preload/hot.ld`); this runs only with `prof` on.
#[cold]
#[inline(never)]
fn finish() {
    let mut t = PROF.lock();
    if config::PROF_FINAL.load(Ordering::Relaxed) {
        let r = dump_numbered(&mut t);
        if r != 0 {
            crate::diag::warn("prof: cannot write the heap profile at exit");
        }
    }
    if config::PROF_LEAK.load(Ordering::Relaxed) {
        leak::print_summary(&t);
    } else if t.dropped > 0 {
        let mut l = crate::diag::Line::new();
        l.str("brkmalloc: prof: ").dec(t.dropped as usize);
        l.str(" samples dropped (profile table full); raise prof_sample\n").write_stderr();
    }
}
