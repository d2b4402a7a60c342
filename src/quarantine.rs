//! The quarantine (`quarantine:N`, as scudo's): freed heap blocks wait in a FIFO of at most
//! `N` bytes before they go back to the central heap, so a use after free does not hit a block
//! that was handed out again. Each block entering is filled with [`QUARANTINE_BYTE`] and
//! checked when it leaves: a write after free is reported as corruption, with the block's
//! address, when the block comes out (`write after free detected (quarantined block
//! changed)`), and a second free of a waiting block is a double free.
//!
//! The FIFO is linked through the blocks' own bytes (no memory of its own): payload word 0 is
//! the link to the next newer block, word 1 the block's usable size xor [`QUARANTINE_KEY`],
//! the rest the fill byte. The heap still counts a waiting block as in use.
//!
//! The front end (`heap.rs`) calls [`free`] from its central free path when the option is on;
//! the thread caches are off then (`config::caches_enabled`), so every free comes there. Lock
//! order: `QUARANTINE` before `CENTRAL` (`sync.rs`, `fork.rs`).

use core::ptr::{self, NonNull};

use crate::block::HEADER;
use crate::central::CentralHeap;
use crate::diag::Misuse;
use crate::os::MemorySource;
use crate::sync::Mutex;

/// The byte a quarantined block is filled with (after its two link words).
pub const QUARANTINE_BYTE: u8 = 0xf5;

/// Xored with the usable size in payload word 1 of a quarantined block.
pub const QUARANTINE_KEY: usize = 0x7175_6172_616e_7469;

/// Payload bytes the FIFO uses for its own words.
const LINK_WORDS: usize = 2 * size_of::<usize>();

/// The FIFO of quarantined blocks.
///
/// # Invariants
/// - Q1: `oldest` .. `newest` is a singly linked list (payload word 0, oldest to newest, null
///   after `newest`) of `count` in-use heap blocks given up by the program; each has word 1 =
///   its usable size ^ `QUARANTINE_KEY` and every later payload byte `QUARANTINE_BYTE`, unless
///   the program wrote to it after freeing it (what [`free`] detects: nothing in the list is
///   read before it is checked to be an in-use heap block).
/// - Q2: `bytes` is the sum of their block sizes (usable + header); both are 0 when empty.
#[derive(Debug)]
pub struct Quarantine {
    oldest: *mut u8,
    newest: *mut u8,
    count: usize,
    bytes: usize,
}

// SAFETY: the raw pointers name heap blocks owned by the quarantine (Q1); it is always behind
// a mutex.
unsafe impl Send for Quarantine {}

impl Quarantine {
    /// An empty quarantine.
    pub const fn new() -> Self {
        Self { oldest: ptr::null_mut(), newest: ptr::null_mut(), count: 0, bytes: 0 }
    }

    /// Blocks waiting.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes waiting (block sizes).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `p` (usable size `usable`) is waiting here: its key word says so and the list
    /// holds it (a program that stored the key value is not accused). The walk stops at a
    /// link that is not an in-use block of `heap` (damaged: reported when it leaves).
    ///
    /// # Safety
    /// `p` is an in-use block of `heap` with `usable >= 16` bytes.
    unsafe fn holds<S: MemorySource>(
        &self,
        heap: &CentralHeap<S>,
        p: NonNull<u8>,
        usable: usize,
    ) -> bool {
        // SAFETY: word 1 lies inside the payload (contract).
        let key = unsafe { p.as_ptr().cast::<usize>().add(1).read() };
        if key != usable ^ QUARANTINE_KEY {
            return false;
        }
        let mut cur = self.oldest;
        for _ in 0..self.count {
            let Some(b) = NonNull::new(cur) else { break };
            if b == p {
                return true;
            }
            if heap.usable_size(b).is_err() {
                break;
            }
            // SAFETY: an in-use heap block (checked): its word 0 is readable.
            cur = ptr::with_exposed_provenance_mut(unsafe { b.as_ptr().cast::<usize>().read() });
        }
        false
    }

