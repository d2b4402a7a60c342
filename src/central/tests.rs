//! Unit tests of the central heap on a fixed arena, with the heap walker after every step.
#![allow(clippy::undocumented_unsafe_blocks, clippy::std_instead_of_core)]

use std::collections::BTreeMap;
use std::ptr::NonNull;

use super::bins::{EXACT_LIMIT, bin_index_fit};
use super::*;
use crate::faults::{ALL_CALLS, Faulty, NCALLS, OsCall, Plan, write_table};
use crate::os::{FixedArena, PAGE};

/// A heap over an owned, zeroed buffer (through a fault injector, off unless a test plans
/// failures).
struct TestHeap {
    heap: CentralHeap<Faulty<FixedArena>>,
    _buf: Vec<u128>,
}

impl TestHeap {
    fn new(cap: usize) -> Self {
        Self::over(cap, CentralHeap::new)
    }

    /// A heap made by `make` over a fresh arena of `cap` bytes.
    fn over(cap: usize, make: fn(Faulty<FixedArena>) -> CentralHeap<Faulty<FixedArena>>) -> Self {
        let mut buf = vec![0u128; cap / 16];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the buffer is zeroed, 16-aligned, owned by `TestHeap` and outlives the heap.
        let arena = unsafe { FixedArena::new(base, cap) };
        Self { heap: make(Faulty::new(arena)), _buf: buf }
    }

    fn check(&self) {
        // Under Miri the deep check (every FRESH payload word read back) dominates the run
        // time; Miri checks the accesses themselves, so the shallow walk is enough there.
        if let Err(e) = self.heap.check(!cfg!(miri)) {
            panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
        }
    }

    fn alloc(&mut self, n: usize) -> NonNull<u8> {
        let (p, _) = self.heap.alloc(n, false).expect("alloc failed");
        assert_eq!(p.addr().get() % ALIGN, 0);
        assert!(self.heap.usable_size(p).unwrap() >= n);
        self.check();
        p
    }

    fn free(&mut self, p: NonNull<u8>) {
        self.heap.free(p).expect("free failed");
        self.check();
    }
}

fn fill(p: NonNull<u8>, n: usize, seed: u64) {
    for i in 0..n {
        // SAFETY: `p` has at least `n` usable bytes.
        unsafe { p.as_ptr().add(i).write(pattern(seed, i)) };
    }
}

fn verify(p: NonNull<u8>, n: usize, seed: u64) {
    for i in 0..n {
        // SAFETY: `p` has at least `n` usable bytes.
        let got = unsafe { p.as_ptr().add(i).read() };
        assert_eq!(got, pattern(seed, i), "content of block {p:?} changed at offset {i}");
    }
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 * 0x1000_0001) >> 24) as u8
}

#[test]
fn bins_are_monotonic_and_fit_rounds_up() {
    let mut last = 0;
    let mut s = MIN_BLOCK;
    while s < 1 << 24 {
        let i = bin_index(s);
        assert!(i >= last && i < NBINS, "bin_index({s}) = {i}");
        last = i;
        // Every block of bin `fit` and above has at least `s` bytes: the largest size
        // below `s` maps to a lower bin.
        assert!(bin_index(s - ALIGN) < bin_index_fit(s) || s < EXACT_LIMIT, "fit({s})");
        if s < EXACT_LIMIT {
            assert_eq!(bin_index_fit(s), bin_index(s));
        }
        s += if s < 1 << 16 { ALIGN } else { 4096 + ALIGN };
    }
    assert!(bin_index(MAX_BLOCK) < NBINS);
}

#[test]
fn first_allocation_splits_the_fresh_segment() {
    let mut h = TestHeap::new(1 << 20);
    let p = h.alloc(100);
    let st = h.heap.stats();
    assert_eq!(st.used_blocks, 1);
    assert_eq!(st.used_bytes, 112);
    assert_eq!(st.free_blocks, 1, "the remainder is one free block");
    assert_eq!(st.free_bytes + st.used_bytes + 16, st.heap_bytes);
    h.free(p);
    assert_eq!(h.heap.stats().free_blocks, 1, "everything merged back");
}

