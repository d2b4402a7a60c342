//! The operation-sequence driver shared by the `heap_ops` fuzz target (`fuzz/fuzz_targets/`)
//! and the stable test `tests/fuzz_model.rs`.
//!
//! [`run`] reads its input as a configuration header followed by a sequence of operations
//! (malloc, free, realloc, aligned and zeroed allocation, in-place resize, cache and heap
//! maintenance) and applies them to a `CentralHeap<Faulty<FixedArena>>` behind a
//! `brkmalloc::sync::Mutex`, with several `ThreadCache`s driven from this one thread as if each
//! were a thread: a block may be allocated from one cache and freed into another. malloc, free,
//! realloc and aligned allocation go through the front end itself (`brkmalloc::heap::Front`
//! over an `Explicit` environment: this heap, the chosen cache), so the driver runs the routing
//! the process runs; the cache life cycle (collection, flush, tear-down) and the central heap's
//! own operations are driven directly.
//!
//! A shadow model keeps every live block with its requested size and fill pattern. After every
//! operation the driver checks:
//! - the heap walker, `check(true)` (C1–C5, B1–B8 including FRESH payloads being zero; the
//!   shallow `check(false)` under Miri), and each cache against the heap (T1, T2, T4, T5);
//! - `used_blocks == live blocks + blocks in all caches + blocks in the quarantine` (nothing
//!   lost, nothing duplicated; `run_with` can put a quarantine on the central free path);
//! - each active cache within its byte limit (T4);
//! - the byte ledger: bytes in use (live and cached) + free + the segments' fences + bytes
//!   returned == bytes obtained from the source (`faults::Faulty`, FS1): nothing lost when OS
//!   calls fail (an input's `Faults` operation, or the plan `run_with` starts from, makes the
//!   source fail `grow`, `shrink`, `release` and `purge`; a failure must surface as a failed
//!   allocation or an unchanged block, and the heap must serve again once calls succeed);
//!
//! and on every allocation: alignment, `usable_size >= n`, no overlap with any live block; a
//! zeroed allocation the heap reports fresh reads as zero. Contents are verified on free,
//! realloc and at the end. At the end every cache is torn down, every block freed, and the heap
//! must be back to one free block per segment with no block in use.
//!
//! The arena (4 MiB) is reused between inputs: only its used prefix is re-zeroed, so an input
//! costs what it touches. Set `DRIVER_TRACE=1` to print each operation (to minimise a crash).
#![allow(dead_code, clippy::std_instead_of_core)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use brkmalloc::block::{ALIGN, HEADER};
use brkmalloc::central::CentralHeap;
use brkmalloc::diag::Misuse;
use brkmalloc::faults::{ALL_CALLS, Faulty, NCALLS, Plan};
use brkmalloc::heap::{Explicit, Front};
use brkmalloc::os::FixedArena;
use brkmalloc::quarantine::{self, Quarantine};
use brkmalloc::size_class::{MAX_CLASS_REQUEST, NCLASSES};
use brkmalloc::sync::Mutex;
use brkmalloc::thread_cache::{State, ThreadCache};
use brkmalloc::transfer::Backend;

/// Bytes of the arena behind the heap.
pub const ARENA_BYTES: usize = 4 << 20;
/// Most simulated threads (caches).
pub const MAX_CACHES: usize = 4;
/// Most operations taken from one input (keeps each execution short; under Miri, where an
/// operation costs about a second, fewer).
pub const MAX_OPS: usize = if cfg!(miri) { 96 } else { 4096 };
/// Whether the heap walker also reads back every FRESH payload word (B6). Not under Miri: there
/// it would dominate the run time, and Miri checks every access itself.
const DEEP_CHECK: bool = !cfg!(miri);
/// Whether the model is checked after every operation; under Miri only after every 16th (a
/// heap walk costs it tens of milliseconds; what Miri adds is the check of every access, which
/// it makes anyway).
const CHECK_ALL: bool = !cfg!(miri);

