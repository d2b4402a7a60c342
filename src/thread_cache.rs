//! Per-thread caches of size-classed blocks in front of the central heap.
//!
//! A cached block is an in-use block as far as the central heap knows, so it never merges while
//! cached; its first two payload words are the list link and [`CACHE_KEY`] (`batch.rs`).
//! Nothing on the fast paths writes a header: a neighbour's merge may update `PREV_USED` in it
//! under the lock at any time (B7). `malloc` pops, `free` pushes (any thread frees into its own
//! cache: no ownership tracking); an empty list is refilled with a whole batch from the middle
//! layer (`transfer.rs`) or, when it has none, a batch carved from one free run under one central
//! lock acquisition; a full list hands its older half to the middle layer as one batch.
//!
//! This module holds the logic over an explicit cache and heap; the front end (`heap.rs`)
//! routes to it, and the process keeps one cache per thread in TLS (`tls.rs`, `process.rs`), so
//! tests and loom models can drive several caches from one thread.
//!
//! # The fast paths
//!
//! A pop reads the list head, decodes its link, clears the key, and counts one more free slot
//! in the list and its class's weight on the thread-event countdown ([`countdown`]: a
//! collection, or a heap profile sample); a push checks for a free slot, links the block in
//! and writes the key. Statistics are counted on the slow paths only: a refill or flush counts
//! its blocks, and the allocations a cache served are the countdown's pops (merged by
//! [`ThreadCache::merge_counters`]).
//!
//! # The thread-local state machine
//!
//! `Uninit` (all-zero: every list empty with no room, so every operation takes the slow path)
//! → `Active` (limits set, thread-exit destructor registered) → `TornDown` (flushed at thread
//! exit; no room again, so later frees from other destructors go to the central heap). A
//! thread whose destructor cannot be registered goes straight to `TornDown`. See DESIGN.md.

pub mod countdown;

use core::ptr;

pub use countdown::{Countdown, Events, GC_INTERVAL};

use crate::batch::{Batch, corrupt_link, link_in, read_link};
use crate::block::UserPtr;
pub use crate::block::{CACHE_KEY, HARDENED as HARDENING};
use crate::central::{CentralHeap, HeapError};
use crate::diag::Misuse;
use crate::os::MemorySource;
use crate::size_class::{CLASS_CODES, NCLASSES, class_size};
use crate::stats::{self, Counter};
use crate::transfer::Backend;

/// Default byte limit of one thread's cache (`tcache_max_bytes`).
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// First refill batch of a class; doubles on each refill up to half the list limit
/// (gperftools' slow start), halves when a collection finds the list idle.
const FIRST_BATCH: u16 = 4;

/// Where a cache is in its life. `Uninit` is zero: a zero-filled cache is a valid new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Never used: no room in any list, the first slow path activates it.
    Uninit = 0,
    /// In use.
    Active,
    /// Flushed for good (thread exit, or no destructor could be registered).
    TornDown,
}

/// The slow paths' view of the list of one class code: its limit and next refill batch. (The
/// list's head and room live in arrays of their own, `ThreadCache::heads` and `rooms`, so the
/// fast paths index them with a scaled address and no shift.)
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Limit {
    /// List limit.
    max: u16,
    /// Next refill's batch.
    batch: u16,
}

/// Shares of a cache's byte limit: one per class ([`NCLASSES`], 61), the rest for the pairs of
/// the largest classes (below), so that their sum stays within the limit (T4).
const SHARES: usize = 74;

/// List limit of class `c` for a cache of at most `max_bytes`: `max_bytes / SHARES` bytes of
/// blocks per class, at most 128 blocks, and (from 64 KiB on) at least 2 blocks for classes up
/// to `max_bytes / 32` (so that with the default 1 MiB even 32 KiB blocks are cached in pairs,
/// and a program that frees and reallocates one of them never touches the lock; below 64 KiB
/// the pairs would overrun the budget). Larger classes than that are not cached (limit 0). The
/// sum over the classes stays within `max_bytes` (T4, tested), so the fast path needs no byte
/// accounting.
pub fn max_count(c: usize, max_bytes: usize) -> u32 {
    let size = class_size(c);
    let n = (max_bytes / SHARES / size).min(128);
    if n < 2 && max_bytes >= 64 << 10 && 2 * size <= max_bytes / 16 { 2 } else { n as u32 }
}

