//! The heap walker: checks every invariant of [`CentralHeap`] (C1–C5, and B1–B6 and B8 of each
//! block). Unit tests, the fuzz driver and `check_heap` run it after every step.

use super::{ALIGN, BlockPtr, CentralHeap, FRESH, GROUPS, HEADER, HeapError, HeapStats, MAPPED};
use super::{MIN_BLOCK, NBINS, PREV_USED, PURGED, USED, bin_index};
use crate::block::{HARDENED, UserPtr};
use crate::os::MemorySource;
use crate::size_class::class_size;

impl<S: MemorySource> CentralHeap<S> {
    /// Whether `u` is a cached block of class `c` as the heap sees it (T1, BT1): an in-use,
    /// unmapped block of this heap with a valid tag and class code, at least `class_size(c)`
    /// bytes, carrying the cache key (with `hardening`).
    pub fn holds_cached(&self, u: UserPtr, c: usize) -> bool {
        if !self.owns(u.ptr().as_ptr()) {
            return false;
        }
        // SAFETY: the header lies in a heap segment (checked above).
        let b = unsafe { u.block() };
        // SAFETY: as above; an atomic read (B7).
        let h = unsafe { b.header() };
        h & (USED | MAPPED) == USED
            && b.tag_ok(h)
            && b.class_ok(h)
            && BlockPtr::size_of(h) >= class_size(c)
            // SAFETY: an in-use heap block of ours.
            && (!HARDENED || unsafe { u.has_cache_key() })
    }

    /// Walks every segment and bin and checks C1–C5 (and, with `deep`, that FRESH payloads are
    /// zero). Returns the first violation.
    ///
    /// # Errors
    /// The first broken invariant, with the address concerned.
    pub fn check(&self, deep: bool) -> Result<(), HeapError> {
        let err = |what, addr| Err(HeapError { what, addr });
        let mut st = HeapStats::default();
        for (si, seg) in self.segs[..self.nsegs].iter().enumerate() {
            if seg.base.is_null() || seg.start() % ALIGN != 0 || seg.len % ALIGN != 0 {
                return err("G1: segment base/len misaligned", seg.start());
            }
            for other in &self.segs[si + 1..self.nsegs] {
                if other.start() < seg.end() && seg.start() < other.end() {
                    return err("C4: segments overlap", other.start());
                }
            }
            if seg.start() < self.lo || seg.end() > self.hi {
                return err("C4: segment outside [lo, hi)", seg.start());
            }
            st.heap_bytes += seg.len;
            let mut b = seg.first();
            let mut prev_used = true;
            loop {
                if b.addr() + HEADER > seg.end() {
                    return err("B4: walk ran past the segment end", b.addr());
                }
                // SAFETY: `b` lies inside the segment (checked just above).
                let h = unsafe { b.header() };
                if !b.tag_ok(h) {
                    return err("B5: header tag", b.addr());
                }
                let size = BlockPtr::size_of(h);
                let used = h & USED != 0;
                if (h & PREV_USED != 0) != prev_used {
                    return err("B2: PREV_USED disagrees with the previous block", b.addr());
                }
                if used && h & MAPPED != 0 {
                    return err("B1: MAPPED block inside a segment", b.addr());
                }
                if !b.class_ok(h) {
                    return err("B8: class code disagrees with size and flags", b.addr());
                }
                if size == 0 {
                    if b != seg.sentinel() || !used {
                        return err("B4: sentinel misplaced or free", b.addr());
                    }
                    break;
                }
                if size < MIN_BLOCK || size % ALIGN != 0 || b.addr() + size > seg.end() - HEADER {
                    return err("B1: block size", b.addr());
                }
                // SAFETY: `b + size` is at most the sentinel (checked above).
                let next = unsafe { b.offset(size) };
                if used {
                    st.used_bytes += size;
                    st.used_blocks += 1;
                } else {
                    if !prev_used {
                        return err("B3: two adjacent free blocks", b.addr());
                    }
                    // SAFETY: `next` is a valid header inside the segment.
                    if unsafe { next.prev_footer() } != size {
                        return err("B2: footer differs from the size", b.addr());
                    }
                    st.free_bytes += size;
                    st.free_blocks += 1;
                    if h & (PURGED | FRESH) != 0 {
                        st.clean_bytes += size;
                    }
                    if deep && h & FRESH != 0 {
                        for off in (HEADER + 16..size - 8).step_by(8) {
                            // SAFETY: inside the free block's payload.
                            if unsafe { b.word_at(off) } != 0 {
                                return err("B6: FRESH payload not zero", b.addr() + off);
                            }
                        }
                    }
                }
                prev_used = used;
                b = next;
            }
        }
        // C2/C3: walk the bins.
        let mut in_bins = 0;
        for idx in 0..NBINS {
            let bit = self.bin_maps[idx / 16] & (1 << (idx % 16)) != 0;
            if bit == self.bins[idx].is_null() {
                return err("C3: bin bitmap disagrees with the bin", idx);
            }
            let mut prev: Option<BlockPtr> = None;
            let mut cur = self.head(idx);
            while let Some(b) = cur {
                if self.seg_index(b.addr()).is_none() {
                    return err("C2: bin member outside every segment", b.addr());
                }
                // SAFETY: `b` lies inside a segment; the walk above validated every block
                // header there, and a bin member must be one of them.
                let (h, bp, bn) = unsafe { (b.header(), b.prev_free(), b.next_free()) };
                if !b.tag_ok(h) || h & USED != 0 {
                    return err("C2: bin member is not a free block", b.addr());
                }
                if bin_index(BlockPtr::size_of(h)) != idx {
                    return err("C2: block in the wrong bin", b.addr());
                }
                if bp != prev {
                    return err("C2: broken prev link", b.addr());
                }
                in_bins += 1;
                if in_bins > st.free_blocks {
                    return err("C2: more bin members than free blocks (cycle?)", b.addr());
                }
                prev = cur;
                cur = bn;
            }
        }
        for g in 0..GROUPS {
            if (self.group_map & (1 << g) != 0) != (self.bin_maps[g] != 0) {
                return err("C3: group bitmap disagrees", g);
            }
        }
        if in_bins != st.free_blocks {
            return err("C2: free blocks missing from the bins", in_bins);
        }
        let mut expect = self.stats;
        expect.trimmed_bytes = 0;
        expect.released_bytes = 0;
        expect.purged_bytes = 0;
        expect.grows = 0;
        if st != expect {
            return err("C5: statistics disagree with the walk", st.used_bytes);
        }
        Ok(())
    }
}