/// One operation, decoded from the input.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `malloc(n)` through cache `cache` (class lookup, pop, refill, or the central heap).
    Malloc { cache: usize, n: usize },
    /// `free` of live block `idx` (modulo the live count) into cache `cache`.
    Free { idx: usize, cache: usize },
    /// `realloc` of live block `idx` to `n` bytes: same-class shortcut, in place, or move (the
    /// new block from `cache`, the old one freed into it).
    Realloc { idx: usize, cache: usize, n: usize },
    /// `CentralHeap::resize_in_place` alone.
    Resize { idx: usize, n: usize },
    /// `alloc_aligned(n, align)` on the central heap.
    Aligned { n: usize, align: usize },
    /// `CentralHeap::alloc(n, zero)` directly (the central path of malloc and calloc).
    Central { n: usize, zero: bool },
    /// `n` mallocs of one size from cache `from`, then frees of them all into cache `to`
    /// (refill batches and flushes in few input bytes); `keep` of them stay live.
    Burst { from: usize, to: usize, n: usize, count: usize, keep: usize },
    /// `ThreadCache::flush_all`.
    Flush { cache: usize },
    /// `ThreadCache::collect` (the low-water-mark collection).
    Collect { cache: usize },
    /// Thread exit: `tear_down`, then a fresh `Uninit` cache takes its place (a new thread).
    Exit { cache: usize },
    /// `tear_down` only: the cache stays `TornDown` (frees after the TLS destructor).
    TearDown { cache: usize },
    /// `malloc_trim(pad)`: flush cache `cache`, then `CentralHeap::trim(pad)`.
    Trim { cache: usize, pad: usize },
    /// `CentralHeap::purge_idle`.
    PurgeIdle,
    /// The next growth of the arena leaves a gap (another `sbrk` user moved the break).
    Gap,
    /// Only `n` more growths succeed (`None`: no limit).
    FailAfter { n: Option<usize> },
    /// Verify the contents of every live block.
    VerifyAll,
    /// The next growth is an mmap fallback segment (`FixedArena::map_next`).
    MapNext,
    /// From now on the memory source fails OS calls of every kind as `plan` says
    /// (`faults::Faulty`).
    Faults { plan: Plan },
}

/// Failures injected per operation kind (the variant's name) and OS call (`faults::OsCall`).
pub type Tally = BTreeMap<String, [u64; NCALLS]>;

impl Op {
    /// The name of this operation's kind: its variant.
    pub fn kind(&self) -> String {
        let debug = format!("{self:?}");
        debug.split([' ', '{']).next().unwrap_or_default().to_owned()
    }
}

/// Heap and cache tuning, from the first bytes of the input.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Simulated threads.
    pub ncaches: usize,
    /// `tcache_max_bytes` of every cache.
    pub cache_bytes: usize,
    /// `CentralHeap::top_pad`.
    pub top_pad: usize,
    /// `CentralHeap::trim_threshold`.
    pub trim_threshold: usize,
    /// `CentralHeap::purge_threshold`.
    pub purge_threshold: usize,
    /// `CentralHeap::purge_interval`.
    pub purge_interval: usize,
}

