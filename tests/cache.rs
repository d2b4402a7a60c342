//! Thread-cache refill and flush accounting on a fixed arena.
//!
//! Several `ThreadCache`s are driven from one thread against one mutex-guarded central heap,
//! standing in for threads. A shadow model mirrors every cache list (pop order included) and
//! every block the "program" holds; after every step the test checks that each block is
//! accounted for — `live + Σ count(c) == used_blocks` — and that the heap walker finds every
//! invariant intact. Blocks handed out never overlap a live or cached block, and the program's
//! data survives being cached (the cache owns only the first two payload words).
#![allow(clippy::std_instead_of_core)]

mod common;

use common::rng::Rng;

use std::collections::BTreeMap;
use std::ptr::NonNull;

use brkmalloc::block::{UserPtr, block_size_for};
use brkmalloc::central::CentralHeap;
use brkmalloc::os::FixedArena;
use brkmalloc::size_class::{
    MAX_CLASS_SIZE, NCLASSES, class_for_alloc, class_for_free, class_size,
};
use brkmalloc::thread_cache::{
    CACHE_KEY, DEFAULT_MAX_BYTES, HARDENING, State, ThreadCache, max_count,
};
use brkmalloc::transfer::{BOOST_STEP, Backend, LAYER_BYTES_PER_CACHE};

/// Bytes before the user pointer (the block header).
const HEADER: usize = 8;
/// Payload bytes the cache may overwrite while a block is cached (link and key words).
const CACHE_WORDS: usize = 16;

/// Byte `i` of the pattern `seed`.
fn pattern(seed: u64, i: usize) -> u8 {
    let x = seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i >> 8) as u8
}

fn fill(p: NonNull<u8>, from: usize, to: usize, seed: u64) {
    for i in from..to {
        // SAFETY: callers pass ranges inside the block's usable bytes, owned by the program.
        unsafe { p.as_ptr().add(i).write(pattern(seed, i)) };
    }
}

fn verify(p: NonNull<u8>, from: usize, to: usize, seed: u64, what: &str) {
    for i in from..to {
        // SAFETY: as in `fill`.
        let got = unsafe { p.as_ptr().add(i).read() };
        assert_eq!(got, pattern(seed, i), "{what}: block {p:?} changed at offset {i} (of {to})");
    }
}

/// A block the program holds: requested size, pattern seed, and whether the program stored
/// [`CACHE_KEY`] in its second word (a program may store any value there).
#[derive(Clone, Copy, Debug)]
struct Live {
    n: usize,
    seed: u64,
    key: bool,
    /// The cache ("thread") that allocated it.
    owner: usize,
}

/// A cached block in the model; `content` is the pattern the program left in it (bytes from
/// [`CACHE_WORDS`] on must survive the stay in the cache).
#[derive(Clone, Copy, Debug)]
struct Cached {
    p: usize,
    content: Option<(u64, usize)>,
}

/// The central heap, the caches, and the shadow model.
struct World {
    heap: Backend<FixedArena>,
    caches: Vec<ThreadCache>,
    /// `layer[c]`: the middle layer's batches of class `c`, oldest first; each batch in the
    /// order of a cache list's model (a refill makes it the list).
    layer: Vec<Vec<Vec<Cached>>>,
    limits: Vec<usize>,
    /// `model[i][c]`: the list of cache `i`, class `c`, oldest first (a pop takes the last).
    model: Vec<Vec<Vec<Cached>>>,
    /// Blocks the program holds, by user pointer.
    live: BTreeMap<usize, Live>,
    /// Every block held by the program or a cache: user pointer → usable bytes.
    blocks: BTreeMap<usize, usize>,
    next_seed: u64,
    /// How often each path ran (the random test asserts each one was exercised).
    hits: Hits,
    _buf: Vec<u128>,
}

#[derive(Debug, Default)]
struct Hits {
    pops: usize,
    refills: usize,
    layer_refills: usize,
    layer_evictions: usize,
    full_flushes: usize,
    collected_blocks: usize,
    cross_frees: usize,
    central: usize,
    /// Batches the layer returned to the heap for a refill that found no room (TR7).
    layer_returns: usize,
}

impl World {
    fn new(cap: usize, limits: &[usize]) -> Self {
        let mut buf = vec![0u128; cap / 16];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the buffer is zeroed, 16-aligned, owned by the world and outlives the heap
        // (fields drop in declaration order; neither has a destructor that touches the other).
        let arena = unsafe { FixedArena::new(base, cap) };
        let mut w = Self {
            heap: Backend::new(CentralHeap::new(arena)),
            caches: Vec::new(),
            layer: vec![Vec::new(); NCLASSES],
            limits: limits.to_vec(),
            model: Vec::new(),
            live: BTreeMap::new(),
            blocks: BTreeMap::new(),
            next_seed: 1,
            hits: Hits::default(),
            _buf: buf,
        };
        // Activated in place: an active cache records its own address (T6).
        w.caches = limits.iter().map(|_| ThreadCache::new()).collect();
        for (tc, &l) in w.caches.iter_mut().zip(limits) {
            assert_eq!(tc.state(), State::Uninit);
            tc.activate(l);
            assert_eq!(tc.state(), State::Active);
            w.model.push(vec![Vec::new(); NCLASSES]);
        }
        w
    }

    fn cached_total(&self) -> usize {
        let layer: usize = self.layer.iter().flatten().map(Vec::len).sum();
        layer
            + self
                .caches
                .iter()
                .map(|tc| (0..NCLASSES).map(|c| tc.count(c)).sum::<usize>())
                .sum::<usize>()
    }