/// One thread's cache.
///
/// # Invariants
/// - T1: for each class code `c`, `max - rooms[c]` blocks are linked from `heads[c]` through
///   their first payload word, each in use as far as the heap knows, of block size at least
///   `class_size(c)`, with [`CACHE_KEY`] in its second payload word (with `hardening`).
/// - T2: `rooms[c] <= limits[c].max`; codes at or above [`NCLASSES`] have `max == 0` (no list).
/// - T3: all-zero bytes are a valid `Uninit` cache ([`ThreadCache::new`]), so a zero-filled
///   thread-local block is one (`tls.rs`).
/// - T4: the cache holds at most `sum(max_count(c) * class_size(c)) <= max_bytes` bytes.
/// - T5: in `Uninit` and `TornDown` every list is empty and has no room.
/// - T6: `events` is armed (E3) while `Active`.
#[derive(Debug)]
#[repr(C)]
pub struct ThreadCache {
    /// The head of each list.
    heads: [*mut u8; CLASS_CODES],
    /// Free slots left in each list before it is full.
    rooms: [u32; CLASS_CODES],
    /// Each list's limit and refill batch.
    limits: [Limit; CLASS_CODES],
    /// The thread-event countdown (T6): collections, profile samples, `cache_allocs`.
    pub events: Countdown,
    /// The class the next collection visits.
    gc_next: usize,
    /// Bit `c`: list `c` ran dry (needed a refill) since its last collection.
    dry: u64,
    /// Bit `c`: list `c` ran dry in the interval before that (a list in use every other
    /// interval is busy too, and a collection that lands just after a refill keeps it).
    dry_before: u64,
    state: State,
    /// The byte limit the lists were sized for, in KiB rounded up (T4; also keeps the struct
    /// free of padding, which T3's test reads byte by byte).
    max_kib: u32,
}

// SAFETY: the raw pointers are blocks the cache owns exclusively (B7); moving the cache moves
// that ownership. (TLS caches never move; this lets tests and loom models hand them around.)
unsafe impl Send for ThreadCache {}

/// Outcome of a cache operation that needs the slow path.
pub type CacheResult<T> = Result<T, Misuse>;

impl ThreadCache {
    /// A cache in `Uninit` (T3, T5).
    pub const fn new() -> Self {
        Self {
            heads: [ptr::null_mut(); CLASS_CODES],
            rooms: [0; CLASS_CODES],
            limits: [Limit { max: 0, batch: 0 }; CLASS_CODES],
            events: Countdown::new(),
            gc_next: 0,
            dry: 0,
            dry_before: 0,
            state: State::Uninit,
            max_kib: 0,
        }
    }

    /// The cache's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of blocks in the cache, by class size (a walk of the counts; not for fast paths).
    pub fn bytes(&self) -> usize {
        (0..NCLASSES).map(|c| self.count(c) * class_size(c)).sum()
    }

    /// Blocks cached for class `c`.
    pub fn count(&self, c: usize) -> usize {
        (u32::from(self.limits[c].max) - self.rooms[c]) as usize
    }

    /// Adds the allocations this cache served since the last merge to the statistics.
    pub fn merge_counters(&mut self) {
        if self.state == State::Active {
            self.events.settle();
        }
    }