/// Reads bytes off the front of the input; `None` once it is used up.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<usize> {
        Some(usize::from(self.u8()?) | usize::from(self.u8()?) << 8)
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> Option<T> {
        Some(choices[usize::from(self.u8()?) % choices.len()])
    }

    /// A request size: mostly small, often around the cache classes, sometimes large.
    fn size(&mut self) -> Option<usize> {
        let sel = self.u8()?;
        let v = self.u16()?;
        Some(match sel % 16 {
            0..=5 => v % 128,
            6..=9 => v % 1024,
            10 | 11 => v % 8192,
            12 | 13 => v % 40_000,
            14 => MAX_CLASS_REQUEST - 64 + v % 128,
            _ => (v * 8) % (384 << 10),
        })
    }

    fn config(&mut self) -> Option<Config> {
        Some(Config {
            ncaches: 1 + usize::from(self.u8()?) % MAX_CACHES,
            cache_bytes: self.pick(&[1 << 20, 64 << 10, 16 << 10, 4 << 10, 256 << 10])?,
            top_pad: self.pick(&[0, 4096, 64, 16 << 10])?,
            trim_threshold: self.pick(&[128 << 10, 4096, 0, 32 << 10])?,
            purge_threshold: self.pick(&[128 << 10, 4096, 16 << 10, 64 << 10])?,
            purge_interval: self.pick(&[4 << 20, 0, 16 << 10, 256 << 10])?,
        })
    }

    fn op(&mut self, ncaches: usize) -> Option<Op> {
        let b = self.u8()?;
        let cache = usize::from(b >> 5) % ncaches;
        Some(match b % 24 {
            0..=6 => Op::Malloc { cache, n: self.size()? },
            7..=11 => Op::Free { idx: self.u16()?, cache },
            12 | 13 => Op::Realloc { idx: self.u16()?, cache, n: self.size()? },
            14 => Op::Resize { idx: self.u16()?, n: self.size()? },
            15 => {
                let n = self.size()?;
                let shift = 5 + usize::from(self.u8()?) % 12;
                Op::Aligned { n, align: 1 << shift }
            }
            16 => {
                let n = self.size()?;
                Op::Central { n, zero: self.u8()? & 1 == 1 }
            }
            17 | 18 => {
                let x = self.u8()?;
                let n = self.size()? % (MAX_CLASS_REQUEST + 1);
                let count = 1 + usize::from(self.u8()?) % 160;
                Op::Burst {
                    from: cache,
                    to: usize::from(x) % ncaches,
                    n,
                    count,
                    keep: usize::from(x >> 4),
                }
            }
            19 => match self.u8()? % 4 {
                0 => Op::Flush { cache },
                1 => Op::Collect { cache },
                2 => Op::Exit { cache },
                _ => Op::TearDown { cache },
            },
            20 => Op::Trim { cache, pad: self.pick(&[0, 4096, 128 << 10])? },
            21 => match self.u8()? % 8 {
                0 => Op::PurgeIdle,
                1 => Op::Gap,
                2 => Op::FailAfter { n: Some(usize::from(self.u8()?) % 4) },
                3 | 4 => Op::FailAfter { n: None },
                5 => Op::VerifyAll,
                6 => Op::MapNext,
                _ => Op::Faults {
                    plan: match self.u8()? % 4 {
                        0 => Plan::Off,
                        1 => Plan::EveryNth(2 + u32::from(self.u8()? % 8)),
                        x => Plan::Random {
                            seed: self.u16()? as u64,
                            per_mille: if x == 2 { 100 } else { 700 },
                        },
                    },
                },
            },
            _ => Op::Collect { cache },
        })
    }
}

/// A live block of the model.
#[derive(Clone, Copy, Debug)]
struct Live {
    p: NonNull<u8>,
    /// Requested bytes: the ones filled and verified.
    n: usize,
    seed: u64,
    /// `usable_size` when it was last checked: the block spans `[p - 8, p + usable)`.
    usable: usize,
}

/// Bytes of the fill tape.
const TAPE: usize = 8192;

/// The fill tape: `TAPE` pseudo-random bytes, stored twice so that any `TAPE`-byte window
/// starting in the first copy is contiguous.
fn tape() -> &'static [u8; 2 * TAPE] {
    static T: std::sync::OnceLock<[u8; 2 * TAPE]> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = [0u8; 2 * TAPE];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..TAPE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t[i] = (x >> 32) as u8;
            t[i + TAPE] = t[i];
        }
        t
    })
}

/// The pattern of a block with `seed`: byte `i` is `tape[(seed + i) % TAPE]`. Fill and check
/// go through `memcpy`/`memcmp` a tape window at a time: a per-byte loop would cost a traced
/// comparison per iteration under the fuzzer's instrumentation.
fn window(seed: u64, len: usize) -> &'static [u8] {
    let o = (seed % TAPE as u64) as usize;
    &tape()[o..o + len]
}

fn fill(p: NonNull<u8>, n: usize, seed: u64) {
    let mut k = 0;
    while k < n {
        let len = (n - k).min(TAPE);
        let src = window(seed, len);
        // SAFETY: the block has at least `n` usable bytes; the tape is not inside it.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr().add(k), len) };
        k += len;
    }
}

fn verify(l: &Live, what: &str) {
    let mut k = 0;
    while k < l.n {
        let len = (l.n - k).min(TAPE);
        // SAFETY: the block is live with at least `l.n` bytes.
        let got = unsafe { core::slice::from_raw_parts(l.p.as_ptr().add(k), len) };
        let want = window(l.seed, len);
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{what}: contents of block {:p} (n={}) changed at byte {}: {:#04x} != {:#04x}",
                l.p,
                l.n,
                k + i,
                got[i],
                want[i]
            );
        }
        k += len;
    }
}

