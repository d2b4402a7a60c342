//! Statistics snapshots and reports: `stats:1` / `stats:json` at exit, and glibc's
//! introspection calls (`malloc_stats`, `mallinfo`, `mallinfo2`, `malloc_info`).
//!
//! Everything is formatted into fixed stack buffers ([`Line`]) and written with `write(2)` or
//! `fwrite`; nothing here allocates, and no lock is held while writing.

use crate::central::HeapStats;
use crate::config;
use crate::diag::Line;
use crate::large;
use crate::large_cache::{self, CacheStats};
use crate::process;
use crate::size_class::{NCLASSES, class_size};
use crate::stats::{self, ClassStats};
use crate::sync::Ordering;

/// A snapshot of everything brkmalloc counts.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Per size class (`size_class::class_size(i)` bytes per block, header included).
    pub classes: [ClassStats; NCLASSES],
    /// The central heap's counters.
    pub heap: HeapStats,
    /// Segments of the central heap.
    pub segments: usize,
    /// Live large (mmapped) blocks.
    pub mmap_blocks: usize,
    /// Bytes mapped for live large blocks.
    pub mmap_bytes: usize,
    /// Most large blocks live at once.
    pub mmap_max_blocks: usize,
    /// Most bytes mapped for large blocks at once.
    pub mmap_max_bytes: usize,
    /// The cache of freed large mappings.
    pub large_cache: CacheStats,
    /// Peak resident set size of the process, in bytes (`getrusage`).
    pub peak_rss: usize,
    /// Bytes of free blocks held in the middle layer's batches (`transfer.rs`).
    pub layer_bytes: usize,
    /// Batches held in the middle layer.
    pub layer_batches: usize,
    /// The middle layer's byte budget now (TR5: per active thread cache, raised by demand).
    pub layer_budget: usize,
    /// Acquisitions of the central lock.
    pub lock_acquisitions: usize,
    /// Acquisitions of the central lock that found it taken.
    pub lock_contended: usize,
    /// Allocations served from thread caches (merged so far: each thread's at its exit, the
    /// calling thread's now, the others' in whole collection intervals).
    pub cache_allocs: usize,
    /// `malloc` calls above the size classes (central heap or mapping).
    pub big_allocs: usize,
}

impl Stats {
    /// Small allocations the central heap served directly (caches off, torn down, or refused).
    pub fn direct_allocs(&self) -> usize {
        self.classes.iter().map(|c| c.direct_allocs).sum()
    }

    /// Every allocation: from the thread caches, from the central heap directly, and above the
    /// classes.
    pub fn allocs(&self) -> usize {
        self.cache_allocs + self.direct_allocs() + self.big_allocs
    }

    /// Cache allocations that needed no refill.
    pub fn cache_hits(&self) -> usize {
        let refills: usize = self.classes.iter().map(|c| c.refills).sum();
        self.cache_allocs.saturating_sub(refills)
    }
}

impl Stats {
    /// Central lock acquisitions per 1000 malloc+free calls, in tenths (each allocation is
    /// counted with its free: the free fast path counts nothing).
    pub fn locks_per_1000_calls_x10(&self) -> usize {
        let calls = 2 * self.allocs();
        (self.lock_acquisitions * 10_000).checked_div(calls).unwrap_or(0)
    }

    /// Free bytes inside the heap over the heap's size, in tenths of a percent.
    pub fn fragmentation_permille(&self) -> usize {
        (self.heap.free_bytes * 1000).checked_div(self.heap.heap_bytes).unwrap_or(0)
    }
}

/// Takes a snapshot (merging the calling thread's cache counters first).
pub fn stats() -> Stats {
    process::merge_thread_counters();
    let (heap, segments) = process::heap_snapshot();
    let (layer_bytes, layer_batches, layer_budget) = process::layer_held();
    Stats {
        layer_bytes,
        layer_batches,
        layer_budget,
        cache_allocs: stats::cache_allocs(),
        big_allocs: stats::big_allocs(),
        classes: stats::classes(),
        heap,
        segments,
        mmap_blocks: large::LIVE_BLOCKS.get(),
        mmap_bytes: large::LIVE_BYTES.get(),
        mmap_max_blocks: large::MAX_BLOCKS.get(),
        mmap_max_bytes: large::MAX_BYTES.get(),
        large_cache: large_cache::stats(),
        peak_rss: peak_rss(),
        lock_acquisitions: process::lock_acquisitions(),
        lock_contended: process::lock_contended(),
    }
}