    /// Blocks in use as the program and the caches see them: the heap's, less the middle
    /// layer's (free memory held in batches).
    fn used(&self) -> usize {
        self.heap.central.lock().stats().used_blocks - self.heap.layer.held().blocks
    }

    /// Blocks `gone` left a cache list of class `c` in one flush: into a batch of the middle
    /// layer if it took one more (`before` batches), else back to the heap.
    fn flushed(&mut self, c: usize, gone: Vec<Cached>, before: usize) {
        if gone.is_empty() {
            return;
        }
        let now = self.heap.layer.batches(c);
        if now == before + 1 {
            self.layer[c].push(gone);
        } else {
            if now != before {
                // The class started draining: it gave up every batch it held.
                assert_eq!(now, 0, "class {c}: the layer's batches went from {before} to {now}");
                self.layer_gave_back(c, self.layer[c].len());
                self.hits.layer_evictions += 1;
            }
            for b in gone {
                self.release(b.p);
            }
        }
        assert_eq!(self.heap.layer.batches(c), self.layer[c].len(), "class {c}: layer batches");
    }

    /// Every block accounted for, the model agrees with the caches, the heap is intact.
    fn check(&self) {
        for (i, tc) in self.caches.iter().enumerate() {
            let mut bytes = 0;
            for c in 0..NCLASSES {
                assert_eq!(tc.count(c), self.model[i][c].len(), "cache {i} class {c}: count");
                bytes += tc.count(c) * class_size(c);
            }
            assert_eq!(tc.bytes(), bytes, "cache {i}: bytes");
            assert!(bytes <= self.limits[i], "cache {i} holds {bytes} B > {}", self.limits[i]);
        }
        let heap = self.heap.central.lock();
        if let Err(e) = self.heap.layer.check(&heap) {
            panic!("middle layer invariant broken: {} at {:#x}", e.what, e.addr);
        }
        let st = heap.stats();
        assert_eq!(
            self.live.len() + self.cached_total(),
            st.used_blocks,
            "live {} + cached {} != used_blocks",
            self.live.len(),
            self.cached_total()
        );
        if let Err(e) = heap.check(true) {
            panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
        }
    }

    /// Every block of the model is really in its cache list (a walk per block: not cheap).
    fn check_membership(&self) {
        for (i, tc) in self.caches.iter().enumerate() {
            for (c, list) in self.model[i].iter().enumerate() {
                for b in list {
                    let p = NonNull::new(b.p as *mut u8).unwrap();
                    assert!(tc.contains(UserPtr::new(p), c), "cache {i} class {c} lost {p:?}");
                    // SAFETY: a cached block: an in-use heap block of ours.
                    // (Without `hardening` no key is written, and the probe always says no.)
                    let key = unsafe { UserPtr::new(p).has_cache_key() };
                    assert_eq!(
                        key, HARDENING,
                        "cached {p:?}: key {key}, hardened build {HARDENING}"
                    );
                }
            }
        }
    }

    /// Verifies the contents of every live block.
    fn verify_live(&self) {
        for (&p, l) in &self.live {
            verify_live_block(p, l, "live block");
        }
    }

    fn usable(&self, p: usize) -> usize {
        let p = NonNull::new(p as *mut u8).unwrap();
        match self.heap.central.lock().usable_size(p) {
            Ok(u) => u,
            Err(e) => panic!("block {p:?} handed out is not a valid in-use block: {e:?}"),
        }
    }

    /// Records a block newly handed out by the heap: it must not overlap any block the program
    /// or a cache holds.
    fn claim(&mut self, p: usize, usable: usize) {
        assert_eq!(p % 16, 0, "{p:#x} misaligned");
        let start = p - HEADER;
        let end = p + usable;
        if let Some((&q, &u)) = self.blocks.range(..=p).next_back() {
            assert!(q + u <= start, "block {p:#x}+{usable} overlaps held block {q:#x}+{u}");
        }
        if let Some((&q, &u)) = self.blocks.range(p..).next() {
            assert!(end <= q - HEADER, "block {p:#x}+{usable} overlaps held block {q:#x}+{u}");
        }
        self.blocks.insert(p, usable);
    }

    fn release(&mut self, p: usize) {
        assert!(self.blocks.remove(&p).is_some(), "released {p:#x}, which nobody held");
    }

    /// Brings cache `i`'s model in line after an operation that may have flushed blocks back:
    /// a flush returns the oldest blocks, so the newest `count(c)` stay.
    /// `before[c]`: the layer's batches of class `c` before the operation (one flush per
    /// class at most).
    fn sync_flushed(&mut self, i: usize, before: &[usize]) {
        for (c, &before) in before.iter().enumerate() {
            let n = self.caches[i].count(c);
            let len = self.model[i][c].len();
            assert!(n <= len, "cache {i} class {c} grew from {len} to {n} in a flush");
            let gone: Vec<Cached> = self.model[i][c].drain(..len - n).collect();
            self.flushed(c, gone, before);
        }
    }

    /// The layer's batches per class, before an operation that may flush.
    fn layer_batches(&self) -> Vec<usize> {
        (0..NCLASSES).map(|c| self.heap.layer.batches(c)).collect()
    }

    fn seed(&mut self) -> u64 {
        self.next_seed += 1;
        self.next_seed
    }

    fn central_alloc(&mut self, n: usize) -> NonNull<u8> {
        self.hits.central += 1;
        let (p, _) = self.heap.central.lock().alloc(n, false).expect("arena exhausted");
        let u = self.usable(p.addr().get());
        self.claim(p.addr().get(), u);
        p
    }

