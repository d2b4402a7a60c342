//! Heap words: block headers, flag bits, footers, and every overlay a block's payload carries
//! in each of its states. This is the only module that does pointer arithmetic on heap memory;
//! everything else talks in [`BlockPtr`]s (header addresses) and [`UserPtr`]s (payloads).
//!
//! ```text
//!   in use (heap)          free (heap)             cached (thread cache)    large (mapping)
//!  ┌──────────────────┐   ┌──────────────────┐    ┌──────────────────┐     ┌─ base (page) ────┐
//!  │ header           │   │ header           │    │ header (in use)  │     │ slack            │
//!  ├──────────────────┤◄u ├──────────────────┤    ├──────────────────┤◄u   │ offset = u - base│ u-16
//!  │ payload          │   │ next free in bin │ +8 │ link (safe-linked│     │ header USED|MAPPED│ u-8
//!  │                  │   │ prev free in bin │+16 │ key = CACHE_KEY  │ +8  ├──────────────────┤◄u
//!  │                  │   │ purge generation │+24 │ (program's data) │     │ payload          │
//!  │                  │   │ …                │    │                  │     │                  │
//!  │                  │   │ footer = size    │    │                  │     │                  │
//!  └──────────────────┘   └──────────────────┘    └──────────────────┘     └──────────────────┘
//! ```
//! (`+8` etc. are offsets from the header; `u` is the user pointer = header + 8.) A block's
//! header address is 8 mod 16, so every payload is 16-byte aligned, and the overhead of an
//! in-use block is the one header word.
//!
//! # The header word
//!
//! ```text
//!  63        48 47    42 41                          4 3      0
//!  ┌───────────┬────────┬─────────────────────────────┬────────┐
//!  │ tag       │ class  │ size (bytes, multiple of 16)│ flags  │
//!  └───────────┴────────┴─────────────────────────────┴────────┘
//! ```
//! - `tag`: bits 4–19 of the payload address (B5). A pointer we never handed out, an interior
//!   pointer or a header overwritten by the program fails it with probability 1 − 2⁻¹⁶.
//! - `class`: the thread-cache class code of an in-use heap block ([`class_code`]), or
//!   [`NO_CLASS`] for free, mapped and sampled blocks and blocks above the classes (B8). The
//!   free fast path reads class and tag with one load, one shift and one xor
//!   ([`UserPtr::cache_class`]); a code without a list sends the block to the slow path.
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
//! - B8: the class bits equal [`class_code`]`(size)` when `USED` is set and `MAPPED` and
//!   [`SAMPLED`] are clear, [`NO_CLASS`] otherwise ([`make_header`] is the only way a header
//!   is composed). So a block the heap profiler sampled takes the slow free path, which drops
//!   its record, at no cost to the fast path.

use core::ptr::NonNull;

pub use crate::size_class::{ALIGN, HEADER, MIN_BLOCK};
use crate::size_class::{NO_CLASS, class_code};

/// Largest block size the header can describe (the size field's 38 bits: 4 TiB less 16).
/// Larger requests fail with `ENOMEM`.
pub const MAX_BLOCK: usize = (1 << CLASS_SHIFT) - ALIGN;

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
/// An in-use heap block recorded by the heap profiler (`prof:1`): its class code is
/// [`NO_CLASS`] (B8), so `free` takes the central path, which drops the record. Shares its bit
/// with [`FRESH`], which only free blocks carry. Set and cleared under the central lock, like
/// every header write (B7).
pub const SAMPLED: usize = 8;
/// Flags a free block passes on to a free block carved from it (a split remainder, an aligned
/// allocation's leader, a trimmed tail): its contents are a subset of the original's.
pub const INHERITED: usize = FRESH | PURGED;
const FLAGS: usize = 0xf;
const CLASS_SHIFT: u32 = 42;
const SIZE_MASK: usize = ((1 << CLASS_SHIFT) - 1) & !FLAGS;
const TAG_SHIFT: u32 = 48;

/// Whether the checks that cost on the fast paths are compiled in (cargo feature `hardening`,
/// on by default; off only to measure what they cost): the tag check on free, the cache's
/// double-free key, safe-linking of cache links.
pub const HARDENED: bool = cfg!(feature = "hardening");