/// The front end reports a misuse: a correct program (the driver never double-frees or passes
/// a foreign pointer) must never get here, so it is a bug in the allocator.
fn misuse(func: &str, what: Misuse, p: NonNull<u8>) {
    panic!("{func}(): misuse reported for a correct program: {what:?} at {p:p}");
}

/// Arms the sabotage twin named by `BRKMALLOC_SABOTAGE` (only in a `--cfg brkmalloc_sabotage`
/// build: `ci/twins.sh` runs the seed corpus with `routing` armed, which must fail).
fn arm_sabotage() {
    #[cfg(brkmalloc_sabotage)]
    if std::env::var_os("BRKMALLOC_SABOTAGE").is_some_and(|v| v == "routing") {
        brkmalloc::sync::sabotage::arm(brkmalloc::sync::sabotage::Defect::Routing);
    }
}

thread_local! {
    /// The arena buffer, reused between inputs: all zero whenever it is in here.
    static ARENA: RefCell<Option<Box<[u128]>>> = const { RefCell::new(None) };
}

/// The driver's state for one input.
struct Driver {
    heap: Backend<Faulty<FixedArena>>,
    caches: Vec<ThreadCache>,
    cfg: Config,
    live: Vec<Live>,
    /// Start of every live block (`p - 8`) to its end (`p + usable`).
    spans: BTreeMap<usize, usize>,
    next_seed: u64,
    trace: bool,
    step: usize,
    tally: Tally,
    /// The quarantine central-path frees go through when `quarantine_limit > 0`.
    quarantine: Mutex<Quarantine>,
    quarantine_limit: usize,
}

