//! The middle layer: per size class, a small stack of whole [`Batch`]es between the thread
//! caches and the central heap (tcmalloc's transfer cache).
//!
//! A thread cache that flushes hands its batch over whole ([`Transfer::put`]: a list head and a
//! count, one short critical section of the class's own lock); a thread cache that runs dry
//! takes a whole batch ([`Transfer::take`]) before it goes to the central heap. Only overflow
//! (the class is full) and underflow (it is empty) reach the central lock, where blocks merge.
//! A producer thread therefore refills from the batches its consumers flushed, and the central
//! heap does not split what it has just merged.
//!
//! # Bounds and idle return
//!
//! Each class holds at most [`SLOTS`] batches and [`CLASS_BYTES`] bytes of blocks, the whole
//! layer at most its byte budget (TR5, at most [`LAYER_BYTES`]), and a draining class at most
//! [`DRAINING_SLOTS`] batches. Batches that stay unused go back to the central heap (to
//! merge and be purged): each idle pass ([`Transfer::release_idle`], from the idle purge every
//! `purge_delay_ms` and from the background purge thread) returns the batches that were never
//! taken since the previous pass, the class's low-water mark (jemalloc's and tcmalloc's
//! approach). `malloc_trim` empties the layer ([`Transfer::drain`]). And a refill that
//! would grow the heap first takes its room from the layer: batches go back to the heap one
//! at a time, largest class first, until the refill fits (TR7, [`Backend::central_refill`]).
//!
//! # Locks
//!
//! One lock per class, each on its own cache line (`CachePadded`): a flush and a refill of
//! different classes never meet, and one of the same class holds the lock for a push or a pop
//! of two words. A lock-free stack of batches would need ABA protection (a tagged head or
//! hazard pointers) for the same two-word operation; the per-class lock is taken once per
//! batch (dozens of blocks), not once per block, so it is not the bottleneck the central lock
//! was (measured in benches/results/transfer.md). No layer lock is held while the central lock
//! is taken by a flush or a refill; the paths that hold both (idle return, drain, the checker,
//! the fork handlers) take the central lock first: the order is CENTRAL → TRANSFER[0..] (DESIGN.md).

use crossbeam_utils::CachePadded;

use crate::batch::Batch;
use crate::block::UserPtr;
use crate::central::{CentralHeap, HeapError};
use crate::diag::Misuse;
use crate::os::MemorySource;
use crate::size_class::{NCLASSES, class_size};
use crate::stats::{self, Counter};
use crate::sync::{AtomicUsize, Mutex, Ordering, RawLock};

/// Batches one class can hold (under loom 4: the models hand over a few batches, and a loom
/// thread's stack is small, so the class's array and the eviction buffer stay small).
pub const SLOTS: usize = if cfg!(loom) { 4 } else { 64 };
/// Bytes of blocks one class can hold, at most.
pub const CLASS_BYTES: usize = 512 << 10;
/// Bytes of blocks one class can hold per active thread cache (up to [`CLASS_BYTES`]): the
/// layer holds batches for other threads to take, and a single-threaded program needs only a
/// few of its own (measured: a realloc-heavy single-threaded program held 3.1 MiB in the
/// layer at 512 KiB per class, and its peak RSS was 1.7× what it was without the layer).
pub const CLASS_BYTES_PER_CACHE: usize = 64 << 10;
/// Bytes the whole layer holds per active thread cache, summed over its classes, before any
/// demand raised the budget ([`BOOST_STEP`]): the classes share one budget, so the blocks of
/// a class that only receives (a realloc-heavy program's outgrown sizes) go back to the
/// central heap to merge instead of waiting in the layer for the idle pass.
pub const LAYER_BYTES_PER_CACHE: usize = 32 << 10;
/// The whole layer's byte budget, at most.
pub const LAYER_BYTES: usize = 4 << 20;
/// How much the budget grows when a refill misses on a class that refused another thread
/// cache's batch since: the class went from full to empty between a consumer and a producer,
/// too small for their traffic (both went to the central lock). Each idle pass halves what
/// demand added.
pub const BOOST_STEP: usize = 64 << 10;
/// Classes the layer serves: all of them; under loom the first four, so that the fork model's
/// handlers take four class locks rather than 61 (the classes above go to the central heap,
/// as a full class does).
pub const LAYER_CLASSES: usize = if cfg!(loom) { 4 } else { NCLASSES };

