//! The central heap: boundary-tag blocks in segments from a [`MemorySource`], split on
//! allocation, eager merge on free. This file holds the heap, its segments and the block
//! operations; its seams are files of their own: `central/bins.rs` (segregated free bins with a
//! two-level bitmap), `central/purge.rs` (when and how free memory goes back to the OS: trim at
//! the top of the break, purge of large free runs anywhere), `central/check.rs` (the walker).
//!
//! `CentralHeap` has no interior mutability: every method takes `&mut self`, and the process-wide
//! heap lives in a [`crate::sync::Mutex`], so holding `&mut CentralHeap` proves the lock is held.
//! Misuse (double free, a pointer we never handed out, broken tags) is returned as [`Misuse`];
//! the caller releases the lock and reports it.

use core::ptr::NonNull;

mod bins;
mod check;
mod purge;
mod sampled;
#[cfg(test)]
mod tests;

use bins::GROUPS;
pub use bins::{NBINS, bin_index};
use purge::{PURGE_MIN, ReturnFeedback};

use crate::block::{
    ALIGN, BlockPtr, FRESH, HEADER, INHERITED, MAPPED, MAX_BLOCK, MIN_BLOCK, PREV_USED, PURGED,
    USED, block_size_for,
};
use crate::diag::Misuse;
use crate::os::{MemorySource, Origin, align_up};

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
/// Default for [`CentralHeap::dirty_slack`].
pub const DEFAULT_DIRTY_SLACK: usize = 64 << 20;
/// Default for [`CentralHeap::purge_interval`]: bytes freed between two purge passes.
pub const DEFAULT_PURGE_INTERVAL: usize = 4 << 20;

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
        // SAFETY: G1 — base is non-null for a live segment of at least 16 bytes.
        unsafe { BlockPtr::first_in_segment(NonNull::new_unchecked(self.base)) }
    }

    fn sentinel(&self) -> BlockPtr {
        // SAFETY: G1/G2 — a live segment; the sentinel is its last word.
        unsafe { BlockPtr::sentinel_of_segment(NonNull::new_unchecked(self.base), self.len) }
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
///   and the dirty free memory exceeds four times the bytes in use plus `dirty_slack` (doubled
///   per level of the return feedback, `central/purge.rs`); after it,
///   every free block of at least `purge_threshold` bytes is `PURGED` or `FRESH`: its whole
///   inner pages were purged or never touched, unless the source refused the purge (a
///   performance assumption: breaking it only costs RSS). The idle purge takes the runs unchanged for one `purge_delay_ms`; `trim`
///   takes every run.
/// - C7: while its size is held ([`CentralHeap::hold_size`]), the heap takes nothing from its
///   source and gives nothing back (no growth, no trim, no purge).
/// - C8: a heap whose options were never set ([`CentralHeap::unconfigured`]) has no segment:
///   its options take their defaults before its first growth ([`CentralHeap::configure`]).
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
    /// Hysteresis of the free path's trims and purges (`central/purge.rs`).
    returns: ReturnFeedback,
    /// C8: the options hold their defaults or what was set.
    configured: bool,
    /// C7: while set, the heap neither grows nor gives memory back ([`Self::hold_size`]).
    size_held: bool,
}

// SAFETY: the raw pointers all point into memory owned by this heap (C4); moving the heap to
// another thread moves that ownership. Shared access goes through a Mutex (`&mut self` only).
unsafe impl<S: Send> Send for CentralHeap<S> {}

/// Free runs a batch refill may carve from (`CentralHeap::alloc_batch`).
pub const BATCH_RUNS: usize = 8;

impl<S: MemorySource> CentralHeap<S> {
    /// An empty heap over `source`; no memory is taken until the first allocation.
    pub const fn new(source: S) -> Self {
        let mut h = Self::unconfigured(source);
        h.set_defaults();
        h
    }

    const fn set_defaults(&mut self) {
        (self.trim_threshold, self.top_pad) = (DEFAULT_TRIM_THRESHOLD, DEFAULT_TOP_PAD);
        (self.purge_threshold, self.purge_interval, self.dirty_slack) =
            (DEFAULT_PURGE_THRESHOLD, DEFAULT_PURGE_INTERVAL, DEFAULT_DIRTY_SLACK);
        self.configured = true;
    }

    /// An empty heap whose options are zero until [`Self::configure`] or its first growth
    /// gives them their defaults (C8). Over a zero-byte source it is all zero bytes, so the
    /// process's heap (and the middle layer beside it, 80 KiB) lives in `.bss`: only the pages
    /// it writes become resident, where `.data` brought in the whole 64 KiB window of the file
    /// around the first page read (fault-around).
    pub const fn unconfigured(source: S) -> Self {
        Self {
            source,
            group_map: 0,
            bin_maps: [0; GROUPS],
            bins: [core::ptr::null_mut(); NBINS],
            segs: [Segment::EMPTY; MAX_SEGMENTS],
            nsegs: 0,
            lo: 0,
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
            trim_threshold: 0,
            top_pad: 0,
            purge_threshold: 0,
            purge_interval: 0,
            dirty_slack: 0,
            returns: ReturnFeedback::new(),
            configured: false,
            size_held: false,
        }
    }

    /// Gives the options their defaults if nothing did yet (C8): before the options are set
    /// from outside, and before the first growth.
    pub fn configure(&mut self) {
        if !self.configured {
            self.set_defaults();
        }
    }