/// Written into the second payload word of every cached block, cleared when it leaves the
/// cache. A freed block that carries it is looked up in the cache: found, it is a double free.
/// A sign-extended 32-bit value, so compare and store take it as an immediate (no `movabs`);
/// with its high half all ones it is not a small integer, a length or a user-space pointer.
pub const CACHE_KEY: usize = (-0x3a5b_7c1d_i64) as usize;

/// The check tag of a header at `addr`: bits 4–19 of its payload address `addr + 8` (B5). The
/// free fast path compares it against the user pointer shifted left by 44, one instruction.
#[inline(always)]
pub const fn tag_for(addr: usize) -> usize {
    ((addr + HEADER) >> 4) & 0xffff
}

/// The header word for a block at `addr` (B5, B8).
#[inline(always)]
pub fn make_header(addr: usize, size: usize, flags: usize) -> usize {
    debug_assert!(size & !SIZE_MASK == 0 && flags & !FLAGS == 0);
    let class = if flags & (USED | MAPPED | SAMPLED) == USED { class_code(size) } else { NO_CLASS };
    (tag_for(addr) << TAG_SHIFT) | (class << CLASS_SHIFT) | size | flags
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

    /// The first block of a segment that starts at `base` (G2: its header is the segment's
    /// second word; the first is padding that puts every payload on a 16-byte boundary).
    ///
    /// # Safety
    /// `base` starts a segment of at least 16 bytes.
    #[inline(always)]
    pub unsafe fn first_in_segment(base: NonNull<u8>) -> Self {
        // SAFETY: forwarded contract.
        Self(unsafe { base.add(HEADER) })
    }

    /// The sentinel of a segment `[base, base + len)` (B4: its last word).
    ///
    /// # Safety
    /// `base` starts a segment of `len >= 16` bytes.
    #[inline(always)]
    pub unsafe fn sentinel_of_segment(base: NonNull<u8>, len: usize) -> Self {
        // SAFETY: forwarded contract.
        Self(unsafe { base.add(len - HEADER) })
    }

    /// The payload word at byte offset `off` from the header (the heap walker's B6 check).
    ///
    /// # Safety
    /// `off` is 8-aligned and the word lies inside this block, which the caller's heap owns.
    #[inline(always)]
    pub unsafe fn word_at(self, off: usize) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.0.add(off).cast::<usize>().read() }
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

    /// The class code bits of a header word (B8).
    #[inline(always)]
    pub const fn class_of(header: usize) -> usize {
        (header >> CLASS_SHIFT) & (crate::size_class::CLASS_CODES - 1)
    }

    /// Whether a header word's class bits agree with its size and flags (B8).
    #[inline(always)]
    pub fn class_ok(self, header: usize) -> bool {
        make_header(self.addr(), Self::size_of(header), header & FLAGS) == header
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

    /// Replaces the flag bits, keeping the size (tag and class follow: B5, B8).
    ///
    /// # Safety
    /// As [`Self::set_header`].
    #[inline(always)]
    pub unsafe fn set_flags(self, flags: usize) {
        // SAFETY: forwarded contract.
        unsafe {
            let h = self.header();
            self.set_header(Self::size_of(h), flags);
        }
    }

    /// Whether the block `size` bytes after this one (its successor, when `size` is this
    /// block's size) has a valid tag and `PREV_USED` set, as it must while this block is in use.
    ///
    /// # Safety
    /// The successor's header word lies inside the same segment (B1, B4).
    #[inline(always)]
    pub unsafe fn successor_sees_used(self, size: usize) -> bool {
        // SAFETY: forwarded contract.
        let next = unsafe { self.offset(size) };
        // SAFETY: forwarded contract.
        let nh = unsafe { next.header() };
        next.tag_ok(nh) && nh & PREV_USED != 0
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

    /// The purge generation of a free run (C6): payload word 2, clear of the links, the footer
    /// and the whole pages a purge touches.
    ///
    /// # Safety
    /// The block is free, owned by the caller's heap, and at least [`PURGE_GEN_END`] bytes.
    #[inline(always)]
    pub unsafe fn purge_gen(self) -> usize {
        // SAFETY: forwarded contract: the word lies inside the block.
        unsafe { self.0.add(PURGE_GEN_OFFSET).cast::<usize>().read() }
    }

    /// Records the purge generation of a free run (see [`Self::purge_gen`]).
    ///
    /// # Safety
    /// As [`Self::purge_gen`].
    #[inline(always)]
    pub unsafe fn set_purge_gen(self, generation: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.0.add(PURGE_GEN_OFFSET).cast::<usize>().write(generation) }
    }

    /// The payload bytes of a free run that a purge may give back: everything after the
    /// purge-generation word up to (not including) the footer, as `[from, to)` addresses.
    #[inline(always)]
    pub fn purgeable(self, size: usize) -> (usize, usize) {
        (self.addr() + PURGE_GEN_END, self.addr() + size - 8)
    }
}

