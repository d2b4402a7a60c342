//! The memory source seam: where the central heap's memory comes from, and every syscall that
//! maps, unmaps or purges memory.
//!
//! [`MemorySource`] is implemented by [`Sbrk`] in production (the program break, with `mmap`
//! segments as a fallback) and by [`FixedArena`] for unit tests, loom models and fuzzing, which
//! cannot (or must not) move the real break. Large blocks use [`map`], [`unmap`] and [`remap`]
//! directly.

use core::ptr::{self, NonNull};

/// Page size assumed throughout (x86-64 and the common aarch64 kernels). A test checks it
/// against `sysconf(_SC_PAGESIZE)`.
pub const PAGE: usize = 4096;

/// Smallest mmap fallback segment. Later segments double, up to `MMAP_SEGMENT_MIN << 6`
/// (64 MiB), so a heap that lives on the fallback needs few segments.
pub const MMAP_SEGMENT_MIN: usize = 1 << 20;

/// After sbrk fails, this many growths use mmap before sbrk is tried again (the obstacle above
/// the break, or RLIMIT_DATA pressure, may have gone).
const SBRK_RETRY_AFTER: u32 = 8;

/// Where a piece of memory came from; decides how it can be given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// From the program break: may be extended and shrunk at its end while the break is ours.
    Brk,
    /// An anonymous mapping of its own: released whole with `munmap`.
    Mapped,
}

/// A piece of fresh, zero-filled memory handed to the central heap.
#[derive(Clone, Copy, Debug)]
pub struct Grown {
    /// Start; aligned to 16 bytes.
    pub base: NonNull<u8>,
    /// Length in bytes; a multiple of 16.
    pub len: usize,
    /// How it can be returned.
    pub origin: Origin,
}

/// Where the central heap gets memory and gives it back.
///
/// Implementations never allocate through malloc and never panic.
pub trait MemorySource {
    /// Fresh zero-filled memory of at least `min_len` bytes, or `None` when the OS refuses.
    /// `Origin::Brk` memory whose `base` equals the end of earlier `Brk` memory continues it.
    fn grow(&mut self, min_len: usize) -> Option<Grown>;

    /// Returns the last `len` bytes of the `Brk` memory that ends at `end`, if that is still the
    /// program break. Returns whether it did.
    fn shrink(&mut self, end: NonNull<u8>, len: usize) -> bool;

    /// Releases a whole `Mapped` piece obtained from `grow`. Returns whether the OS took it
    /// back (`munmap` can fail, e.g. when splitting a mapping would exceed `vm.max_map_count`);
    /// on `false` the piece is still mapped and still the caller's.
    ///
    /// # Safety
    /// `base`/`len` are exactly a `Mapped` piece from `grow`, and nothing uses it any more.
    unsafe fn release(&mut self, base: NonNull<u8>, len: usize) -> bool;

    /// Tells the OS that the whole pages of `[start, start + len)` hold nothing of value; they
    /// read as zero or as garbage afterwards (callers must not rely on either). Returns whether
    /// the OS accepted (`madvise` failed: the pages stay resident, their contents unchanged).
    ///
    /// # Safety
    /// The range is page-aligned, inside memory from `grow`, and holds no live data or metadata.
    unsafe fn purge(&mut self, start: NonNull<u8>, len: usize) -> bool;
}

/// Rounds `n` up to a multiple of `align` (a power of two), or `None` on overflow.
#[inline]
pub const fn align_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// The production memory source: the program break, falling back to mmap segments.
///
/// # Invariants
/// - S1: `end` is the address where our last successful `sbrk` growth ended (0 before the first);
///   we extend or shrink at `end` only while `sbrk(0) == end`, i.e. nobody else moved the break.
/// - S2: every increment passed to `sbrk` is at most `isize::MAX` and does not wrap the address.
#[derive(Debug)]
pub struct Sbrk {
    end: usize,
    /// Growths left to serve from mmap before sbrk is tried again (0 = try sbrk).
    sbrk_backoff: u32,
    /// Fallback segments mapped so far (sizes grow with it).
    mapped_segments: u32,
}

impl Sbrk {
    /// A source that has not touched the break yet.
    pub const fn new() -> Self {
        Self { end: 0, sbrk_backoff: 0, mapped_segments: 0 }
    }