#[test]
fn merge_in_every_neighbour_configuration() {
    let mut h = TestHeap::new(1 << 20);
    let ps: Vec<_> = (0..8).map(|_| h.alloc(40)).collect();
    // Free blocks: only the tail of the segment.
    assert_eq!(h.heap.stats().free_blocks, 1);
    // (block to free, free blocks after it, the neighbours of the freed block X)
    let steps = [
        (2, 2, "used | X | used: no merge"),
        (3, 2, "free | X | used: merge with prev"),
        (1, 2, "used | X | free: merge with next"),
        (0, 2, "first block of the segment (nothing before it) with a free next"),
        (5, 3, "used | X | used again"),
        (4, 2, "free | X | free: merge with both"),
        (7, 2, "last block before the free tail: merges into the tail"),
        (6, 1, "after the final free one free block remains"),
    ];
    for (i, want, what) in steps {
        h.free(ps[i]);
        assert_eq!(h.heap.stats().free_blocks, want, "{what}");
    }
    assert_eq!(h.heap.stats().used_blocks, 0);
}

#[test]
fn block_at_the_segment_end_merges_with_nothing_beyond() {
    let mut h = TestHeap::new(1 << 20);
    h.heap.top_pad = 0;
    // Fill the first segment exactly, so the last block touches the sentinel.
    let total = h.heap.stats().heap_bytes;
    assert_eq!(total, 0);
    let p = h.alloc(4096 - 64);
    let st = h.heap.stats();
    let rest = st.free_bytes;
    let q = h.alloc(rest - HEADER);
    assert_eq!(h.heap.stats().free_blocks, 0, "segment full");
    h.free(q);
    h.free(p);
    assert_eq!(h.heap.stats().free_blocks, 1);
}

#[test]
fn segments_are_fenced() {
    let mut h = TestHeap::new(8 << 20);
    h.heap.top_pad = 0;
    let a = h.alloc(1000);
    let big = h.heap.stats().free_bytes;
    // Exhaust the first segment, then force a gap before the next growth.
    let b = h.alloc(big - HEADER);
    h.heap.source_mut().inner_mut().leave_gap();
    let c = h.alloc(1000);
    assert_eq!(h.heap.segment_count(), 2);
    h.free(b);
    h.free(a);
    h.free(c);
    // One free block per segment: no merge across the gap.
    assert_eq!(h.heap.stats().free_blocks, 2);
    // Contiguous growth extends the segment instead of adding one.
    let d = h.alloc(3 << 20);
    assert_eq!(h.heap.segment_count(), 2);
    h.free(d);
}

#[test]
#[cfg_attr(miri, ignore = "4000 allocations with a heap walk after each: hours under Miri")]
fn trim_returns_the_top_and_purge_the_middle() {
    let mut h = TestHeap::new(64 << 20);
    h.heap.purge_interval = 1 << 20;
    h.heap.dirty_slack = 0;
    let ps: Vec<_> = (0..4000).map(|i| h.alloc(16 + (i % 64) * 16)).collect();
    let keep = h.alloc(64);
    let heap_before = h.heap.stats().heap_bytes;
    // Free everything below `keep`: a large free run in the middle, purged.
    for p in ps {
        h.free(p);
    }
    let st = h.heap.stats();
    assert!(st.purged_bytes >= 1 << 20, "middle run purged: {st:?}");
    assert!(h.heap.source().inner().purged >= 1 << 20);
    // Now the top: free `keep`, everything merges and the break shrinks.
    h.free(keep);
    let st = h.heap.stats();
    assert!(st.trimmed_bytes > 0, "{st:?}");
    assert!(st.heap_bytes < heap_before / 4, "{st:?}");
    assert!(st.free_bytes <= DEFAULT_TOP_PAD + 2 * PAGE, "{st:?}");
}