    /// Sets the limits and moves to `Active`.
    pub fn activate(&mut self, max_bytes: usize) {
        for c in 0..NCLASSES {
            let max = max_count(c, max_bytes).min(u32::from(u16::MAX)) as u16;
            self.heads[c] = ptr::null_mut();
            self.rooms[c] = u32::from(max);
            self.limits[c] = Limit { max, batch: FIRST_BATCH };
        }
        self.events.start();
        self.max_kib = u32::try_from(max_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.state = State::Active;
    }

    /// Gives class `c` no list (an empty one with no room), right after [`Self::activate`]:
    /// for classes the options route elsewhere.
    pub fn disable_class(&mut self, c: usize) {
        debug_assert!(self.heads[c].is_null());
        self.limits[c].max = 0;
        self.rooms[c] = 0;
    }

    /// Pops a block of class code `c`; `None` when the list is empty (then call
    /// [`Self::alloc_slow`]). A damaged link (a write after free) aborts with a message.
    #[inline(always)]
    pub fn pop(&mut self, c: usize) -> Option<UserPtr> {
        debug_assert!(c < CLASS_CODES);
        // SAFETY: class codes come from the size-class tables or a header's six class bits.
        let head = unsafe { self.heads.get_unchecked_mut(c) };
        let p = UserPtr::new(ptr::NonNull::new(*head)?);
        // SAFETY: T1 — `p` is a cached block of ours: its first word is the next link, its
        // second the key, which leaving the cache clears.
        unsafe {
            *head = match read_link(p) {
                Ok(next) => next,
                Err(e) => corrupt_link(e, p),
            };
            p.clear_cache_key();
            *self.rooms.get_unchecked_mut(c) += 1;
        }
        self.events.count(c);
        Some(p)
    }

    /// Whether a thread event (a collection, a profile sample) is due, checked by the caller
    /// after a pop: then [`Countdown::take_events`] says which.
    #[inline(always)]
    pub fn event_due(&self) -> bool {
        self.events.due()
    }

    /// Whether `p`, which carries [`CACHE_KEY`], really is in this cache's list `c` (a double
    /// free) rather than a program that happened to store the key.
    pub fn contains(&self, p: UserPtr, c: usize) -> bool {
        let mut cur = self.heads[c];
        while let Some(b) = ptr::NonNull::new(cur) {
            if b == p.ptr() {
                return true;
            }
            // SAFETY: T1 — list members are cached blocks with a link word.
            cur = match unsafe { read_link(UserPtr::new(b)) } {
                Ok(next) => next,
                Err(e) => corrupt_link(e, UserPtr::new(b)),
            };
        }
        false
    }

    /// Every block of list `c`, newest first (a walk; for the heap verifier).
    pub fn for_each_cached(&self, c: usize, mut f: impl FnMut(UserPtr)) -> CacheResult<()> {
        let mut cur = self.heads[c];
        while let Some(b) = ptr::NonNull::new(cur) {
            f(UserPtr::new(b));
            // SAFETY: T1.
            cur = unsafe { read_link(UserPtr::new(b)) }?;
        }
        Ok(())
    }

    /// Pushes the in-use block `p` of class code `c`; `false` when the list has no room (full,
    /// no list for the code, or the cache is not active: then call [`Self::free_slow`]).
    ///
    /// # Safety
    /// `p` is an in-use heap block of ours whose class code is `c` (B8), not in any cache,
    /// given up by the program.
    #[inline(always)]
    pub unsafe fn push(&mut self, p: UserPtr, c: usize) -> bool {
        debug_assert!(c < CLASS_CODES);
        // SAFETY: as in `pop`.
        let room = unsafe { self.rooms.get_unchecked_mut(c) };
        // One decrement and a sign test: a full list goes negative and is put back.
        *room = room.wrapping_sub(1);
        if (*room as i32) < 0 {
            *room = 0;
            return false;
        }
        // SAFETY: as above.
        let head = unsafe { self.heads.get_unchecked_mut(c) };
        // SAFETY: contract — the block is ours and nobody else uses it now; its payload holds
        // at least three words (MIN_BLOCK), so link and key fit (T1).
        unsafe { link_in(p, *head) };
        *head = p.ptr().as_ptr();
        true
    }

    /// Refills class `c` and pops one block: a whole batch from the middle layer if it has
    /// one, else a batch carved from the central heap. `None` when memory is exhausted or the
    /// cache is not active (the caller then allocates from the central heap directly).
    #[cold]
    #[inline(never)]
    pub fn alloc_slow<S: MemorySource>(&mut self, c: usize, back: &Backend<S>) -> Option<UserPtr> {
        if self.state != State::Active || c >= NCLASSES {
            return None;
        }
        if let Some(p) = self.pop(c) {
            return Some(p);
        }
        if self.limits[c].max == 0 {
            return None;
        }
        self.dry |= 1 << c;
        stats::add(c, Counter::Refills, 1);
        if let Some(b) = back.layer.take(c, self.rooms[c], self.id()) {
            // A batch another cache flushed: its blocks are linked and keyed already (BT1).
            self.heads[c] = b.head;
            self.rooms[c] -= b.count;
            stats::add(c, Counter::RefilledBlocks, b.count as usize);
            return self.pop(c);
        }
        // Carved batches stop at half the list: a producer's refills come whole from the layer
        // (its consumers' flushes), and whole-list carving only filled lists that sat idle
        // (measured: `mixed` ×2 peak RSS 33.4 → 31.3 MiB; prodcons 4+4 still 0.17 central
        // lock acquisitions per 1000 calls).
        let lim = &mut self.limits[c];
        let cap = lim.max / 2;
        let want = lim.batch.min(cap).max(1) as usize;
        lim.batch = (lim.batch * 2).min(cap).max(1);
        let (head, n) = back.central_refill(|heap| {
            let (head, n) = heap.alloc_batch(class_size(c), want, |b, next| {
                // SAFETY: a fresh in-use block of at least MIN_BLOCK bytes, owned by us (T1).
                unsafe { link_in(UserPtr::new(b), next) }
            });
            Some((ptr::NonNull::new(head)?, n))
        })?;
        self.heads[c] = head.as_ptr();
        self.rooms[c] -= n as u32;
        stats::add(c, Counter::RefilledBlocks, n);
        self.pop(c)
    }

    /// Handles a push that [`Self::push`] refused: flushes the older half of class `c`, then
    /// pushes. Returns `false` when the block has no list here (code without a list, or the
    /// cache is not active): the caller frees to the central heap.
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
        p: UserPtr,
        c: usize,
        back: &Backend<S>,
    ) -> CacheResult<bool> {
        if self.state != State::Active || c >= NCLASSES || self.limits[c].max == 0 {
            return Ok(false);
        }
        back.give_back(c, self.cut(c, self.flush_keep(c))?, self.id())?;
        // SAFETY: forwarded contract.
        Ok(unsafe { self.push(p, c) })
    }