fn peak_rss() -> usize {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        ru.ru_maxrss as usize * 1024
    } else {
        0
    }
}

/// Where a report goes.
pub trait Sink {
    /// Writes one line (or part of one).
    fn put(&mut self, line: &Line);
}

/// Standard error, through `write(2)`.
pub struct Stderr;

impl Sink for Stderr {
    fn put(&mut self, line: &Line) {
        line.write_stderr();
    }
}

/// A file descriptor, through `write(2)`.
pub struct Fd(pub i32);

impl Sink for Fd {
    fn put(&mut self, line: &Line) {
        line.write_fd(self.0);
    }
}

/// A C `FILE *`, through `fwrite` (glibc's `malloc_info` writes to one).
///
/// # Invariants
/// - CF1: the stream is valid and open for writing for the life of the value ([`CFile::new`]
///   is where the caller promises it), so [`Sink::put`] can stay a safe function.
pub struct CFile(*mut libc::FILE);

impl CFile {
    /// Wraps `stream`.
    ///
    /// # Safety
    /// `stream` is a valid `FILE *` open for writing, and stays so while the `CFile` lives.
    pub unsafe fn new(stream: *mut libc::FILE) -> Self {
        Self(stream)
    }
}

impl Sink for CFile {
    fn put(&mut self, line: &Line) {
        let b = line.as_bytes();
        // SAFETY: CF1 — a valid stream; no lock of ours is held, so stdio may allocate its
        // buffer through our malloc.
        unsafe { libc::fwrite(b.as_ptr().cast(), 1, b.len(), self.0) };
    }
}

/// Writes `template` to `out` as one [`Line`], with the numbers of `values`, in order, in place
/// of its `%d` (decimal) and `%b` (a byte count, [`Line::bytes`]) markers; `%%` is a `%`.
/// A marker past the last value prints 0 (the templates below have one value per marker).
fn put(out: &mut impl Sink, template: &str, values: &[usize]) {
    let mut l = Line::new();
    let mut values = values.iter().copied();
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        l.str(&rest[..i]);
        match rest.as_bytes().get(i + 1) {
            Some(b'd') => l.dec(values.next().unwrap_or(0)),
            Some(b'b') => l.bytes(values.next().unwrap_or(0)),
            _ => l.str("%"),
        };
        rest = rest.get(i + 2..).unwrap_or("");
    }
    l.str(rest);
    out.put(&l);
}

/// The human table of `stats:1`.
pub fn write_text(s: &Stats, out: &mut impl Sink) {
    put(out, "brkmalloc statistics (pid %d)\n", &[std_pid()]);
    put(
        out,
        "allocations: %d (thread caches %d, of which cache hits %d; central heap directly %d; \
         above the classes %d)\n",
        &[s.allocs(), s.cache_allocs, s.cache_hits(), s.direct_allocs(), s.big_allocs],
    );
    put(
        out,
        " class   size    refills   refilled    flushes    flushed direct-alloc direct-free \
         layer-hits layer-miss layer-puts layer-full\n",
        &[],
    );
    for (c, cs) in s.classes.iter().enumerate() {
        if *cs == ClassStats::default() {
            continue;
        }
        // (value, column width)
        let columns = [
            (c, 5),
            (class_size(c), 6),
            (cs.refills, 10),
            (cs.refilled_blocks, 10),
            (cs.flushes, 10),
            (cs.flushed_blocks, 10),
            (cs.direct_allocs, 12),
            (cs.direct_frees, 11),
            (cs.layer_hits, 10),
            (cs.layer_misses, 10),
            (cs.layer_puts, 10),
            (cs.layer_overflows, 10),
        ];
        let mut l = Line::new();
        for (v, width) in columns {
            l.str(" ").dec_w(v, width);
        }
        l.str("\n");
        out.put(&l);
    }
    let h = &s.heap;
    put(
        out,
        "central heap: %b in %d segment(s); in use %b in %d blocks (thread caches and middle \
         layer included); free %b in %d blocks\n",
        &[h.heap_bytes, s.segments, h.used_bytes, h.used_blocks, h.free_bytes, h.free_blocks],
    );
    let sum = |f: fn(&ClassStats) -> usize| s.classes.iter().map(f).sum::<usize>();
    put(
        out,
        "middle layer: %b free in %d batch(es), budget %b; batches in %d (refused %d), out %d, \
         returned to the heap %d\n",
        &[
            s.layer_bytes,
            s.layer_batches,
            s.layer_budget,
            sum(|c| c.layer_puts),
            sum(|c| c.layer_overflows),
            sum(|c| c.layer_hits),
            sum(|c| c.layer_released),
        ],
    );
    put(
        out,
        "returned to the OS: trimmed %b, unmapped %b, purged %b\n",
        &[h.trimmed_bytes, h.released_bytes, h.purged_bytes],
    );
    put(
        out,
        "mmap blocks: %d live, %b (peak %d blocks, %b)\n",
        &[s.mmap_blocks, s.mmap_bytes, s.mmap_max_blocks, s.mmap_max_bytes],
    );
    let c = &s.large_cache;
    put(
        out,
        "large cache: %b in %d mapping(s); hits %d, misses %d; decayed %b\n",
        &[c.bytes, c.spans, c.hits, c.misses, c.decayed_bytes],
    );
    let f = s.fragmentation_permille();
    put(out, "peak RSS: %b; fragmentation (free / heap): %d.%d%%\n", &[s.peak_rss, f / 10, f % 10]);
    let per = s.locks_per_1000_calls_x10();
    put(
        out,
        "central lock: %d acquisitions, %d contended; %d.%d per 1000 malloc+free calls\n",
        &[s.lock_acquisitions, s.lock_contended, per / 10, per % 10],
    );
}