/// Offset of the purge-generation word of a free run, from its header.
const PURGE_GEN_OFFSET: usize = HEADER + 16;
/// First byte after the purge-generation word: a free run must be at least this large (plus
/// its footer) to carry one.
pub const PURGE_GEN_END: usize = PURGE_GEN_OFFSET + 8;

/// A payload address, as the program holds it.
///
/// # Invariants
/// - U1: the header word of the block lies at `addr - 8`. Made from a pointer the program
///   passed in, that is only a claim: each method's contract says what must have been checked
///   first (the page test of [`Self::header_on_same_page`], a segment or registry lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(transparent)]
pub struct UserPtr(NonNull<u8>);

impl UserPtr {
    /// Wraps a payload pointer (unvalidated: see U1).
    #[inline(always)]
    pub const fn new(p: NonNull<u8>) -> Self {
        Self(p)
    }

    /// The pointer.
    #[inline(always)]
    pub const fn ptr(self) -> NonNull<u8> {
        self.0
    }

    /// The address.
    #[inline(always)]
    pub fn addr(self) -> usize {
        self.0.addr().get()
    }

    /// The block's header.
    ///
    /// # Safety
    /// As [`BlockPtr::from_user`].
    #[inline(always)]
    pub unsafe fn block(self) -> BlockPtr {
        // SAFETY: forwarded contract.
        unsafe { BlockPtr::from_user(self.0) }
    }

    /// Whether the header word before the pointer lies on the pointer's own page: the pointer
    /// is at least 32 bytes into its page (one test of bits 5–11). A page-aligned pointer's
    /// header lies on the previous page, which may not be mapped for a pointer we never handed
    /// out; and every large block's pointer is 0 or 16 bytes into a page (`large.rs`), so a
    /// large block freed twice goes to the registry check instead of reading its unmapped
    /// header. Heap blocks at those offsets (one in 128) take the central path.
    #[inline(always)]
    pub fn header_on_same_page(self) -> bool {
        Self::header_on_same_page_addr(self.addr())
    }

    /// [`Self::header_on_same_page`] for an address (NULL fails it).
    #[inline(always)]
    pub const fn header_on_same_page_addr(addr: usize) -> bool {
        addr & 0xfe0 != 0
    }

    /// The free fast path's check: the class code of the block (B8) when its header's tag
    /// matches this pointer (B5), so it is an in-use heap block of a cached class (codes at or
    /// above [`crate::size_class::NCLASSES`] have no cache list). `None` when the tag does not
    /// match: the caller validates on the central path. One load, one shift, one xor and one
    /// shift; without `hardening` no tag check (a load and two shifts).
    ///
    /// # Safety
    /// The word before the pointer is readable (the page test, or a pointer of ours).
    #[inline(always)]
    pub unsafe fn cache_class(self) -> Option<usize> {
        // SAFETY: forwarded contract; an atomic read (B7).
        let h = unsafe { load_word(self.0.sub(HEADER)) };
        if HARDENED {
            // Bits 48..63 of `x` are zero iff the tag matches (B5); the payload is 16-aligned,
            // so the shift leaves the class bits untouched and `x >> 42` is the class code.
            let c = (h ^ (self.addr() << 44)) >> CLASS_SHIFT;
            if c < crate::size_class::CLASS_CODES { Some(c) } else { None }
        } else {
            Some((h >> CLASS_SHIFT) & (crate::size_class::CLASS_CODES - 1))
        }
    }