    /// Runs a collection on cache `i` and syncs the model.
    fn collect(&mut self, i: usize) {
        let before = self.caches[i].bytes();
        let batches = self.layer_batches();
        let count = |tc: &ThreadCache| (0..NCLASSES).map(|c| tc.count(c)).sum::<usize>();
        let cached = count(&self.caches[i]);
        self.caches[i].collect(&self.heap).expect("collect found a damaged block");
        assert!(self.caches[i].bytes() <= before);
        self.hits.collected_blocks += cached - count(&self.caches[i]);
        self.sync_flushed(i, &batches);
    }

    /// Pops (or refills) a block of class `c` through cache `i`, as `malloc` does; `None` when
    /// the cache does not serve the class.
    fn cache_alloc(&mut self, i: usize, c: usize) -> Option<NonNull<u8>> {
        if let Some(p) = self.caches[i].pop(c).map(UserPtr::ptr) {
            let b = self.model[i][c].pop().expect("popped from a list the model says is empty");
            assert_eq!(p.addr().get(), b.p, "cache {i} class {c}: pop order (LIFO) broken");
            assert!(!self.live.contains_key(&b.p), "popped {p:?}, which the program holds");
            self.hits.pops += 1;
            if let Some((seed, n)) = b.content {
                verify(p, CACHE_WORDS, n, seed, "content of a cached block");
            }
            if self.caches[i].event_due() {
                self.collect(i);
            }
            return Some(p);
        }
        assert!(self.model[i][c].is_empty(), "pop found nothing in a non-empty list");
        let before = self.layer_batches();
        // The layer serves the refill when its newest batch of the class fits the empty list.
        let room = max_count(c, self.limits[i]) as usize;
        let from_layer = self.layer[c].last().is_some_and(|b| b.len() <= room);
        let grows = self.heap.central.lock().stats().grows;
        let p = self.caches[i].alloc_slow(c, &self.heap)?.ptr();
        self.hits.refills += 1;
        if from_layer {
            assert_eq!(self.heap.layer.batches(c) + 1, before[c], "class {c}: a layer refill");
            // A refill from the middle layer: its newest batch became the list.
            self.hits.layer_refills += 1;
            let mut list = self.layer[c].pop().expect("the model's layer is empty");
            let b = list.pop().expect("an empty batch");
            assert_eq!(p.addr().get(), b.p, "class {c}: a layer refill's first block");
            if let Some((seed, n)) = b.content {
                verify(p, CACHE_WORDS, n, seed, "content of a block from the layer");
            }
            self.model[i][c] = list;
            assert_eq!(self.caches[i].count(c), self.model[i][c].len(), "layer refill count");
            if self.caches[i].event_due() {
                self.collect(i);
            }
            return Some(p);
        }
        // A refill from the central heap: a batch carved from one or more free runs, each run's
        // blocks adjacent and linked in address order; every block of the class's size (the
        // last of a run may absorb a remainder under 32 bytes). The layer may have returned
        // batches first (TR7): the heap grew only if that left it empty.
        self.sync_layer_returns(&before);
        if self.heap.central.lock().stats().grows > grows {
            let held = self.heap.layer.held();
            assert_eq!(
                held.batches, 0,
                "TR7: the heap grew for a refill while the layer held {held:?}"
            );
        }
        let size = class_size(c);
        let k = self.caches[i].count(c);
        assert!(k < max_count(c, self.limits[i]) as usize, "refill overfilled class {c}");
        let mut blocks = vec![p.addr().get()];
        self.caches[i]
            .for_each_cached(c, |u| blocks.push(u.addr()))
            .expect("a refilled list does not decode");
        assert_eq!(blocks.len(), k + 1, "refill: list length and count disagree");
        let mut batch = Vec::with_capacity(k);
        for (j, &q) in blocks.iter().enumerate() {
            let u = self.usable(q);
            assert!(u + HEADER >= size && u + HEADER < size + 32, "refill block {j} size");
            let next_adjacent = blocks.get(j + 1).is_some_and(|&r| r == q + size);
            if u + HEADER > size {
                assert!(!next_adjacent, "a block that absorbed a remainder is not the run's last");
            }
            self.claim(q, u);
            if j > 0 {
                batch.push(Cached { p: q, content: None });
            }
        }
        batch.reverse();
        self.model[i][c] = batch;
        if self.caches[i].event_due() {
            self.collect(i);
        }
        Some(p)
    }

    /// The program allocates `n` bytes through cache `i`.
    fn alloc(&mut self, i: usize, n: usize, key: bool) -> NonNull<u8> {
        let bs = block_size_for(n).unwrap();
        let p = match class_for_alloc(bs) {
            Some(c) => match self.cache_alloc(i, c) {
                Some(p) => {
                    // SAFETY: an in-use block of ours.
                    assert!(
                        !unsafe { UserPtr::new(p).has_cache_key() },
                        "a popped block still has the key"
                    );
                    assert!(
                        !self.caches[i].contains(UserPtr::new(p), c),
                        "a popped block is still listed"
                    );
                    p
                }
                None => {
                    assert_eq!(self.caches[i].count(c), 0);
                    self.central_alloc(n)
                }
            },
            None => self.central_alloc(n),
        };
        let addr = p.addr().get();
        assert!(self.blocks[&addr] >= n, "block {p:?} too small for {n}");
        let seed = self.seed();
        fill(p, 0, n, seed);
        let key = key && n >= CACHE_WORDS;
        if key {
            // SAFETY: the block has at least 16 usable bytes.
            unsafe { p.cast::<usize>().add(1).write(CACHE_KEY) };
        }
        let old = self.live.insert(addr, Live { n, seed, key, owner: i });
        assert!(old.is_none(), "{p:?} handed out twice");
        p
    }

