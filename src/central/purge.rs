//! When the central heap gives memory back to the OS: the top of a break segment is trimmed
//! when a free leaves a large free tail; large free runs anywhere are purged with
//! `MADV_DONTNEED` (in passes, by generation: C6); wholly free fallback segments are unmapped;
//! `trim` (glibc's `malloc_trim`) does all of it at once. The policy (`too_dirty`, the purge
//! generations, the return feedback) is here; the heap calls in from its free path.
//!
//! The return feedback is the hysteresis of the free path. A program whose heap usage swings
//! (large buffers replaced one by one: the harness's `large` workload) made the free path trim
//! the top and purge every large run on each dip, and fault the same pages back on the next
//! rise (445–535 k minor faults where tcmalloc takes 59 k). When at least half of what the
//! free path gave back is taken again (heap growth, allocations from purged runs or of at
//! least `purge_threshold` bytes) before the next return, and the returns were no small swing
//! (at least `dirty_slack / 8`), the level rises to
//! `MAX_RETURN_LEVEL`: the dirty bound becomes `dirty_slack << level` and the top is trimmed
//! on free only when the heap is too dirty. A purge pass due while the heap allocated large
//! blocks for half of what it freed since the last one (churn) raises the level first, so
//! the first dip of a churning program costs no pass. Returns that nothing takes again lower the level
//! one step, and so does every idle pass (the decay of `purge_delay_ms`), so a program that
//! frees most of its heap for good still gets it back at once (`tests/c/trim.c`).

use core::ptr::NonNull;

use super::{CentralHeap, NBINS, bin_index};
use crate::block::{
    BlockPtr, FRESH, HEADER, INHERITED, MIN_BLOCK, PREV_USED, PURGE_GEN_END, PURGED, USED,
};
use crate::os::{MemorySource, Origin, PAGE, align_up};

/// Smallest free run worth purging: one with a whole page inside, clear of its header, links,
/// generation word and footer (`BlockPtr::purgeable`). Such runs carry a purge generation.
pub(super) const PURGE_MIN: usize = 2 * PAGE + PURGE_GEN_END + 8;

/// Most doublings of `dirty_slack` the return feedback reaches (4×: 256 MiB by default).
pub(super) const MAX_RETURN_LEVEL: u32 = 2;

/// Returns smaller than `dirty_slack / MIN_SWING_DIV` (8 MiB by default) never raise the level.
const MIN_SWING_DIV: usize = 8;

/// What the free path gave back and what was taken again since (see the module docs).
///
/// # Invariants
/// - `level <= MAX_RETURN_LEVEL`.
/// - `returned` counts the bytes trimmed or purged by the free path since the level last rose
///   (or the last idle pass); `reused` the bytes of heap growth and of allocations that count
///   as reuse (`CentralHeap::note_reuse`) since `returned` last became non-zero (zero while
///   `returned` is).
/// - `churn` counts the bytes of allocations of at least `purge_threshold` bytes since the last
///   purge pass, never more than the heap's `freed_since_purge`.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReturnFeedback {
    returned: usize,
    reused: usize,
    churn: usize,
    level: u32,
}

impl ReturnFeedback {
    /// No returns yet, level 0 (the plain dirty bound and glibc's trim on free).
    pub(super) const fn new() -> Self {
        Self { returned: 0, reused: 0, churn: 0, level: 0 }
    }

    /// The free path gave `n` bytes back. Earlier returns that nothing reused lower the level.
    fn note_return(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.returned > 0 && self.reused * 8 < self.returned {
            self.level = self.level.saturating_sub(1);
        }
        self.returned += n;
    }