    /// The header of an ordinary in-use heap block, checked as far as the fast paths can (tag
    /// valid with `hardening`, `USED` set, `MAPPED` clear); `None` sends the caller to the
    /// central heap's full validation.
    ///
    /// # Safety
    /// As [`Self::cache_class`].
    #[inline(always)]
    pub unsafe fn checked_header(self) -> Option<usize> {
        // SAFETY: forwarded contract.
        let b = unsafe { self.block() };
        // SAFETY: forwarded contract; an atomic read (B7).
        let h = unsafe { b.header() };
        (h & (USED | MAPPED) == USED && (!HARDENED || b.tag_ok(h))).then_some(h)
    }

    /// Whether the block after this one, by the size in `h` (this block's header, as
    /// [`Self::checked_header`] returned it), has a valid tag and `PREV_USED` set: a live
    /// block's successor always does (the bit changes only when this block is freed, B7 makes
    /// the read atomic), and a stale header left inside a merged free run does not. The realloc
    /// path that keeps a block without the central lock relies on it instead of the lock's
    /// full validation.
    ///
    /// # Safety
    /// As [`Self::cache_class`], and `h` passed [`Self::checked_header`] (so its size is that of
    /// a block of ours, whose successor's header lies in the same segment, B1/B4).
    #[inline(always)]
    pub unsafe fn successor_confirms_used(self, h: usize) -> bool {
        // SAFETY: forwarded contract: the successor's header is inside the segment.
        unsafe { self.block().successor_sees_used(BlockPtr::size_of(h)) }
    }

    /// The cache link word (first payload word) of a cached block, as stored.
    ///
    /// # Safety
    /// The block is owned by a thread cache (T1).
    #[inline(always)]
    pub unsafe fn cache_link(self) -> usize {
        // SAFETY: forwarded contract: every payload holds at least three words (MIN_BLOCK).
        unsafe { self.0.cast::<usize>().read() }
    }

    /// Writes the cache link word.
    ///
    /// # Safety
    /// The block is in use and owned by the caller's thread cache.
    #[inline(always)]
    pub unsafe fn set_cache_link(self, v: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.0.cast::<usize>().write(v) }
    }

    /// Whether the block carries [`CACHE_KEY`] in its second payload word (always `false`
    /// without `hardening`).
    ///
    /// # Safety
    /// The block is an in-use heap block of ours (its payload has at least two words).
    #[inline(always)]
    pub unsafe fn has_cache_key(self) -> bool {
        // SAFETY: forwarded contract.
        HARDENED && unsafe { self.0.cast::<usize>().add(1).read() == CACHE_KEY }
    }

    /// Marks the block as cached (with `hardening`; nothing without).
    ///
    /// # Safety
    /// As [`Self::set_cache_link`].
    #[inline(always)]
    pub unsafe fn set_cache_key(self) {
        if HARDENED {
            // SAFETY: forwarded contract.
            unsafe { self.0.cast::<usize>().add(1).write(CACHE_KEY) }
        }
    }

    /// Clears the cache key as the block leaves a cache.
    ///
    /// # Safety
    /// As [`Self::set_cache_link`].
    #[inline(always)]
    pub unsafe fn clear_cache_key(self) {
        if HARDENED {
            // SAFETY: forwarded contract.
            unsafe { self.0.cast::<usize>().add(1).write(0) }
        }
    }

    /// A large block's offset word (`user - 16`): the distance from its mapping's base.
    ///
    /// # Safety
    /// The pointer is a registered large block (R1), so both header words are mapped.
    #[inline(always)]
    pub unsafe fn large_offset(self) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.0.cast::<usize>().sub(2).read() }
    }

    /// Writes a large block's offset word.
    ///
    /// # Safety
    /// The two words before the pointer lie inside the block's fresh mapping.
    #[inline(always)]
    pub unsafe fn set_large_offset(self, offset: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.0.cast::<usize>().sub(2).write(offset) }
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