    /// Appends `p` (usable size `usable`), filled and keyed.
    ///
    /// # Safety
    /// `p` is an in-use heap block with `usable >= 16` bytes, given up by the program and not
    /// in the quarantine.
    unsafe fn push(&mut self, p: NonNull<u8>, usable: usize) {
        let w = p.as_ptr().cast::<usize>();
        // SAFETY: the whole payload is ours (contract); `newest` is a member (Q1).
        unsafe {
            w.write(0);
            w.add(1).write(usable ^ QUARANTINE_KEY);
            ptr::write_bytes(p.as_ptr().add(LINK_WORDS), QUARANTINE_BYTE, usable - LINK_WORDS);
            if self.newest.is_null() {
                self.oldest = p.as_ptr();
            } else {
                self.newest.cast::<usize>().write(p.as_ptr().expose_provenance());
            }
        }
        self.newest = p.as_ptr();
        self.count += 1;
        self.bytes += usable + HEADER;
    }

    /// The oldest block, if any.
    fn oldest(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.oldest)
    }

    /// Takes the oldest block out of the list; returns the usable size its key word claims
    /// (the caller checks it against the heap before trusting the block).
    ///
    /// # Safety
    /// The oldest block is an in-use heap block (checked by the caller: a damaged link may
    /// point anywhere).
    unsafe fn pop(&mut self) -> usize {
        let b = self.oldest;
        // SAFETY: an in-use heap block (contract) has its two payload words.
        let (next, claimed) = unsafe {
            let w = b.cast::<usize>();
            (ptr::with_exposed_provenance_mut(w.read()), w.add(1).read() ^ QUARANTINE_KEY)
        };
        self.count -= 1;
        self.oldest = next;
        if self.count == 0 {
            *self = Self::new();
        } else {
            self.bytes = self.bytes.saturating_sub(claimed.saturating_add(HEADER));
        }
        claimed
    }
}

impl Default for Quarantine {
    fn default() -> Self {
        Self::new()
    }
}

/// Frees `p` into the quarantine `q` of at most `limit` bytes, then gives the oldest waiting
/// blocks back to `central` until the quarantine fits, each checked first.
///
/// # Errors
/// With the address it concerns: `p` is not an in-use block of the heap (`NotOurs`: a large
/// block, for the caller to free; anything else as `CentralHeap::free` says); `DoubleFree`: `p`
/// is waiting already; `WriteAfterFree`: a block leaving changed while it waited (it is not
/// freed, and stays allocated: a heap whose free block was written would be worse).
pub fn free<S: MemorySource>(
    q: &Mutex<Quarantine>,
    central: &Mutex<CentralHeap<S>>,
    p: NonNull<u8>,
    limit: usize,
) -> Result<(), (Misuse, NonNull<u8>)> {
    let mut q = q.lock();
    let mut heap = central.lock();
    let usable = heap.usable_size(p).map_err(|e| (e, p))?;
    if usable < LINK_WORDS {
        // Never: the smallest block has 24 usable bytes. Free it at once.
        return heap.free(p).map_err(|e| (e, p));
    }
    // SAFETY: validated above: an in-use heap block of `usable >= 16` bytes.
    if unsafe { q.holds(&heap, p, usable) } {
        return Err((Misuse::DoubleFree, p));
    }
    // SAFETY: as above; not waiting (checked), given up by the program (the caller's contract).
    unsafe { q.push(p, usable) };
    release_over(&mut q, &mut heap, limit)
}

/// Gives every waiting block back to `central`, each checked first (a drain: tests, and a
/// program's end).
///
/// # Errors
/// As [`free`]: `WriteAfterFree` for a block that changed while it waited.
pub fn drain<S: MemorySource>(
    q: &Mutex<Quarantine>,
    central: &Mutex<CentralHeap<S>>,
) -> Result<(), (Misuse, NonNull<u8>)> {
    let mut q = q.lock();
    let mut heap = central.lock();
    release_over(&mut q, &mut heap, 0)
}

