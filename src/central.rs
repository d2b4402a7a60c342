//! The central heap: boundary-tag blocks in segments from a [`MemorySource`], segregated free
//! bins with a two-level bitmap, split on allocation, eager merge on free, and memory returned
//! to the OS (trim at the top of the break, purge of large free runs anywhere).
//!
//! `CentralHeap` has no interior mutability: every method takes `&mut self`, and the process-wide
//! heap lives in a [`crate::sync::Mutex`], so holding `&mut CentralHeap` proves the lock is held.
//! Misuse (double free, a pointer we never handed out, broken tags) is returned as [`Misuse`];
//! the caller releases the lock and reports it.

use core::ptr::NonNull;

mod check;
#[cfg(test)]
mod tests;

use crate::block::{
    ALIGN, BlockPtr, FRESH, HEADER, INHERITED, MAPPED, MAX_BLOCK, MIN_BLOCK, PREV_USED,
    PURGE_GEN_END, PURGED, USED, block_size_for,
};
use crate::diag::Misuse;
use crate::os::{MemorySource, Origin, PAGE, align_up};

/// Sizes below this have one bin per 16-byte step (exact fit).
const EXACT_LIMIT: usize = 1024;
/// Bins per power of two above [`EXACT_LIMIT`] (TLSF's second level).
const SUB_BINS: usize = 16;
const EXACT_BINS: usize = EXACT_LIMIT / ALIGN;
/// log2 of [`EXACT_LIMIT`].
const FIRST_LOG: usize = 10;
/// Total bins: exact bins, then 16 per power of two from 2^10 up to 2^47.
pub const NBINS: usize = EXACT_BINS + (48 - FIRST_LOG) * SUB_BINS;
const GROUPS: usize = NBINS / 16;
/// Most segments a heap tracks; mmap fallback segments double in size, so 64 covers any heap.
pub const MAX_SEGMENTS: usize = 64;

/// Default for [`CentralHeap::trim_threshold`] (glibc's `M_TRIM_THRESHOLD`).
pub const DEFAULT_TRIM_THRESHOLD: usize = 128 << 10;
/// Default for [`CentralHeap::top_pad`]: free bytes kept at the top after a trim, and extra
/// bytes asked for on each growth, so a program that hovers at a boundary does not call sbrk on
/// every allocation.
pub const DEFAULT_TOP_PAD: usize = 128 << 10;
/// Default for [`CentralHeap::purge_threshold`]: free runs this large have their whole pages
/// given back with `MADV_DONTNEED`.
pub const DEFAULT_PURGE_THRESHOLD: usize = 128 << 10;
/// Smallest free run worth purging: one with a whole page inside, clear of its header, links,
/// generation word and footer (`BlockPtr::purgeable`). Such runs carry a purge generation.
const PURGE_MIN: usize = 2 * PAGE + PURGE_GEN_END + 8;
/// Default for [`CentralHeap::dirty_slack`].
pub const DEFAULT_DIRTY_SLACK: usize = 64 << 20;
/// Default for [`CentralHeap::purge_interval`]: bytes freed between two purge passes.
pub const DEFAULT_PURGE_INTERVAL: usize = 4 << 20;

/// The bin of a free block of `size` bytes.
#[inline(always)]
pub const fn bin_index(size: usize) -> usize {
    if size < EXACT_LIMIT {
        size / ALIGN
    } else {
        let log = (usize::BITS - 1 - size.leading_zeros()) as usize;
        let sub = (size >> (log - 4)) & (SUB_BINS - 1);
        EXACT_BINS + (log - FIRST_LOG) * SUB_BINS + sub
    }
}

/// The first bin whose every block has at least `size` bytes (TLSF's round-up); may be
/// `>= NBINS` for sizes near [`MAX_BLOCK`].
#[inline(always)]
const fn bin_index_fit(size: usize) -> usize {
    if size < EXACT_LIMIT {
        size / ALIGN
    } else {
        let log = (usize::BITS - 1 - size.leading_zeros()) as usize;
        bin_index(size + (1 << (log - 4)) - 1)
    }
}

/// The first broken invariant found by [`CentralHeap::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapError {
    /// Which invariant (label and words).
    pub what: &'static str,
    /// The block or bin concerned.
    pub addr: usize,
}

/// Counters of the central heap, kept exactly (under the lock) and verified by `check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes of all segments.
    pub heap_bytes: usize,
    /// Bytes of in-use blocks (headers included).
    pub used_bytes: usize,
    /// Number of in-use blocks (thread-cached ones included).
    pub used_blocks: usize,
    /// Bytes of free blocks.
    pub free_bytes: usize,
    /// Number of free blocks.
    pub free_blocks: usize,
    /// Bytes of free blocks whose pages are purged or were never touched (`PURGED`/`FRESH`):
    /// `free_bytes - clean_bytes` is the dirty free memory still resident.
    pub clean_bytes: usize,
    /// Bytes given back by shrinking the break, over the heap's life.
    pub trimmed_bytes: usize,
    /// Bytes given back by unmapping whole fallback segments.
    pub released_bytes: usize,
    /// Bytes purged with `MADV_DONTNEED` (a range purged twice counts twice).
    pub purged_bytes: usize,
    /// Successful growths.
    pub grows: usize,
}