/// One class's stack of batches.
///
/// # Invariants
/// - TR1: `batches[..len]` are batches of this class (BT1), each with `count >= 1`, owned by
///   the layer; `blocks` is the sum of their counts and `blocks * class_size <= CLASS_BYTES`.
/// - TR2: `low_water <= len`: no more than `low_water` of the oldest batches (the bottom of the
///   stack) were there at the previous idle pass and have not been taken since.
/// - TR4: while `draining`, `len <= DRAINING_SLOTS`.
#[derive(Debug)]
struct Slots {
    batches: [Batch; SLOTS],
    len: u32,
    blocks: u32,
    low_water: u32,
    /// Batches offered since the last take.
    puts_since_take: u32,
    /// The thread cache (its address; 0: none) whose batch was refused last, since the last
    /// raise or idle pass: a miss by another cache raises the budget (the class went from full
    /// to empty between two threads); a miss by the same cache is its own flush coming back,
    /// which its central lock acquisition serves as well.
    refused_by: usize,
    /// The class overflowed after [`DRAIN_PUTS`] batches came in and none went out: a
    /// program freeing what it no longer needs, so it holds at most [`DRAINING_SLOTS`] until
    /// the next take.
    draining: bool,
}

/// Batches a draining class holds (TR4).
pub const DRAINING_SLOTS: usize = 2;
/// Batches offered without a take before a full class counts as draining: twice what it
/// holds, far more than a consumer thread hands over while the producers wait for a CPU.
pub const DRAIN_PUTS: u32 = 2 * SLOTS as u32;

/// The batches a class gave up as it started draining (`batches[..n]`), which the caller of
/// [`Transfer::start_draining`] returns to the central heap.
///
/// # Invariants
/// - `n <= SLOTS`; `batches[..n]` are owned by whoever holds the buffer (TR3).
struct Evicted {
    batches: [Batch; SLOTS],
    n: usize,
}

impl Evicted {
    /// None yet.
    const fn new() -> Self {
        Self { batches: [Batch::EMPTY; SLOTS], n: 0 }
    }
}

impl Slots {
    const EMPTY: Self = Self {
        batches: [Batch::EMPTY; SLOTS],
        len: 0,
        blocks: 0,
        low_water: 0,
        puts_since_take: 0,
        refused_by: 0,
        draining: false,
    };

    /// Whether the idle pass has work here: batches, or a refusal to forget (`occupied`).
    fn needs_pass(&self) -> bool {
        self.len > 0 || self.refused_by != 0
    }

    /// Removes the `n` oldest batches, shifting the rest down; returns their blocks.
    fn remove_oldest(&mut self, n: usize, mut f: impl FnMut(Batch)) -> usize {
        let (len, before) = (self.len as usize, self.blocks);
        for b in &self.batches[..n] {
            self.blocks -= b.count;
            f(*b);
        }
        self.batches.copy_within(n..len, 0);
        self.len = (len - n) as u32;
        self.low_water = self.low_water.min(self.len);
        (before - self.blocks) as usize
    }
}

/// What the middle layer holds, summed over its classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Blocks in its batches.
    pub blocks: usize,
    /// Their bytes (by class size).
    pub bytes: usize,
    /// Batches.
    pub batches: usize,
}