    /// While `hold` (C7), an allocation that would grow the heap fails instead, and a free
    /// neither trims nor purges: a thread cache's refill tries so first, and the middle layer
    /// returns batches to merge before the heap may grow (`Backend::central_refill`, TR7); the
    /// runs they merge into stay for the refill that needed them.
    pub fn hold_size(&mut self, hold: bool) {
        self.size_held = hold;
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
    // Segments and growth
    // ---------------------------------------------------------------------------------------

    fn seg_index(&self, addr: usize) -> Option<usize> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        self.segs[..self.nsegs].iter().position(|s| s.start() <= addr && addr < s.end())
    }

    /// `[lo, hi)` over the segments (C4); `[0, 0)` without any, as in a new heap (C8).
    fn recompute_bounds(&mut self) {
        let segs = &self.segs[..self.nsegs];
        self.lo = segs.iter().map(Segment::start).min().unwrap_or(0);
        self.hi = segs.iter().map(Segment::end).max().unwrap_or(0);
    }

    /// Whether `p` points into one of this heap's segments.
    pub fn owns(&self, p: *const u8) -> bool {
        self.seg_index(p.addr()).is_some()
    }

    /// Grows the heap so that a free block of `size` bytes exists. Returns false when the
    /// source refuses.
    #[cold]
    fn grow_for(&mut self, size: usize) -> bool {
        self.configure();
        if self.size_held {
            return false;
        }
        let Some(want) = size.checked_add(2 * ALIGN + self.top_pad) else { return false };
        let Some(g) = self.source.grow(want) else { return false };
        self.stats.grows += 1;
        self.stats.heap_bytes += g.len;
        // SAFETY: no block given.
        unsafe { self.note_reuse(None, g.len) };
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
            // If the OS refuses to take the piece back it stays mapped and unused (a leak of
            // one growth, with 64 segments in use already).
            match g.origin {
                // SAFETY: the whole fresh piece is unused.
                Origin::Mapped => unsafe { self.source.release(g.base, g.len) },
                Origin::Brk => {
                    // SAFETY: `g.base + g.len` is inside or one past the fresh piece.
                    let end = unsafe { g.base.add(g.len) };
                    self.source.shrink(end, g.len)
                }
            };
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

    /// A free block of at least `size` bytes, out of its bin; the heap grows once if none fits.
    fn take_or_grow(&mut self, size: usize) -> Option<BlockPtr> {
        match self.take_free(size) {
            Some(b) => Some(b),
            None if self.grow_for(size) => self.take_free(size),
            None => None,
        }
    }

    /// Allocates a block with at least `n` payload bytes, 16-byte aligned. With `zero`, the
    /// second value says whether the payload is already all zero (fresh memory).
    pub fn alloc(&mut self, n: usize, zero: bool) -> Option<(NonNull<u8>, bool)> {
        let size = block_size_for(n)?;
        let b = self.take_or_grow(size)?;
        // SAFETY: `take_free` returned a free block of this heap, out of its bin, >= size.
        unsafe {
            let fsize = b.size();
            let fresh = b.flags() & FRESH != 0;
            self.note_reuse(Some(b), size);
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
        let f = self.take_or_grow(req)?;
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

    /// Carves up to `max` blocks of exactly `size` bytes, for a thread cache: from one free run
    /// that holds them all if there is one, else from up to [`BATCH_RUNS`] smaller runs (a
    /// fragmented heap still fills a whole batch under one lock acquisition), growing the heap
    /// only when no run holds even one block. Each is an in-use block as far as the heap knows;
    /// `link(block, next)` writes the cache's list link into each, lowest address first within
    /// a run, so the returned head is the lowest block of the last run carved. Returns the
    /// first payload and the count; `(null, 0)` when out of memory. The last block of a run
    /// absorbs a remainder too small to be a block.
    pub fn alloc_batch(
        &mut self,
        size: usize,
        max: usize,
        mut link: impl FnMut(NonNull<u8>, *mut u8),
    ) -> (*mut u8, usize) {
        debug_assert!(size >= MIN_BLOCK && size % ALIGN == 0 && max >= 1);
        let (mut head, mut n) = (core::ptr::null_mut(), 0);
        for _ in 0..BATCH_RUNS {
            let want = size.saturating_mul(max - n);
            let f = match self.take_free(want).or_else(|| self.take_free(size)) {
                Some(f) => f,
                None if n > 0 => break,
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
            // SAFETY: `take_free` claimed `f`, a free block of at least `size` bytes.
            let k = unsafe { self.carve_run(f, size, max - n, &mut head, &mut link) };
            n += k;
            if n == max {
                break;
            }
        }
        (head, n)
    }

    /// Carves up to `max` blocks of `size` bytes from the claimed free block `f`, linking them
    /// in front of the list `*head`; returns how many.
    ///
    /// # Safety
    /// `f` is a free block of at least `size` bytes just taken out of its bin.
    unsafe fn carve_run(
        &mut self,
        f: BlockPtr,
        size: usize,
        max: usize,
        head: &mut *mut u8,
        link: &mut impl FnMut(NonNull<u8>, *mut u8),
    ) -> usize {
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
            let mut next = *head;
            for i in (0..k).rev() {
                let b = f.offset(i * size);
                let bsize = if i == k - 1 && !split { size + rem } else { size };
                let prev = if i == 0 { flags & PREV_USED } else { PREV_USED };
                b.set_header(bsize, USED | prev);
                link(b.to_user(), next);
                next = b.to_user().as_ptr();
            }
            *head = next;
            self.stats.used_bytes += if split { k * size } else { fs };
            self.stats.used_blocks += k;
            k
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
        if !unsafe { b.successor_sees_used(size) } {
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
                && !self.size_held
                && size >= self.purge_threshold
                && self.too_dirty()
            {
                self.purge_large_runs();
            }
            if after.size() == 0 && size >= self.trim_threshold && !self.size_held {
                self.trim_freed_top(si);
            }
        }
        Ok(())
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