#[test]
fn a_trim_taken_straight_back_stops_the_trims_until_an_idle_pass() {
    let mut h = TestHeap::new(64 << 20);
    // Swings of 2 MiB and more count.
    h.heap.dirty_slack = 16 << 20;
    let keep = h.alloc(64);
    // Level 0: glibc's trim on free.
    let a = h.alloc(4 << 20);
    h.free(a);
    let st = h.heap.stats();
    assert!(st.trimmed_bytes >= 3 << 20, "the free top is trimmed: {st:?}");
    // The heap grows straight back: the feedback keeps the top from now on.
    let a = h.alloc(4 << 20);
    h.free(a);
    let kept = h.heap.stats();
    assert_eq!(kept.trimmed_bytes, st.trimmed_bytes, "no trim after a regretted one: {kept:?}");
    for i in 0..8 {
        let a = h.alloc((4 << 20) - i * 4096);
        fill(a, 4096, i as u64);
        verify(a, 4096, i as u64);
        h.free(a);
    }
    let st = h.heap.stats();
    assert_eq!((st.grows, st.heap_bytes), (kept.grows, kept.heap_bytes), "top reused: {st:?}");
    assert_eq!(st.trimmed_bytes, kept.trimmed_bytes);
    // Each idle pass (after some frees) lowers the level by one; back at 0, free trims again.
    for _ in 0..2 {
        let a = h.alloc(64);
        h.free(a);
        h.heap.purge_idle();
    }
    let a = h.alloc(4 << 20);
    let before = h.heap.stats().trimmed_bytes;
    h.free(a);
    assert!(h.heap.stats().trimmed_bytes >= before + (3 << 20), "{:?}", h.heap.stats());
    h.free(keep);
}

#[test]
fn a_small_swing_taken_back_is_trimmed_again() {
    let mut h = TestHeap::new(64 << 20);
    let keep = h.alloc(64);
    // 4 MiB is below dirty_slack / 8 (8 MiB): glibc's trim on free every time.
    for _ in 0..3 {
        let a = h.alloc(4 << 20);
        let before = h.heap.stats().trimmed_bytes;
        h.free(a);
        assert!(h.heap.stats().trimmed_bytes >= before + (3 << 20), "{:?}", h.heap.stats());
    }
    h.free(keep);
}

/// Eight 1 MiB blocks; `churn` replacement cycles (free one, allocate one); then seven of the
/// eight freed at once, so the bytes in use dip. Returns the heap.
fn dip_after_churn(churn: usize) -> TestHeap {
    let mut h = TestHeap::new(32 << 20);
    h.heap.dirty_slack = 2 << 20;
    h.heap.purge_interval = 1 << 20;
    let mut bs: Vec<_> = (0..8).map(|_| h.alloc(1 << 20)).collect();
    // In use to the end: the freed runs are not the top.
    h.alloc(64);
    for i in 0..churn {
        h.free(bs[i % 8]);
        bs[i % 8] = h.alloc((1 << 20) - 4096 * (i % 3));
        fill(bs[i % 8], 4096, i as u64);
    }
    for &b in &bs[1..] {
        h.free(b);
    }
    h
}

#[test]
fn a_dip_of_a_churning_heap_is_not_purged_and_an_idle_one_is() {
    // Control: the same dip in a heap that only allocated, then freed, is purged at once.
    let h = dip_after_churn(0);
    assert!(h.heap.stats().purged_bytes >= 6 << 20, "{:?}", h.heap.stats());
    // After eight replacements the dip is churn: kept for reuse.
    let mut h = dip_after_churn(8);
    assert_eq!(h.heap.stats().purged_bytes, 0, "{:?}", h.heap.stats());
    // Until the heap stays idle: two idle passes (one to age the runs) return it.
    h.heap.purge_idle();
    h.heap.purge_idle();
    assert!(h.heap.stats().purged_bytes >= 6 << 20, "{:?}", h.heap.stats());
    h.check();
}

#[test]
fn malloc_trim_purges_every_free_page() {
    let mut h = TestHeap::new(16 << 20);
    let ps: Vec<_> = (0..64).map(|_| h.alloc(8000)).collect();
    for p in ps.iter().step_by(2) {
        h.free(*p);
    }
    let before = h.heap.stats().purged_bytes;
    assert!(h.heap.trim(0));
    h.check();
    assert!(h.heap.stats().purged_bytes > before);
    for p in ps.iter().skip(1).step_by(2) {
        h.free(*p);
    }
}

