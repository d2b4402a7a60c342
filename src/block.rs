//! Boundary-tag blocks: the header word, flag bits, free-list links and footers.
//!
//! This is the only module that does pointer arithmetic on heap memory; everything else talks
//! in [`BlockPtr`]s.
//!
//! ```text
//!            in-use block                           free block
//!  a ──►  ┌──────────────────────────┐     a ──►  ┌──────────────────────────┐
//!         │ header: size|flags|tag   │            │ header: size|flags|tag   │
//! a+8 ──► ├──────────────────────────┤ ◄── user   ├──────────────────────────┤
//!         │ payload (size - 8 bytes, │            │ next free in bin         │
//!         │ runs up to the next      │            │ prev free in bin         │
//!         │ block's header)          │            │ …                        │
//!         │                          │            │ footer: size             │
//! a+size ►└──────────────────────────┘            └──────────────────────────┘
//! ```
//!
//! A block's address `a` is 8 mod 16, so every payload `a + 8` is 16-byte aligned, and the
//! overhead of an in-use block is the one header word.
//!
//! # Invariants (labels used by SAFETY comments and [`crate::central::CentralHeap::check`])
//! - B1: `size()` is a multiple of [`ALIGN`] and at least [`MIN_BLOCK`], except the zero-size
//!   sentinel that ends each segment.
//! - B2: `PREV_USED` is set iff the physically previous block is in use (the first block of a
//!   segment has it set: nothing before it may be merged). When it is clear, the word just
//!   before the header is the previous block's footer, equal to its size.
//! - B3: no two free blocks are physically adjacent (merge is eager).
//! - B4: the last word of each segment is a sentinel header: size 0, `USED`, tag valid.
//! - B5: the tag bits of every header equal [`tag_for`] of the header's address.
//! - B6: a free block with `FRESH` set has an all-zero payload apart from its own links and
//!   footer (memory that came from the OS and was never handed out).
//! - B7: header words are read without the lock only by the thread that holds the block (the
//!   `free` fast path); every header access is a relaxed atomic access, so such reads never
//!   race with a neighbour's merge updating `PREV_USED` under the lock (plain `mov`s on
//!   x86-64 and aarch64). Nothing writes a header without the central lock.

use core::ptr::NonNull;

/// Alignment of every payload, and the granularity of block sizes.
pub const ALIGN: usize = 16;
/// Bytes of the header word.
pub const HEADER: usize = 8;
/// Smallest block: a header, two links and a footer.
pub const MIN_BLOCK: usize = 32;
/// Largest block size the header can describe (48 bits less the flag nibble).
pub const MAX_BLOCK: usize = (1 << 48) - ALIGN;

/// The block is in use (allocated, or held by a cache).
pub const USED: usize = 1;
/// The physically previous block is in use.
pub const PREV_USED: usize = 2;
/// The block is a mapping of its own (a large block), not part of a heap segment.
pub const MAPPED: usize = 4;
/// A free block whose payload is still all zero (B6).
pub const FRESH: usize = 8;
/// A free block whose inner pages were purged (`MADV_DONTNEED`) since it was formed. Shares
/// its bit with [`MAPPED`], which only in-use large blocks carry: the bit means PURGED on a
/// free heap block and MAPPED on an in-use block.
pub const PURGED: usize = 4;
/// Flags a free block passes on to a free block carved from it (a split remainder, an aligned
/// allocation's leader, a trimmed tail): its contents are a subset of the original's.
pub const INHERITED: usize = FRESH | PURGED;
const FLAGS: usize = 0xf;
const SIZE_MASK: usize = ((1 << 48) - 1) & !FLAGS;
const TAG_SHIFT: u32 = 48;