    /// This cache's identity for the middle layer's demand rule (its address).
    fn id(&self) -> usize {
        ptr::from_ref(self).addr()
    }

    /// How many blocks a full list of class `c` keeps when it flushes: half of them, or a
    /// quarter when the list has not run dry for two collection intervals (a consumer's list,
    /// which only receives: its batches grow to three quarters of the list, and a producer
    /// that refills from the middle layer gets them whole).
    fn flush_keep(&self, c: usize) -> usize {
        let max = usize::from(self.limits[c].max);
        if (self.dry | self.dry_before) & (1 << c) == 0 { max / 4 } else { max / 2 }
    }

    /// Detaches the blocks of class `c` beyond the newest `keep` as a batch (empty when the
    /// list holds no more than `keep`).
    fn cut(&mut self, c: usize, keep: usize) -> CacheResult<Batch> {
        let count = self.count(c);
        if count <= keep {
            return Ok(Batch::EMPTY);
        }
        stats::add(c, Counter::Flushes, 1);
        stats::add(c, Counter::FlushedBlocks, count - keep);
        let head = if keep == 0 {
            let h = self.heads[c];
            self.heads[c] = ptr::null_mut();
            h
        } else {
            let mut cur =
                UserPtr::new(ptr::NonNull::new(self.heads[c]).ok_or(Misuse::CorruptLink)?);
            for _ in 1..keep {
                // SAFETY: T1 — `keep <= count`, so each link read is a cached block.
                let next = unsafe { read_link(cur) }?;
                cur = UserPtr::new(ptr::NonNull::new(next).ok_or(Misuse::CorruptLink)?);
            }
            // SAFETY: as above; cut the list after the `keep`-th block, whose link becomes
            // null: the rest is a null-terminated list of `count - keep` blocks (BT1).
            unsafe {
                let r = read_link(cur)?;
                link_in(cur, ptr::null_mut());
                r
            }
        };
        self.rooms[c] = u32::from(self.limits[c].max) - keep as u32;
        Ok(Batch { head, count: (count - keep) as u32 })
    }

    /// Hands the blocks of class `c` beyond the newest `keep` to the middle layer (or, when it
    /// is full, the central heap).
    fn flush_class<S: MemorySource>(
        &mut self,
        c: usize,
        keep: usize,
        back: &Backend<S>,
    ) -> CacheResult<()> {
        back.give_back(c, self.cut(c, keep)?, self.id())
    }