impl Driver {
    /// The front end as seen by the thread whose cache is `ci` (`None`: a thread without one).
    fn front(&mut self, ci: Option<usize>) -> Front<Explicit<'_, Faulty<FixedArena>>> {
        let mut env = Explicit::new(&self.heap, ci.map(|i| &mut self.caches[i]));
        env.cache_bytes = self.cfg.cache_bytes;
        env.on_misuse = misuse;
        env.quarantine =
            (self.quarantine_limit > 0).then_some((&self.quarantine, self.quarantine_limit));
        Front(env)
    }

    fn check(&self, what: &str) {
        let heap = self.heap.central.lock();
        if let Err(e) = heap.check(DEEP_CHECK) {
            panic!(
                "step {} ({what}): heap invariant broken: {} at {:#x}",
                self.step, e.what, e.addr
            );
        }
        for (i, tc) in self.caches.iter().enumerate() {
            if let Err(e) = tc.check(&heap) {
                panic!("step {} ({what}): cache {i}: {} at {:#x}", self.step, e.what, e.addr);
            }
        }
        if let Err(e) = self.heap.layer.check(&heap) {
            panic!("step {} ({what}): middle layer: {} at {:#x}", self.step, e.what, e.addr);
        }
        let cached: usize =
            self.caches.iter().map(|tc| (0..NCLASSES).map(|c| tc.count(c)).sum::<usize>()).sum();
        let layer = self.heap.layer.held().blocks;
        let st = heap.stats();
        let waiting = self.quarantine.lock().count();
        assert_eq!(
            st.used_blocks,
            self.live.len() + cached + waiting + layer,
            "step {} ({what}): used_blocks != live {} + cached {cached} + quarantined {waiting} \
             + in the layer {layer}",
            self.step,
            self.live.len()
        );
        // The byte ledger: blocks held by the program, blocks in the caches, free blocks and
        // the segments' fences make up what the source lends the heap (FS1); nothing is lost
        // however many OS calls failed.
        let live_bytes: usize = self.live.iter().map(|l| l.usable + HEADER).sum();
        let cached_bytes: usize = self.caches.iter().map(ThreadCache::bytes).sum();
        assert!(
            st.used_bytes >= live_bytes + cached_bytes,
            "step {} ({what}): bytes in use {} < live {live_bytes} + cached {cached_bytes}",
            self.step,
            st.used_bytes
        );
        let src = heap.source();
        let fences = 2 * HEADER * heap.segment_count();
        assert_eq!(
            st.used_bytes + st.free_bytes + fences + src.returned(),
            src.obtained(),
            "step {} ({what}): in use + free + fences + returned != obtained: {st:?}",
            self.step
        );
        for tc in &self.caches {
            if tc.state() == State::Active {
                assert!(tc.bytes() <= self.cfg.cache_bytes, "T4: cache holds {} bytes", tc.bytes());
            } else {
                assert_eq!(tc.bytes(), 0, "T5: a cache that is not active holds blocks");
            }
        }
    }

    fn usable(&self, p: NonNull<u8>) -> usize {
        match self.heap.central.lock().usable_size(p) {
            Ok(u) => u,
            Err(e) => panic!("step {}: usable_size({p:p}) of a live block: {e:?}", self.step),
        }
    }

    /// Checks a block just handed out and adds it to the model, filled with a new pattern.
    fn adopt(&mut self, p: NonNull<u8>, n: usize, align: usize, what: &str) {
        let a = p.addr().get();
        assert_eq!(a % align, 0, "step {} ({what}): {p:p} not aligned to {align}", self.step);
        let usable = self.usable(p);
        assert!(usable >= n, "step {} ({what}): usable {usable} < requested {n}", self.step);
        let (start, end) = (a - HEADER, a + usable);
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            assert!(
                e <= start,
                "step {} ({what}): new block [{start:#x}, {end:#x}) overlaps live [{s:#x}, {e:#x})",
                self.step
            );
        }
        self.spans.insert(start, end);
        self.next_seed += 1;
        let l = Live { p, n, seed: self.next_seed.wrapping_mul(0x2545_f491_4f6c_dd1d), usable };
        fill(p, n, l.seed);
        self.live.push(l);
    }

    /// Removes live block `i` from the model, verifying its contents first.
    fn take(&mut self, i: usize, what: &str) -> Live {
        let l = self.live.swap_remove(i);
        verify(&l, what);
        let start = l.p.addr().get() - HEADER;
        assert_eq!(self.spans.remove(&start), Some(l.p.addr().get() + l.usable));
        l
    }

    /// `malloc(n)` on the thread whose cache is `ci`.
    fn malloc(&mut self, ci: usize, n: usize) -> Option<NonNull<u8>> {
        self.front(Some(ci)).alloc(n)
    }

    /// `free(p)` on the thread whose cache is `ci`.
    fn dealloc(&mut self, ci: usize, p: NonNull<u8>) {
        // SAFETY: `p` is a live block of this heap, given up (the model forgot it).
        unsafe { self.front(Some(ci)).dealloc(p) };
    }

    fn cache_result(&self, r: Result<(), Misuse>, what: &str) {
        if let Err(e) = r {
            panic!("step {} ({what}): {e:?}", self.step);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Malloc { cache, n } => {
                if let Some(p) = self.malloc(cache, n) {
                    self.adopt(p, n, ALIGN, "malloc");
                }
            }
            Op::Free { idx, cache } => {
                if !self.live.is_empty() {
                    let l = self.take(idx % self.live.len(), "free");
                    self.dealloc(cache, l.p);
                }
            }
            Op::Realloc { idx, cache, n } => {
                if self.live.is_empty() {
                    return;
                }
                let i = idx % self.live.len();
                let old = self.take(i, "realloc");
                let p = old.p;
                // SAFETY: a live block of this heap; on success the model forgets `p`.
                let q = unsafe { self.front(Some(cache)).realloc(p, n.max(1)) };
                match q {
                    Some(q) => {
                        let moved = Live { p: q, n: old.n.min(n), ..old };
                        verify(&moved, "realloc (kept contents)");
                        self.adopt(q, n, ALIGN, "realloc");
                    }
                    None => {
                        // A failed realloc leaves the block as it was.
                        let usable = self.usable(p);
                        assert_eq!(usable, old.usable, "a failed realloc changed the block");
                        self.spans.insert(p.addr().get() - HEADER, p.addr().get() + usable);
                        self.live.push(old);
                    }
                }
            }
            Op::Resize { idx, n } => {
                if self.live.is_empty() {
                    return;
                }
                let old = self.take(idx % self.live.len(), "resize");
                let r = self.heap.central.lock().resize_in_place(old.p, n);
                match r {
                    Ok(true) => {
                        verify(&Live { n: old.n.min(n), ..old }, "resize (kept contents)");
                        self.adopt(old.p, n, ALIGN, "resize");
                    }
                    Ok(false) => {
                        assert_eq!(
                            self.usable(old.p),
                            old.usable,
                            "a refused resize changed the block"
                        );
                        self.spans
                            .insert(old.p.addr().get() - HEADER, old.p.addr().get() + old.usable);
                        self.live.push(old);
                    }
                    Err(e) => panic!("step {}: resize_in_place of a live block: {e:?}", self.step),
                }
            }
            Op::Aligned { n, align } => {
                let r = self.front(None).alloc_aligned(n, align);
                if let Some(p) = r {
                    self.adopt(p, n, align, "alloc_aligned");
                }
            }
            Op::Central { n, zero } => {
                let r = self.heap.central.lock().alloc(n, zero);
                if let Some((p, fresh)) = r {
                    if zero && fresh {
                        // SAFETY: at least `n` usable bytes.
                        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), n) };
                        if let Some(off) = bytes.iter().position(|&b| b != 0) {
                            panic!("step {}: a fresh zeroed block is not zero at {off}", self.step);
                        }
                    }
                    self.adopt(p, n, ALIGN, "central alloc");
                }
            }
            Op::Burst { from, to, n, count, keep } => {
                let mut got = Vec::with_capacity(count);
                for _ in 0..count {
                    match self.malloc(from, n) {
                        Some(p) => {
                            self.adopt(p, n, ALIGN, "burst malloc");
                            got.push(self.live.len() - 1);
                        }
                        None => break,
                    }
                }
                // Free from the newest (swap_remove keeps lower indices in place).
                for &i in got.iter().skip(keep.min(got.len())).rev() {
                    let l = self.take(i, "burst free");
                    self.dealloc(to, l.p);
                }
            }
            Op::Flush { cache } => {
                let r = self.caches[cache].flush_all(&self.heap);
                self.cache_result(r, "flush_all");
            }
            Op::Collect { cache } => {
                let r = self.caches[cache].collect(&self.heap);
                self.cache_result(r, "collect");
            }
            Op::Exit { cache } => {
                let r = self.caches[cache].tear_down(&self.heap);
                self.cache_result(r, "tear_down");
                self.caches[cache] = ThreadCache::new();
            }
            Op::TearDown { cache } => {
                let r = self.caches[cache].tear_down(&self.heap);
                self.cache_result(r, "tear_down");
            }
            Op::Trim { cache, pad } => {
                self.front(Some(cache)).flush_cache();
                self.heap.central.lock().trim(pad);
            }
            Op::PurgeIdle => {
                let r = self.heap.purge_idle(true).map(|_| ());
                self.cache_result(r, "purge_idle");
            }
            Op::Gap => self.heap.central.lock().source_mut().inner_mut().leave_gap(),
            Op::MapNext => self.heap.central.lock().source_mut().inner_mut().map_next(),
            Op::Faults { plan } => self.heap.central.lock().source_mut().set_plan(plan, ALL_CALLS),
            Op::FailAfter { n } => self
                .heap
                .central
                .lock()
                .source_mut()
                .inner_mut()
                .fail_after(n.unwrap_or(usize::MAX)),
            Op::VerifyAll => {
                for l in &self.live {
                    verify(l, "verify all");
                }
            }
        }
    }

    /// Tears every cache down, frees every block, and checks that the heap is empty again.
    fn finish(&mut self) {
        for ci in 0..self.caches.len() {
            let r = self.caches[ci].tear_down(&self.heap);
            self.cache_result(r, "final tear_down");
        }
        self.check("after the final tear-down");
        let mut ci = 0;
        while !self.live.is_empty() {
            let l = self.take(self.live.len() - 1, "final free");
            self.dealloc(ci % self.caches.len(), l.p);
            ci += 1;
        }
        let r = self.heap.layer.drain(&mut self.heap.central.lock()).map(|_| ());
        self.cache_result(r, "drain");
        self.check("after freeing everything");
        // The OS calls succeed again: the heap serves at once.
        self.heap.central.lock().source_mut().set_plan(Plan::Off, 0);
        self.heap.central.lock().source_mut().inner_mut().fail_after(usize::MAX);
        for n in [100, 5000, 100 << 10] {
            let Some(p) = self.front(None).alloc(n) else {
                panic!("malloc({n}) failed after the OS calls succeed again")
            };
            self.adopt(p, n, ALIGN, "malloc after the faults");
            let l = self.take(self.live.len() - 1, "free after the faults");
            self.dealloc(0, l.p);
        }
        if let Err((e, b)) = quarantine::drain(&self.quarantine, &self.heap.central) {
            panic!("draining the quarantine: {e:?} at {b:p}");
        }
        self.check("after the faults stopped");
        let heap = self.heap.central.lock();
        let st = heap.stats();
        assert_eq!(st.used_blocks, 0, "blocks still in use at the end: {st:?}");
        assert_eq!(st.used_bytes, 0, "bytes still in use at the end: {st:?}");
        assert_eq!(st.free_blocks, heap.segment_count(), "not one free block per segment: {st:?}");
        assert_eq!(
            st.free_bytes + 2 * HEADER * heap.segment_count(),
            st.heap_bytes,
            "free bytes do not cover the segments: {st:?}"
        );
    }
}