    /// `n` bytes were taken again (heap growth, a purged run allocated). Once half of what was
    /// given back is taken again, the level goes straight to the top (measured on the
    /// harness's `large` workload, one step at a time still lets a pass purge most of the heap
    /// once) if the returns reached `min_swing` bytes; smaller swings are forgiven (glibc's
    /// behaviour: on the harness's `mixed` workload, keeping its 1–3 MiB tops saved 28 k page
    /// faults of 37 k but raised the peak RSS by 2 MiB, 9 %).
    fn note_reuse(&mut self, n: usize, min_swing: usize) {
        if self.returned == 0 {
            return;
        }
        self.reused += n;
        if self.reused * 2 >= self.returned {
            let level = if self.returned >= min_swing { MAX_RETURN_LEVEL } else { self.level };
            *self = Self { level, ..Self::new() };
        }
    }

    /// An idle pass ran: the program paused, so the feedback starts over one level lower.
    fn decay(&mut self) {
        *self = Self { level: self.level.saturating_sub(1), ..Self::new() };
    }
}

impl<S: MemorySource> CentralHeap<S> {
    /// Purges idle memory: every unpurged free run with a whole page inside that has not
    /// changed since the previous pass, and the free tops of the break, if anything was freed since the last pass. Returns whether
    /// it did anything (the idle purge of `purge_delay_ms`, and the background thread).
    pub fn purge_idle(&mut self) -> bool {
        if self.freed_since_purge == 0 && !self.purge_pending {
            return false;
        }
        let before = (self.stats.purged_bytes, self.stats.trimmed_bytes, self.stats.released_bytes);
        self.returns.decay();
        self.purge_runs(true);
        self.trim_segments(self.top_pad);
        before != (self.stats.purged_bytes, self.stats.trimmed_bytes, self.stats.released_bytes)
    }