    /// The program frees `p` through cache `i` (any cache: a cross-thread free), as `free`
    /// does: push, flush the older half of a full list, or go to the central heap.
    fn free(&mut self, i: usize, p: usize) {
        let l = self.live.remove(&p).expect("freeing a block the program does not hold");
        verify_live_block(p, &l, "live block at free");
        let bs = self.blocks[&p] + HEADER;
        let np = NonNull::new(p as *mut u8).unwrap();
        let Some(c) = class_for_free(bs) else {
            self.heap.central.lock().free(np).expect("central free");
            self.release(p);
            return;
        };
        assert!(class_size(c) <= bs);
        // The double-free probe: a block the program holds is in no cache, whatever it stores.
        // SAFETY: an in-use block of ours.
        if unsafe { UserPtr::new(np).has_cache_key() } {
            assert!(l.key, "the cache key appeared in a block the program holds");
            for tc in &self.caches {
                assert!(!tc.contains(UserPtr::new(np), c), "a live block is listed in a cache");
            }
        }
        let content = Some((l.seed, l.n));
        // SAFETY: an in-use block of class `c`, given up by the program, in no cache.
        if unsafe { self.caches[i].push(UserPtr::new(np), c) } {
            self.model[i][c].push(Cached { p, content });
        } else {
            let full = self.model[i][c].len();
            let batches = self.heap.layer.batches(c);
            // SAFETY: as above.
            let pushed = unsafe { self.caches[i].free_slow(UserPtr::new(np), c, &self.heap) }
                .expect("flush found a damaged block");
            if pushed {
                self.hits.full_flushes += 1;
                assert_eq!(full, max_count(c, self.limits[i]) as usize, "push refused early");
                let n = self.caches[i].count(c);
                assert!(n >= 1 && n <= full, "after a flush: {n} of {full}");
                // The older blocks went back; the newest stay, then `p` on top.
                let gone: Vec<Cached> = self.model[i][c].drain(..full + 1 - n).collect();
                self.flushed(c, gone, batches);
                self.model[i][c].push(Cached { p, content });
            } else {
                assert!(
                    max_count(c, self.limits[i]) == 0 || self.caches[i].state() != State::Active,
                    "an active cache refused class {c}"
                );
                self.heap.central.lock().free(np).expect("central free");
                self.release(p);
                return;
            }
        }
        assert!(
            self.caches[i].contains(UserPtr::new(np), c),
            "a pushed block is not found by contains"
        );
        // SAFETY: a cached block of ours.
        // (Without `hardening` no key is written, and the probe always says no.)
        let key = unsafe { UserPtr::new(np).has_cache_key() };
        assert_eq!(key, HARDENING, "pushed {np:?}: key {key}, hardened build {HARDENING}");
    }

    fn flush_all(&mut self, i: usize) {
        let state = self.caches[i].state();
        let batches = self.layer_batches();
        self.caches[i].flush_all(&self.heap).expect("flush_all");
        assert_eq!(self.caches[i].bytes(), 0);
        assert_eq!(self.caches[i].state(), state, "flush_all changed the state");
        self.sync_flushed(i, &batches);
    }

    /// Thread exit: cache `i` tears down, and a fresh cache takes its place (a new thread).
    fn tear_down_and_replace(&mut self, i: usize) {
        let batches = self.layer_batches();
        self.caches[i].tear_down(&self.heap).expect("tear_down");
        assert_eq!(self.caches[i].state(), State::TornDown);
        assert_eq!(self.caches[i].bytes(), 0);
        self.sync_flushed(i, &batches);
        self.caches[i] = ThreadCache::new();
        self.caches[i].activate(self.limits[i]);
    }

    /// After a refill from the central heap: the batches the layer returned to make room
    /// (TR7), the oldest of their classes, go back in the model too. `before`: the layer's
    /// batches per class before the refill.
    fn sync_layer_returns(&mut self, before: &[usize]) {
        for (c, &before) in before.iter().enumerate() {
            let now = self.heap.layer.batches(c);
            assert!(now <= before, "class {c}: a refill added batches to the layer");
            self.layer_gave_back(c, before - now);
            self.hits.layer_returns += before - now;
        }
    }

    /// The layer gave its `n` oldest batches of class `c` back to the heap: the model's go
    /// with them.
    fn layer_gave_back(&mut self, c: usize, n: usize) {
        for b in self.layer[c].drain(..n).flatten().collect::<Vec<_>>() {
            self.release(b.p);
        }
    }

    /// The layer gave every batch back to the heap: the model's go with them.
    fn layer_returned(&mut self) {
        for c in 0..NCLASSES {
            self.layer_gave_back(c, self.layer[c].len());
        }
    }

    /// Frees everything the program holds, flushes every cache, and checks the heap is empty.
    fn drain(&mut self) {
        let ps: Vec<usize> = self.live.keys().copied().collect();
        for (k, p) in ps.into_iter().enumerate() {
            self.free(k % self.caches.len(), p);
        }
        self.check();
        for i in 0..self.caches.len() {
            self.flush_all(i);
        }
        self.check();
        let r = self.heap.layer.drain(&mut self.heap.central.lock());
        r.expect("drain found a damaged block");
        self.layer_returned();
        assert!(self.blocks.is_empty());
        let st = self.heap.central.lock().stats();
        assert_eq!(st.used_blocks, 0);
        assert_eq!(st.used_bytes, 0);
        assert_eq!(st.free_blocks, 1, "everything merged back into one free block: {st:?}");
    }
}