/// The check tag of a header at `addr`: 16 bits that depend on the address, so a header copied
/// elsewhere, a pointer we never handed out, or an interior pointer fails the check (B5) with
/// probability 1 - 2^-16.
#[inline(always)]
pub const fn tag_for(addr: usize) -> usize {
    ((addr >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995) >> TAG_SHIFT
}

/// The header word for a block at `addr`.
#[inline(always)]
pub const fn make_header(addr: usize, size: usize, flags: usize) -> usize {
    (tag_for(addr) << TAG_SHIFT) | size | flags
}

/// Block size for a payload of `n` bytes: header plus payload rounded up to [`ALIGN`], at least
/// [`MIN_BLOCK`]; `None` beyond [`MAX_BLOCK`].
#[inline(always)]
pub const fn block_size_for(n: usize) -> Option<usize> {
    if n > MAX_BLOCK - HEADER {
        return None;
    }
    let s = (n + HEADER + ALIGN - 1) & !(ALIGN - 1);
    Some(if s < MIN_BLOCK { MIN_BLOCK } else { s })
}

/// Reads a header word (B7: a relaxed atomic load, a plain load in the machine code).
///
/// # Safety
/// `p` is valid for reads and 8-aligned.
#[inline(always)]
unsafe fn load_word(p: NonNull<u8>) -> usize {
    #[cfg(not(loom))]
    {
        // SAFETY: forwarded contract; every access to header words is atomic (B7).
        unsafe { core::sync::atomic::AtomicUsize::from_ptr(p.as_ptr().cast()) }
            .load(core::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(loom)]
    {
        // SAFETY: forwarded contract; loom models run the lock-free paths on one thread.
        unsafe { p.cast::<usize>().read() }
    }
}

/// Writes a header word (B7).
///
/// # Safety
/// `p` is valid for writes and 8-aligned, and the caller holds the central lock or owns the
/// memory exclusively.
#[inline(always)]
unsafe fn store_word(p: NonNull<u8>, v: usize) {
    #[cfg(not(loom))]
    {
        // SAFETY: forwarded contract; every access to header words is atomic (B7).
        unsafe { core::sync::atomic::AtomicUsize::from_ptr(p.as_ptr().cast()) }
            .store(v, core::sync::atomic::Ordering::Relaxed);
    }
    #[cfg(loom)]
    {
        // SAFETY: forwarded contract.
        unsafe { p.cast::<usize>().write(v) }
    }
}

/// The address of a block header (see the module picture).
///
/// # Invariants
/// - P1: points at a header word inside a segment (or a large block) that brkmalloc owns, unless
///   it was made with [`BlockPtr::from_user`] from an unchecked pointer and not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockPtr(NonNull<u8>);

impl BlockPtr {
    /// The block whose header sits at `p`.
    #[inline(always)]
    pub const fn at(p: NonNull<u8>) -> Self {
        Self(p)
    }

    /// The block whose payload starts at `user` (unvalidated: see P1).
    ///
    /// # Safety
    /// `user` is at least `HEADER` bytes past the start of its allocation.
    #[inline(always)]
    pub unsafe fn from_user(user: NonNull<u8>) -> Self {
        // SAFETY: forwarded contract: the header word lies within the same allocation.
        Self(unsafe { user.sub(HEADER) })
    }

    /// The payload address.
    #[inline(always)]
    pub fn to_user(self) -> NonNull<u8> {
        // SAFETY: P1 — the payload follows the header inside the same block.
        unsafe { self.0.add(HEADER) }
    }

    /// The header address.
    #[inline(always)]
    pub fn ptr(self) -> NonNull<u8> {
        self.0
    }

    /// The header address as an integer.
    #[inline(always)]
    pub fn addr(self) -> usize {
        self.0.addr().get()
    }

    /// The raw header word.
    ///
    /// # Safety
    /// The header word is readable (P1).
    #[inline(always)]
    pub unsafe fn header(self) -> usize {
        // SAFETY: forwarded contract; headers are 8-aligned since blocks are 8 mod 16.
        unsafe { load_word(self.0) }
    }

    /// Writes the header word for `size` and `flags` (with the tag, B5).
    ///
    /// # Safety
    /// The header word is writable and belongs to this block (P1).
    #[inline(always)]
    pub unsafe fn set_header(self, size: usize, flags: usize) {
        // SAFETY: forwarded contract.
        unsafe { store_word(self.0, make_header(self.addr(), size, flags)) }
    }

    /// The block size from a header word.
    #[inline(always)]
    pub const fn size_of(header: usize) -> usize {
        header & SIZE_MASK
    }

    /// Whether a header word's tag matches this block's address (B5).
    #[inline(always)]
    pub fn tag_ok(self, header: usize) -> bool {
        header >> TAG_SHIFT == tag_for(self.addr())
    }

    /// The block size (header included).
    ///
    /// # Safety
    /// As [`Self::header`].
    #[inline(always)]
    pub unsafe fn size(self) -> usize {
        // SAFETY: forwarded contract.
        Self::size_of(unsafe { self.header() })
    }

    /// The flag bits.
    ///
    /// # Safety
    /// As [`Self::header`].
    #[inline(always)]
    pub unsafe fn flags(self) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.header() & FLAGS }
    }

    /// Replaces the flag bits, keeping size and tag.
    ///
    /// # Safety
    /// As [`Self::set_header`].
    #[inline(always)]
    pub unsafe fn set_flags(self, flags: usize) {
        // SAFETY: forwarded contract.
        unsafe {
            let h = self.header();
            store_word(self.0, (h & !FLAGS) | flags);
        }
    }

    /// The block `bytes` after this one.
    ///
    /// # Safety
    /// The result stays inside the same segment (B1, B4).
    #[inline(always)]
    pub unsafe fn offset(self, bytes: usize) -> Self {
        // SAFETY: forwarded contract.
        Self(unsafe { self.0.add(bytes) })
    }

    /// The block `bytes` before this one.
    ///
    /// # Safety
    /// The result stays inside the same segment.
    #[inline(always)]
    pub unsafe fn offset_back(self, bytes: usize) -> Self {
        // SAFETY: forwarded contract.
        Self(unsafe { self.0.sub(bytes) })
    }

    /// The physically next block.
    ///
    /// # Safety
    /// This is not a sentinel, and its header is valid (B1, B4).
    #[inline(always)]
    pub unsafe fn next(self) -> Self {
        // SAFETY: B1/B4 — `self + size` is the next header in the same segment.
        unsafe { self.offset(self.size()) }
    }

    /// The word just before the header: the previous block's footer when `PREV_USED` is clear
    /// (B2), otherwise that block's last payload word.
    ///
    /// # Safety
    /// This is not the first block of its segment.
    #[inline(always)]
    pub unsafe fn prev_footer(self) -> usize {
        // SAFETY: forwarded contract: the word before the header is inside the segment.
        unsafe { self.0.cast::<usize>().sub(1).read() }
    }

    /// Writes the footer (the size again, in the block's last word).
    ///
    /// # Safety
    /// The block is free, owned by the caller's heap, and `size` is its size.
    #[inline(always)]
    pub unsafe fn set_footer(self, size: usize) {
        // SAFETY: forwarded contract: the last word of the block is inside it (B1).
        unsafe { self.0.add(size - 8).cast::<usize>().write(size) }
    }

    /// The next block in this free block's bin list.
    ///
    /// # Safety
    /// The block is free and its links were written by [`Self::set_links`].
    #[inline(always)]
    pub unsafe fn next_free(self) -> Option<Self> {
        // SAFETY: forwarded contract: the link lives in the payload (MIN_BLOCK leaves room).
        unsafe { NonNull::new(self.0.add(8).cast::<*mut u8>().read()).map(Self) }
    }

    /// The previous block in this free block's bin list.
    ///
    /// # Safety
    /// As [`Self::next_free`].
    #[inline(always)]
    pub unsafe fn prev_free(self) -> Option<Self> {
        // SAFETY: as in `next_free`.
        unsafe { NonNull::new(self.0.add(16).cast::<*mut u8>().read()).map(Self) }
    }

    /// Sets the next link.
    ///
    /// # Safety
    /// The block is free and owned by the caller's heap.
    #[inline(always)]
    pub unsafe fn set_next_free(self, next: Option<Self>) {
        let p = next.map_or(core::ptr::null_mut(), |b| b.0.as_ptr());
        // SAFETY: forwarded contract.
        unsafe { self.0.add(8).cast::<*mut u8>().write(p) }
    }

    /// Sets the prev link.
    ///
    /// # Safety
    /// As [`Self::set_next_free`].
    #[inline(always)]
    pub unsafe fn set_prev_free(self, prev: Option<Self>) {
        let p = prev.map_or(core::ptr::null_mut(), |b| b.0.as_ptr());
        // SAFETY: forwarded contract.
        unsafe { self.0.add(16).cast::<*mut u8>().write(p) }
    }

    /// Sets both links.
    ///
    /// # Safety
    /// As [`Self::set_next_free`].
    #[inline(always)]
    pub unsafe fn set_links(self, prev: Option<Self>, next: Option<Self>) {
        // SAFETY: forwarded contract.
        unsafe {
            self.set_prev_free(prev);
            self.set_next_free(next);
        }
    }

    /// Zeroes the payload words at byte offsets `[from, to)` of the block (8-aligned offsets).
    ///
    /// # Safety
    /// The range lies inside the block and the caller owns it.
    #[inline(always)]
    pub unsafe fn zero_words(self, from: usize, to: usize) {
        let mut off = from;
        while off < to {
            // SAFETY: forwarded contract.
            unsafe { self.0.add(off).cast::<usize>().write(0) };
            off += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_round_and_bound() {
        assert_eq!(block_size_for(0), Some(MIN_BLOCK));
        assert_eq!(block_size_for(24), Some(32));
        assert_eq!(block_size_for(25), Some(48));
        assert_eq!(block_size_for(40), Some(48));
        assert_eq!(block_size_for(41), Some(64));
        for n in 0..5000 {
            let s = block_size_for(n).unwrap();
            assert_eq!(s % ALIGN, 0);
            assert!(s >= n + HEADER && s >= MIN_BLOCK);
            assert!(s < n + HEADER + ALIGN || s == MIN_BLOCK);
        }
        assert_eq!(block_size_for(usize::MAX), None);
        assert_eq!(block_size_for(MAX_BLOCK), None);
    }

    #[test]
    fn header_round_trip_and_tag() {
        let mut words = [0usize; 8];
        let base = NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        let b = BlockPtr::at(base);
        // SAFETY: the block header lies in `words`.
        unsafe {
            b.set_header(0x1230, USED | PREV_USED);
            assert_eq!(b.size(), 0x1230);
            assert_eq!(b.flags(), USED | PREV_USED);
            assert!(b.tag_ok(b.header()));
            let moved = b.offset(16);
            assert!(!moved.tag_ok(b.header()), "a header copied elsewhere must fail");
            b.set_flags(PREV_USED);
            assert_eq!(b.size(), 0x1230);
            assert!(b.tag_ok(b.header()));
        }
    }

    #[test]
    fn tags_differ_between_neighbouring_blocks() {
        let mut same = 0;
        for i in 0..10_000usize {
            let a = 0x5555_0000_0008 + i * 16;
            if tag_for(a) == tag_for(a + 16) {
                same += 1;
            }
        }
        assert!(same < 10, "{same} collisions");
    }
}