/// The middle layer: one stack of batches per class under its own lock.
///
/// # Invariants
/// - TR3: a block is in at most one place: a batch of the layer, a thread cache, the central
///   heap's free lists, or the program's hands.
/// - TR5: outside the models, `bytes` is the sum over the classes of `blocks * class_size`
///   whenever no class lock is held (each class adds and subtracts its own under its lock), and
///   a put that would take it above the budget ([`Self::budget`]) is refused (two racing puts
///   may each pass it by a batch; a budget that shrinks as caches leave keeps what is held).
/// - TR6: outside the models, bit `c` of `occupied` is set iff class `c` holds batches or
///   remembers a refusal, whenever its lock is not held.
pub struct Transfer {
    classes: [CachePadded<Mutex<Slots>>; LAYER_CLASSES],
    /// Bytes of blocks held over all classes (TR5). Relaxed: a budget, ordered with nothing;
    /// under loom not kept (a tuning input the models would only multiply interleavings with).
    bytes: AtomicUsize,
    /// What demand added to the budget ([`BOOST_STEP`]), at most [`LAYER_BYTES`]. Relaxed and
    /// not kept under loom, as `bytes`.
    boost: AtomicUsize,
    /// Active thread caches, as the process counts them ([`Self::cache_joined`]); 0 where
    /// nobody counts (the models, the fuzz driver), which bounds each class by one cache's
    /// share. Relaxed: a tuning input.
    caches: AtomicUsize,
    /// TR6: bit `c` is set iff class `c` needs the idle pass (`Slots::needs_pass`: it holds
    /// batches or remembers a refusal), kept so under the class's lock at each change. The
    /// idle pass and the drains lock only these classes, so a class the program never moves
    /// blocks through is never written: the layer lives in `.bss` (C8), where a page becomes
    /// resident when first written, and the idle pass had written every class lock, all 21
    /// pages of it, in every process. Relaxed: a put racing a pass is left for the next one.
    /// Not kept under loom (every class is visited).
    occupied: AtomicUsize,
}

const _: () = assert!(LAYER_CLASSES <= usize::BITS as usize);

// SAFETY: the batches' raw pointers are blocks the layer owns (TR1); every access is under
// the class's lock.
unsafe impl Sync for Transfer {}
// SAFETY: as above.
unsafe impl Send for Transfer {}

