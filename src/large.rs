//! Large blocks: requests at or above the mmap threshold get a mapping of their own, and never
//! enter the central heap. Mappings come from and go back to the cache of freed mappings
//! (`large_cache.rs`); realloc resizes them in place of copying (see [`realloc`]).
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

use crate::block::{ALIGN, BlockPtr, HEADER, MAPPED, USED, UserPtr};
use crate::central::HeapError;
use crate::diag::Misuse;
use crate::large_cache;
use crate::os::{self, PAGE, align_up};
use crate::sync::{Counter, Mutex};

/// Live large blocks (statistics: `sync::Counter`, the loom model `atomics::counters`).
pub static LIVE_BLOCKS: Counter = Counter::new();
/// Bytes mapped for live large blocks (statistics).
pub static LIVE_BYTES: Counter = Counter::new();
/// Most large blocks live at once (statistics).
pub static MAX_BLOCKS: Counter = Counter::new();
/// Most bytes mapped for large blocks at once (statistics).
pub static MAX_BYTES: Counter = Counter::new();

/// Counts a new mapping of `len` bytes and raises the peaks.
fn count_map(len: usize) {
    MAX_BLOCKS.raise_to(LIVE_BLOCKS.add(1));
    MAX_BYTES.raise_to(LIVE_BYTES.add(len));
}

/// Counts an unmapped mapping of `len` bytes.
fn count_unmap(len: usize) {
    LIVE_BLOCKS.sub(1);
    LIVE_BYTES.sub(len);
}

/// A large block, as read from its header under the registry lock.
///
/// # Invariants
/// - L1: `[base, base + len)` is one mapping of ours; `user = base + offset`, `16 <= offset < len`.
#[derive(Clone, Copy, Debug)]
struct Large {
    base: NonNull<u8>,
    len: usize,
    offset: usize,
}

impl Large {
    /// Bytes the program may use.
    fn usable(&self) -> usize {
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
        BlockPtr::from_user(user).set_header(len, USED | MAPPED);
        UserPtr::new(user).set_large_offset(offset);
    }
}

/// Reads and checks the header of a registered block.
///
/// # Safety
/// `user` is in the registry (so its mapping and header words exist).
unsafe fn read(user: NonNull<u8>) -> Result<Large, Misuse> {
    let addr = user.addr().get();
    // SAFETY: forwarded contract.
    let b = unsafe { BlockPtr::from_user(user) };
    // SAFETY: forwarded contract.
    let h = unsafe { b.header() };
    if !b.tag_ok(h) || h & 0xf != USED | MAPPED {
        return Err(Misuse::BadHeader);
    }
    let len = BlockPtr::size_of(h);
    // SAFETY: forwarded contract.
    let offset = unsafe { UserPtr::new(user).large_offset() };
    if len % PAGE != 0 || offset < 2 * HEADER || offset >= len || (addr - offset) % PAGE != 0 {
        return Err(Misuse::BadHeader);
    }
    // SAFETY: `offset <= addr` and `user` carries the mapping's provenance.
    let base = unsafe { user.sub(offset) };
    Ok(Large { base, len, offset })
}

/// The set of live large blocks (their user pointers): an open-addressing hash table in a
/// mapping of its own, so `free` of a pointer we never mapped, or of a large block already
/// freed, is recognised without touching the pointer's memory.
///
/// # Invariants
/// - R1: `slots[..cap]` holds each live block's user pointer exactly once, `EMPTY` or `TOMB`
///   elsewhere; `cap` is zero or a power of two; `len + tombs < cap * 3 / 4`.
pub struct Registry {
    slots: *mut usize,
    cap: usize,
    len: usize,
    tombs: usize,
}

const EMPTY: usize = 0;
const TOMB: usize = 1;

// SAFETY: the table is owned by the registry, which lives in a Mutex.
unsafe impl Send for Registry {}

impl Registry {
    /// An empty registry (no table mapped yet).
    pub const fn new() -> Self {
        Self { slots: core::ptr::null_mut(), cap: 0, len: 0, tombs: 0 }
    }

