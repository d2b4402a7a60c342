//! The central heap's free bins: sizes below 1 KiB have an exact bin per 16 bytes; above, 16
//! bins per power of two (TLSF's second level) up to 2^48. A 42-bit group bitmap and a 16-bit
//! map per group find the first non-empty bin at or above an index in O(1) (C2, C3).

use core::ptr::NonNull;

use super::CentralHeap;
use super::purge::PURGE_MIN;
use crate::block::{ALIGN, BlockPtr, FRESH, PURGED};
use crate::os::MemorySource;

/// Sizes below this have one bin per 16-byte step (exact fit).
pub(super) const EXACT_LIMIT: usize = 1024;
/// Bins per power of two above [`EXACT_LIMIT`] (TLSF's second level).
const SUB_BINS: usize = 16;
const EXACT_BINS: usize = EXACT_LIMIT / ALIGN;
/// log2 of [`EXACT_LIMIT`].
const FIRST_LOG: usize = 10;
/// Total bins: exact bins, then 16 per power of two from 2^10 up to 2^47.
pub const NBINS: usize = EXACT_BINS + (48 - FIRST_LOG) * SUB_BINS;
pub(super) const GROUPS: usize = NBINS / 16;

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
pub(super) const fn bin_index_fit(size: usize) -> usize {
    if size < EXACT_LIMIT {
        size / ALIGN
    } else {
        let log = (usize::BITS - 1 - size.leading_zeros()) as usize;
        bin_index(size + (1 << (log - 4)) - 1)
    }
}

impl<S: MemorySource> CentralHeap<S> {
    pub(super) fn head(&self, idx: usize) -> Option<BlockPtr> {
        NonNull::new(self.bins[idx]).map(BlockPtr::at)
    }

    /// Pushes free block `b` of `size` bytes onto its bin.
    ///
    /// # Safety
    /// `b` is a free block of this heap with header `size`, in no bin.
    pub(super) unsafe fn bin_insert(&mut self, b: BlockPtr, size: usize) {
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
    pub(super) unsafe fn bin_remove(&mut self, b: BlockPtr, size: usize) {
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
    pub(super) fn find_bin(&self, idx: usize) -> Option<usize> {
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
    pub(super) fn take_free(&mut self, size: usize) -> Option<BlockPtr> {
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
}