/// The idle purge trims every segment: when it releases a wholly free fallback segment, the
/// last segment takes its slot and must be trimmed there, not through a stale copy past the end
/// (which shrank the break under a segment record that kept its old length: B4 broken).
#[test]
fn idle_purge_after_a_released_segment_trims_the_moved_one() {
    let mut h = TestHeap::new(8 << 20);
    h.heap.top_pad = 0;
    h.heap.trim_threshold = usize::MAX;
    h.heap.source_mut().inner_mut().map_next();
    let a = h.alloc(100);
    h.heap.source_mut().inner_mut().map_next();
    let b = h.alloc(8000);
    let c = h.alloc(300_000);
    assert_eq!(h.heap.segment_count(), 3, "two fallback segments and a break segment");
    assert!(h.heap.resize_in_place(c, 100).unwrap());
    h.free(a);
    h.free(b);
    let before = h.heap.source().inner().shrunk;
    assert!(h.heap.purge_idle());
    h.check();
    assert_eq!(h.heap.segment_count(), 2, "one empty fallback segment released, one kept");
    assert!(h.heap.source().inner().shrunk > before, "the break segment's free tail went back");
    h.free(c);
}

#[test]
fn out_of_memory_then_recovery() {
    let mut h = TestHeap::new(4 << 20);
    let mut ps = Vec::new();
    while let Some((p, _)) = h.heap.alloc(10_000, false) {
        ps.push(p);
    }
    h.check();
    assert!(ps.len() > 300);
    assert!(h.heap.alloc(10_000, false).is_none());
    for p in ps.drain(..) {
        h.free(p);
    }
    let p = h.alloc(1 << 20);
    h.free(p);
    // Injected failure of the source.
    let mut h = TestHeap::new(4 << 20);
    h.heap.source_mut().inner_mut().fail_after(0);
    assert!(h.heap.alloc(1, false).is_none());
    assert!(h.heap.alloc_aligned(1, 64).is_none());
    h.check();
}

#[test]
fn misuse_is_reported_and_leaves_the_heap_intact() {
    let mut h = TestHeap::new(1 << 20);
    let a = h.alloc(64);
    let b = h.alloc(64);
    let c = h.alloc(64);
    h.free(b);
    assert_eq!(h.heap.free(b), Err(Misuse::DoubleFree));
    // SAFETY: pointers into our own live block.
    let interior = unsafe { a.add(16) };
    assert!(matches!(h.heap.free(interior), Err(Misuse::BadHeader | Misuse::InvalidPointer)));
    let odd = unsafe { a.add(3) };
    assert_eq!(h.heap.free(odd), Err(Misuse::InvalidPointer));
    let mut outside = 0u128;
    let foreign = NonNull::new((&raw mut outside).cast::<u8>()).unwrap();
    assert_eq!(h.heap.free(foreign), Err(Misuse::NotOurs));
    h.check();
    // An overflow from `a` into `c`'s header... `a` is followed by the free `b`: overwrite
    // `b`'s footer area by writing past a's usable size is what a heap overflow does to `c`.
    // Overflow of `c`'s payload into the next block's header:
    let cu = h.heap.usable_size(c).unwrap();
    // SAFETY: deliberately writes 8 bytes past `c`'s usable size: the next header.
    let saved = unsafe { c.as_ptr().add(cu).cast::<usize>().read() };
    unsafe { c.as_ptr().add(cu).cast::<usize>().write(0x4141_4141_4141_4141) };
    assert_eq!(h.heap.free(c), Err(Misuse::CorruptTags));
    unsafe { c.as_ptr().add(cu).cast::<usize>().write(saved) };
    h.check();
    // An underflow that smashes `c`'s own header.
    let saved = unsafe { c.as_ptr().sub(8).cast::<usize>().read() };
    unsafe { c.as_ptr().sub(8).cast::<usize>().write(0x4141) };
    assert_eq!(h.heap.free(c), Err(Misuse::BadHeader));
    unsafe { c.as_ptr().sub(8).cast::<usize>().write(saved) };
    h.free(c);
    h.free(a);
}

#[test]
fn resize_in_place_shrinks_and_grows_into_a_free_neighbour() {
    let mut h = TestHeap::new(1 << 20);
    let a = h.alloc(1000);
    fill(a, 1000, 7);
    let b = h.alloc(100);
    // Shrink: the rest becomes a free block.
    assert_eq!(h.heap.resize_in_place(a, 200), Ok(true));
    h.check();
    verify(a, 200, 7);
    assert_eq!(h.heap.stats().free_blocks, 2);
    // Grow back into the freed rest.
    assert_eq!(h.heap.resize_in_place(a, 900), Ok(true));
    h.check();
    verify(a, 200, 7);
    // Cannot grow past the used `b`.
    assert_eq!(h.heap.resize_in_place(a, 5000), Ok(false));
    h.check();
    // After `b` goes, growth takes the free tail.
    h.free(b);
    assert_eq!(h.heap.resize_in_place(a, 5000), Ok(true));
    h.check();
    verify(a, 200, 7);
    assert!(h.heap.usable_size(a).unwrap() >= 5000);
    h.free(a);
}