fn verify_live_block(p: usize, l: &Live, what: &str) {
    let p = NonNull::new(p as *mut u8).unwrap();
    if l.key {
        // SAFETY: the block has at least 16 usable bytes.
        assert_eq!(unsafe { p.cast::<usize>().add(1).read() }, CACHE_KEY, "{what}: key word");
        verify(p, 0, 8, l.seed, what);
        verify(p, CACHE_WORDS, l.n, l.seed, what);
    } else {
        verify(p, 0, l.n, l.seed, what);
    }
}

/// A request size: mostly small, some mid-sized, a few beyond the cached classes.
fn request_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=69 => rng.below(200),
        70..=89 => 200 + rng.below(900),
        90..=97 => 1100 + rng.below(7000),
        _ => rng.below(MAX_CLASS_SIZE + 8000),
    }
}

const ARENA: usize = 32 << 20;

#[test]
fn refill_carves_adjacent_blocks_from_one_run() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES]);
    for n in [1usize, 24, 40, 100, 500, 1000, 3000, 10_000] {
        let c = class_for_alloc(block_size_for(n).unwrap()).unwrap();
        if max_count(c, DEFAULT_MAX_BYTES) < 4 {
            continue;
        }
        // Three refills in a row: each batch is adjacent (checked in `cache_alloc`), and the
        // batches grow (slow start) up to half the list limit.
        let mut last_batch = 0;
        for round in 0..3 {
            assert_eq!(w.caches[0].count(c), 0);
            let p = w.alloc(0, n, false);
            let batch = w.caches[0].count(c) + 1;
            assert!(batch >= 2, "n={n}: a refill of one block ({round})");
            assert!(batch >= last_batch, "n={n}: batch shrank from {last_batch} to {batch}");
            assert!(batch <= (max_count(c, DEFAULT_MAX_BYTES) as usize / 2).max(1));
            last_batch = batch;
            w.check();
            let mut got = vec![p.addr().get()];
            while w.caches[0].count(c) > 0 {
                got.push(w.alloc(0, n, false).addr().get());
                w.check();
            }
            for pair in got.windows(2) {
                assert_eq!(pair[1] - pair[0], class_size(c), "n={n}: batch not adjacent");
            }
        }
    }
    // A fragmented heap: free runs of assorted sizes between held blocks; every refill still
    // comes from one run (adjacent blocks), whatever its size.
    let mut holes = Vec::new();
    for k in 0..200 {
        let p = w.central_alloc(32 + (k * 37) % 700);
        w.live.insert(p.addr().get(), Live { n: 0, seed: 0, key: false, owner: 0 });
        holes.push(p.addr().get());
    }
    for (k, p) in holes.into_iter().enumerate() {
        if k % 2 == 0 {
            w.free(0, p);
        }
    }
    w.flush_all(0);
    w.check();
    for n in [1usize, 40, 200, 600] {
        for _ in 0..40 {
            w.alloc(0, n, false);
            w.check();
        }
    }
    w.drain();
}

#[test]
fn full_list_flushes_its_older_blocks() {
    // A small cache: class 0 (32 bytes) holds `max_count` blocks.
    let limit = 64 << 10;
    let mut w = World::new(ARENA, &[limit]);
    let c = 0;
    let max = max_count(c, limit) as usize;
    assert!(max >= 4, "the test wants a list of a few blocks, got {max}");
    let ps: Vec<usize> = (0..=max).map(|_| w.central_alloc(16).addr().get()).collect();
    for &p in &ps {
        w.live.insert(p, Live { n: 0, seed: 0, key: false, owner: 0 });
    }
    w.check();
    for (k, &p) in ps[..max].iter().enumerate() {
        w.free(0, p);
        assert_eq!(w.caches[0].count(c), k + 1);
        w.check();
    }
    // The list is full: the next free flushes the older blocks, then pushes. The list never ran
    // dry (a consumer's), so only the newest quarter stays (`ThreadCache::flush_keep`).
    let used = w.used();
    w.free(0, ps[max]);
    let kept = w.caches[0].count(c);
    assert_eq!(kept, max / 4 + 1, "the newest quarter stays, plus the freed block");
    assert_eq!(w.used(), used - (max + 1 - kept));
    w.check();
    // Pop order: the freed block, then the newest pushes, newest first.
    let mut expect = vec![ps[max]];
    expect.extend(ps[max - (kept - 1)..max].iter().rev());
    for &e in &expect {
        let p = w.caches[0].pop(c).unwrap();
        assert_eq!(p.addr(), e, "pop order after a flush");
        w.model[0][c].pop();
        w.live.insert(e, Live { n: 0, seed: 0, key: false, owner: 0 });
        w.check();
    }
    assert!(w.caches[0].pop(c).is_none());
    // A list that ran dry (a refill) keeps the newest half when it is full again.
    let fresh: Vec<usize> = (0..2 * max).map(|_| w.alloc(0, 16, false).addr().get()).collect();
    assert!(w.hits.refills > 0);
    let mut fills = fresh.iter();
    while w.caches[0].count(c) < max {
        w.free(0, *fills.next().unwrap());
    }
    w.free(0, *fills.next().unwrap());
    assert_eq!(w.caches[0].count(c), max / 2 + 1, "the newest half stays, plus the freed block");
    w.check();
    w.drain();
}