    fn grow_brk(&mut self, len: usize) -> Option<Grown> {
        // SAFETY: sbrk(0) only reads the break.
        let cur = unsafe { libc::sbrk(0) };
        if cur as isize == -1 {
            return None;
        }
        let cur_addr = cur.addr();
        // S1: continue our memory only if the break is still where we left it; otherwise start
        // a new piece at the next page boundary (the heap fences it off as a new segment).
        let (pad, len) = if cur_addr == self.end {
            (0, len)
        } else {
            // A new segment: make it at least MMAP_SEGMENT_MIN, so that a program whose other
            // allocator also moves the break does not leave us with many small segments.
            (align_up(cur_addr, PAGE)? - cur_addr, len.max(MMAP_SEGMENT_MIN))
        };
        let incr = len.checked_add(pad)?;
        // S2: sbrk takes a signed increment; reject what would read as negative or wrap.
        if incr > isize::MAX as usize || cur_addr.checked_add(incr).is_none() {
            return None;
        }
        // SAFETY: S2 holds for `incr`; sbrk returns the old break or -1.
        let old = unsafe { libc::sbrk(incr as libc::intptr_t) };
        if old as isize == -1 {
            return None;
        }
        if old.addr() != cur_addr {
            // Another thread outside our lock moved the break between the two calls. The
            // memory [old, old + incr) is still ours; realign within it.
            let pad2 = align_up(old.addr(), PAGE)? - old.addr();
            if pad2 > pad {
                // Not enough slack to realign: give back what we can and fail this attempt.
                // SAFETY: undoing our own increment of S2 size.
                unsafe { libc::sbrk(-(incr as libc::intptr_t)) };
                return None;
            }
            let base = old.cast::<u8>().wrapping_add(pad2);
            self.end = base.addr() + len;
            return NonNull::new(base).map(|base| Grown { base, len, origin: Origin::Brk });
        }
        let base = old.cast::<u8>().wrapping_add(pad);
        self.end = base.addr() + len;
        NonNull::new(base).map(|base| Grown { base, len, origin: Origin::Brk })
    }

    fn grow_mapped(&mut self, len: usize) -> Option<Grown> {
        let shift = self.mapped_segments.min(6);
        let len = len.max(MMAP_SEGMENT_MIN << shift);
        let base = map(len)?;
        self.mapped_segments = self.mapped_segments.saturating_add(1);
        Some(Grown { base, len, origin: Origin::Mapped })
    }
}

impl Default for Sbrk {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource for Sbrk {
    fn grow(&mut self, min_len: usize) -> Option<Grown> {
        let len = align_up(min_len, PAGE)?;
        if len > isize::MAX as usize {
            return None;
        }
        if self.sbrk_backoff == 0 {
            if let Some(g) = self.grow_brk(len) {
                return Some(g);
            }
            self.sbrk_backoff = SBRK_RETRY_AFTER;
        } else {
            self.sbrk_backoff -= 1;
        }
        self.grow_mapped(len)
    }

    fn shrink(&mut self, end: NonNull<u8>, len: usize) -> bool {
        if end.addr().get() != self.end || len > isize::MAX as usize {
            return false;
        }
        // SAFETY: sbrk(0) only reads the break.
        let cur = unsafe { libc::sbrk(0) };
        if cur.addr() != self.end {
            return false; // S1: someone else owns the break now.
        }
        // SAFETY: we own the last `len` bytes below the break (S1) and len <= isize::MAX (S2).
        let old = unsafe { libc::sbrk(-(len as libc::intptr_t)) };
        if old as isize == -1 {
            return false;
        }
        self.end -= len;
        true
    }

    unsafe fn release(&mut self, base: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded contract: a whole mapping of ours that nothing uses.
        unsafe { unmap(base, len) }
    }