#[test]
fn aligned_allocations() {
    let mut h = TestHeap::new(16 << 20);
    let mut ps = Vec::new();
    for shift in 5..=16 {
        let align = 1usize << shift;
        for n in [1, 24, 100, 5000] {
            let p = h.heap.alloc_aligned(n, align).unwrap();
            assert_eq!(p.addr().get() % align, 0, "align {align}");
            assert!(h.heap.usable_size(p).unwrap() >= n);
            fill(p, n, n as u64);
            h.check();
            ps.push((p, n));
        }
    }
    for (p, n) in ps {
        verify(p, n, n as u64);
        h.free(p);
    }
    assert_eq!(h.heap.stats().used_blocks, 0);
}

#[test]
fn fresh_memory_is_reported_zero() {
    let mut h = TestHeap::new(1 << 20);
    let (p, fresh) = h.heap.alloc(5000, true).unwrap();
    assert!(fresh);
    // SAFETY: 5000 usable bytes.
    assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 5000) }.iter().all(|&b| b == 0));
    fill(p, 5000, 1);
    h.free(p);
    let (q, fresh) = h.heap.alloc(5000, true).unwrap();
    assert_eq!(p, q);
    assert!(!fresh, "reused memory must not be reported zero");
    h.free(q);
}

/// Random operations against a shadow model of live ranges: contents intact, no overlap,
/// every invariant after every step.
#[test]
fn random_operations_against_a_shadow_model() {
    // Under Miri one short run (the full one, 120,000 steps on a 256 MiB arena, takes days).
    let (seeds, steps): (&[u64], usize) =
        if cfg!(miri) { (&[1], 300) } else { (&[1, 2, 3], 40_000) };
    for &seed in seeds {
        let t = run_model(seed, steps, Plan::Off);
        assert_eq!(t, [[0; NCALLS]; NOPS], "no plan, no failures");
    }
}

/// The shadow model with OS calls failing: every `n`th call of each kind, and at seeded random
/// rates. Each failure surfaces as `None` (a realloc leaves its block as it was) and nothing
/// else: invariants, contents and the byte ledger hold after every step, and once the calls
/// succeed again the heap serves a fresh round. Prints the failures per OS call and operation.
#[test]
fn random_operations_with_failing_os_calls() {
    let steps = if cfg!(miri) { 300 } else { 12_000 };
    let plans = [
        Plan::EveryNth(2),
        Plan::EveryNth(3),
        Plan::EveryNth(7),
        Plan::Random { seed: 11, per_mille: 50 },
        Plan::Random { seed: 12, per_mille: 300 },
        Plan::Random { seed: 13, per_mille: 900 },
    ];
    let mut total = [[0u64; NCALLS]; NOPS];
    // Under Miri two short runs (each step costs it milliseconds).
    let plans = if cfg!(miri) { &plans[..2] } else { &plans[..] };
    for (i, &plan) in plans.iter().enumerate() {
        let t = run_model(100 + i as u64, steps, plan);
        for (row, add) in total.iter_mut().zip(t) {
            for (a, b) in row.iter_mut().zip(add) {
                *a += b;
            }
        }
    }
    let rows: Vec<_> = OP_NAMES.iter().copied().zip(total).collect();
    let mut table = String::new();
    write_table(&mut table, "central heap shadow model: injected failures", &rows).unwrap();
    eprintln!("{table}");
    let sum = |c: OsCall| total.iter().map(|r| r[c as usize]).sum::<u64>();
    for c in OsCall::ALL {
        assert!(sum(c) > 0, "no {} failure was injected", c.name());
    }
}

/// Operation kinds of the shadow model, rows of its failure table.
const NOPS: usize = 5;
const OP_NAMES: [&str; NOPS] = ["malloc", "memalign", "free", "realloc", "malloc_trim"];