#[test]
fn cross_thread_frees_land_in_the_freeing_cache() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES]);
    let c = class_for_alloc(block_size_for(100).unwrap()).unwrap();
    let max = max_count(c, DEFAULT_MAX_BYTES) as usize;
    let ps: Vec<usize> = (0..max).map(|_| w.alloc(0, 100, false).addr().get()).collect();
    w.check();
    let a_count = w.caches[0].count(c);
    for (k, &p) in ps.iter().enumerate() {
        w.free(1, p);
        assert_eq!(w.caches[1].count(c), k + 1, "B caches what it frees");
        assert_eq!(w.caches[0].count(c), a_count, "A is untouched by B's frees");
        w.check();
    }
    // B reuses A's blocks, newest first, with the program's data intact past the cache words.
    for &p in ps.iter().rev() {
        let q = w.alloc(1, 100, false);
        assert_eq!(q.addr().get(), p);
        w.check();
    }
    // And back again: A frees B's allocations, with a full list flushing to the heap.
    let live: Vec<usize> = w.live.keys().copied().collect();
    for p in live {
        w.free(0, p);
        w.check();
    }
    w.check_membership();
    w.drain();
}

#[test]
fn collect_returns_idle_blocks_and_keeps_busy_ones() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES]);
    let idle = class_for_alloc(block_size_for(40).unwrap()).unwrap();
    let busy = class_for_alloc(block_size_for(300).unwrap()).unwrap();
    let fill_class = |w: &mut World, n: usize, c: usize| {
        let k = max_count(c, DEFAULT_MAX_BYTES) as usize;
        let ps: Vec<usize> = (0..k).map(|_| w.alloc(0, n, false).addr().get()).collect();
        for p in ps {
            w.free(0, p);
        }
        w.check();
    };
    fill_class(&mut w, 40, idle);
    fill_class(&mut w, 300, busy);
    let mut last = w.caches[0].count(idle);
    assert!(last >= 8);
    let mut rounds_without_progress = 0;
    for round in 0..20 {
        // The busy class runs dry (one more allocation than it holds: a refill) between
        // visits, so a collection leaves it alone.
        let most = max_count(busy, DEFAULT_MAX_BYTES) as usize;
        let ps: Vec<usize> = (0..=most).map(|_| w.alloc(0, 300, false).addr().get()).collect();
        for p in ps {
            w.free(0, p);
        }
        let busy_before = w.caches[0].count(busy);
        // One visit to every class.
        for _ in 0..NCLASSES {
            w.collect(0);
            w.check();
        }
        assert_eq!(w.caches[0].count(busy), busy_before, "round {round}: a busy list lost blocks");
        let now = w.caches[0].count(idle);
        assert!(now <= last, "round {round}: idle list grew");
        if now == last {
            rounds_without_progress += 1;
            assert!(now == 0 || rounds_without_progress < 3, "round {round}: idle list stuck");
        } else {
            rounds_without_progress = 0;
        }
        last = now;
    }
    assert_eq!(last, 0, "an idle list is eventually returned entirely");
    w.drain();
}

#[test]
fn tear_down_returns_everything_and_refuses_later_pushes() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES]);
    // Uninit: every operation takes the slow path, and the slow path does nothing.
    let mut fresh = ThreadCache::new();
    assert!(fresh.alloc_slow(0, &w.heap).is_none());
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let n = request_size(&mut rng) % 3000;
        w.alloc(0, n, false);
        if rng.chance(500) {
            let k = rng.below(w.live.len());
            let p = *w.live.keys().nth(k).unwrap();
            w.free(0, p);
        }
    }
    w.check();
    let cached = w.cached_total();
    assert!(cached > 50, "the cache should hold blocks by now ({cached})");
    let used = w.used();
    let batches = w.layer_batches();
    w.caches[0].tear_down(&w.heap).expect("tear_down");
    w.sync_flushed(0, &batches);
    assert_eq!(w.caches[0].state(), State::TornDown);
    assert_eq!(w.caches[0].bytes(), 0);
    assert_eq!(w.used(), used - cached);
    w.check();
    // Later operations fall through to the central heap.
    let p = *w.live.keys().next().unwrap();
    let np = NonNull::new(p as *mut u8).unwrap();
    let c = class_for_free(w.blocks[&p] + HEADER).unwrap();
    for tc in [&mut w.caches[0], &mut fresh] {
        // SAFETY: a live in-use block of class `c`; both calls refuse it.
        assert!(!unsafe { tc.push(UserPtr::new(np), c) });
        // SAFETY: as above.
        assert!(!unsafe { tc.free_slow(UserPtr::new(np), c, &w.heap) }.unwrap());
        assert!(tc.alloc_slow(c, &w.heap).is_none());
        assert!(!tc.contains(UserPtr::new(np), c));
        assert_eq!(tc.bytes(), 0);
    }
    assert_eq!(fresh.state(), State::Uninit, "the slow paths do not activate a cache");
    assert_eq!(w.caches[0].state(), State::TornDown);
    w.check();
    // The program's blocks are intact; `drain` frees them through the torn-down cache (which
    // sends each to the central heap).
    w.verify_live();
    w.drain();
}