/// One contiguous piece of heap memory.
///
/// # Invariants
/// - G1: `[base, base + len)` came from the source; `base` is 16-aligned, `len` a multiple of 16.
/// - G2: the first block header is at `base + 8` (with `PREV_USED` set) and the sentinel (B4)
///   at `base + len - 8`; blocks tile the space in between (B1).
#[derive(Clone, Copy, Debug)]
struct Segment {
    base: *mut u8,
    len: usize,
    origin: Origin,
}

impl Segment {
    const EMPTY: Segment = Segment { base: core::ptr::null_mut(), len: 0, origin: Origin::Brk };

    fn start(&self) -> usize {
        self.base.addr()
    }

    fn end(&self) -> usize {
        self.base.addr() + self.len
    }

    fn first(&self) -> BlockPtr {
        // SAFETY: G1 — base is non-null for a live segment and base + 8 is inside it.
        BlockPtr::at(unsafe { NonNull::new_unchecked(self.base.add(8)) })
    }

    fn sentinel(&self) -> BlockPtr {
        // SAFETY: G1/G2 — the sentinel is the segment's last word.
        BlockPtr::at(unsafe { NonNull::new_unchecked(self.base.add(self.len - 8)) })
    }
}

/// The mutex-guarded heap behind every thread.
///
/// # Invariants
/// - C1: B1–B6 hold for every block of every segment (`block.rs`).
/// - C2: a block is in bin `i` iff it is free and `bin_index(size) == i`; each bin is a
///   doubly linked list through the blocks' links, `bins[i]` its head.
/// - C3: bit `i % 16` of `bin_maps[i / 16]` is set iff bin `i` is non-empty; bit `g` of
///   `group_map` is set iff `bin_maps[g] != 0`.
/// - C4: `segs[..nsegs]` are the live segments (G1, G2), pairwise disjoint; `[lo, hi)` covers
///   them all.
/// - C5: `stats` equals what a walk of the segments counts (checked by `check`).
/// - C6: a purge pass runs when at least `purge_interval` bytes were freed since the last one
///   and the dirty free memory exceeds four times the bytes in use plus `dirty_slack`; after it,
///   every free block of at least `purge_threshold` bytes is `PURGED` or `FRESH`: its whole
///   inner pages were purged or never touched (a performance assumption: breaking it only
///   costs RSS). The idle purge takes the runs unchanged for one `purge_delay_ms`; `trim`
///   takes every run.
pub struct CentralHeap<S> {
    source: S,
    group_map: u64,
    bin_maps: [u16; GROUPS],
    bins: [*mut u8; NBINS],
    segs: [Segment; MAX_SEGMENTS],
    nsegs: usize,
    lo: usize,
    hi: usize,
    stats: HeapStats,
    /// Bytes freed since the last purge pass.
    freed_since_purge: usize,
    /// Purge passes so far (C6: runs record the generation in which they last changed).
    purge_gen: usize,
    /// The last pass skipped a run for being too young.
    purge_pending: bool,
    /// A free tail of the break at least this large is given back (default 128 KiB).
    pub trim_threshold: usize,
    /// Bytes kept at the top after a trim, and added to each growth.
    pub top_pad: usize,
    /// Free runs at least this large are purged with `MADV_DONTNEED`.
    pub purge_threshold: usize,
    /// Bytes freed between two purge passes.
    pub purge_interval: usize,
    /// Dirty free memory kept beyond four times the bytes in use before a pass purges.
    pub dirty_slack: usize,
}

// SAFETY: the raw pointers all point into memory owned by this heap (C4); moving the heap to
// another thread moves that ownership. Shared access goes through a Mutex (`&mut self` only).
unsafe impl<S: Send> Send for CentralHeap<S> {}

impl<S: MemorySource> CentralHeap<S> {
    /// An empty heap over `source`; no memory is taken until the first allocation.
    pub const fn new(source: S) -> Self {
        Self {
            source,
            group_map: 0,
            bin_maps: [0; GROUPS],
            bins: [core::ptr::null_mut(); NBINS],
            segs: [Segment::EMPTY; MAX_SEGMENTS],
            nsegs: 0,
            lo: usize::MAX,
            hi: 0,
            stats: HeapStats {
                heap_bytes: 0,
                used_bytes: 0,
                used_blocks: 0,
                free_bytes: 0,
                free_blocks: 0,
                clean_bytes: 0,
                trimmed_bytes: 0,
                released_bytes: 0,
                purged_bytes: 0,
                grows: 0,
            },
            freed_since_purge: 0,
            purge_gen: 0,
            purge_pending: false,
            trim_threshold: DEFAULT_TRIM_THRESHOLD,
            top_pad: DEFAULT_TOP_PAD,
            purge_threshold: DEFAULT_PURGE_THRESHOLD,
            purge_interval: DEFAULT_PURGE_INTERVAL,
            dirty_slack: DEFAULT_DIRTY_SLACK,
        }
    }

    /// The memory source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The memory source, mutably (tests inject gaps and failures through it).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The counters (C5).
    pub fn stats(&self) -> HeapStats {
        self.stats
    }

    /// Number of live segments.
    pub fn segment_count(&self) -> usize {
        self.nsegs
    }

    // ---------------------------------------------------------------------------------------
    // Bins
    // ---------------------------------------------------------------------------------------

