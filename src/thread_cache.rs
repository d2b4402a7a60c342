//! Per-thread caches of size-classed blocks in front of the central heap.
//!
//! A cached block is an in-use block as far as the central heap knows, so it never merges while
//! cached. Its first payload word links it to the next block of its class, and its second holds
//! [`CACHE_KEY`], so that `free` of a block that sits in this thread's cache (a double free) is
//! caught with one compare (glibc's tcache `key`). Nothing on the fast paths writes a header:
//! a neighbour's merge may update `PREV_USED` in it under the lock at any time (B7).
//! `malloc` pops, `free` pushes (any thread frees into its own cache: no ownership tracking);
//! an empty list is refilled with a batch carved from one free run under one lock acquisition,
//! and a full list flushes its older half back under one lock acquisition.
//!
//! This module holds the logic over an explicit cache and heap, so tests and loom models can
//! drive several caches from one thread; `global.rs` keeps one cache per thread in TLS.
//!
//! # The thread-local state machine
//!
//! `Uninit` (all limits zero, so every operation takes the slow path) → `Active` (limits set,
//! thread-exit destructor registered) → `TornDown` (flushed at thread exit; limits zero again,
//! so later frees from other destructors go to the central heap). A thread whose destructor
//! cannot be registered goes straight to `TornDown`. See DESIGN.md.

use core::ptr::{self, NonNull};

use crate::block::{BlockPtr, MAPPED, USED};
use crate::central::{CentralHeap, Misuse};
use crate::os::MemorySource;
use crate::size_class::{NCLASSES, class_size};
use crate::stats::{self, Counter};

use crate::sync::Mutex;

/// Default byte limit of one thread's cache (`tcache_max_bytes`).
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// Allocations between two low-water-mark collections of one class (round robin).
const GC_INTERVAL: u32 = 1024;
/// First refill batch of a class; doubles on each refill up to half the list limit
/// (gperftools' slow start), halves when a collection finds the list idle.
const FIRST_BATCH: u16 = 4;

/// Where a cache is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Never used: limits are zero, the first slow path activates it.
    Uninit,
    /// In use.
    Active,
    /// Flushed for good (thread exit, or no destructor could be registered).
    TornDown,
}

/// Written into the second payload word of every cached block, cleared when it leaves the
/// cache. A freed block that carries it is looked up in the cache: found, it is a double free.
pub const CACHE_KEY: usize = 0x6b72_6263_6163_6865 ^ 0x5a5a_0000_0000_a5a5;

/// Whether the checks that cost on the fast paths are compiled in (cargo feature `hardening`,
/// on by default; off only to measure what they cost).
pub const HARDENED: bool = cfg!(feature = "hardening");

/// The safe-linking mask of a link stored in `slot` (0 without `hardening`).
#[inline(always)]
fn link_mask(slot: NonNull<u8>) -> usize {
    if HARDENED { slot.addr().get() >> 12 } else { 0 }
}

/// Reads the link word of cached block `slot`, decoding glibc's safe-linking: the word holds
/// the next pointer XOR (the slot's address >> 12), so a program that overwrites a freed
/// block cannot make `malloc` return an address of its choice. `Err` when the decoded pointer
/// is not 16-byte aligned (the word was damaged).
///
/// # Safety
/// `slot` is a cached block (T1).
#[inline(always)]
unsafe fn read_link(slot: NonNull<u8>) -> Result<*mut u8, Misuse> {
    // SAFETY: forwarded contract: the first payload word is the link.
    let v = unsafe { slot.cast::<usize>().read() } ^ link_mask(slot);
    if HARDENED && v % crate::block::ALIGN != 0 {
        return Err(Misuse::CorruptLink);
    }
    Ok(ptr::with_exposed_provenance_mut(v))
}

/// Writes the link word of `slot` (see [`read_link`]).
///
/// # Safety
/// `slot` is an in-use block owned by the cache (T1).
#[inline(always)]
unsafe fn write_link(slot: NonNull<u8>, next: *mut u8) {
    let v = next.expose_provenance() ^ link_mask(slot);
    // SAFETY: forwarded contract.
    unsafe { slot.cast::<usize>().write(v) };
}

/// The list of one size class.
///
/// # Invariants
/// - T1: `count` blocks are linked from `head` through their first payload word, each in use
///   as far as the heap knows, of block size at least `class_size(class)`, with [`CACHE_KEY`]
///   in its second payload word.
/// - T2: `count <= max` except transiently inside a push that then flushes.
/// - T3: `low_water <= count`.
#[derive(Clone, Copy, Debug)]
pub struct Bin {
    head: *mut u8,
    count: u32,
    low_water: u32,
    max: u32,
    batch: u16,
    /// Pops and pushes since the last merge into `stats` (plain counters: no atomic on the
    /// fast path).
    pops: u32,
    pushes: u32,
}