/// The same as one JSON object (`stats:json`).
pub fn write_json(s: &Stats, out: &mut impl Sink) {
    put(
        out,
        "{\"brkmalloc\":{\"pid\":%d,\"allocs\":%d,\"cache_allocs\":%d,\"cache_hits\":%d,\
         \"big_allocs\":%d,\"classes\":[",
        &[std_pid(), s.allocs(), s.cache_allocs, s.cache_hits(), s.big_allocs],
    );
    // Every class object but the first follows a comma.
    // One class object in two lines' worth (a `Line` holds 256 bytes).
    const CLASS: &str = ",{\"class\":%d,\"size\":%d,\"refills\":%d,\"refilled_blocks\":%d,\
                         \"flushes\":%d,\"flushed_blocks\":%d,\"direct_allocs\":%d,\
                         \"direct_frees\":%d,";
    const LAYER: &str = "\"layer_hits\":%d,\"layer_misses\":%d,\"layer_puts\":%d,\
                         \"layer_overflows\":%d,\"layer_released\":%d}";
    let mut first = true;
    for (c, cs) in s.classes.iter().enumerate() {
        if *cs == ClassStats::default() {
            continue;
        }
        let template = if first { &CLASS[1..] } else { CLASS };
        first = false;
        let (size, refills, refilled) = (class_size(c), cs.refills, cs.refilled_blocks);
        let (flushes, flushed) = (cs.flushes, cs.flushed_blocks);
        let values =
            [c, size, refills, refilled, flushes, flushed, cs.direct_allocs, cs.direct_frees];
        put(out, template, &values);
        let layer = [
            cs.layer_hits,
            cs.layer_misses,
            cs.layer_puts,
            cs.layer_overflows,
            cs.layer_released,
        ];
        put(out, LAYER, &layer);
    }
    let h = &s.heap;
    put(
        out,
        "],\"heap\":{\"bytes\":%d,\"segments\":%d,\"used_bytes\":%d,\"used_blocks\":%d,\
         \"free_bytes\":%d,\"free_blocks\":%d,\"trimmed_bytes\":%d,\"unmapped_bytes\":%d,\
         \"purged_bytes\":%d},",
        &[
            h.heap_bytes,
            s.segments,
            h.used_bytes,
            h.used_blocks,
            h.free_bytes,
            h.free_blocks,
            h.trimmed_bytes,
            h.released_bytes,
            h.purged_bytes,
        ],
    );
    put(
        out,
        "\"mmap\":{\"blocks\":%d,\"bytes\":%d,\"max_blocks\":%d,\"max_bytes\":%d},\
         \"large_cache\":{\"bytes\":%d,\"mappings\":%d,\"hits\":%d,\"misses\":%d,\
         \"decayed_bytes\":%d},",
        &[
            s.mmap_blocks,
            s.mmap_bytes,
            s.mmap_max_blocks,
            s.mmap_max_bytes,
            s.large_cache.bytes,
            s.large_cache.spans,
            s.large_cache.hits,
            s.large_cache.misses,
            s.large_cache.decayed_bytes,
        ],
    );
    put(
        out,
        "\"layer\":{\"bytes\":%d,\"batches\":%d,\"budget\":%d},\"peak_rss\":%d,\
         \"fragmentation_permille\":%d,\"lock\":{\"acquisitions\":%d,\"contended\":%d,\
         \"per_1000_calls_x10\":%d}}}\n",
        &[
            s.layer_bytes,
            s.layer_batches,
            s.layer_budget,
            s.peak_rss,
            s.fragmentation_permille(),
            s.lock_acquisitions,
            s.lock_contended,
            s.locks_per_1000_calls_x10(),
        ],
    );
}