    fn head(&self, idx: usize) -> Option<BlockPtr> {
        NonNull::new(self.bins[idx]).map(BlockPtr::at)
    }

    /// Pushes free block `b` of `size` bytes onto its bin.
    ///
    /// # Safety
    /// `b` is a free block of this heap with header `size`, in no bin.
    unsafe fn bin_insert(&mut self, b: BlockPtr, size: usize) {
        let idx = bin_index(size);
        let old = self.head(idx);
        // SAFETY: `b` is free (contract), so its payload holds the links; `old` is the head of
        // the same bin (C2), a free block whose prev link we may rewrite.
        unsafe {
            b.set_links(None, old);
            if let Some(o) = old {
                o.set_prev_free(Some(b));
            }
            // C6: a purgeable run remembers the purge generation in which it last changed
            // (payload word 2, clear of links, footer and the pages a purge touches).
            if size >= PURGE_MIN && b.flags() & (FRESH | PURGED) == 0 {
                b.set_purge_gen(self.purge_gen);
            }
        }
        self.bins[idx] = b.ptr().as_ptr();
        self.bin_maps[idx / 16] |= 1 << (idx % 16);
        self.group_map |= 1 << (idx / 16);
        self.stats.free_bytes += size;
        self.stats.free_blocks += 1;
        // SAFETY: `b`'s header is valid (contract).
        if unsafe { b.flags() } & (PURGED | FRESH) != 0 {
            self.stats.clean_bytes += size;
        }
    }

    /// Unlinks free block `b` of `size` bytes from its bin.
    ///
    /// # Safety
    /// `b` is in bin `bin_index(size)` of this heap (C2).
    unsafe fn bin_remove(&mut self, b: BlockPtr, size: usize) {
        let idx = bin_index(size);
        // SAFETY: C2 — `b` and its list neighbours are free blocks of this bin.
        unsafe {
            let prev = b.prev_free();
            let next = b.next_free();
            if let Some(n) = next {
                n.set_prev_free(prev);
            }
            match prev {
                Some(p) => p.set_next_free(next),
                None => {
                    self.bins[idx] = next.map_or(core::ptr::null_mut(), |n| n.ptr().as_ptr());
                    if next.is_none() {
                        self.bin_maps[idx / 16] &= !(1 << (idx % 16));
                        if self.bin_maps[idx / 16] == 0 {
                            self.group_map &= !(1 << (idx / 16));
                        }
                    }
                }
            }
        }
        self.stats.free_bytes -= size;
        self.stats.free_blocks -= 1;
        // SAFETY: `b`'s header is valid (contract).
        if unsafe { b.flags() } & (PURGED | FRESH) != 0 {
            self.stats.clean_bytes -= size;
        }
    }

    /// The first non-empty bin at or after `idx` (C3), in O(1).
    fn find_bin(&self, idx: usize) -> Option<usize> {
        if idx >= NBINS {
            return None;
        }
        let g = idx / 16;
        let in_group = self.bin_maps[g] & (u16::MAX << (idx % 16));
        if in_group != 0 {
            return Some(g * 16 + in_group.trailing_zeros() as usize);
        }
        let groups = if g + 1 >= 64 { 0 } else { self.group_map & (u64::MAX << (g + 1)) };
        if groups == 0 {
            return None;
        }
        let g2 = groups.trailing_zeros() as usize;
        Some(g2 * 16 + self.bin_maps[g2].trailing_zeros() as usize)
    }

    /// Removes and returns a free block of at least `size` bytes, if one exists.
    fn take_free(&mut self, size: usize) -> Option<BlockPtr> {
        let idx = bin_index(size);
        // The head of the request's own bin often fits (always, below EXACT_LIMIT).
        if let Some(h) = self.head(idx) {
            // SAFETY: C2 — bin heads are free blocks of this heap.
            let hs = unsafe { h.size() };
            if hs >= size {
                // SAFETY: `h` is in bin `bin_index(hs)` (C2).
                unsafe { self.bin_remove(h, hs) };
                return Some(h);
            }
        }
        let i = self.find_bin(bin_index_fit(size))?;
        let h = self.head(i)?;
        // SAFETY: C2/C3 — a set bit means a non-empty bin of free blocks, all >= size.
        unsafe {
            let hs = h.size();
            self.bin_remove(h, hs);
        }
        Some(h)
    }

    // ---------------------------------------------------------------------------------------
    // Segments and growth
    // ---------------------------------------------------------------------------------------