/// Runs the shadow model for `steps` operations with `plan` failing OS calls of every kind;
/// returns the failures injected per operation kind and OS call.
fn run_model(seed: u64, steps: usize, plan: Plan) -> [[u64; NCALLS]; NOPS] {
    let mut h = TestHeap::new(if cfg!(miri) { 16 << 20 } else { 256 << 20 });
    let mut rng = Rng(seed);
    // live: start address -> (pointer, requested size, pattern seed)
    let mut live: BTreeMap<usize, (NonNull<u8>, usize, u64)> = BTreeMap::new();
    let mut next_seed = 0u64;
    let mut tally = [[0u64; NCALLS]; NOPS];
    h.heap.source_mut().set_plan(plan, ALL_CALLS);
    if plan != Plan::Off {
        // Purge passes on the free path too, not only in `trim`.
        h.heap.purge_interval = 256 << 10;
        h.heap.dirty_slack = 0;
    }
    for step in 0..steps {
        let before = h.heap.source().failed();
        let op = rng.below(100);
        // `None`: the operation failed (the allocation, or the move of a realloc).
        let (kind, ok) = if op < 45 || live.is_empty() {
            let n = rng.size();
            let aligned = rng.below(10) == 0;
            let p = if aligned {
                let align = 32usize << rng.below(8);
                let p = h.heap.alloc_aligned(n, align);
                assert!(p.is_none_or(|p| p.addr().get() % align == 0));
                p
            } else {
                h.heap.alloc(n, false).map(|(p, _)| p)
            };
            if let Some(p) = p {
                check_new_block(&h, &live, p, n);
                next_seed += 1;
                fill(p, n, next_seed);
                live.insert(p.addr().get(), (p, n, next_seed));
            }
            (usize::from(aligned), p.is_some())
        } else if op < 85 {
            // Now and then a phase ends: nearly everything is freed, segments empty out.
            let count = if rng.below(1500) == 0 { live.len() * 15 / 16 } else { 1 };
            for _ in 0..count.max(1) {
                let k = *live.keys().nth(rng.below(live.len())).unwrap();
                let (p, n, s) = live.remove(&k).unwrap();
                verify(p, n, s);
                h.heap.free(p).expect("free");
            }
            (2, true)
        } else {
            // realloc: in place if possible, else move (as api::realloc_raw does).
            let k = *live.keys().nth(rng.below(live.len())).unwrap();
            let (p, n, s) = live.remove(&k).unwrap();
            verify(p, n, s);
            let usable = h.heap.usable_size(p).unwrap();
            let m = rng.size();
            let q = if h.heap.resize_in_place(p, m).expect("resize") {
                Some(p)
            } else if let Some((q, _)) = h.heap.alloc(m, false) {
                // SAFETY: distinct live blocks with at least min(n, m) bytes each.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), n.min(m)) };
                h.heap.free(p).expect("free");
                Some(q)
            } else {
                None
            };
            match q {
                Some(q) => {
                    verify(q, n.min(m), s);
                    next_seed += 1;
                    fill(q, m, next_seed);
                    live.insert(q.addr().get(), (q, m, next_seed));
                }
                None => {
                    // A failed realloc leaves the block as it was.
                    assert_eq!(h.heap.usable_size(p).unwrap(), usable);
                    verify(p, n, s);
                    live.insert(p.addr().get(), (p, n, s));
                }
            }
            (3, q.is_some())
        };
        let after = h.heap.source().failed();
        // Every failure is explained by an injected one (the arena itself never runs out).
        assert!(ok || after[OsCall::Grow as usize] > before[OsCall::Grow as usize]);
        add_failures(&mut tally[kind], before, after);
        if rng.below(3000) == 0 {
            h.heap.trim(0);
            add_failures(&mut tally[4], after, h.heap.source().failed());
        }
        if step < 2000 || step % 97 == 0 {
            if let Err(e) = h.heap.check(step % 1000 == 0) {
                panic!("seed {seed} step {step}: {} at {:#x}", e.what, e.addr);
            }
            check_ledger(&h, &live);
        }
        if rng.below(5000) == 0 {
            h.heap.source_mut().inner_mut().leave_gap();
        }
        if rng.below(200) == 0 {
            h.heap.source_mut().inner_mut().map_next();
        }
    }
    // The OS calls succeed again: the heap serves, and everything goes back.
    h.heap.source_mut().set_plan(Plan::Off, 0);
    for n in [100, 5000, 200 << 10] {
        let (p, _) = h.heap.alloc(n, false).expect("alloc after the faults stopped");
        check_new_block(&h, &live, p, n);
        h.free(p);
    }
    for (_, (p, n, s)) in std::mem::take(&mut live) {
        verify(p, n, s);
        h.heap.free(p).expect("free");
    }
    h.check();
    check_ledger(&h, &live);
    let st = h.heap.stats();
    assert_eq!(st.used_blocks, 0);
    assert_eq!(st.free_blocks, h.heap.segment_count(), "one free block per segment");
    tally
}