/// Gives the oldest blocks back to `heap` until at most `limit` bytes wait.
fn release_over<S: MemorySource>(
    q: &mut Quarantine,
    heap: &mut CentralHeap<S>,
    limit: usize,
) -> Result<(), (Misuse, NonNull<u8>)> {
    while q.bytes() > limit
        && let Some(b) = q.oldest()
    {
        // A damaged link leads to something that is not an in-use heap block: checked before
        // any of its words is read. Then the key word against the header, then the fill.
        let intact = heap.usable_size(b).is_ok_and(|u| {
            // SAFETY: `b` is an in-use heap block (checked), the oldest in the list.
            let claimed = unsafe { q.pop() };
            // SAFETY: an in-use heap block with `u >= claimed` usable bytes.
            claimed == u && unsafe { filled(b, u) }
        });
        if !intact {
            // The list beyond `b` cannot be trusted: drop it (its blocks stay allocated).
            *q = Quarantine::new();
            return Err((Misuse::WriteAfterFree, b));
        }
        heap.free(b).map_err(|e| (e, b))?;
    }
    Ok(())
}

/// Whether the payload of `b` after the link words is all [`QUARANTINE_BYTE`].
///
/// # Safety
/// `b` is an in-use heap block with `usable >= 16` bytes.
unsafe fn filled(b: NonNull<u8>, usable: usize) -> bool {
    // SAFETY: forwarded contract.
    let rest =
        unsafe { core::slice::from_raw_parts(b.as_ptr().add(LINK_WORDS), usable - LINK_WORDS) };
    rest.iter().all(|&x| x == QUARANTINE_BYTE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::undocumented_unsafe_blocks)]
    use super::*;
    use crate::os::FixedArena;

    /// A heap over `buf` (1 MiB), an empty quarantine, and `n` live blocks of 100 bytes.
    fn setup(
        buf: &mut Vec<u128>,
        n: usize,
    ) -> (Mutex<CentralHeap<FixedArena>>, Mutex<Quarantine>, Vec<NonNull<u8>>) {
        *buf = vec![0u128; (1 << 20) / 16];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        let h = Mutex::new(CentralHeap::new(unsafe { FixedArena::new(base, buf.len() * 16) }));
        let ps = (0..n).map(|_| h.lock().alloc(100, false).unwrap().0).collect();
        (h, Mutex::new(Quarantine::new()), ps)
    }

    #[test]
    fn blocks_wait_then_go_back_checked() {
        let mut buf = Vec::new();
        let (h, q, ps) = setup(&mut buf, 8);
        for &p in &ps[..4] {
            free(&q, &h, p, 300).unwrap();
        }
        // 112-byte blocks: two fit in 300 bytes, the two oldest went back.
        assert_eq!(q.lock().count(), 2);
        assert_eq!(h.lock().stats().used_blocks, 6);
        assert_eq!(free(&q, &h, ps[3], 300), Err((Misuse::DoubleFree, ps[3])), "waiting");
        assert!(matches!(free(&q, &h, ps[0], 300), Err((Misuse::DoubleFree, _))), "freed");
        // A write after free into a waiting block is found when it leaves.
        unsafe { ps[2].as_ptr().add(50).write(1) };
        assert_eq!(free(&q, &h, ps[4], 300), Err((Misuse::WriteAfterFree, ps[2])));
        h.lock().check(true).unwrap();
        free(&q, &h, ps[6], 1 << 20).unwrap();
        free(&q, &h, ps[7], 1 << 20).unwrap();
        drain(&q, &h).unwrap();
        assert_eq!(q.lock().count(), 0);
        assert_eq!(h.lock().stats().used_blocks, 4, "ps[2], ps[3], ps[4] dropped, ps[5] live");
    }

    #[test]
    fn a_damaged_link_is_reported_not_followed() {
        let mut buf = Vec::new();
        let (h, q, ps) = setup(&mut buf, 4);
        free(&q, &h, ps[0], 1000).unwrap();
        free(&q, &h, ps[1], 1000).unwrap();
        // The link of the oldest now points at a static: the next block out is not a block.
        static FORGED: [u64; 8] = [0; 8];
        unsafe { ps[0].as_ptr().cast::<usize>().write(FORGED.as_ptr().addr()) };
        free(&q, &h, ps[2], 0).unwrap_err();
        h.lock().check(true).unwrap();
    }
}
