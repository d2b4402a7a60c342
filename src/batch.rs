//! Lists of cached blocks: the safe-linked list a thread cache keeps per size class, and the
//! [`Batch`], a detached piece of such a list with its length, which is what moves between a
//! thread cache, the middle layer (`transfer.rs`) and the central heap.
//!
//! A cached block is an in-use block as far as the central heap knows. Its first payload word
//! links it to the next block of its list, and its second holds [`CACHE_KEY`] (with
//! `hardening`), so that `free` of a cached block (a double free) is caught with one compare
//! (glibc's tcache `key`). The link is stored XOR (the block's address >> 12) (glibc's
//! safe-linking), so a program that overwrites a freed block cannot make `malloc` return an
//! address of its choice. The mask depends on the block's own address only: a batch moves
//! between threads without being rewritten.

use core::ptr::{self, NonNull};

pub use crate::block::CACHE_KEY;
use crate::block::{ALIGN, HARDENED, UserPtr};
use crate::central::CentralHeap;
use crate::diag::Misuse;
use crate::os::MemorySource;

/// The safe-linking mask of a link stored in `slot` (0 without `hardening`).
#[inline(always)]
fn link_mask(slot: UserPtr) -> usize {
    if HARDENED { slot.addr() >> 12 } else { 0 }
}

/// Reads the link of cached block `slot` (see the module docs). `Err` when the decoded pointer
/// is not 16-byte aligned (the word was damaged).
///
/// # Safety
/// `slot` is a cached block (a member of a cache list or a batch: BT1).
#[inline(always)]
pub unsafe fn read_link(slot: UserPtr) -> Result<*mut u8, Misuse> {
    // SAFETY: forwarded contract.
    let v = unsafe { slot.cache_link() } ^ link_mask(slot);
    if HARDENED && v % ALIGN != 0 {
        return Err(Misuse::CorruptLink);
    }
    Ok(ptr::with_exposed_provenance_mut(v))
}

/// Writes the link of `slot` (see [`read_link`]) and marks it cached.
///
/// # Safety
/// `slot` is an in-use block owned by the caller (a cache, or a batch it holds).
#[inline(always)]
pub unsafe fn link_in(slot: UserPtr, next: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe {
        slot.set_cache_link(next.expose_provenance() ^ link_mask(slot));
        slot.set_cache_key();
    }
}

/// A damaged link was found in a cache list: abort with the block's address.
#[cold]
pub fn corrupt_link(e: Misuse, slot: UserPtr) -> ! {
    crate::diag::fatal("malloc", e.message(), slot.addr())
}

/// A detached list of cached blocks of one size class.
///
/// # Invariants
/// - BT1: `count` blocks are linked from `head` through their links ([`read_link`]), the last
///   one's link is null; each is an in-use heap block of the class's size or larger, with
///   [`CACHE_KEY`] (with `hardening`), owned by whoever holds the batch. `head` is null exactly
///   when `count` is 0.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    /// The first block (null for an empty batch).
    pub head: *mut u8,
    /// The number of blocks.
    pub count: u32,
}

// SAFETY: BT1 — the blocks belong to the batch's holder; moving the batch moves them.
unsafe impl Send for Batch {}

impl Batch {
    /// The empty batch.
    pub const EMPTY: Self = Self { head: ptr::null_mut(), count: 0 };

    /// Returns every block of the batch to `heap` (clearing each key before the heap reuses
    /// the words).
    ///
    /// # Errors
    /// A [`Misuse`] found in a block (a write after free damaged a link or a header). The
    /// blocks not yet returned stay where they are (leaked).
    pub fn free_to<S: MemorySource>(self, heap: &mut CentralHeap<S>) -> Result<(), Misuse> {
        let mut rest = self.head;
        for _ in 0..self.count {
            let b = NonNull::new(rest).ok_or(Misuse::CorruptLink)?;
            let p = UserPtr::new(b);
            // SAFETY: BT1 — a member of the batch, ours: read its link, clear its key.
            unsafe {
                rest = read_link(p)?;
                p.clear_cache_key();
            }
            heap.free(b)?;
        }
        Ok(())
    }

    /// Calls `f` on every block of the batch, first to last.
    ///
    /// # Errors
    /// `CorruptLink` when a link does not decode or the list is shorter or longer than `count`.
    pub fn for_each(self, mut f: impl FnMut(UserPtr)) -> Result<(), Misuse> {
        let mut cur = self.head;
        for _ in 0..self.count {
            let p = UserPtr::new(NonNull::new(cur).ok_or(Misuse::CorruptLink)?);
            f(p);
            // SAFETY: BT1.
            cur = unsafe { read_link(p) }?;
        }
        if cur.is_null() { Ok(()) } else { Err(Misuse::CorruptLink) }
    }
}