    fn start(&self, key: usize) -> usize {
        ((key >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7) & (self.cap - 1)
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: usize) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        let mut i = self.start(key);
        loop {
            // SAFETY: R1 — `i < cap`, inside the table.
            let v = unsafe { *self.slots.add(i) };
            if v == key {
                return Some(i);
            }
            if v == EMPTY {
                return None;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }

    /// Whether `key` is registered.
    pub fn contains(&self, key: usize) -> bool {
        self.find(key).is_some()
    }

    /// Registers `key` (not yet present); `false` if the table cannot grow.
    pub fn insert(&mut self, key: usize) -> bool {
        if (self.len + self.tombs + 1) * 4 >= self.cap * 3 && !self.grow() {
            return false;
        }
        let mut i = self.start(key);
        loop {
            // SAFETY: R1 — `i < cap`.
            let slot = unsafe { &mut *self.slots.add(i) };
            if *slot == EMPTY || *slot == TOMB {
                if *slot == TOMB {
                    self.tombs -= 1;
                }
                *slot = key;
                self.len += 1;
                return true;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }

    /// Unregisters `key`; `false` if it was not registered.
    pub fn remove(&mut self, key: usize) -> bool {
        match self.find(key) {
            Some(i) => {
                // SAFETY: R1 — `i < cap`.
                unsafe { *self.slots.add(i) = TOMB };
                self.len -= 1;
                self.tombs += 1;
                true
            }
            None => false,
        }
    }

    /// Doubles the table (or rebuilds it without tombstones).
    fn grow(&mut self) -> bool {
        let new_cap =
            if self.len * 2 < self.cap { self.cap.max(512) } else { (self.cap * 2).max(512) };
        let Some(table) = os::map(new_cap * size_of::<usize>()) else { return false };
        let old = (self.slots, self.cap);
        self.slots = table.as_ptr().cast();
        self.cap = new_cap;
        self.len = 0;
        self.tombs = 0;
        for i in 0..old.1 {
            // SAFETY: R1 of the old table.
            let v = unsafe { *old.0.add(i) };
            if v != EMPTY && v != TOMB {
                self.insert(v);
            }
        }
        if let Some(p) = NonNull::new(old.0.cast::<u8>()) {
            // SAFETY: the old table is ours and no longer used.
            unsafe { os::unmap(p, old.1 * size_of::<usize>()) };
        }
        true
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// The live large blocks (lock `LARGE`, after `CENTRAL` and before `LARGE_CACHE` in the lock
/// order, `sync.rs`; no path holds `CENTRAL` and `LARGE` together).
pub(crate) static REGISTRY: Mutex<Registry> = Mutex::new(Registry::new());

/// Room for the cache's automatic bound (`large_cache::bound`): what live large blocks may
/// grow by before they and the cache together pass their peak by a quarter
/// (`large_cache::AUTO_PEAK_SLACK_DIVISOR`), and at most four times the live large bytes. A
/// program whose large blocks shrink keeps their pages for the next growth without its RSS
/// passing the peak it already had; one that frees all of them keeps only the floor.
fn room() -> usize {
    // Relaxed: statistics (see the statics).
    let peak = MAX_BYTES.get();
    let live = LIVE_BYTES.get();
    (peak + peak / large_cache::AUTO_PEAK_SLACK_DIVISOR)
        .saturating_sub(live)
        .min(large_cache::AUTO_LIVE_FACTOR * live)
}

/// Maps a block with at least `n` payload bytes aligned to `align` (a power of two). Its
/// memory may hold old data (a reused mapping).
pub fn alloc(n: usize, align: usize) -> Option<NonNull<u8>> {
    alloc_dirty(n, align).map(|(user, _)| user)
}

/// Maps a block with at least `n` zeroed payload bytes, 16-byte aligned: the part of a reused
/// mapping that may hold old data is cleared, fresh pages are not touched.
pub fn alloc_zeroed(n: usize) -> Option<NonNull<u8>> {
    let (user, dirty) = alloc_dirty(n, ALIGN)?;
    // SAFETY: the first `dirty` payload bytes lie inside the block (`dirty <= n` below).
    unsafe { core::ptr::write_bytes(user.as_ptr(), 0, dirty.min(n)) };
    Some(user)
}

/// [`alloc`], and how many payload bytes from the start may be non-zero.
fn alloc_dirty(n: usize, align: usize) -> Option<(NonNull<u8>, usize)> {
    // Room for the two header words before an aligned address.
    // The user pointer sits 16 bytes into a page (alignment up to 16) or at a page boundary
    // (any larger alignment): the free fast path sends both to the registry check before it
    // reads a header, so a double free of a large block never touches its unmapped memory.
    let align = if align <= ALIGN { ALIGN } else { align.max(PAGE) };
    let extra = if align <= PAGE { align.max(2 * HEADER) } else { align.checked_add(PAGE)? };
    let len = align_up(n.checked_add(extra)?, PAGE)?;
    let (base, len, dirty) = large_cache::obtain(len, room())?;
    let user_addr = align_up(base.addr().get() + 2 * HEADER, align)?;
    let offset = user_addr - base.addr().get();
    // SAFETY: `offset + n <= len` by the choice of `extra`, so `user` is inside the mapping.
    let user = unsafe { base.add(offset) };
    // SAFETY: `offset >= 16`, so both header words lie inside the mapping.
    unsafe { write_header(user, len, offset) };
    if !REGISTRY.lock().insert(user_addr) {
        // SAFETY: our mapping, never handed out.
        unsafe { os::unmap(base, len) };
        return None;
    }
    count_map(len);
    Some((user, dirty.saturating_sub(offset)))
}

/// Whether `user` is a live large block.
pub fn owns(user: NonNull<u8>) -> bool {
    REGISTRY.lock().contains(user.addr().get())
}

/// Usable bytes of the large block `user`.
///
/// # Errors
/// `NotAllocated` for a pointer that is not a live large block; `BadHeader` for a damaged one.
pub fn usable(user: NonNull<u8>) -> Result<usize, Misuse> {
    let reg = REGISTRY.lock();
    if !reg.contains(user.addr().get()) {
        return Err(Misuse::NotAllocated);
    }
    // SAFETY: registered, so its mapping exists until it is removed (we hold the lock).
    let blk = unsafe { read(user) }?;
    drop(reg);
    Ok(blk.usable())
}

/// Frees the large block `user` (its mapping goes to the cache, or is unmapped) and returns the
/// mapping's length. The check and the removal happen under one lock, so two racing frees of
/// one block cannot both release it.
///
/// # Errors
/// As [`usable`]; the registry is unchanged then.
pub fn free(user: NonNull<u8>) -> Result<usize, Misuse> {
    let mut reg = REGISTRY.lock();
    if !reg.contains(user.addr().get()) {
        return Err(Misuse::NotAllocated);
    }
    // SAFETY: registered (see `usable`).
    let blk = unsafe { read(user) }?;
    reg.remove(user.addr().get());
    drop(reg);
    // SAFETY: L1 — one whole mapping of ours, now unregistered.
    unsafe { large_cache::give(blk.base, blk.len, room()) };
    count_unmap(blk.len);
    Ok(blk.len)
}

/// Whether a block of `n` payload bytes in a mapping of `len` bytes should stay a mapping
/// rather than move into the heap: at or above the mmap threshold, or when the page rounding
/// wastes at most an eighth of the mapping (below that, a heap block saves memory).
pub fn stays_mapped(n: usize, len: usize, threshold: usize) -> bool {
    n >= threshold || (len - n.min(len)) * 8 <= len
}

/// Grows by copying into a warm cached mapping, instead of `mremap` with fresh pages, when the
/// copy is at most this many times the growth (a copied byte costs less than a faulted and
/// zeroed one; on the harness's `large` workload a ratio of 8 faulted no less than 1).
pub const COPY_INTO_WARM_RATIO: usize = 1;

/// Resizes the large block `user` to `n` payload bytes; `Ok(None)` leaves it untouched and
/// asks the caller to move it (allocate, copy, free): when `n` is below `threshold` and a heap
/// block would use less memory ([`stays_mapped`]), or when the kernel refuses the resize.
///
/// - shrink: the cut-off tail pages go to the cache (no copy, no syscall when cached);
/// - grow: into a cached mapping that fits if the bytes to copy are few next to the pages
///   it saves faulting ([`COPY_INTO_WARM_RATIO`]), else `mremap` (pages move, bytes do not).
///
/// The result keeps 16-byte alignment (the offset is unchanged), not any larger alignment the
/// block had.
///
/// # Errors
/// As [`usable`].
pub fn realloc(
    user: NonNull<u8>,
    n: usize,
    threshold: usize,
) -> Result<Option<NonNull<u8>>, Misuse> {
    let mut reg = REGISTRY.lock();
    if !reg.contains(user.addr().get()) {
        return Err(Misuse::NotAllocated);
    }
    // SAFETY: registered (see `usable`).
    let blk = unsafe { read(user) }?;
    let Some(new_len) = n.checked_add(blk.offset).and_then(|v| align_up(v, PAGE)) else {
        return Ok(None);
    };
    if new_len == blk.len {
        return Ok(Some(user));
    }
    if !stays_mapped(n, new_len, threshold) {
        return Ok(None);
    }
    if new_len < blk.len {
        // SAFETY: the header words lie before `user`, inside the shortened mapping.
        unsafe { write_header(user, new_len, blk.offset) };
        drop(reg);
        LIVE_BYTES.sub(blk.len - new_len);
        // SAFETY: `new_len < len`: the tail of the block's mapping, no longer part of it.
        unsafe { large_cache::give(blk.base.add(new_len), blk.len - new_len, room()) };
        return Ok(Some(user));
    }
    let copy = blk.len - blk.offset;
    let warm = if copy <= (new_len - blk.len) * COPY_INTO_WARM_RATIO {
        large_cache::take_warm(new_len, room())
    } else {
        None
    };
    let (base, new_len) = match warm {
        Some((dst, got)) => {
            // SAFETY: a cached span of `new_len` bytes, ours alone; the old block has `copy`
            // payload bytes from `offset`, and `offset + copy <= new_len`.
            unsafe {
                core::ptr::copy_nonoverlapping(user.as_ptr(), dst.add(blk.offset).as_ptr(), copy)
            };
            (dst, got)
        }
        // SAFETY: L1 — exactly one mapping of ours; on failure it is untouched.
        None => match unsafe { os::remap(blk.base, blk.len, new_len) } {
            Some(b) => (b, new_len),
            None => return Ok(None),
        },
    };
    // SAFETY: `offset < new_len` since `new_len >= n + offset`, and offset >= 16.
    let new_user = unsafe { base.add(blk.offset) };
    // SAFETY: as above, the header words lie inside the new mapping.
    unsafe { write_header(new_user, new_len, blk.offset) };
    reg.remove(user.addr().get());
    // A removal just freed a slot, so this insert needs no growth.
    reg.insert(new_user.addr().get());
    drop(reg);
    if warm.is_some() {
        // SAFETY: L1 — the old mapping, unregistered and copied out.
        unsafe { large_cache::give(blk.base, blk.len, room()) };
    }
    count_unmap(blk.len);
    count_map(new_len);
    Ok(Some(new_user))
}

impl Registry {
    /// Checks R1: the table's shape and counts, and that every registered pointer is a live
    /// large block with a valid header.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check(&self) -> Result<(), HeapError> {
        let err = |what, addr| Err(HeapError { what, addr });
        if self.cap != 0 && !self.cap.is_power_of_two() {
            return err("R1: registry capacity is not a power of two", self.cap);
        }
        if self.cap != 0 && (self.len + self.tombs) * 4 >= self.cap * 3 {
            return err("R1: registry over its load factor", self.len + self.tombs);
        }
        let (mut len, mut tombs) = (0, 0);
        for i in 0..self.cap {
            // SAFETY: R1 — `i < cap`.
            let v = unsafe { *self.slots.add(i) };
            match v {
                EMPTY => {}
                TOMB => tombs += 1,
                key => {
                    len += 1;
                    if self.find(key) != Some(i) {
                        return err("R1: a registered pointer is not found where it is", key);
                    }
                    let Some(user) = NonNull::new(core::ptr::with_exposed_provenance_mut(key))
                    else {
                        return err("R1: null registered", i);
                    };
                    // SAFETY: registered, so its mapping exists (the caller holds the lock).
                    if unsafe { read(user) }.is_err() {
                        return err("R1: a registered block's header is damaged", key);
                    }
                }
            }
        }
        if len != self.len || tombs != self.tombs {
            return err("R1: registry counts disagree with its table", len);
        }
        Ok(())
    }
}

/// Checks the process's registry of large blocks (R1), under its lock.
///
/// # Errors
/// The first broken invariant.
pub fn check_registry() -> Result<(), HeapError> {
    REGISTRY.lock().check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_insert_find_remove_and_grow() {
        let mut r = Registry::new();
        for i in 1..5000usize {
            assert!(r.insert(i * 4096 + 16));
        }
        for i in 1..5000usize {
            assert!(r.contains(i * 4096 + 16));
            assert!(!r.contains(i * 4096 + 32));
        }
        for i in (1..5000usize).step_by(2) {
            assert!(r.remove(i * 4096 + 16));
            assert!(!r.remove(i * 4096 + 16), "removed twice");
        }
        for i in 1..5000usize {
            assert_eq!(r.contains(i * 4096 + 16), i % 2 == 0);
        }
        // Churn through tombstones without unbounded growth.
        for round in 0..20usize {
            for i in 0..1000usize {
                let k = (1 << 30) + (round * 1000 + i) * 4096 + 16;
                assert!(r.insert(k));
                assert!(r.remove(k));
            }
        }
        assert!(r.cap <= 16384, "cap {}", r.cap);
    }

    #[test]
    fn large_blocks_are_registered_and_checked() {
        let p = alloc(300_000, 64).unwrap();
        assert_eq!(p.addr().get() % 64, 0);
        assert!(owns(p));
        assert!(usable(p).unwrap() >= 300_000);
        let q = realloc(p, 3 << 20, 128 << 10).unwrap().unwrap();
        assert!(owns(q));
        assert!(q == p || !owns(p));
        free(q).unwrap();
        assert_eq!(free(q), Err(Misuse::NotAllocated), "double free is caught");
        let mut local = [0u64; 4];
        let foreign = NonNull::new(local.as_mut_ptr().cast::<u8>()).unwrap();
        assert_eq!(usable(foreign), Err(Misuse::NotAllocated));
    }
}