impl Transfer {
    /// An empty layer.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            classes: [const { CachePadded::new(Mutex::new(Slots::EMPTY)) }; LAYER_CLASSES],
            bytes: AtomicUsize::new(0),
            boost: AtomicUsize::new(0),
            caches: AtomicUsize::new(0),
            occupied: AtomicUsize::new(0),
        }
    }

    /// An empty layer.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            classes: core::array::from_fn(|_| CachePadded::new(Mutex::new(Slots::EMPTY))),
            bytes: AtomicUsize::new(0),
            boost: AtomicUsize::new(0),
            caches: AtomicUsize::new(0),
            occupied: AtomicUsize::new(0),
        }
    }

    /// A thread cache became active (the process calls it; the byte bound of every class
    /// grows by [`CLASS_BYTES_PER_CACHE`], up to [`CLASS_BYTES`]).
    pub fn cache_joined(&self) {
        // Relaxed: a tuning input, ordered with nothing.
        self.caches.fetch_add(1, Ordering::Relaxed);
    }

    /// A thread cache that [`Self::cache_joined`] was torn down.
    pub fn cache_left(&self) {
        // Relaxed: as above.
        self.caches.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the count of active thread caches to `n`: in a forked child, whose only thread is
    /// the one that forked (the other threads' caches are gone with their threads, which will
    /// never count themselves out).
    pub fn reset_caches(&self, n: usize) {
        // Relaxed: as above.
        self.caches.store(n, Ordering::Relaxed);
    }

    /// The byte bounds now: of each class, and of the whole layer.
    fn bounds(&self) -> (usize, usize) {
        if cfg!(loom) {
            // The models count no caches; a load would only add interleavings.
            return (CLASS_BYTES_PER_CACHE, LAYER_BYTES);
        }
        // Relaxed: as above; a stale count only moves the bounds by one cache's share.
        let n = self.caches.load(Ordering::Relaxed).max(1);
        let base = n.saturating_mul(LAYER_BYTES_PER_CACHE);
        (
            CLASS_BYTES.min(n.saturating_mul(CLASS_BYTES_PER_CACHE)),
            LAYER_BYTES.min(base.saturating_add(self.boost.load(Ordering::Relaxed))),
        )
    }

    /// The whole layer's byte budget now (TR5): [`LAYER_BYTES_PER_CACHE`] per active cache plus
    /// what demand added, at most [`LAYER_BYTES`].
    pub fn budget(&self) -> usize {
        self.bounds().1
    }

    /// A refill missed on a class that refused another cache's batch since: demand raises the
    /// budget by [`BOOST_STEP`] (not under loom).
    fn raise_budget(&self) {
        if cfg!(loom) {
            return;
        }
        // Relaxed: a tuning input; a lost race only loses one step.
        let b = self.boost.load(Ordering::Relaxed);
        if b < LAYER_BYTES {
            self.boost.store((b + BOOST_STEP).min(LAYER_BYTES), Ordering::Relaxed);
        }
    }

    /// Records whether class `c` has state for the idle pass (`occupied`; not under loom).
    /// Called under the class's lock.
    fn mark(&self, c: usize, occupied: bool) {
        if cfg!(loom) {
            return;
        }
        // Relaxed: a hint (see `occupied`).
        if occupied {
            self.occupied.fetch_or(1 << c, Ordering::Relaxed);
        } else {
            self.occupied.fetch_and(!(1 << c), Ordering::Relaxed);
        }
    }

    /// The idle pass halves what demand added (not under loom).
    fn decay_budget(&self) {
        if cfg!(loom) {
            return;
        }
        // Relaxed: as above.
        let b = self.boost.load(Ordering::Relaxed);
        self.boost.store(b / 2, Ordering::Relaxed);
    }

    /// Whether `bytes` more fit under the whole layer's budget `bound` (TR5; always under loom).
    fn budget_allows(&self, bytes: usize, bound: usize) -> bool {
        // Relaxed: TR5's budget is a tuning input; two racing puts may pass it by a batch each.
        cfg!(loom) || self.bytes.load(Ordering::Relaxed).saturating_add(bytes) <= bound
    }

    /// Counts `bytes` into (`add`) or out of the layer's total (TR5; not kept under loom).
    fn account(&self, bytes: usize, add: bool) {
        if cfg!(loom) {
            return;
        }
        // Relaxed: as in `budget_allows`.
        if add {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Hands `batch` of class `c` to the layer; `Err((batch, drain))` when the class is full
    /// (or not served): the caller returns the refused batch to the central heap and, when
    /// `drain` is set, starts the class draining (`Backend::give_back` does): it was full after
    /// [`DRAIN_PUTS`] batches came in and none was taken (the program frees what it no longer
    /// needs), so it gives up its batches too, and holds at most [`DRAINING_SLOTS`] until one
    /// is taken, so that freed memory is not held away from the central heap's merges and
    /// returns.
    ///
    /// `from` identifies the flushing thread cache (its address) for the budget's demand rule.
    pub fn put(&self, c: usize, batch: Batch, from: usize) -> Result<(), (Batch, bool)> {
        debug_assert!(batch.count > 0);
        let Some(slots) = self.classes.get(c) else { return Err((batch, false)) };
        let mut s = slots.lock();
        s.puts_since_take = s.puts_since_take.saturating_add(1);
        let blocks = s.blocks + batch.count;
        let limit = if s.draining { DRAINING_SLOTS } else { SLOTS };
        let (class_bound, layer_bound) = self.bounds();
        let bytes = batch.count as usize * class_size(c);
        if s.len as usize >= limit
            || blocks as usize * class_size(c) > class_bound
            || !self.budget_allows(bytes, layer_bound)
        {
            let drain = s.puts_since_take >= DRAIN_PUTS && !s.draining;
            if !s.needs_pass() {
                self.mark(c, true);
            }
            s.refused_by = from;
            drop(s);
            stats::add(c, Counter::LayerOverflows, 1);
            return Err((batch, drain));
        }
        if !s.needs_pass() {
            self.mark(c, true);
        }
        let len = s.len as usize;
        s.batches[len] = batch;
        s.len += 1;
        s.blocks = blocks;
        self.account(bytes, true);
        drop(s);
        stats::add(c, Counter::LayerPuts, 1);
        Ok(())
    }

    /// Starts class `c` draining if it still should (no take since [`Self::put`] said so): moves
    /// its batches into `evicted` for the caller to return to the central heap (TR4).
    fn start_draining(&self, c: usize, evicted: &mut Evicted) {
        let Some(slots) = self.classes.get(c) else { return };
        let mut s = slots.lock();
        if s.puts_since_take < DRAIN_PUTS || s.draining {
            return;
        }
        s.draining = true;
        let n = s.len as usize;
        let blocks = s.remove_oldest(n, |b| {
            evicted.batches[evicted.n] = b;
            evicted.n += 1;
        });
        self.account(blocks * class_size(c), false);
        drop(s);
        stats::add(c, Counter::LayerReleased, evicted.n);
    }

    /// Takes the newest batch of class `c` if it holds at most `room` blocks; `None` when the
    /// class has none (a miss: the caller refills from the central heap). `by` identifies the
    /// refilling thread cache (its address), as `from` in [`Self::put`].
    pub fn take(&self, c: usize, room: u32, by: usize) -> Option<Batch> {
        let slots = self.classes.get(c)?;
        let mut s = slots.lock();
        let Some(top) = s.len.checked_sub(1) else {
            let raise = s.refused_by != 0 && s.refused_by != by;
            if raise {
                s.refused_by = 0;
                self.mark(c, false);
            }
            drop(s);
            if raise {
                self.raise_budget();
            }
            stats::add(c, Counter::LayerMisses, 1);
            return None;
        };
        let b = s.batches[top as usize];
        if b.count > room {
            return None;
        }
        // The `Transfer` sabotage twin: the batch stays in the layer as well, so two caches
        // own its blocks (the models' ledger must catch it).
        if !crate::sync::sabotage::armed(crate::sync::sabotage::Defect::Transfer) {
            s.len = top;
            if !s.needs_pass() {
                self.mark(c, false);
            }
            s.blocks -= b.count;
            s.low_water = s.low_water.min(top);
            self.account(b.count as usize * class_size(c), false);
        }
        s.puts_since_take = 0;
        s.draining = false;
        drop(s);
        stats::add(c, Counter::LayerHits, 1);
        Some(b)
    }

    /// The idle pass: returns to `heap` every batch that stayed in the layer since the previous
    /// pass (TR2), and starts a new period. Returns how many batches went back.
    ///
    /// # Errors
    /// A [`Misuse`] found in a returned block (a write after free damaged it).
    pub fn release_idle<S: MemorySource>(
        &self,
        heap: &mut CentralHeap<S>,
    ) -> Result<usize, Misuse> {
        self.decay_budget();
        self.release(heap, false)
    }

    /// Returns every batch to `heap` (`malloc_trim`); how many went back.
    ///
    /// # Errors
    /// As [`Self::release_idle`].
    pub fn drain<S: MemorySource>(&self, heap: &mut CentralHeap<S>) -> Result<usize, Misuse> {
        self.decay_budget();
        self.release(heap, true)
    }

    fn release<S: MemorySource>(
        &self,
        heap: &mut CentralHeap<S>,
        all: bool,
    ) -> Result<usize, Misuse> {
        let mut r = Ok(());
        let mut released = 0;
        // Relaxed: a hint (see `occupied`); under loom every class.
        let occupied = if cfg!(loom) { usize::MAX } else { self.occupied.load(Ordering::Relaxed) };
        for (c, slots) in self.classes.iter().enumerate() {
            if occupied & (1 << c) == 0 {
                continue;
            }
            let mut s = slots.lock();
            let n = if all { s.len } else { s.low_water } as usize;
            let blocks = s.remove_oldest(n, |b| {
                if r.is_ok() {
                    r = b.free_to(heap);
                }
            });
            self.account(blocks * class_size(c), false);
            s.low_water = s.len;
            s.refused_by = 0;
            if !s.needs_pass() {
                self.mark(c, false);
            }
            drop(s);
            stats::add(c, Counter::LayerReleased, n);
            released += n;
        }
        r.map(|()| released)
    }

    /// Returns to `heap` the oldest batch of the largest class that holds any (TR7: a refill
    /// that would grow the heap takes its room from the layer first); whether there was one.
    /// Largest first: each of its blocks holds at least one block of any smaller class, where
    /// a smaller class's blocks help only by merging.
    ///
    /// # Errors
    /// As [`Self::release_idle`].
    pub fn release_largest<S: MemorySource>(
        &self,
        heap: &mut CentralHeap<S>,
    ) -> Result<bool, Misuse> {
        // Relaxed: a hint (see `occupied`); a class found empty under its lock is skipped.
        // Under loom every class (the models keep no `occupied` bits).
        let mut occupied = if cfg!(loom) {
            usize::MAX >> (usize::BITS as usize - LAYER_CLASSES)
        } else {
            self.occupied.load(Ordering::Relaxed)
        };
        while occupied != 0 {
            let c = (usize::BITS - 1 - occupied.leading_zeros()) as usize;
            occupied &= !(1 << c);
            let mut s = self.classes[c].lock();
            if s.len == 0 {
                continue;
            }
            let mut r = Ok(());
            let blocks = s.remove_oldest(1, |b| r = b.free_to(heap));
            self.account(blocks * class_size(c), false);
            if !s.needs_pass() {
                self.mark(c, false);
            }
            drop(s);
            stats::add(c, Counter::LayerReleased, 1);
            return r.map(|()| true);
        }
        Ok(false)
    }

    /// Whether `u` is a block of one of class `c`'s batches (a double free of a block the layer
    /// holds: the front end asks when a freed block carries the cache key). A walk under the
    /// class's lock, on a cold path only.
    pub fn contains(&self, c: usize, u: UserPtr) -> bool {
        let Some(slots) = self.classes.get(c) else { return false };
        let s = slots.lock();
        s.batches[..s.len as usize].iter().any(|b| {
            let mut found = false;
            // A damaged link ends the walk; the block is then not known to be here.
            let _ = b.for_each(|v| found |= v == u);
            found
        })
    }

    /// Batches class `c` holds.
    pub fn batches(&self, c: usize) -> usize {
        self.classes.get(c).map_or(0, |s| s.lock().len as usize)
    }

    /// What the layer holds (for statistics: its blocks are free memory).
    pub fn held(&self) -> Held {
        let mut h = Held::default();
        for (c, slots) in self.classes.iter().enumerate() {
            let s = slots.lock();
            h.blocks += s.blocks as usize;
            h.bytes += s.blocks as usize * class_size(c);
            h.batches += s.len as usize;
        }
        h
    }

    /// Checks TR1, TR2, TR4 and TR5 against `heap` (held locked by the caller: CENTRAL →
    /// TRANSFER): every block of every batch is an in-use block of the heap of its class, with
    /// the key, and the counts and the byte total agree.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check<S: MemorySource>(&self, heap: &CentralHeap<S>) -> Result<(), HeapError> {
        // Every class lock at once (in the lock order), so that TR5's total is a snapshot.
        for l in self.locks() {
            l.lock();
        }
        // SAFETY: this thread took every class lock just above, and made no guard of them.
        let r = unsafe { self.check_locked(heap) };
        for l in self.locks().rev() {
            // SAFETY: taken above by this thread, no guard exists.
            unsafe { l.unlock() };
        }
        r
    }

    /// [`Self::check`] while the calling thread holds every class lock without guards (between
    /// the fork handlers' `prepare` and `parent`/`child`: what a child inherits).
    ///
    /// # Safety
    /// The calling thread took the locks with [`Backend::lock_all`] and no guard of them exists.
    ///
    /// # Errors
    /// As [`Self::check`].
    pub unsafe fn check_locked<S: MemorySource>(
        &self,
        heap: &CentralHeap<S>,
    ) -> Result<(), HeapError> {
        let (mut bytes, mut needs) = (0, 0);
        for (c, slots) in self.classes.iter().enumerate() {
            // SAFETY: forwarded contract.
            bytes += unsafe {
                slots.with_raw_locked(|s| {
                    needs |= usize::from(s.needs_pass()) << c;
                    check_class(c, s, heap).map(|()| s.blocks as usize * class_size(c))
                })
            }?;
        }
        // Relaxed: every class lock is held, so every update of `bytes` happened before (TR5).
        if !cfg!(loom) && bytes != self.bytes.load(Ordering::Relaxed) {
            return Err(HeapError { what: "TR5: the layer's byte total disagrees", addr: bytes });
        }
        // Relaxed: as above, for `occupied` (TR6).
        if !cfg!(loom) && needs != self.occupied.load(Ordering::Relaxed) {
            return Err(HeapError { what: "TR6: the occupied classes disagree", addr: needs });
        }
        Ok(())
    }

    /// The class locks, in the lock order (after the central lock).
    fn locks(&self) -> impl DoubleEndedIterator<Item = &RawLock> {
        self.classes.iter().map(|s| s.raw())
    }
}

/// Checks TR1 and TR2 of class `c`'s stack `s` against `heap`.
fn check_class<S: MemorySource>(
    c: usize,
    s: &Slots,
    heap: &CentralHeap<S>,
) -> Result<(), HeapError> {
    let mut blocks = 0;
    for b in &s.batches[..s.len as usize] {
        let mut bad = None;
        let walk = b.for_each(|u| {
            if bad.is_none() && !heap.holds_cached(u, c) {
                bad = Some(u.addr());
            }
        });
        if walk.is_err() || b.count == 0 {
            return Err(HeapError { what: "TR1: a batch's links do not match its count", addr: c });
        }
        if let Some(addr) = bad {
            return Err(HeapError {
                what: "TR1: a batch holds a block that is not a cached block of its class",
                addr,
            });
        }
        blocks += b.count;
    }
    if blocks != s.blocks || blocks as usize * class_size(c) > CLASS_BYTES || s.low_water > s.len {
        return Err(HeapError { what: "TR1/TR2: a class's counts disagree", addr: c });
    }
    if s.draining && s.len as usize > DRAINING_SLOTS {
        return Err(HeapError { what: "TR4: a draining class holds too many batches", addr: c });
    }
    Ok(())
}

impl Default for Transfer {
    fn default() -> Self {
        Self::new()
    }
}

/// What the thread caches refill from and flush to: the middle layer and, behind it, the
/// central heap.
///
/// # Invariants
/// - TR7: the layer's batches never make a thread cache's refill grow the heap: a refill
///   from the central heap ([`Backend::central_refill`]) that finds no room returns the
///   layer's batches to the heap one at a time (where they merge with their free neighbours)
///   and tries again, and lets the heap grow only when the layer is empty.
pub struct Backend<S> {
    /// The middle layer.
    pub layer: Transfer,
    /// The central heap.
    pub central: Mutex<CentralHeap<S>>,
}

impl<S> Backend<S> {
    crate::sync::constructor! {
        /// A backend over `heap` with an empty layer.
        pub fn new(heap: CentralHeap<S>) -> Self {
            Self { layer: Transfer::new(), central: Mutex::new(heap) }
        }
    }
}

impl<S: MemorySource> Backend<S> {
    /// Returns `batch` of class `c` to the layer or, when the class is full, to the central
    /// heap (under its lock); an empty batch is nothing to return.
    ///
    /// # Errors
    /// As [`Batch::free_to`].
    pub fn give_back(&self, c: usize, batch: Batch, from: usize) -> Result<(), Misuse> {
        if batch.count == 0 {
            return Ok(());
        }
        let Err((b, drain)) = self.layer.put(c, batch, from) else { return Ok(()) };
        if drain {
            return self.drain_class(c, b);
        }
        b.free_to(&mut self.central.lock())
    }

    /// Runs the refill `f` on the central heap under its lock, first with the heap's size held
    /// (C7); while that finds no room, the middle layer returns a batch to the heap, largest
    /// class first ([`Transfer::release_largest`]), and `f` runs again; when the layer is
    /// empty, `f` runs with growth allowed (TR7).
    ///
    /// Without this, the blocks of the classes a moment's traffic did not ask for waited in
    /// the layer while the heap grew for the class it did (measured, prodcons 4+4 threads: the
    /// layer held 0.1–0.5 MiB at each of the heap's growths, and the peak RSS was 5.7 MiB
    /// against 5.0 before the layer existed; 5.3 with it). Only thread-cache refills take this
    /// path: for a direct allocation (a large block) it put the block into the holes the
    /// layer's batches merged into instead of the top of the heap, where its free is trimmed
    /// (`mixed` ×1: +1.2 MiB peak RSS).
    pub fn central_refill<T>(
        &self,
        mut f: impl FnMut(&mut CentralHeap<S>) -> Option<T>,
    ) -> Option<T> {
        let mut heap = self.central.lock();
        heap.hold_size(true);
        let mut r = f(&mut heap);
        while r.is_none() {
            match self.layer.release_largest(&mut heap) {
                Ok(true) => r = f(&mut heap),
                Ok(false) => break,
                Err(e) => crate::diag::fatal("malloc", e.message(), 0),
            }
        }
        heap.hold_size(false);
        r.or_else(|| f(&mut heap))
    }

    /// [`Self::give_back`] of a refused batch whose class starts draining: its batches go back
    /// with it. Out of line, so that the eviction buffer (a KiB) is on the stack only here: on
    /// the common path it pushed every thread's exit (`flush_all`) onto another stack page,
    /// which glibc's cache of thread stacks keeps resident (`server` ×4: +0.9 MiB peak RSS).
    #[cold]
    #[inline(never)]
    fn drain_class(&self, c: usize, batch: Batch) -> Result<(), Misuse> {
        let mut evicted = Evicted::new();
        self.layer.start_draining(c, &mut evicted);
        let mut heap = self.central.lock();
        batch.free_to(&mut heap)?;
        evicted.batches[..evicted.n].iter().try_for_each(|b| b.free_to(&mut heap))
    }

    /// The fork handlers' `prepare` part: takes the central lock, then every class lock of the
    /// layer (the lock order), without guards.
    pub fn lock_all(&self) {
        self.central.raw().lock();
        for l in self.layer.locks() {
            l.lock();
        }
    }

    /// Releases what [`Self::lock_all`] took, in reverse order.
    ///
    /// # Safety
    /// The calling thread holds every lock through [`Self::lock_all`], and no guard of them
    /// exists.
    pub unsafe fn unlock_all(&self) {
        for l in self.layer.locks().rev() {
            // SAFETY: forwarded contract.
            unsafe { l.unlock() };
        }
        // SAFETY: forwarded contract.
        unsafe { self.central.raw().unlock() };
    }

    /// The idle pass over the layer and then the central heap's idle purge (returning what
    /// stayed unused since the previous pass); when `wait` is false, nothing if the central
    /// lock is taken.
    ///
    /// Returns how many of the layer's batches went back.
    ///
    /// # Errors
    /// As [`Transfer::release_idle`].
    pub fn purge_idle(&self, wait: bool) -> Result<usize, Misuse> {
        let heap = if wait { Some(self.central.lock()) } else { self.central.try_lock() };
        let Some(mut heap) = heap else { return Ok(0) };
        let r = self.layer.release_idle(&mut heap);
        heap.purge_idle();
        r
    }
}