impl Bin {
    const EMPTY: Bin =
        Bin { head: ptr::null_mut(), count: 0, low_water: 0, max: 0, batch: 0, pops: 0, pushes: 0 };

    /// Moves the local counters of class `c` into the global statistics.
    fn merge_counters(&mut self, c: usize) {
        stats::add(c, Counter::Pops, self.pops as usize);
        stats::add(c, Counter::Pushes, self.pushes as usize);
        self.pops = 0;
        self.pushes = 0;
    }
}

/// List limit of class `c` for a cache of at most `max_bytes`: `max_bytes / 64` bytes of
/// blocks per class, at most 128 blocks, and at least 2 blocks for classes up to
/// `max_bytes / 32` (so that with the default 1 MiB even 32 KiB blocks are cached in pairs,
/// and a program that frees and reallocates one of them never touches the lock). Larger
/// classes than that are not cached (limit 0). The sum over the classes stays within
/// `max_bytes` (T4, tested), so the fast path needs no byte accounting.
pub fn max_count(c: usize, max_bytes: usize) -> u32 {
    let size = class_size(c);
    let n = (max_bytes / 64 / size).min(128);
    if n < 2 && 2 * size <= max_bytes / 16 { 2 } else { n as u32 }
}

/// One thread's cache.
///
/// # Invariants
/// - T4: the cache holds at most `sum(max_count(c) * class_size(c)) <= max_bytes` bytes.
/// - T5: in `Uninit` and `TornDown` every list is empty and every `max` is zero.
/// - T6: `this` is the cache's own address once `Active` (the TLS fast path's canary).
#[derive(Debug)]
pub struct ThreadCache {
    bins: [Bin; NCLASSES],
    gc_countdown: u32,
    gc_next: u32,
    state: State,
    /// Own address, set on activation (T6).
    pub this: *mut ThreadCache,
}

// SAFETY: the raw pointers are blocks the cache owns exclusively (B7); moving the cache moves
// that ownership. (TLS caches never move; this lets tests and loom models hand them around.)
unsafe impl Send for ThreadCache {}

/// Outcome of a cache operation that needs the slow path.
pub type CacheResult<T> = Result<T, Misuse>;

impl ThreadCache {
    /// A cache in `Uninit` (T5).
    pub const fn new() -> Self {
        Self {
            bins: [Bin::EMPTY; NCLASSES],
            gc_countdown: GC_INTERVAL,
            gc_next: 0,
            state: State::Uninit,
            this: ptr::null_mut(),
        }
    }

    /// The cache's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of blocks in the cache, by class size (a walk of the counts; not for fast paths).
    pub fn bytes(&self) -> usize {
        self.bins.iter().enumerate().map(|(c, b)| b.count as usize * class_size(c)).sum()
    }

    /// Blocks cached for class `c`.
    pub fn count(&self, c: usize) -> usize {
        self.bins[c].count as usize
    }

    /// Merges every class's local counters into the global statistics.
    pub fn merge_all_counters(&mut self) {
        for (c, bin) in self.bins.iter_mut().enumerate() {
            bin.merge_counters(c);
        }
    }

    /// Sets the limits and moves to `Active`.
    pub fn activate(&mut self, max_bytes: usize) {
        for (c, bin) in self.bins.iter_mut().enumerate() {
            bin.max = max_count(c, max_bytes);
            bin.batch = FIRST_BATCH;
        }
        self.state = State::Active;
        self.this = self;
    }

    /// Pops a block of class `c`; `None` when the list is empty (then call
    /// [`Self::alloc_slow`]). A damaged link (a write after free) aborts with a message.
    #[inline(always)]
    pub fn pop(&mut self, c: usize) -> Option<NonNull<u8>> {
        debug_assert!(c < NCLASSES);
        // SAFETY: classes come from the size-class tables, so `c < NCLASSES`.
        let bin = unsafe { self.bins.get_unchecked_mut(c) };
        let p = NonNull::new(bin.head)?;
        // SAFETY: T1 — `p` is a cached block of ours: its first word is the next link, its
        // second the key, which leaving the cache clears.
        unsafe {
            bin.head = match read_link(p) {
                Ok(next) => next,
                Err(e) => corrupt_link(e, p),
            };
            p.cast::<usize>().add(1).write(0);
        }
        bin.count -= 1;
        bin.pops = bin.pops.wrapping_add(1);
        if bin.count < bin.low_water {
            bin.low_water = bin.count;
        }
        self.gc_countdown = self.gc_countdown.wrapping_sub(1);
        Some(p)
    }

    /// Whether a collection is due (checked by the caller after a pop, off the fast path's
    /// critical work).
    #[inline(always)]
    pub fn gc_due(&self) -> bool {
        self.gc_countdown == 0
    }