#[test]
fn flush_all_returns_everything_and_stays_active() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES, 256 << 10]);
    let mut rng = Rng::new(11);
    for step in 0..3000 {
        let i = rng.below(2);
        if w.live.len() < 300 || rng.chance(550) {
            let n = request_size(&mut rng);
            w.alloc(i, n, false);
        } else {
            let p = *w.live.keys().nth(rng.below(w.live.len())).unwrap();
            w.free(rng.below(2), p);
        }
        if step % 500 == 499 {
            let before = w.used();
            let cached = (0..NCLASSES).map(|c| w.caches[i].count(c)).sum::<usize>();
            w.flush_all(i);
            assert_eq!(w.used(), before - cached);
            // Still active: the next allocation refills.
            let n = 64;
            let refills = w.hits.refills;
            w.alloc(i, n, false);
            assert_eq!(w.hits.refills, refills + 1, "an active cache refills after flush_all");
        }
        w.check();
    }
    w.verify_live();
    w.drain();
}

/// Needs the `hardening` feature: without it no cache key is written (`has_cache_key` is
/// always false and a double free of a cached block is not detected).
#[cfg(feature = "hardening")]
#[test]
fn double_free_probe_finds_exactly_the_cached_blocks() {
    let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES]);
    let c = class_for_alloc(block_size_for(50).unwrap()).unwrap();
    let a = w.alloc(0, 50, false);
    let b = w.alloc(0, 50, true);
    // The program stored the key in `b`: the probe must look it up and not find it.
    // SAFETY: live in-use blocks of ours.
    unsafe {
        assert!(!UserPtr::new(a).has_cache_key());
        assert!(UserPtr::new(b).has_cache_key());
    }
    assert!(!w.caches[0].contains(UserPtr::new(a), c) && !w.caches[0].contains(UserPtr::new(b), c));
    w.free(0, a.addr().get());
    assert!(
        w.caches[0].contains(UserPtr::new(a), c),
        "a freed block is found: a second free is caught"
    );
    assert!(!w.caches[1].contains(UserPtr::new(a), c), "another cache does not hold it");
    assert!(!w.caches[0].contains(UserPtr::new(a), c + 1), "other classes do not hold it");
    w.free(1, b.addr().get());
    assert!(w.caches[1].contains(UserPtr::new(b), c) && !w.caches[0].contains(UserPtr::new(b), c));
    w.check();
    w.check_membership();
    // Popped blocks lose the key and leave the list.
    let a2 = w.alloc(0, 50, false);
    assert_eq!(a2, a);
    // SAFETY: a live in-use block of ours.
    assert!(!unsafe { UserPtr::new(a2).has_cache_key() });
    assert!(!w.caches[0].contains(UserPtr::new(a2), c));
    w.check();
    w.drain();
}

/// Random churn through three caches of different sizes, with cross-"thread" frees,
/// collections, flushes and thread exits; every step fully checked.
#[test]
fn random_churn_keeps_every_block_accounted_for() {
    let mut layer_returns = 0;
    for seed in 1..=6u64 {
        let mut rng = Rng::new(seed);
        let mut w = World::new(ARENA, &[DEFAULT_MAX_BYTES, 64 << 10, 256 << 10]);
        let ncaches = w.caches.len();
        let (lo, hi) = (50 + rng.below(100), 300 + rng.below(300));
        for step in 0..6000 {
            let i = rng.below(ncaches);
            let grow = w.live.len() < lo || (w.live.len() < hi && rng.chance(520));
            if grow {
                let n = request_size(&mut rng);
                let key = rng.chance(60);
                w.alloc(i, n, key);
            } else {
                let (&p, l) = w.live.iter().nth(rng.below(w.live.len())).unwrap();
                // 3 in 4 frees go to the allocating cache, the others to another "thread".
                let owner = l.owner;
                let j = if rng.chance(750) {
                    owner
                } else {
                    (owner + 1 + rng.below(ncaches - 1)) % ncaches
                };
                w.hits.cross_frees += usize::from(j != owner);
                w.free(j, p);
            }
            if rng.chance(20) {
                // A burst of collections: half a round-robin pass over the classes.
                let k = rng.below(ncaches);
                for _ in 0..NCLASSES / 2 {
                    w.collect(k);
                }
            }
            if rng.chance(3) {
                w.flush_all(rng.below(ncaches));
            }
            if rng.chance(1) {
                w.tear_down_and_replace(rng.below(ncaches));
            }
            w.check();
            if step % 500 == 0 {
                w.check_membership();
                w.verify_live();
            }
        }
        w.check_membership();
        w.verify_live();
        w.drain();
        let h = &w.hits;
        eprintln!("seed {seed}: {h:?}");
        assert!(
            h.pops > 1000
                && h.refills > 100
                && h.layer_refills > 20
                && h.full_flushes > 10
                && h.collected_blocks > 100
                && h.cross_frees > 200
                && h.central > 100,
            "seed {seed}: a path was not exercised: {h:?}"
        );
        layer_returns += h.layer_returns;
    }
    assert!(layer_returns > 0, "no refill took its room from the layer (TR7)");
}