    fn seg_index(&self, addr: usize) -> Option<usize> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        self.segs[..self.nsegs].iter().position(|s| s.start() <= addr && addr < s.end())
    }

    fn recompute_bounds(&mut self) {
        self.lo = usize::MAX;
        self.hi = 0;
        for s in &self.segs[..self.nsegs] {
            self.lo = self.lo.min(s.start());
            self.hi = self.hi.max(s.end());
        }
    }

    /// Whether `p` points into one of this heap's segments.
    pub fn owns(&self, p: *const u8) -> bool {
        self.seg_index(p.addr()).is_some()
    }

    /// Grows the heap so that a free block of `size` bytes exists. Returns false when the
    /// source refuses.
    #[cold]
    fn grow_for(&mut self, size: usize) -> bool {
        let Some(want) = size.checked_add(2 * ALIGN + self.top_pad) else { return false };
        let Some(g) = self.source.grow(want) else { return false };
        self.stats.grows += 1;
        self.stats.heap_bytes += g.len;
        let base = g.base.as_ptr();
        if g.origin == Origin::Brk {
            if let Some(i) = self.segs[..self.nsegs]
                .iter()
                .position(|s| s.origin == Origin::Brk && s.end() == base.addr())
            {
                self.extend_segment(i, g.len);
                return true;
            }
        }
        if self.nsegs == MAX_SEGMENTS {
            self.stats.heap_bytes -= g.len;
            match g.origin {
                // SAFETY: the whole fresh piece is unused.
                Origin::Mapped => unsafe { self.source.release(g.base, g.len) },
                Origin::Brk => {
                    // SAFETY: `g.base + g.len` is inside or one past the fresh piece.
                    let end = unsafe { g.base.add(g.len) };
                    self.source.shrink(end, g.len);
                }
            }
            return false;
        }
        let seg = Segment { base, len: g.len, origin: g.origin };
        self.segs[self.nsegs] = seg;
        self.nsegs += 1;
        self.recompute_bounds();
        let first = seg.first();
        let size = g.len - 2 * HEADER;
        // SAFETY: G2 — the fresh segment holds one free block and the sentinel; the memory is
        // zero (B6 holds for FRESH).
        unsafe {
            first.set_header(size, PREV_USED | FRESH);
            first.set_footer(size);
            seg.sentinel().set_header(0, USED);
            self.bin_insert(first, size);
        }
        true
    }

    /// Extends segment `i` by `len` fresh bytes that start at its end: the old sentinel becomes
    /// the header of a new free block, merged with a free last block.
    fn extend_segment(&mut self, i: usize, len: usize) {
        let old_sentinel = self.segs[i].sentinel();
        self.segs[i].len += len;
        let seg = self.segs[i];
        self.recompute_bounds();
        // SAFETY: the old sentinel's word and the fresh `len` bytes after it now belong to the
        // segment (G1); the new sentinel is its last word (G2).
        unsafe {
            let prev_used = old_sentinel.flags() & PREV_USED;
            seg.sentinel().set_header(0, USED);
            let mut b = old_sentinel;
            let mut size = len;
            let mut flags = PREV_USED | FRESH;
            if prev_used == 0 {
                // B2: the footer before the old sentinel gives the free last block.
                let ps = b.prev_footer();
                let p = b.offset_back(ps);
                self.bin_remove(p, ps);
                b = p;
                size += ps;
                // The old footer and sentinel words now sit inside the payload: not FRESH.
                flags = PREV_USED;
            }
            b.set_header(size, flags);
            b.set_footer(size);
            self.bin_insert(b, size);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Allocation
    // ---------------------------------------------------------------------------------------

    /// Marks the claimed free block `b` (removed from its bin) in use with `size` bytes,
    /// splitting the rest off as a free block when it can hold one.
    ///
    /// # Safety
    /// `b` is a free block of this heap in no bin, with `b.size() >= size`, `size` valid (B1).
    unsafe fn split_and_use(&mut self, b: BlockPtr, size: usize) {
        // SAFETY: `b` is a valid free block (contract); its physical next exists (B4).
        unsafe {
            let bs = b.size();
            let flags = b.flags();
            if bs - size >= MIN_BLOCK {
                let r = b.offset(size);
                // The remainder lies inside `b`'s payload; B6 carries over (see module docs).
                r.set_header(bs - size, PREV_USED | (flags & INHERITED));
                r.set_footer(bs - size);
                self.bin_insert(r, bs - size);
                b.set_header(size, USED | (flags & PREV_USED));
                self.stats.used_bytes += size;
            } else {
                b.set_header(bs, USED | (flags & PREV_USED));
                let n = b.next();
                n.set_flags(n.flags() | PREV_USED);
                self.stats.used_bytes += bs;
            }
        }
        self.stats.used_blocks += 1;
    }

    /// Allocates a block with at least `n` payload bytes, 16-byte aligned. With `zero`, the
    /// second value says whether the payload is already all zero (fresh memory).
    pub fn alloc(&mut self, n: usize, zero: bool) -> Option<(NonNull<u8>, bool)> {
        let size = block_size_for(n)?;
        let b = match self.take_free(size) {
            Some(b) => b,
            None => {
                if !self.grow_for(size) {
                    return None;
                }
                self.take_free(size)?
            }
        };
        // SAFETY: `take_free` returned a free block of this heap, out of its bin, >= size.
        unsafe {
            let fsize = b.size();
            let fresh = b.flags() & FRESH != 0;
            self.split_and_use(b, size);
            if zero && fresh {
                // B6: only the old links, and the old footer if no remainder was split off,
                // can be non-zero.
                let bs = b.size();
                b.zero_words(HEADER, (HEADER + 16).min(bs));
                if bs == fsize {
                    b.zero_words(bs - 8, bs);
                }
            }
            Some((b.to_user(), fresh))
        }
    }

    /// Allocates `n` bytes whose payload is aligned to `align` (a power of two above 16).
    pub fn alloc_aligned(&mut self, n: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two() && align > ALIGN);
        let size = block_size_for(n)?;
        let req = size.checked_add(align)?.checked_add(MIN_BLOCK)?;
        if req > MAX_BLOCK {
            return None;
        }
        let f = match self.take_free(req) {
            Some(b) => b,
            None => {
                if !self.grow_for(req) {
                    return None;
                }
                self.take_free(req)?
            }
        };
        // SAFETY: `f` is a claimed free block of at least `req` bytes; the leader and the
        // aligned block both lie inside it and each is >= MIN_BLOCK.
        unsafe {
            let fs = f.size();
            let flags = f.flags();
            let p0 = f.to_user().addr().get();
            let mut pa = align_up(p0, align)?;
            if pa != p0 && pa - p0 < MIN_BLOCK {
                pa += align;
            }
            let lead = pa - p0;
            let b = if lead == 0 {
                f
            } else {
                // The leader keeps `f`'s start (and its links): a free block of its own. Its
                // previous block is in use, as `f`'s was (B3).
                f.set_header(lead, flags & (PREV_USED | INHERITED));
                f.set_footer(lead);
                self.bin_insert(f, lead);
                let b = f.offset(lead);
                b.set_header(fs - lead, flags & INHERITED);
                b
            };
            self.split_and_use(b, size);
            Some(b.to_user())
        }
    }

    /// Carves up to `max` blocks of exactly `size` bytes from one free run, for a thread cache.
    /// Each is an in-use block as far as the heap knows; `link(block, next)` writes the cache's
    /// list link into each, lowest address first, so the returned head is the lowest block.
    /// Returns the first payload and the count; `(null, 0)` when out of memory. The last block
    /// absorbs a remainder too small to be a block.
    pub fn alloc_batch(
        &mut self,
        size: usize,
        max: usize,
        mut link: impl FnMut(NonNull<u8>, *mut u8),
    ) -> (*mut u8, usize) {
        debug_assert!(size >= MIN_BLOCK && size % ALIGN == 0 && max >= 1);
        let want = size.saturating_mul(max);
        let f = match self.take_free(want).or_else(|| self.take_free(size)) {
            Some(f) => f,
            None => {
                if !self.grow_for(want) && !self.grow_for(size) {
                    return (core::ptr::null_mut(), 0);
                }
                match self.take_free(want).or_else(|| self.take_free(size)) {
                    Some(f) => f,
                    None => return (core::ptr::null_mut(), 0),
                }
            }
        };
        // SAFETY: `f` is a claimed free block of at least `size` bytes; every carved block lies
        // inside it, and the remainder (if split) too.
        unsafe {
            let fs = f.size();
            let flags = f.flags();
            let k = max.min(fs / size);
            let rem = fs - k * size;
            let split = rem >= MIN_BLOCK;
            if split {
                let r = f.offset(k * size);
                r.set_header(rem, PREV_USED | (flags & INHERITED));
                r.set_footer(rem);
                self.bin_insert(r, rem);
            } else {
                let n = f.offset(fs);
                n.set_flags(n.flags() | PREV_USED);
            }
            let mut next: *mut u8 = core::ptr::null_mut();
            for i in (0..k).rev() {
                let b = f.offset(i * size);
                let bsize = if i == k - 1 && !split { size + rem } else { size };
                let prev = if i == 0 { flags & PREV_USED } else { PREV_USED };
                b.set_header(bsize, USED | prev);
                link(b.to_user(), next);
                next = b.to_user().as_ptr();
            }
            self.stats.used_bytes += if split { k * size } else { fs };
            self.stats.used_blocks += k;
            (next, k)
        }
    }

    /// Free bytes at the top of break segments (what a trim could give back; glibc's
    /// `keepcost`).
    pub fn top_free_bytes(&self) -> usize {
        let mut total = 0;
        for seg in &self.segs[..self.nsegs] {
            let sentinel = seg.sentinel();
            // SAFETY: G2 — the sentinel is valid; B2 gives the free last block's size.
            unsafe {
                if seg.origin == Origin::Brk && sentinel.flags() & PREV_USED == 0 {
                    total += sentinel.prev_footer();
                }
            }
        }
        total
    }

    /// Purges idle memory: every unpurged free run with a whole page inside that has not
    /// changed since the previous pass, and the free tops of the break, if anything was freed since the last pass. Returns whether
    /// it did anything (the idle purge of `purge_delay_ms`, and the background thread).
    pub fn purge_idle(&mut self) -> bool {
        if self.freed_since_purge == 0 && !self.purge_pending {
            return false;
        }
        let before = (self.stats.purged_bytes, self.stats.trimmed_bytes, self.stats.released_bytes);
        self.purge_runs(true);
        for i in 0..self.nsegs {
            self.trim_segment(i, self.top_pad);
        }
        before != (self.stats.purged_bytes, self.stats.trimmed_bytes, self.stats.released_bytes)
    }

    /// The address range `[lo, hi)` that covers every segment (empty before the first growth).
    pub fn bounds(&self) -> (usize, usize) {
        (self.lo, self.hi)
    }

    // ---------------------------------------------------------------------------------------
    // Free
    // ---------------------------------------------------------------------------------------

    /// Validates that `p` is the payload of an in-use block of this heap; returns the block and
    /// its segment.
    fn validate_used(&self, p: NonNull<u8>) -> Result<(BlockPtr, usize), Misuse> {
        let addr = p.addr().get();
        let si = self.seg_index(addr).ok_or(Misuse::NotOurs)?;
        let seg = &self.segs[si];
        if addr % ALIGN != 0 || addr < seg.start() + 2 * HEADER || addr + MIN_BLOCK > seg.end() {
            return Err(Misuse::InvalidPointer);
        }
        // SAFETY: `addr - 8` lies inside the segment (checked above).
        let b = unsafe { BlockPtr::from_user(p) };
        // SAFETY: the header word is inside the segment, hence readable.
        let h = unsafe { b.header() };
        if !b.tag_ok(h) {
            return Err(Misuse::BadHeader);
        }
        if h & USED == 0 {
            return Err(Misuse::DoubleFree);
        }
        if h & MAPPED != 0 {
            return Err(Misuse::BadHeader);
        }
        let size = BlockPtr::size_of(h);
        if size < MIN_BLOCK || b.addr() + size > seg.end() - HEADER {
            return Err(Misuse::BadHeader);
        }
        // SAFETY: `b + size` is at most the sentinel (checked), inside the segment.
        let next = unsafe { b.offset(size) };
        // SAFETY: as above.
        let nh = unsafe { next.header() };
        if !next.tag_ok(nh) || nh & PREV_USED == 0 {
            return Err(Misuse::CorruptTags);
        }
        Ok((b, si))
    }

    /// Frees the payload `p`.
    ///
    /// # Errors
    /// [`Misuse`] when `p` is not an in-use block of this heap, or its neighbours' tags are
    /// broken; the heap is left unchanged then.
    pub fn free(&mut self, p: NonNull<u8>) -> Result<(), Misuse> {
        let (b, si) = self.validate_used(p)?;
        // SAFETY: validated: `b` is an in-use block of segment `si`.
        unsafe { self.release_block(b, si) }
    }

    /// Returns in-use block `b` of segment `si` to the bins, merging with free neighbours (B3),
    /// purging large runs (C6) and trimming the top.
    ///
    /// # Safety
    /// `b` is an in-use block of segment `si`, checked by `validate_used`.
    unsafe fn release_block(&mut self, b: BlockPtr, si: usize) -> Result<(), Misuse> {
        let seg = self.segs[si];
        // SAFETY: contract; neighbours are reached through validated tags (B1, B2), each
        // checked before use.
        unsafe {
            let bs = b.size();
            let mut start = b;
            let mut size = bs;
            let next = b.offset(bs);
            let nh = next.header();
            let mut prev = None;
            if b.flags() & PREV_USED == 0 {
                let ps = b.prev_footer();
                if ps < MIN_BLOCK || ps % ALIGN != 0 || ps > b.addr() - seg.first().addr() {
                    return Err(Misuse::CorruptTags);
                }
                let pb = b.offset_back(ps);
                let ph = pb.header();
                if !pb.tag_ok(ph) || ph & USED != 0 || BlockPtr::size_of(ph) != ps {
                    return Err(Misuse::CorruptTags);
                }
                prev = Some((pb, ps));
            }
            let mut next_free = None;
            if nh & USED == 0 {
                let ns = BlockPtr::size_of(nh);
                if ns < MIN_BLOCK || next.addr() + ns > seg.end() - HEADER {
                    return Err(Misuse::CorruptTags);
                }
                if next.offset(ns).prev_footer() != ns {
                    return Err(Misuse::CorruptTags);
                }
                next_free = Some(ns);
            }
            // All checks passed: from here on the heap changes.
            self.stats.used_bytes -= bs;
            self.stats.used_blocks -= 1;
            // C6: a run that absorbs this block keeps the age of its oldest large part, so a
            // big idle run that keeps growing by small frees still gets purged.
            let mut generation = None;
            if let Some((pb, ps)) = prev {
                generation = self.older_gen(generation, pb, ps);
            }
            if let Some(ns) = next_free {
                generation = self.older_gen(generation, next, ns);
            }
            if let Some((pb, ps)) = prev {
                self.bin_remove(pb, ps);
                start = pb;
                size += ps;
            }
            if let Some(ns) = next_free {
                self.bin_remove(next, ns);
                size += ns;
            }
            // B3: `start`'s previous block is in use, since free blocks never touch.
            start.set_header(size, PREV_USED);
            start.set_footer(size);
            let after = start.offset(size);
            after.set_flags(after.flags() & !PREV_USED);
            self.bin_insert(start, size);
            if let Some(g) = generation
                && size >= PURGE_MIN
            {
                start.set_purge_gen(g);
            }
            self.freed_since_purge += bs;
            if self.freed_since_purge >= self.purge_interval
                && size >= self.purge_threshold
                && self.too_dirty()
            {
                self.purge_large_runs();
            }
            if after.size() == 0 && size >= self.trim_threshold {
                self.trim_segment(si, self.top_pad);
            }
        }
        Ok(())
    }

    /// The older of `generation` and the purge generation of free block `b` (`size` bytes), if `b` is
    /// a purgeable run; a purged or fresh run counts as older than any live generation.
    ///
    /// # Safety
    /// `b` is a free block of this heap of `size` bytes.
    unsafe fn older_gen(
        &self,
        generation: Option<usize>,
        b: BlockPtr,
        size: usize,
    ) -> Option<usize> {
        if size < PURGE_MIN {
            return generation;
        }
        // SAFETY: forwarded contract; runs this large carry the generation word (bin_insert).
        let g = unsafe {
            if b.flags() & (PURGED | FRESH) != 0 {
                self.purge_gen.wrapping_sub(1)
            } else {
                b.purge_gen()
            }
        };
        let age = |x: usize| self.purge_gen.wrapping_sub(x);
        Some(match generation {
            Some(old) if age(old) >= age(g) => old,
            _ => g,
        })
    }

    /// Purges the inner pages of every free block of at least `purge_threshold` bytes that is
    /// neither `PURGED` nor `FRESH` (C6). Runs once per `purge_interval` bytes freed, when a
    /// free leaves such a block, so a program that frees a lot gets its RSS back without a
    /// syscall on every `free`.
    fn purge_large_runs(&mut self) {
        self.purge_runs(false);
    }

    /// The purge pass. Runs that changed since the previous pass (generation `purge_gen`) are
    /// skipped: a run freed a moment ago is likely reused soon, and purging it would only trade
    /// a `madvise` now for page faults then (jemalloc's decay, by passes).
    fn purge_runs(&mut self, idle: bool) {
        self.freed_since_purge = 0;
        let current = self.purge_gen;
        if idle {
            self.purge_pending = false;
            self.purge_gen = self.purge_gen.wrapping_add(1);
        }
        // The idle purge takes every run with a whole page inside that stayed unchanged for a
        // whole `purge_delay_ms`; the passes during activity (the heap shrank a lot) take every
        // large run at once.
        let min = if idle { PURGE_MIN } else { self.purge_threshold };
        let mut idx = bin_index(min);
        while let Some(i) = self.find_bin(idx) {
            let mut cur = self.head(i);
            while let Some(b) = cur {
                // SAFETY: C2 — bin members are free blocks of this heap.
                unsafe {
                    let size = b.size();
                    cur = b.next_free();
                    if size >= min && b.flags() & (PURGED | FRESH) == 0 {
                        if !idle || b.purge_gen() != current {
                            self.purge_block(b, size);
                        } else {
                            // Too young this time: the next idle pass must come back for it.
                            self.purge_pending = true;
                        }
                    }
                }
            }
            idx = i + 1;
        }
    }

    /// Purges the whole pages of free block `b`'s payload, clear of its header, links and
    /// footer, and marks it `PURGED`. Purged memory is not known to read as zero on every
    /// source, so FRESH goes.
    ///
    /// # Safety
    /// `b` is a free block of this heap of `size` bytes.
    unsafe fn purge_block(&mut self, b: BlockPtr, size: usize) {
        let (from, to) = b.purgeable(size);
        self.purge_range(from, to);
        // SAFETY: forwarded contract.
        unsafe {
            if b.flags() & (PURGED | FRESH) == 0 {
                self.stats.clean_bytes += size;
            }
            b.set_flags((b.flags() & !FRESH) | PURGED);
        }
    }

    /// Whether the dirty free memory (free, resident, not purged) exceeds what the heap keeps
    /// for reuse: four times the bytes in use, plus `dirty_slack`. A heap that churns a working set
    /// keeps its free memory (purging it would only turn into page faults when it is reused;
    /// the idle purge returns it once the program stops using it); one that freed most of
    /// itself returns it at once (jemalloc's old `lg_dirty_mult`, on free bytes).
    fn too_dirty(&self) -> bool {
        let dirty = self.stats.free_bytes - self.stats.clean_bytes;
        dirty > 4 * self.stats.used_bytes + self.dirty_slack
    }

    /// Purges the whole pages inside `[lo, hi)`.
    fn purge_range(&mut self, lo: usize, hi: usize) {
        let (Some(plo), phi) = (align_up(lo, PAGE), hi & !(PAGE - 1)) else { return };
        if phi > plo {
            let Some(si) = self.seg_index(plo) else { return };
            // SAFETY: `plo` lies in segment `si`, so the offset stays inside it (G1).
            let start = unsafe {
                NonNull::new_unchecked(self.segs[si].base.add(plo - self.segs[si].start()))
            };
            // SAFETY: the pages lie inside one free block's payload, clear of its metadata.
            unsafe { self.source.purge(start, phi - plo) };
            self.stats.purged_bytes += phi - plo;
        }
    }

    /// Gives the free tail of segment `si` back to the OS, keeping `pad` bytes: shrinks the
    /// break for a `Brk` segment, or unmaps a wholly free `Mapped` segment when another wholly
    /// free one is kept anyway. Returns whether memory went back.
    fn trim_segment(&mut self, si: usize, pad: usize) -> bool {
        let seg = self.segs[si];
        let sentinel = seg.sentinel();
        // SAFETY: G2 — the sentinel is valid; B2 gives the free last block, if any.
        unsafe {
            if sentinel.flags() & PREV_USED != 0 {
                return false;
            }
            let ts = sentinel.prev_footer();
            let tail = sentinel.offset_back(ts);
            match seg.origin {
                Origin::Brk => {
                    let keep = pad.saturating_add(MIN_BLOCK);
                    if ts <= keep {
                        return false;
                    }
                    let cut = (ts - keep) & !(PAGE - 1);
                    if cut == 0 {
                        return false;
                    }
                    let end = NonNull::new_unchecked(seg.base.add(seg.len));
                    if !self.source.shrink(end, cut) {
                        return false;
                    }
                    self.bin_remove(tail, ts);
                    self.segs[si].len -= cut;
                    self.recompute_bounds();
                    self.stats.heap_bytes -= cut;
                    self.stats.trimmed_bytes += cut;
                    let ns = ts - cut;
                    let tflags = tail.flags() & (PREV_USED | INHERITED);
                    tail.set_header(ns, tflags);
                    tail.set_footer(ns);
                    self.segs[si].sentinel().set_header(0, USED);
                    self.bin_insert(tail, ns);
                    true
                }
                Origin::Mapped => {
                    if tail != seg.first() || ts != seg.len - 2 * HEADER {
                        return false;
                    }
                    let other_empty = (0..self.nsegs).any(|j| j != si && self.segment_is_empty(j));
                    if !other_empty {
                        return false;
                    }
                    self.bin_remove(tail, ts);
                    self.source.release(NonNull::new_unchecked(seg.base), seg.len);
                    self.stats.heap_bytes -= seg.len;
                    self.stats.released_bytes += seg.len;
                    self.segs[si] = self.segs[self.nsegs - 1];
                    self.nsegs -= 1;
                    self.recompute_bounds();
                    true
                }
            }
        }
    }

    fn segment_is_empty(&self, si: usize) -> bool {
        let seg = self.segs[si];
        let first = seg.first();
        // SAFETY: G2 — the first block's header is valid.
        let h = unsafe { first.header() };
        h & USED == 0 && BlockPtr::size_of(h) == seg.len - 2 * HEADER
    }

    /// Gives back all the memory it can: the free top of every `Brk` segment beyond `pad`,
    /// wholly free fallback segments (one is kept), and the whole pages inside every free
    /// block. Returns whether anything went back (glibc's `malloc_trim`).
    pub fn trim(&mut self, pad: usize) -> bool {
        let mut released = false;
        let mut i = 0;
        while i < self.nsegs {
            let before = self.nsegs;
            released |= self.trim_segment(i, pad);
            if self.nsegs == before {
                i += 1;
            }
        }
        let purged_before = self.stats.purged_bytes;
        for idx in 0..NBINS {
            let mut cur = self.head(idx);
            while let Some(b) = cur {
                // SAFETY: C2 — bin members are free blocks of this heap.
                unsafe {
                    let size = b.size();
                    cur = b.next_free();
                    self.purge_block(b, size);
                }
            }
        }
        released || self.stats.purged_bytes != purged_before
    }

    // ---------------------------------------------------------------------------------------
    // Realloc and queries
    // ---------------------------------------------------------------------------------------

    /// Usable bytes of the in-use block at `p` (at least what was asked for).
    ///
    /// # Errors
    /// As [`Self::free`].
    pub fn usable_size(&self, p: NonNull<u8>) -> Result<usize, Misuse> {
        let (b, _) = self.validate_used(p)?;
        // SAFETY: validated header.
        Ok(unsafe { b.size() } - HEADER)
    }

    /// Resizes the block at `p` to hold `n` bytes without moving it: shrinks (splitting off
    /// the rest), or grows into a free next neighbour. Returns whether it succeeded; on `false`
    /// the block is unchanged.
    ///
    /// # Errors
    /// As [`Self::free`].
    pub fn resize_in_place(&mut self, p: NonNull<u8>, n: usize) -> Result<bool, Misuse> {
        let (b, si) = self.validate_used(p)?;
        let Some(size) = block_size_for(n) else { return Ok(false) };
        // SAFETY: `b` is a validated in-use block of segment `si`; its next block is valid.
        unsafe {
            let bs = b.size();
            let pflags = b.flags() & PREV_USED;
            let mut have = bs;
            if size <= bs && bs - size >= MIN_BLOCK {
                // The split-off rest merges with a free next block: check its footer before
                // anything changes.
                let next = b.offset(bs);
                let nh = next.header();
                let ns = BlockPtr::size_of(nh);
                if nh & USED == 0 && next.offset(ns).prev_footer() != ns {
                    return Err(Misuse::CorruptTags);
                }
            }
            if size > bs {
                let next = b.offset(bs);
                let nh = next.header();
                let ns = BlockPtr::size_of(nh);
                if nh & USED != 0 || bs + ns < size {
                    return Ok(false);
                }
                if next.offset(ns).prev_footer() != ns {
                    return Err(Misuse::CorruptTags);
                }
                self.bin_remove(next, ns);
                have = bs + ns;
                b.set_header(have, USED | pflags);
                let after = b.offset(have);
                after.set_flags(after.flags() | PREV_USED);
                self.stats.used_bytes += ns;
            }
            if have - size >= MIN_BLOCK {
                let r = b.offset(size);
                b.set_header(size, USED | pflags);
                r.set_header(have - size, USED | PREV_USED);
                // The remainder is counted as an in-use block (its bytes already are), then
                // freed, merging forward.
                self.stats.used_blocks += 1;
                self.release_block(r, si)?;
            }
        }
        Ok(true)
    }
}