    unsafe fn purge(&mut self, start: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded contract: page-aligned, ours, nothing of value inside.
        unsafe { libc::madvise(start.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
    }
}

/// Maps `len` bytes of fresh zeroed read-write memory, or `None`.
pub fn map(len: usize) -> Option<NonNull<u8>> {
    if len == 0 || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { None } else { NonNull::new(p.cast()) }
}

/// Unmaps `[base, base + len)`; returns whether the kernel did.
///
/// # Safety
/// The range is a mapping (or the tail/head of one) of ours that nothing uses any more.
pub unsafe fn unmap(base: NonNull<u8>, len: usize) -> bool {
    // SAFETY: forwarded contract.
    unsafe { libc::munmap(base.as_ptr().cast(), len) == 0 }
}

/// Resizes the mapping `[base, base + old_len)` to `new_len` bytes, moving it if needed.
///
/// # Safety
/// The range is exactly a mapping of ours.
pub unsafe fn remap(base: NonNull<u8>, old_len: usize, new_len: usize) -> Option<NonNull<u8>> {
    if new_len > isize::MAX as usize {
        return None;
    }
    // SAFETY: forwarded contract; MREMAP_MAYMOVE keeps the contents.
    let p = unsafe { libc::mremap(base.as_ptr().cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED { None } else { NonNull::new(p.cast()) }
}

/// A fixed in-memory arena standing in for the program break: unit tests, loom models, fuzzing.
///
/// It grows contiguously from `base`; [`FixedArena::leave_gap`] makes the next growth start a
/// new segment (as if another library had moved the break), [`FixedArena::map_next`] makes it
/// an mmap fallback segment (`Origin::Mapped`), and [`FixedArena::fail_after`] injects
/// out-of-memory (`faults::Faulty` fails any call). `purge` and `release` fill the range with
/// `0xdb` so that a heap that purged metadata, relied on purged memory reading as zero, or kept
/// using a released segment, fails its checks.
///
/// # Invariants
/// - A1: `used <= cap`; `[base, base + used)` has been handed out, the rest is zero.
#[derive(Debug)]
pub struct FixedArena {
    base: NonNull<u8>,
    cap: usize,
    used: usize,
    gap_next: bool,
    map_next: bool,
    grows_left: Option<usize>,
    /// Bytes returned through `shrink`.
    pub shrunk: usize,
    /// Bytes purged through `purge`.
    pub purged: usize,
    /// Bytes released through `release`.
    pub released: usize,
}

// SAFETY: the arena owns its buffer exclusively (A1); moving it between threads moves that
// ownership. The heap that uses it is always behind a mutex.
unsafe impl Send for FixedArena {}

impl FixedArena {
    /// An arena over `[base, base + cap)`.
    ///
    /// # Safety
    /// The range is valid, zero-filled, 16-byte aligned, exclusively owned by the arena for its
    /// whole life, and `cap` is a multiple of 16.
    pub unsafe fn new(base: NonNull<u8>, cap: usize) -> Self {
        Self {
            base,
            cap,
            used: 0,
            gap_next: false,
            map_next: false,
            grows_left: None,
            shrunk: 0,
            purged: 0,
            released: 0,
        }
    }

    /// Makes the next growth skip a page, so it cannot continue the previous piece.
    pub fn leave_gap(&mut self) {
        self.gap_next = true;
    }

    /// Makes the next growth an `Origin::Mapped` piece (as the mmap fallback hands out), which
    /// the heap keeps as a segment of its own and releases whole.
    pub fn map_next(&mut self) {
        self.map_next = true;
        self.gap_next = true;
    }

    /// Lets only `n` more growths succeed.
    pub fn fail_after(&mut self, n: usize) {
        self.grows_left = Some(n);
    }

    /// Bytes handed out and not shrunk back.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl MemorySource for FixedArena {
    fn grow(&mut self, min_len: usize) -> Option<Grown> {
        if let Some(n) = self.grows_left {
            if n == 0 {
                return None;
            }
            self.grows_left = Some(n - 1);
        }
        let len = align_up(min_len, PAGE)?;
        let gap = if self.gap_next { PAGE } else { 0 };
        let start = self.used.checked_add(gap)?;
        if len > self.cap.checked_sub(start)? {
            return None;
        }
        self.gap_next = false;
        self.used = start + len;
        // SAFETY: `start + len <= cap` (checked above), so the offset stays inside the buffer.
        let base = unsafe { self.base.add(start) };
        let origin = if self.map_next { Origin::Mapped } else { Origin::Brk };
        // A mapped piece stands alone: the next growth must not continue it.
        self.gap_next = self.map_next;
        self.map_next = false;
        Some(Grown { base, len, origin })
    }

    fn shrink(&mut self, end: NonNull<u8>, len: usize) -> bool {
        if end.addr().get() != self.base.addr().get() + self.used || len > self.used {
            return false;
        }
        self.used -= len;
        self.shrunk += len;
        // A1: what lies beyond `used` is zero again, as the kernel would make it.
        // SAFETY: `[base + used, base + used + len)` is inside the buffer and no longer ours.
        unsafe { ptr::write_bytes(self.base.as_ptr().add(self.used), 0, len) };
        true
    }

    unsafe fn release(&mut self, base: NonNull<u8>, len: usize) -> bool {
        self.released += len;
        // A released piece is not handed out again; it reads as garbage, as an unmapped one
        // would fault (a heap that still used it fails its checks).
        // SAFETY: the caller guarantees a whole `Mapped` piece of ours that nothing uses.
        unsafe { ptr::write_bytes(base.as_ptr(), 0xdb, len) };
        true
    }

    unsafe fn purge(&mut self, start: NonNull<u8>, len: usize) -> bool {
        self.purged += len;
        // SAFETY: the caller guarantees the range is ours and holds nothing of value.
        unsafe { ptr::write_bytes(start.as_ptr(), 0xdb, len) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_matches_the_kernel() {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(page as usize, PAGE);
    }

    #[test]
    fn align_up_detects_overflow() {
        assert_eq!(align_up(1, 16), Some(16));
        assert_eq!(align_up(32, 16), Some(32));
        assert_eq!(align_up(usize::MAX - 3, 16), None);
    }

    #[test]
    fn sbrk_rejects_huge_growth() {
        let mut s = Sbrk::new();
        assert!(s.grow(usize::MAX - 10).is_none());
        assert!(s.grow(isize::MAX as usize + 1).is_none());
    }
}
