//! Large blocks: requests at or above the mmap threshold get a mapping of their own, `munmap`
//! on free and `mremap` on realloc, and never enter the central heap.
//!
//! ```text
//!  base (page-aligned)                  user = base + offset (aligned as asked)
//!  │                                     │
//!  ▼                                     ▼
//!  ┌─────────── … ───────┬────────┬──────┬───────────────────────────────────┐
//!  │  (alignment slack)  │ offset │ hdr  │ payload                           │
//!  └─────────── … ───────┴────────┴──────┴───────────────────────────────────┘
//!                          user-16  user-8                          base + len
//! ```
//! `hdr` is a block header (`block.rs`) with `USED | MAPPED`, the mapping length as its size and
//! the usual address tag; the word before it holds `offset`.

use core::ptr::NonNull;

use crate::block::{ALIGN, BlockPtr, HEADER, MAPPED, USED};
use crate::central::Misuse;
use crate::os::{self, PAGE, align_up};
use crate::sync::{AtomicUsize, Ordering};

/// Live large blocks (statistics; Relaxed is enough: nothing is ordered by them).
pub static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Bytes mapped for live large blocks (statistics, Relaxed).
pub static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Most large blocks live at once (statistics, Relaxed).
pub static MAX_BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Most bytes mapped for large blocks at once (statistics, Relaxed).
pub static MAX_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Counts a new mapping of `len` bytes and raises the peaks.
fn count_map(len: usize) {
    // Relaxed: statistics (see the statics).
    let blocks = LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed) + 1;
    let bytes = LIVE_BYTES.fetch_add(len, Ordering::Relaxed) + len;
    MAX_BLOCKS.fetch_max(blocks, Ordering::Relaxed);
    MAX_BYTES.fetch_max(bytes, Ordering::Relaxed);
}

/// A validated large block.
///
/// # Invariants
/// - L1: `[base, base + len)` is one mapping of ours; `user = base + offset`, `16 <= offset < len`.
#[derive(Clone, Copy, Debug)]
pub struct Large {
    base: NonNull<u8>,
    len: usize,
    offset: usize,
}

impl Large {
    /// Bytes the program may use.
    pub fn usable(&self) -> usize {
        self.len - self.offset
    }
}

/// Writes the header words in front of `user`.
///
/// # Safety
/// `user - 16 .. user` lies inside the mapping `[base, base + len)`.
unsafe fn write_header(user: NonNull<u8>, len: usize, offset: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        let b = BlockPtr::from_user(user);
        b.set_header(len, USED | MAPPED);
        b.offset_back(8).ptr().cast::<usize>().write(offset);
    }
}

/// Maps a block with at least `n` payload bytes aligned to `align` (a power of two).
pub fn alloc(n: usize, align: usize) -> Option<NonNull<u8>> {
    let align = align.max(ALIGN);
    // Room for the two header words before an aligned address.
    let extra = if align <= PAGE { align.max(2 * HEADER) } else { align.checked_add(PAGE)? };
    let len = align_up(n.checked_add(extra)?, PAGE)?;
    let base = os::map(len)?;
    let user_addr = align_up(base.addr().get() + 2 * HEADER, align)?;
    let offset = user_addr - base.addr().get();
    // SAFETY: `offset + n <= len` by the choice of `extra`, so `user` is inside the mapping.
    let user = unsafe { base.add(offset) };
    // SAFETY: `offset >= 16`, so both header words lie inside the mapping.
    unsafe { write_header(user, len, offset) };
    count_map(len);
    Some(user)
}

/// Checks that `user` is a large block of ours.
///
/// # Safety
/// The 16 bytes before `user` are readable (true for every block we handed out; a foreign
/// pointer at the very start of a mapping would fault here, as it does in glibc).
pub unsafe fn validate(user: NonNull<u8>) -> Result<Large, Misuse> {
    let addr = user.addr().get();
    if addr % ALIGN != 0 || addr < 2 * HEADER {
        return Err(Misuse::InvalidPointer);
    }
    // SAFETY: forwarded contract.
    let b = unsafe { BlockPtr::from_user(user) };
    // SAFETY: forwarded contract.
    let h = unsafe { b.header() };
    if !b.tag_ok(h) || h & 0xf != USED | MAPPED {
        return Err(Misuse::BadHeader);
    }
    let len = BlockPtr::size_of(h);
    // SAFETY: forwarded contract.
    let offset = unsafe { b.offset_back(8).ptr().cast::<usize>().read() };
    if len % PAGE != 0 || offset < 2 * HEADER || offset >= len || offset > addr {
        return Err(Misuse::BadHeader);
    }
    if (addr - offset) % PAGE != 0 {
        return Err(Misuse::BadHeader);
    }
    // SAFETY: `offset <= addr` and `user` carries the mapping's provenance.
    let base = unsafe { user.sub(offset) };
    Ok(Large { base, len, offset })
}

/// Unmaps a validated block.
///
/// # Safety
/// `blk` came from [`validate`] and the program no longer uses it.
pub unsafe fn free(blk: Large) {
    // SAFETY: L1 — one whole mapping of ours.
    unsafe { os::unmap(blk.base, blk.len) };
    LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    LIVE_BYTES.fetch_sub(blk.len, Ordering::Relaxed);
}

/// Resizes a validated block to `n` payload bytes with `mremap`, moving it if needed; `None`
/// leaves it untouched. The result keeps 16-byte alignment (the offset is unchanged), not any
/// larger alignment the block had.
///
/// # Safety
/// `blk` came from [`validate`].
pub unsafe fn realloc(blk: Large, n: usize) -> Option<NonNull<u8>> {
    let new_len = align_up(n.checked_add(blk.offset)?, PAGE)?;
    if new_len == blk.len {
        // SAFETY: L1.
        return Some(unsafe { blk.base.add(blk.offset) });
    }
    // SAFETY: L1 — exactly one mapping of ours.
    let base = unsafe { os::remap(blk.base, blk.len, new_len)? };
    // SAFETY: `offset < new_len` since `new_len >= n + offset`, and offset >= 16.
    let user = unsafe { base.add(blk.offset) };
    // SAFETY: as above, the header words lie inside the new mapping.
    unsafe { write_header(user, new_len, blk.offset) };
    LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    LIVE_BYTES.fetch_sub(blk.len, Ordering::Relaxed);
    count_map(new_len);
    Some(user)
}