    /// Whether `p`, which carries [`CACHE_KEY`], really is in this cache's list `c` (a double
    /// free) rather than a program that happened to store the key.
    pub fn contains(&self, p: NonNull<u8>, c: usize) -> bool {
        let mut cur = self.bins[c].head;
        while let Some(b) = NonNull::new(cur) {
            if b == p {
                return true;
            }
            // SAFETY: T1 — list members are cached blocks with a link word.
            cur = match unsafe { read_link(b) } {
                Ok(next) => next,
                Err(e) => corrupt_link(e, b),
            };
        }
        false
    }

    /// Pushes the in-use block `p` of class `c`; `false` when the list is full or the cache is
    /// not active (then call [`Self::free_slow`]).
    ///
    /// # Safety
    /// `p` is an in-use heap block of ours of class `c` (`class_for_free`), not in any cache,
    /// given up by the program.
    #[inline(always)]
    pub unsafe fn push(&mut self, p: NonNull<u8>, c: usize) -> bool {
        debug_assert!(c < NCLASSES);
        // SAFETY: classes come from the size-class tables, so `c < NCLASSES`.
        let bin = unsafe { self.bins.get_unchecked_mut(c) };
        if bin.count >= bin.max {
            return false;
        }
        // SAFETY: contract — the block is ours and nobody else uses it now; its payload holds
        // at least three words (MIN_BLOCK), so link and key fit (T1).
        unsafe {
            write_link(p, bin.head);
            p.cast::<usize>().add(1).write(CACHE_KEY);
        }
        bin.head = p.as_ptr();
        bin.count += 1;
        bin.pushes = bin.pushes.wrapping_add(1);
        true
    }

    /// Refills class `c` from `heap` (activating an `Uninit` cache first) and pops one block.
    /// `None` when memory is exhausted or the cache is torn down (the caller then allocates
    /// from the central heap directly).
    #[cold]
    #[inline(never)]
    pub fn alloc_slow<S: MemorySource>(
        &mut self,
        c: usize,
        heap: &Mutex<CentralHeap<S>>,
    ) -> Option<NonNull<u8>> {
        if self.state != State::Active {
            return None;
        }
        if let Some(p) = self.pop(c) {
            return Some(p);
        }
        let bin = &mut self.bins[c];
        if bin.max == 0 {
            return None;
        }
        let want = (bin.batch as u32).min(bin.max / 2).max(1) as usize;
        bin.batch = (bin.batch * 2).min((bin.max / 2) as u16).max(1);
        let (head, n) = heap.lock().alloc_batch(class_size(c), want, |b, next| {
            // SAFETY: a fresh in-use block of at least MIN_BLOCK bytes, owned by us (T1).
            unsafe {
                write_link(b, next);
                b.cast::<usize>().add(1).write(CACHE_KEY);
            }
        });
        let head = NonNull::new(head)?;
        let bin = &mut self.bins[c];
        bin.head = head.as_ptr();
        bin.count += n as u32;
        bin.merge_counters(c);
        stats::add(c, Counter::Refills, 1);
        stats::add(c, Counter::Misses, 1);
        self.pop(c)
    }

    /// Handles a push that [`Self::push`] refused: flushes the older half of class `c`, then
    /// pushes. Returns `false` when the cache is not active:
    /// the caller frees to the central heap.
    ///
    /// # Safety
    /// As [`Self::push`].
    ///
    /// # Errors
    /// A [`Misuse`] found in a flushed block (a write after free damaged its header).
    #[cold]
    #[inline(never)]
    pub unsafe fn free_slow<S: MemorySource>(
        &mut self,
        p: NonNull<u8>,
        c: usize,
        heap: &Mutex<CentralHeap<S>>,
    ) -> CacheResult<bool> {
        if self.state != State::Active {
            return Ok(false);
        }
        let keep = (self.bins[c].max / 2) as usize;
        self.bins[c].merge_counters(c);
        self.flush_class(c, keep, &mut heap.lock())?;
        // SAFETY: forwarded contract.
        Ok(unsafe { self.push(p, c) })
    }

    /// Returns the blocks of class `c` beyond the newest `keep` to `heap` (oldest first out).
    fn flush_class<S: MemorySource>(
        &mut self,
        c: usize,
        keep: usize,
        heap: &mut CentralHeap<S>,
    ) -> CacheResult<()> {
        let bin = &mut self.bins[c];
        let count = bin.count as usize;
        if count <= keep {
            return Ok(());
        }
        stats::add(c, Counter::Flushes, 1);
        // Find the cut: the `keep` newest stay.
        let mut rest = if keep == 0 {
            let h = bin.head;
            bin.head = ptr::null_mut();
            h
        } else {
            let mut cur = bin.head;
            for _ in 1..keep {
                // SAFETY: T1 — `keep <= count`, so each link read is a cached block.
                cur = unsafe { read_link(NonNull::new_unchecked(cur)) }?;
            }
            // SAFETY: as above; cut the list after the `keep`-th block.
            unsafe {
                let last = NonNull::new_unchecked(cur);
                let r = read_link(last)?;
                write_link(last, ptr::null_mut());
                r
            }
        };
        bin.count = keep as u32;
        bin.low_water = bin.low_water.min(keep as u32);
        while let Some(p) = NonNull::new(rest) {
            // SAFETY: T1 — a cached block; read its link and clear the key before the heap
            // reuses the words.
            unsafe {
                rest = read_link(p)?;
                p.cast::<usize>().add(1).write(0);
            }
            heap.free(p)?;
        }
        Ok(())
    }