/// TR7: a refill that finds no room in the heap takes it from the layer, largest class first,
/// before the heap may grow. Here the heap cannot grow at all: without the rule the refills
/// below would fail while the layer holds free blocks.
#[test]
fn the_layer_gives_way_before_a_refill_grows_the_heap() {
    let mut w = World::new(4 << 20, &[DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES]);
    // Two caches, counted in as the process counts them: a layer budget of 64 KiB.
    w.heap.layer.cache_joined();
    w.heap.layer.cache_joined();
    // Cache 0 allocates blocks of two classes, cache 1 frees them: its flushes fill the layer
    // (about 20 KiB of each class).
    let (small, large) = (200, 1000);
    let cs = class_for_alloc(block_size_for(small).unwrap()).unwrap();
    let cl = class_for_alloc(block_size_for(large).unwrap()).unwrap();
    let mut ps: Vec<usize> = (0..100).map(|_| w.alloc(0, small, false).addr().get()).collect();
    ps.extend((0..30).map(|_| w.alloc(0, large, false).addr().get()));
    for p in ps {
        w.free(1, p);
    }
    w.flush_all(1);
    w.check();
    let (bs, bl) = (w.heap.layer.batches(cs), w.heap.layer.batches(cl));
    assert!(bs >= 2 && bl >= 2, "the layer holds too little to tell: {bs} and {bl} batches");
    // From now on the source refuses to grow; a third class, through cache 0, uses up the
    // heap's free runs, then takes its room from the layer.
    w.heap.central.lock().source_mut().fail_after(0);
    let grows = w.heap.central.lock().stats().grows;
    let mut held = Vec::new();
    while w.heap.layer.batches(cl) == bl {
        held.push(w.alloc(0, 40, false).addr().get());
        if held.len() % 256 == 0 {
            w.check();
        }
        assert!(held.len() < 1 << 17, "the heap never ran out of room");
    }
    w.check();
    assert_eq!(w.heap.layer.batches(cl), bl - 1, "one batch of the larger class went back");
    assert_eq!(w.heap.layer.batches(cs), bs, "the larger class goes first");
    assert!(w.hits.layer_returns >= 1);
    // Until the layer is empty, every refill finds room.
    while w.heap.layer.held().batches > 0 {
        held.push(w.alloc(0, 40, false).addr().get());
        if held.len() % 256 == 0 {
            w.check();
        }
    }
    w.check();
    assert_eq!(w.heap.central.lock().stats().grows, grows);
    w.heap.central.lock().source_mut().fail_after(usize::MAX);
    for p in held {
        w.free(0, p);
    }
    w.drain();
    w.heap.layer.cache_left();
    w.heap.layer.cache_left();
}

#[test]
fn layer_budget_is_shared_and_raised_by_demand() {
    // Two caches (a consumer, 1, and a producer, 0), counted in as the process counts them.
    let limit = 256 << 10;
    let mut w = World::new(ARENA, &[limit, limit]);
    w.heap.layer.cache_joined();
    w.heap.layer.cache_joined();
    let base = w.heap.layer.budget();
    assert_eq!(base, 2 * LAYER_BYTES_PER_CACHE);
    let n = 480;
    let c = class_for_alloc(block_size_for(n).unwrap()).unwrap();
    // The consumer frees far more than the budget and its own list hold: full lists flush,
    // and the layer refuses what would take it over the budget (those go to the central heap).
    let count = (4 * base + limit) / class_size(c);
    let ps: Vec<usize> = (0..count).map(|_| w.central_alloc(n).addr().get()).collect();
    for &p in &ps {
        w.live.insert(p, Live { n: 0, seed: 0, key: false, owner: 1 });
    }
    for &p in &ps {
        w.free(1, p);
        let held = w.heap.layer.held().bytes;
        assert!(held <= base, "the layer holds {held} B over its budget {base} B");
    }
    w.check();
    assert!(w.heap.layer.held().bytes > 0, "the layer took nothing");
    assert_eq!(w.heap.layer.budget(), base, "no demand yet, no raise");
    // The consumer itself allocates until its refills have emptied the layer and one more
    // misses: its own flushes coming back are no demand between threads.
    let drain_layer = |w: &mut World, i: usize| {
        while w.heap.layer.held().blocks > 0 || w.caches[i].count(c) > 0 {
            let p = w.alloc(i, n, false).addr().get();
            assert_eq!(class_for_free(w.blocks[&p] + HEADER), Some(c));
        }
        w.alloc(i, n, false);
    };
    drain_layer(&mut w, 1);
    assert_eq!(w.heap.layer.budget(), base, "a cache's miss after its own refusal raises nothing");
    // The producer's refills miss on the class that refused the consumer's batches: demand
    // between two threads raises the budget by one step.
    drain_layer(&mut w, 0);
    assert_eq!(w.heap.layer.budget(), base + BOOST_STEP, "a miss after a refusal raises it");
    w.check();
    // An idle pass (here the drain) halves what demand added.
    w.drain();
    assert_eq!(w.heap.layer.budget(), base + BOOST_STEP / 2);
}

/// The idle pass returns what stayed in the layer for a whole period (TR2), whichever classes
/// hold it (it skips only the classes that hold nothing: `Transfer::occupied`).
#[test]
fn idle_passes_return_the_batches_that_stayed() {
    let mut w = World::new(4 << 20, &[DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES]);
    let mut ps = Vec::new();
    for n in [24, 100, 1000] {
        ps.extend((0..300).map(|_| w.alloc(0, n, false).addr().get()));
    }
    for p in ps {
        w.free(1, p);
    }
    w.check();
    let held = w.layer_batches();
    let classes = held.iter().filter(|&&n| n > 0).count();
    assert!(classes >= 2, "the frees left batches in too few classes: {held:?}");
    assert_eq!(w.heap.purge_idle(true).expect("first pass"), 0, "nothing stayed a period yet");
    assert_eq!(w.layer_batches(), held);
    let returned = w.heap.purge_idle(true).expect("second pass");
    assert_eq!(returned, held.iter().sum::<usize>());
    assert!(w.layer_batches().iter().all(|&n| n == 0));
    w.layer_returned();
    w.check();
    w.drain();
}
