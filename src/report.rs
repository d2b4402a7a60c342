//! Statistics snapshots and reports: `stats:1` / `stats:json` at exit, and glibc's
//! introspection calls (`malloc_stats`, `mallinfo`, `mallinfo2`, `malloc_info`).
//!
//! Everything is formatted into fixed stack buffers ([`Line`]) and written with `write(2)` or
//! `fwrite`; nothing here allocates, and no lock is held while writing.

use crate::central::HeapStats;
use crate::config;
use crate::diag::Line;
use crate::global;
use crate::large;
use crate::large_cache::{self, CacheStats};
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
    /// Acquisitions of the central lock.
    pub lock_acquisitions: usize,
    /// Acquisitions of the central lock that found it taken.
    pub lock_contended: usize,
}

impl Stats {
    /// Free bytes inside the heap over the heap's size, in tenths of a percent.
    pub fn fragmentation_permille(&self) -> usize {
        (self.heap.free_bytes * 1000).checked_div(self.heap.heap_bytes).unwrap_or(0)
    }
}

/// Takes a snapshot (merging the calling thread's cache counters first).
pub fn stats() -> Stats {
    global::merge_thread_counters();
    let (heap, segments) = global::heap_snapshot();
    let r = Ordering::Relaxed;
    Stats {
        classes: stats::classes(),
        heap,
        segments,
        mmap_blocks: large::LIVE_BLOCKS.load(r),
        mmap_bytes: large::LIVE_BYTES.load(r),
        mmap_max_blocks: large::MAX_BLOCKS.load(r),
        mmap_max_bytes: large::MAX_BYTES.load(r),
        large_cache: large_cache::stats(),
        peak_rss: peak_rss(),
        lock_acquisitions: global::lock_acquisitions(),
        lock_contended: global::lock_contended(),
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

/// A C `FILE *`, through `fwrite` (glibc's `malloc_info` writes to one).
pub struct CFile(pub *mut libc::FILE);

impl Sink for CFile {
    fn put(&mut self, line: &Line) {
        let b = line.as_bytes();
        // SAFETY: the caller of `malloc_info` passed a valid stream; no lock of ours is held,
        // so stdio may allocate its buffer through our malloc.
        unsafe { libc::fwrite(b.as_ptr().cast(), 1, b.len(), self.0) };
    }
}

/// The human table of `stats:1`.
pub fn write_text(s: &Stats, out: &mut impl Sink) {
    let mut l = Line::new();
    l.str("brkmalloc statistics (pid ").dec(std_pid()).str(")\n");
    out.put(&l);
    let mut l = Line::new();
    l.str(" class   size       allocs        frees   cache-hits    refills    flushes\n");
    out.put(&l);
    for (c, cs) in s.classes.iter().enumerate() {
        if cs.allocs == 0 && cs.frees == 0 {
            continue;
        }
        let mut l = Line::new();
        l.str(" ")
            .dec_w(c, 5)
            .str(" ")
            .dec_w(class_size(c), 6)
            .str(" ")
            .dec_w(cs.allocs, 12)
            .str(" ")
            .dec_w(cs.frees, 12)
            .str(" ")
            .dec_w(cs.cache_hits, 12)
            .str(" ")
            .dec_w(cs.refills, 10)
            .str(" ")
            .dec_w(cs.flushes, 10)
            .str("\n");
        out.put(&l);
    }
    let h = &s.heap;
    let mut l = Line::new();
    l.str("central heap: ")
        .bytes(h.heap_bytes)
        .str(" in ")
        .dec(s.segments)
        .str(" segment(s); in use ")
        .bytes(h.used_bytes)
        .str(" in ")
        .dec(h.used_blocks)
        .str(" blocks (thread caches included); free ")
        .bytes(h.free_bytes)
        .str(" in ")
        .dec(h.free_blocks)
        .str(" blocks\n");
    out.put(&l);
    let mut l = Line::new();
    l.str("returned to the OS: trimmed ")
        .bytes(h.trimmed_bytes)
        .str(", unmapped ")
        .bytes(h.released_bytes)
        .str(", purged ")
        .bytes(h.purged_bytes)
        .str("\n");
    out.put(&l);
    let mut l = Line::new();
    l.str("mmap blocks: ")
        .dec(s.mmap_blocks)
        .str(" live, ")
        .bytes(s.mmap_bytes)
        .str(" (peak ")
        .dec(s.mmap_max_blocks)
        .str(" blocks, ")
        .bytes(s.mmap_max_bytes)
        .str(")\n");
    out.put(&l);
    let c = &s.large_cache;
    let mut l = Line::new();
    l.str("large cache: ").bytes(c.bytes).str(" in ").dec(c.spans).str(" mapping(s)");
    for (label, v) in [("; hits ", c.hits), (", misses ", c.misses)] {
        l.str(label).dec(v);
    }
    l.str("; decayed ").bytes(c.decayed_bytes).str("\n");
    out.put(&l);
    let f = s.fragmentation_permille();
    let mut l = Line::new();
    l.str("peak RSS: ")
        .bytes(s.peak_rss)
        .str("; fragmentation (free / heap): ")
        .dec(f / 10)
        .str(".")
        .dec(f % 10)
        .str("%\n");
    out.put(&l);
    let mut l = Line::new();
    l.str("central lock: ")
        .dec(s.lock_acquisitions)
        .str(" acquisitions, ")
        .dec(s.lock_contended)
        .str(" contended\n");
    out.put(&l);
}

/// The same as one JSON object (`stats:json`).
pub fn write_json(s: &Stats, out: &mut impl Sink) {
    let mut l = Line::new();
    l.str("{\"brkmalloc\":{\"pid\":").dec(std_pid()).str(",\"classes\":[");
    out.put(&l);
    let mut first = true;
    for (c, cs) in s.classes.iter().enumerate() {
        if cs.allocs == 0 && cs.frees == 0 {
            continue;
        }
        let mut l = Line::new();
        if !first {
            l.str(",");
        }
        first = false;
        l.str("{\"class\":")
            .dec(c)
            .str(",\"size\":")
            .dec(class_size(c))
            .str(",\"allocs\":")
            .dec(cs.allocs)
            .str(",\"frees\":")
            .dec(cs.frees)
            .str(",\"cache_hits\":")
            .dec(cs.cache_hits)
            .str(",\"refills\":")
            .dec(cs.refills)
            .str(",\"flushes\":")
            .dec(cs.flushes)
            .str("}");
        out.put(&l);
    }
    let h = &s.heap;
    let mut l = Line::new();
    l.str("],\"heap\":{\"bytes\":")
        .dec(h.heap_bytes)
        .str(",\"segments\":")
        .dec(s.segments)
        .str(",\"used_bytes\":")
        .dec(h.used_bytes)
        .str(",\"used_blocks\":")
        .dec(h.used_blocks)
        .str(",\"free_bytes\":")
        .dec(h.free_bytes)
        .str(",\"free_blocks\":")
        .dec(h.free_blocks)
        .str(",\"trimmed_bytes\":")
        .dec(h.trimmed_bytes)
        .str(",\"unmapped_bytes\":")
        .dec(h.released_bytes)
        .str(",\"purged_bytes\":")
        .dec(h.purged_bytes)
        .str("},");
    out.put(&l);
    let f = s.fragmentation_permille();
    let mut l = Line::new();
    l.str("\"mmap\":{\"blocks\":")
        .dec(s.mmap_blocks)
        .str(",\"bytes\":")
        .dec(s.mmap_bytes)
        .str(",\"max_blocks\":")
        .dec(s.mmap_max_blocks)
        .str(",\"max_bytes\":")
        .dec(s.mmap_max_bytes)
        .str("},\"large_cache\":{\"bytes\":")
        .dec(s.large_cache.bytes)
        .str(",\"mappings\":")
        .dec(s.large_cache.spans)
        .str(",\"hits\":")
        .dec(s.large_cache.hits)
        .str(",\"misses\":")
        .dec(s.large_cache.misses)
        .str(",\"decayed_bytes\":")
        .dec(s.large_cache.decayed_bytes)
        .str("},\"peak_rss\":")
        .dec(s.peak_rss)
        .str(",\"fragmentation_permille\":")
        .dec(f)
        .str(",\"lock\":{\"acquisitions\":")
        .dec(s.lock_acquisitions)
        .str(",\"contended\":")
        .dec(s.lock_contended)
        .str("}}}\n");
    out.put(&l);
}

/// Prints the statistics if `stats` is on (called at exit).
pub fn at_exit() {
    match config::STATS.load(Ordering::Relaxed) {
        config::STATS_TEXT => write_text(&stats(), &mut Stderr),
        config::STATS_JSON => write_json(&stats(), &mut Stderr),
        _ => {}
    }
}

/// glibc's `malloc_stats()`: the same lines as glibc, to stderr.
pub fn malloc_stats() {
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
/// included), `fordblks` = free bytes, `keepcost` = the free top of the heap.
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
        uordblks: s.heap.used_bytes,
        fordblks: s.heap.free_bytes,
        keepcost: global::top_free_bytes(),
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