/// Prints the statistics if `stats` is on (called at exit, in every process that exits
/// through `exit`, forked children included): to the `stats_file` (appended, created 0644;
/// `%p` makes it one file per process), else to the duplicate of stderr taken at start-up
/// (`diag::report_fd`), which survives a program closing its stderr.
pub fn at_exit() {
    let mode = config::STATS.load(Ordering::Relaxed);
    if mode != config::STATS_OFF {
        write_at_exit(mode);
    }
}

/// [`at_exit`]'s report, out of line: the check above runs in every process and lies with
/// the hot code (`preload/hot.ld`); this runs only with `stats` on.
#[cold]
#[inline(never)]
fn write_at_exit(mode: usize) {
    let mut path = [0u8; 2 * config::STATS_FILE_MAX];
    let mut file = -1;
    if let Some(p) = config::stats_file_path(std_pid(), &mut path) {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
        // SAFETY: `p` is NUL-terminated (`stats_file_path`).
        file = unsafe { libc::open(p.as_ptr().cast(), flags, 0o644) };
        if file < 0 {
            let mut l = Line::new();
            l.str("brkmalloc: stats_file: cannot open '")
                .str(core::str::from_utf8(&p[..p.len() - 1]).unwrap_or("?"))
                .str("'; statistics on stderr\n");
            l.write_fd(crate::diag::report_fd());
        }
    }
    let mut out = Fd(if file >= 0 { file } else { crate::diag::report_fd() });
    if mode == config::STATS_JSON {
        write_json(&stats(), &mut out);
    } else {
        write_text(&stats(), &mut out);
    }
    if file >= 0 {
        // SAFETY: the descriptor opened above, closed once.
        unsafe { libc::close(file) };
    }
}

unsafe extern "C" {
    /// POSIX; not in the `libc` crate.
    fn pthread_setcancelstate(state: libc::c_int, old: *mut libc::c_int) -> libc::c_int;
}
/// `PTHREAD_CANCEL_DISABLE` of glibc's `<pthread.h>`.
const PTHREAD_CANCEL_DISABLE: libc::c_int = 1;

/// glibc's `malloc_stats()`: the same lines as glibc, to stderr. Cancellation is disabled
/// while it prints, as in glibc (`write` is a cancellation point: a pending cancel would
/// otherwise end the thread at the first line).
pub fn malloc_stats() {
    let mut old = 0;
    // SAFETY: a valid out pointer; the state is restored below.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
    write_malloc_stats();
    // SAFETY: restores the state saved above (a pending cancel acts at the next point).
    unsafe { pthread_setcancelstate(old, &mut old) };
}

fn write_malloc_stats() {
    let s = stats();
    let in_use = s.heap.used_bytes;
    for (label, value) in [
        ("Arena 0:\n", None),
        ("system bytes     = ", Some(s.heap.heap_bytes)),
        ("in use bytes     = ", Some(in_use)),
        ("Total (incl. mmap):\n", None),
        ("system bytes     = ", Some(s.heap.heap_bytes + s.mmap_bytes)),
        ("in use bytes     = ", Some(in_use + s.mmap_bytes)),
        ("max mmap regions = ", Some(s.mmap_max_blocks)),
        ("max mmap bytes   = ", Some(s.mmap_max_bytes)),
    ] {
        let mut l = Line::new();
        l.str(label);
        if let Some(v) = value {
            l.dec_w(v, 10).str("\n");
        }
        l.write_stderr();
    }
}