    /// The older of `generation` and the purge generation of free block `b` (`size` bytes), if `b` is
    /// a purgeable run; a purged or fresh run counts as older than any live generation.
    ///
    /// # Safety
    /// `b` is a free block of this heap of `size` bytes.
    pub(super) unsafe fn older_gen(
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
    ///
    /// A heap that allocated large blocks for at least half of what it freed since the last pass
    /// is churning, not shrinking: the feedback goes to the top level first (the pass would be
    /// regretted), and the pass runs only if the heap is too dirty even then.
    pub(super) fn purge_large_runs(&mut self) {
        if self.returns.churn * 2 >= self.freed_since_purge && self.returns.level < MAX_RETURN_LEVEL
        {
            self.returns = ReturnFeedback { level: MAX_RETURN_LEVEL, ..ReturnFeedback::new() };
            if !self.too_dirty() {
                // The next idle pass must still come for these runs.
                self.freed_since_purge = 0;
                self.purge_pending = true;
                return;
            }
        }
        let before = self.stats.purged_bytes;
        self.purge_runs(false);
        self.returns.note_return(self.stats.purged_bytes - before);
    }

    /// The free path left a free top of at least `trim_threshold` bytes in segment `si`:
    /// trims it (glibc's `M_TRIM_THRESHOLD`), unless the return feedback says the heap takes
    /// such memory back soon and the heap is not too dirty.
    pub(super) fn trim_freed_top(&mut self, si: usize) {
        if self.returns.level > 0 && !self.too_dirty() {
            return;
        }
        let before = self.stats.trimmed_bytes + self.stats.released_bytes;
        self.trim_segment(si, self.top_pad);
        self.returns.note_return(self.stats.trimmed_bytes + self.stats.released_bytes - before);
    }

    /// The heap grew by `n` bytes (`b` is `None`), or is about to carve `n` bytes out of free
    /// block `b`: memory the free path gave back may be taken again (return feedback). An
    /// allocation counts when `b` is `PURGED` or the allocation is at least `purge_threshold`
    /// bytes: a run freed next to a purged one merges with it and loses the flag, so the flag
    /// alone misses most reuse after a pass.
    ///
    /// # Safety
    /// `b`, if given, is a free block of this heap (its header is valid).
    pub(super) unsafe fn note_reuse(&mut self, b: Option<BlockPtr>, n: usize) {
        // SAFETY: forwarded contract.
        let purged = |b: BlockPtr| unsafe { b.flags() } & PURGED != 0;
        if b.is_some() && n >= self.purge_threshold {
            self.returns.churn = (self.returns.churn + n).min(self.freed_since_purge);
        }
        if b.is_none_or(|b| n >= self.purge_threshold || purged(b)) {
            self.returns.note_reuse(n, self.dirty_slack / MIN_SWING_DIV);
        }
    }

    /// The purge pass. Runs that changed since the previous pass (generation `purge_gen`) are
    /// skipped: a run freed a moment ago is likely reused soon, and purging it would only trade
    /// a `madvise` now for page faults then (jemalloc's decay, by passes).
    pub(super) fn purge_runs(&mut self, idle: bool) {
        self.freed_since_purge = 0;
        self.returns.churn = 0;
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
        if !self.purge_range(from, to) {
            // The OS refused: the pages stay resident and the run stays dirty (a later pass
            // tries again).
            return;
        }
        // SAFETY: forwarded contract.
        unsafe {
            if b.flags() & (PURGED | FRESH) == 0 {
                self.stats.clean_bytes += size;
            }
            b.set_flags((b.flags() & !FRESH) | PURGED);
        }
    }

    /// Whether the dirty free memory (free, resident, not purged) exceeds what the heap keeps
    /// for reuse: four times the bytes in use, plus `dirty_slack` doubled per level of the
    /// return feedback. A heap that churns a working set
    /// keeps its free memory (purging it would only turn into page faults when it is reused;
    /// the idle purge returns it once the program stops using it); one that freed most of
    /// itself returns it at once (jemalloc's old `lg_dirty_mult`, on free bytes).
    pub(super) fn too_dirty(&self) -> bool {
        let dirty = self.stats.free_bytes - self.stats.clean_bytes;
        dirty > 4 * self.stats.used_bytes + (self.dirty_slack << self.returns.level)
    }

    /// Purges the whole pages inside `[lo, hi)`; false when the source refused (nothing to
    /// purge counts as done).
    fn purge_range(&mut self, lo: usize, hi: usize) -> bool {
        let (Some(plo), phi) = (align_up(lo, PAGE), hi & !(PAGE - 1)) else { return true };
        if phi > plo {
            let Some(si) = self.seg_index(plo) else { return true };
            // SAFETY: `plo` lies in segment `si`, so the offset stays inside it (G1).
            let start = unsafe {
                NonNull::new_unchecked(self.segs[si].base.add(plo - self.segs[si].start()))
            };
            // SAFETY: the pages lie inside one free block's payload, clear of its metadata.
            if !unsafe { self.source.purge(start, phi - plo) } {
                return false;
            }
            self.stats.purged_bytes += phi - plo;
        }
        true
    }

    /// Gives the free tail of segment `si` back to the OS, keeping `pad` bytes: shrinks the
    /// break for a `Brk` segment, or unmaps a wholly free `Mapped` segment when another wholly
    /// free one is kept anyway. Returns whether memory went back.
    pub(super) fn trim_segment(&mut self, si: usize, pad: usize) -> bool {
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
                    // Out of its bin while its links are still readable.
                    self.bin_remove(tail, ts);
                    if !self.source.release(NonNull::new_unchecked(seg.base), seg.len) {
                        // munmap refused: the segment stays, wholly free, in its bin.
                        self.bin_insert(tail, ts);
                        return false;
                    }
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

    /// [`Self::trim_segment`] on every segment. A released segment's slot takes the last
    /// segment, which is then trimmed in its new place (a loop over the original count would
    /// skip it and trim a stale copy past the end).
    fn trim_segments(&mut self, pad: usize) -> bool {
        let mut released = false;
        let mut i = 0;
        while i < self.nsegs {
            let before = self.nsegs;
            released |= self.trim_segment(i, pad);
            if self.nsegs == before {
                i += 1;
            }
        }
        released
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
        let released = self.trim_segments(pad);
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
}