/// Adds the failures injected between two readings of the counters to `row`.
fn add_failures(row: &mut [u64; NCALLS], before: [u64; NCALLS], after: [u64; NCALLS]) {
    for c in 0..NCALLS {
        row[c] += after[c] - before[c];
    }
}

/// A block just handed out: aligned, large enough, overlapping no live block.
fn check_new_block(
    h: &TestHeap,
    live: &BTreeMap<usize, (NonNull<u8>, usize, u64)>,
    p: NonNull<u8>,
    n: usize,
) {
    assert_eq!(p.addr().get() % ALIGN, 0);
    let usable = h.heap.usable_size(p).unwrap();
    assert!(usable >= n);
    if let Some((&s, &(q, ln, _))) = live.range(..p.addr().get()).next_back() {
        let end = s + h.heap.usable_size(q).unwrap();
        assert!(end <= p.addr().get() - HEADER, "overlaps the block before ({ln})");
    }
    if let Some((&s, _)) = live.range(p.addr().get()..).next() {
        assert!(p.addr().get() + usable <= s - HEADER, "overlaps the block after");
    }
}

/// No byte lost: the live blocks, the free blocks and the segments' fences make up exactly what
/// the source lends the heap (obtained minus returned, FS1).
fn check_ledger(h: &TestHeap, live: &BTreeMap<usize, (NonNull<u8>, usize, u64)>) {
    let st = h.heap.stats();
    let in_use: usize =
        live.values().map(|&(p, _, _)| h.heap.usable_size(p).unwrap() + HEADER).sum();
    assert_eq!(st.used_bytes, in_use, "bytes in use");
    assert_eq!(st.used_blocks, live.len(), "blocks in use");
    let fences = 2 * HEADER * h.heap.segment_count();
    let src = h.heap.source();
    assert_eq!(
        in_use + st.free_bytes + fences + src.returned(),
        src.obtained(),
        "in use + free + fences + returned != obtained: {st:?}"
    );
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Mostly small, sometimes medium, rarely large (up to 300 KiB).
    fn size(&mut self) -> usize {
        match self.below(100) {
            0..=69 => self.below(256),
            70..=94 => self.below(8192),
            95..=98 => self.below(64 << 10),
            _ => self.below(300 << 10),
        }
    }
}

/// C8: a heap takes its options' defaults at its first growth, and options set before that
/// stay. (That the process's heap is all zero bytes, in `.bss`, is checked on the built
/// library: `tests/preload.rs::backend_is_in_bss`.)
#[test]
fn an_unconfigured_heap_takes_its_defaults_when_it_grows() {
    let mut t = TestHeap::over(1 << 20, CentralHeap::unconfigured);
    assert_eq!((t.heap.trim_threshold, t.heap.purge_interval, t.heap.bounds()), (0, 0, (0, 0)));
    let p = t.alloc(100);
    assert_eq!(t.heap.trim_threshold, DEFAULT_TRIM_THRESHOLD);
    assert_eq!(t.heap.purge_interval, DEFAULT_PURGE_INTERVAL);
    t.free(p);

    let mut t = TestHeap::over(1 << 20, CentralHeap::unconfigured);
    t.heap.configure();
    t.heap.top_pad = 4096;
    let p = t.alloc(100);
    assert_eq!(t.heap.top_pad, 4096, "an option set before the first growth stays");
    assert_eq!(t.heap.dirty_slack, DEFAULT_DIRTY_SLACK);
    t.free(p);
}