    /// Low-water-mark collection of one class (round robin): returns three quarters of the
    /// blocks that sat unused since the last visit, and halves its refill batch.
    #[cold]
    #[inline(never)]
    pub fn collect<S: MemorySource>(&mut self, heap: &Mutex<CentralHeap<S>>) -> CacheResult<()> {
        self.gc_countdown = GC_INTERVAL;
        let c = self.gc_next as usize;
        self.gc_next = (self.gc_next + 1) % NCLASSES as u32;
        let bin = &mut self.bins[c];
        bin.merge_counters(c);
        let idle = bin.low_water as usize;
        if idle > 0 {
            let keep = bin.count as usize - (idle * 3).div_ceil(4);
            bin.batch = (bin.batch / 2).max(1);
            self.flush_class(c, keep, &mut heap.lock())?;
        }
        let bin = &mut self.bins[c];
        bin.low_water = bin.count;
        Ok(())
    }

    /// Returns every cached block to `heap` under one lock acquisition.
    ///
    /// # Errors
    /// As [`Self::free_slow`].
    pub fn flush_all<S: MemorySource>(&mut self, heap: &Mutex<CentralHeap<S>>) -> CacheResult<()> {
        if self.bins.iter().all(|b| b.count == 0) {
            for (c, bin) in self.bins.iter_mut().enumerate() {
                bin.merge_counters(c);
            }
            return Ok(());
        }
        for (c, bin) in self.bins.iter_mut().enumerate() {
            bin.merge_counters(c);
        }
        let mut guard = heap.lock();
        for c in 0..NCLASSES {
            self.flush_class(c, 0, &mut guard)?;
        }
        Ok(())
    }

    /// Flushes everything and moves to `TornDown` (T5): later operations fall through to the
    /// central heap.
    ///
    /// # Errors
    /// As [`Self::free_slow`].
    pub fn tear_down<S: MemorySource>(&mut self, heap: &Mutex<CentralHeap<S>>) -> CacheResult<()> {
        for bin in &mut self.bins {
            bin.max = 0;
        }
        self.state = State::TornDown;
        self.flush_all(heap)
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A damaged cache link: the list cannot be trusted any further.
#[cold]
#[inline(never)]
fn corrupt_link(e: Misuse, slot: NonNull<u8>) -> ! {
    crate::diag::fatal("malloc", e.message(), slot.addr().get())
}

/// Reads and checks the header of a block the program hands to `free`: returns it when it is
/// an ordinary in-use heap block (tag valid, `USED`, not `MAPPED`); `Err(NotOurs)` sends the
/// caller to the central heap's full validation.
///
/// # Safety
/// The word before `p` is readable.
#[inline(always)]
pub unsafe fn header_for_free(p: NonNull<u8>) -> Result<usize, Misuse> {
    // SAFETY: forwarded contract.
    let b = unsafe { BlockPtr::from_user(p) };
    // SAFETY: forwarded contract; an atomic read (B7).
    let h = unsafe { b.header() };
    if h & (USED | MAPPED) == USED && (!HARDENED || b.tag_ok(h)) {
        Ok(h)
    } else {
        Err(Misuse::NotOurs)
    }
}

/// Whether the in-use block `p` carries [`CACHE_KEY`] (then check [`ThreadCache::contains`]).
///
/// # Safety
/// `p` is an in-use heap block of ours (its payload has at least two words).
#[inline(always)]
pub unsafe fn has_cache_key(p: NonNull<u8>) -> bool {
    // SAFETY: forwarded contract.
    HARDENED && unsafe { p.cast::<usize>().add(1).read() == CACHE_KEY }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_limits_keep_the_cache_within_its_byte_limit() {
        for max_bytes in [64 << 10, 256 << 10, DEFAULT_MAX_BYTES, 8 << 20] {
            let total: usize =
                (0..NCLASSES).map(|c| max_count(c, max_bytes) as usize * class_size(c)).sum();
            assert!(total <= max_bytes, "{max_bytes}: {total}");
            assert!(total >= max_bytes / 4, "{max_bytes}: {total} leaves the cache unused");
        }
    }
}