/// glibc's `mallinfo2()` with our numbers: `arena` = heap bytes, `ordblks` = free blocks,
/// `hblks`/`hblkhd` = large blocks and their bytes, `uordblks` = bytes in use (thread caches
/// included), `fordblks` = free bytes (the middle layer's batches included), `keepcost` = the free top of the heap.
pub fn mallinfo2() -> libc::mallinfo2 {
    let s = stats();
    libc::mallinfo2 {
        arena: s.heap.heap_bytes,
        ordblks: s.heap.free_blocks,
        smblks: 0,
        hblks: s.mmap_blocks,
        hblkhd: s.mmap_bytes,
        usmblks: 0,
        fsmblks: 0,
        uordblks: s.heap.used_bytes - s.layer_bytes.min(s.heap.used_bytes),
        fordblks: s.heap.free_bytes + s.layer_bytes,
        keepcost: process::top_free_bytes(),
    }
}

/// glibc's `mallinfo()`: [`mallinfo2`] truncated to `int`, as glibc does.
pub fn mallinfo() -> libc::mallinfo {
    let m = mallinfo2();
    let t = |v: usize| v as libc::c_int;
    libc::mallinfo {
        arena: t(m.arena),
        ordblks: t(m.ordblks),
        smblks: t(m.smblks),
        hblks: t(m.hblks),
        hblkhd: t(m.hblkhd),
        usmblks: t(m.usmblks),
        fsmblks: t(m.fsmblks),
        uordblks: t(m.uordblks),
        fordblks: t(m.fordblks),
        keepcost: t(m.keepcost),
    }
}

/// glibc's `malloc_info(0, stream)`: XML in glibc's format (one heap; the size histogram lists
/// the thread-cache classes with their cached counts unknown, so it lists the totals).
pub fn malloc_info(out: &mut impl Sink) {
    let s = stats();
    let h = &s.heap;
    // (text before, optional (count, size) — count usize::MAX means none, text after)
    type XmlLine<'a> = (&'a str, Option<(usize, usize)>, &'a str);
    let lines: [XmlLine<'_>; 11] = [
        ("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n</sizes>\n", None, ""),
        ("<total type=\"fast\" count=\"0\" size=\"0\"/>\n", None, ""),
        ("<total type=\"rest\" count=\"", Some((h.free_blocks, h.free_bytes)), "\"/>\n"),
        ("<system type=\"current\" size=\"", Some((usize::MAX, h.heap_bytes)), "\"/>\n"),
        ("<system type=\"max\" size=\"", Some((usize::MAX, h.heap_bytes)), "\"/>\n"),
        ("<aspace type=\"total\" size=\"", Some((usize::MAX, h.heap_bytes)), "\"/>\n"),
        ("<aspace type=\"mprotect\" size=\"", Some((usize::MAX, h.heap_bytes)), "\"/>\n</heap>\n"),
        ("<total type=\"fast\" count=\"0\" size=\"0\"/>\n", None, ""),
        ("<total type=\"rest\" count=\"", Some((h.free_blocks, h.free_bytes)), "\"/>\n"),
        ("<total type=\"mmap\" count=\"", Some((s.mmap_blocks, s.mmap_bytes)), "\"/>\n"),
        (
            "<system type=\"current\" size=\"",
            Some((usize::MAX, h.heap_bytes + s.mmap_bytes)),
            "\"/>\n",
        ),
    ];
    for (head, nums, tail) in lines {
        let mut l = Line::new();
        l.str(head);
        if let Some((count, size)) = nums {
            if count != usize::MAX {
                l.dec(count).str("\" size=\"");
            }
            l.dec(size).str(tail);
        }
        out.put(&l);
    }
    let c = &s.large_cache;
    let mut l = Line::new();
    l.str("<total type=\"large_cache\"");
    for (attr, v) in [
        (" count=\"", c.spans),
        ("\" size=\"", c.bytes),
        ("\" hits=\"", c.hits),
        ("\" misses=\"", c.misses),
        ("\" decayed=\"", c.decayed_bytes),
    ] {
        l.str(attr).dec(v);
    }
    l.str("\"/>\n");
    out.put(&l);
    let total = h.heap_bytes + s.mmap_bytes + c.bytes;
    let mut l = Line::new();
    l.str("<system type=\"max\" size=\"")
        .dec(total)
        .str("\"/>\n<aspace type=\"total\" size=\"")
        .dec(total)
        .str("\"/>\n<aspace type=\"mprotect\" size=\"")
        .dec(total)
        .str("\"/>\n</malloc>\n");
    out.put(&l);
}

fn std_pid() -> usize {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as usize }
}