    /// Collection of one class (round robin), every [`GC_INTERVAL`] allocations: a list that
    /// did not run dry in its last two intervals returns three quarters of its blocks (they sat
    /// unused: jemalloc's low-water collection, with the low-water mark taken as the whole
    /// list, so the pop path keeps no mark) and halves its refill batch.
    #[cold]
    #[inline(never)]
    pub fn collect<S: MemorySource>(&mut self, back: &Backend<S>) -> CacheResult<()> {
        self.events.collected();
        let c = self.gc_next;
        self.gc_next = (c + 1) % NCLASSES;
        let bit = 1 << c;
        let was_dry = (self.dry | self.dry_before) & bit != 0;
        self.dry_before = (self.dry_before & !bit) | (self.dry & bit);
        self.dry &= !bit;
        let count = self.count(c);
        if !was_dry && count > 0 {
            let keep = count - (count * 3).div_ceil(4);
            self.limits[c].batch = (self.limits[c].batch / 2).max(1);
            self.flush_class(c, keep, back)?;
        }
        Ok(())
    }

    /// Returns every cached block to `heap` under one lock acquisition.
    ///
    /// # Errors
    /// As [`Self::free_slow`].
    pub fn flush_all<S: MemorySource>(&mut self, back: &Backend<S>) -> CacheResult<()> {
        self.merge_counters();
        for c in 0..NCLASSES {
            if !self.heads[c].is_null() {
                self.flush_class(c, 0, back)?;
            }
        }
        Ok(())
    }

    /// Flushes everything and moves to `TornDown` (T5): later operations fall through to the
    /// central heap.
    ///
    /// # Errors
    /// As [`Self::free_slow`].
    pub fn tear_down<S: MemorySource>(&mut self, back: &Backend<S>) -> CacheResult<()> {
        let r = self.flush_all(back);
        self.rooms = [0; CLASS_CODES];
        for lim in &mut self.limits {
            lim.max = 0;
        }
        self.state = State::TornDown;
        r
    }
}

impl ThreadCache {
    /// Checks T1, T2, T4 and T5 against `heap`: every cached block is an in-use block of the
    /// heap with the class code of its list and the key, the counts agree with the lists, the
    /// limits with the byte budget; an inactive cache is empty.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check<S: MemorySource>(&self, heap: &CentralHeap<S>) -> Result<(), HeapError> {
        let err = |what, addr| Err(HeapError { what, addr });
        let mut limit_bytes = 0;
        for c in 0..CLASS_CODES {
            let max = self.limits[c].max;
            if self.rooms[c] > u32::from(max) || (c >= NCLASSES && max != 0) {
                return err("T2: list room above its limit, or a list for a code without one", c);
            }
            if self.state != State::Active && (max != 0 || !self.heads[c].is_null()) {
                return err("T5: an inactive cache holds blocks or room", c);
            }
            if c < NCLASSES {
                limit_bytes += usize::from(max) * class_size(c);
            }
            let mut n = 0u32;
            let mut bad = None;
            let walk = self.for_each_cached(c, |u| {
                n += 1;
                if bad.is_some() {
                    return;
                }
                let ok = heap.holds_cached(u, c);
                if !ok || n > u32::from(max) {
                    bad = Some(u.addr());
                }
            });
            if walk.is_err() {
                return err("T1: a cache link does not decode", c);
            }
            if let Some(addr) = bad {
                return err(
                    "T1: a cached block is not an in-use heap block of its class's size",
                    addr,
                );
            }
            if n as usize != self.count(c) {
                return err("T1: list length differs from its count", c);
            }
        }
        if limit_bytes > self.max_kib as usize * 1024 {
            return err("T4: list limits exceed the cache's byte limit", limit_bytes);
        }
        Ok(())
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_limits_keep_the_cache_within_its_byte_limit() {
        for max_bytes in [4 << 10, 16 << 10, 64 << 10, 256 << 10, DEFAULT_MAX_BYTES, 8 << 20] {
            let total: usize =
                (0..NCLASSES).map(|c| max_count(c, max_bytes) as usize * class_size(c)).sum();
            assert!(total <= max_bytes, "{max_bytes}: {total}");
            // (A 4 KiB cache is smaller than one share per class: it keeps 32- and 48-byte
            // blocks only.)
            if max_bytes >= 16 << 10 {
                assert!(total >= max_bytes / 25, "{max_bytes}: {total} leaves the cache unused");
            }
        }
    }

    /// T3: the zero-filled thread-local block `tls.rs` reserves is a new cache.
    #[test]
    fn a_new_cache_is_all_zero() {
        let tc = ThreadCache::new();
        // SAFETY: reading the bytes of a live value without padding (repr(C), every field
        // explicit and naturally aligned).
        let bytes = unsafe {
            core::slice::from_raw_parts((&raw const tc).cast::<u8>(), size_of::<ThreadCache>())
        };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