/// Interprets `data` as a heap configuration and a sequence of operations; panics on the first
/// broken invariant (see the module documentation).
pub fn run(data: &[u8]) {
    run_with(data, Plan::Off, 0);
}

/// [`run`] with the memory source failing OS calls of every kind as `plan` says from the start
/// (an `Op::Faults` in the input replaces it), and with frees on the central path going
/// through a quarantine of `quarantine_limit` bytes (0: none); returns the failures injected
/// per operation kind and OS call.
pub fn run_with(data: &[u8], plan: Plan, quarantine_limit: usize) -> Tally {
    arm_sabotage();
    let mut input = Input { data };
    let Some(cfg) = input.config() else { return Tally::new() };
    let mut buf = ARENA
        .with(|a| a.borrow_mut().take())
        .unwrap_or_else(|| vec![0u128; ARENA_BYTES / 16].into_boxed_slice());
    let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).expect("non-null buffer");
    // SAFETY: the buffer is zero (fresh, or re-zeroed below), 16-aligned, ARENA_BYTES long, and
    // outlives the heap, which is dropped at the end of this function.
    let arena = unsafe { FixedArena::new(base, ARENA_BYTES) };
    let mut heap = CentralHeap::new(Faulty::new(arena));
    heap.source_mut().set_plan(plan, ALL_CALLS);
    heap.top_pad = cfg.top_pad;
    heap.trim_threshold = cfg.trim_threshold;
    heap.purge_threshold = cfg.purge_threshold;
    heap.purge_interval = cfg.purge_interval;
    let trace = std::env::var_os("DRIVER_TRACE").is_some();
    if trace {
        eprintln!("config {cfg:?}");
    }
    let mut d = Driver {
        heap: Backend::new(heap),
        caches: (0..cfg.ncaches).map(|_| ThreadCache::new()).collect(),
        cfg,
        live: Vec::new(),
        spans: BTreeMap::new(),
        next_seed: 0,
        trace,
        step: 0,
        tally: Tally::new(),
        quarantine: Mutex::new(Quarantine::new()),
        quarantine_limit,
    };
    while d.step < MAX_OPS {
        let Some(op) = input.op(cfg.ncaches) else { break };
        if d.trace {
            eprintln!("{:5} {op:?}", d.step);
        }
        let before = d.heap.central.lock().source().failed();
        d.apply(op);
        let after = d.heap.central.lock().source().failed();
        if after != before {
            let row = d.tally.entry(op.kind()).or_default();
            for (t, (a, b)) in row.iter_mut().zip(after.iter().zip(before)) {
                *t += a - b;
            }
        }
        if CHECK_ALL || d.step % 16 == 0 {
            d.check("after the operation");
        }
        d.step += 1;
    }
    d.finish();
    // Re-zero what the heap touched (A1: the arena is zero beyond `used`) and keep the buffer.
    let used = d.heap.central.lock().source().inner().used();
    let tally = std::mem::take(&mut d.tally);
    drop(d);
    // SAFETY: `used <= ARENA_BYTES`; the heap that used the buffer is gone.
    unsafe { core::ptr::write_bytes(buf.as_mut_ptr().cast::<u8>(), 0, used) };
    ARENA.with(|a| *a.borrow_mut() = Some(buf));
    tally
}
