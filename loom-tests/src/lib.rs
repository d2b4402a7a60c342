//! Loom models of brkmalloc's locks and handoffs (run with `RUSTFLAGS="--cfg loom"`; the whole
//! job is `ci/loom.sh`).
//!
//! The models drive brkmalloc's own code: under `--cfg loom`, `brkmalloc::sync` is built on
//! loom's atomics, cells, mutex and condvar, so the central heap's `Mutex`, the thread caches'
//! refill and flush, and the one-time-initialisation types run unchanged under loom's scheduler.
//! malloc, free and realloc go through the front end itself (`brkmalloc::heap::Front` over an
//! `Explicit` environment: the model's heap and the calling thread's cache), so a routing bug
//! in the front end fails the models (twin `routing`). Memory comes from a [`FixedArena`] of a
//! few pages per model iteration. What a model cannot run (the process-wide statics of
//! `process.rs`, TLS, `pthread_*`, syscalls) it leaves out: each model owns its caches and
//! passes them explicitly.
//!
//! This file is the harness: [`check`] runs one model under a bounded exploration and reports how
//! many interleavings it explored; [`Heap`] is a heap over its own arena; [`Ledger`] records
//! every live block so that overlapping blocks are caught at once; `fill`/`verify` give every
//! block contents that must survive until it is freed.
//!
//! # Bounds
//!
//! `LOOM_MAX_PREEMPTIONS` defaults to [`DEFAULT_PREEMPTIONS`] when unset (an unbounded model of
//! this size does not finish). Models keep to 2–3 threads and 2–5 heap operations per thread.
//!
//! # Twins
//!
//! With `BRKMALLOC_SABOTAGE=<defect>` in the environment, [`check`] arms that defect of
//! `brkmalloc::sync::sabotage` before the model runs, so every model doubles as its sabotage twin.
//! That needs the twins' build (`--cfg brkmalloc_sabotage`); the plain model build refuses.
#![cfg(loom)]
#![deny(missing_docs)]
#![allow(clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};

use brkmalloc::block::HEADER;
use brkmalloc::central::CentralHeap;
use brkmalloc::diag::Misuse;
use brkmalloc::heap::{Explicit, Front};
use brkmalloc::os::{FixedArena, PAGE};
use brkmalloc::thread_cache::{ThreadCache, max_count};
use brkmalloc::transfer::Backend;
use loom::sync::Arc;
use loom::thread::{self, JoinHandle};

/// Where in its page every model's arena starts (see [`Heap::new`]).
pub const ARENA_PAGE_OFFSET: usize = 256;

/// Preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set.
pub const DEFAULT_PREEMPTIONS: usize = 2;

/// Runs `model` under loom: every interleaving of its threads up to the preemption bound.
/// Prints `loom: <name>: <n> interleavings (preemption bound <b>)` on stderr, which
/// `ci/loom.sh` collects.
///
/// # Panics
/// When the model fails in some interleaving (loom re-raises the model's panic), or when
/// `BRKMALLOC_SABOTAGE` names a defect and this build has none.
pub fn check<F>(name: &str, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    arm_sabotage_from_env();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let bound = builder.preemption_bound;
    // A process-wide count is fine: each test binary runs its models one after the other
    // (ci/loom.sh passes --test-threads=1), and loom runs one iteration at a time.
    static ITERATIONS: StdAtomicUsize = StdAtomicUsize::new(0);
    ITERATIONS.store(0, StdOrdering::Relaxed);
    EVENTS.lock().unwrap().clear();
    builder.check(move || {
        ITERATIONS.fetch_add(1, StdOrdering::Relaxed);
        model();
    });
    let events: Vec<String> =
        EVENTS.lock().unwrap().iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "loom: {name}: {} interleavings (preemption bound {}){}{}",
        ITERATIONS.load(StdOrdering::Relaxed),
        bound.map_or_else(|| "none".to_string(), |b| b.to_string()),
        if events.is_empty() { "" } else { "; paths taken: " },
        events.join(", ")
    );
}

/// Paths the models took, summed over all interleavings of the current [`check`].
static EVENTS: std::sync::Mutex<BTreeMap<&'static str, usize>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Counts one occurrence of `what` (e.g. "realloc moved"); [`check`] prints the totals, so the
/// report shows that each interesting path was explored.
pub fn event(what: &'static str) {
    *EVENTS.lock().unwrap().entry(what).or_default() += 1;
}

fn arm_sabotage_from_env() {
    let Some(want) = std::env::var_os("BRKMALLOC_SABOTAGE") else { return };
    let want = want.to_string_lossy().into_owned();
    #[cfg(brkmalloc_sabotage)]
    {
        use brkmalloc::sync::sabotage::{Defect, arm};
        let d = match want.as_str() {
            "lock" => Defect::Lock,
            "lock-ordering" => Defect::LockOrdering,
            "wake" => Defect::Wake,
            "once-ordering" => Defect::OnceOrdering,
            "claim" => Defect::Claim,
            "counter" => Defect::Counter,
            "routing" => Defect::Routing,
            "transfer" => Defect::Transfer,
            other => panic!("BRKMALLOC_SABOTAGE={other}: unknown defect"),
        };
        arm(d);
        eprintln!("loom: sabotage armed: {d:?}");
    }
    #[cfg(not(brkmalloc_sabotage))]
    panic!(
        "BRKMALLOC_SABOTAGE={want}, but this build has no defects (add --cfg brkmalloc_sabotage)"
    );
}

/// Runs `model` under [`check`], each iteration on a fresh [`Heap`] of `pages` pages and an
/// empty [`Ledger`], each in a loom `Arc` that the model's threads share. The two are created
/// (heap first) before the model runs and dropped after it returns (ledger first), as a model's
/// own first two locals would be; the model ends with [`finish`].
pub fn check_heap<F>(name: &str, pages: usize, model: F)
where
    F: Fn(&Arc<Heap>, &Arc<Ledger>) + Sync + Send + 'static,
{
    check(name, move || {
        let heap = Arc::new(Heap::new(pages));
        let ledger = Arc::new(Ledger::default());
        model(&heap, &ledger);
    });
}

/// Declares one `#[test]` per model, each running its body under [`check_heap`] on a heap of
/// `pages` pages, named `<test binary>::<model>` in the report:
///
/// ```ignore
/// heap_models! {
///     pages: PAGES;
///     /// What the model checks.
///     fn model_name(heap, ledger) {
///         // ... spawn_with(heap, ledger, ...), then finish(...)
///     }
/// }
/// ```
///
/// `heap` and `ledger` name the model's `&Arc<Heap>` and `&Arc<Ledger>`.
#[macro_export]
macro_rules! heap_models {
    (
        pages: $pages:expr;
        $($(#[$attr:meta])* fn $name:ident($heap:ident, $ledger:ident) $body:block)*
    ) => {
        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                $crate::check_heap(
                    concat!(module_path!(), "::", stringify!($name)),
                    $pages,
                    |$heap, $ledger| $body,
                );
            }
        )*
    };
}

/// Spawns a model thread that runs `f` on its own clones of the shared `heap` and `ledger`
/// (cloned here, in that order, before the spawn; dropped when the thread ends).
pub fn spawn_with<F>(heap: &Arc<Heap>, ledger: &Arc<Ledger>, f: F) -> JoinHandle<()>
where
    F: FnOnce(&Heap, &Ledger) + 'static,
{
    let (heap, ledger) = (heap.clone(), ledger.clone());
    thread::spawn(move || f(&heap, &ledger))
}

/// A model's end: joins `threads` in order, then checks that no block is live and that the
/// heap is all free ([`Heap::assert_all_free`] with `min_locks`).
///
/// # Panics
/// When a thread panicked or a check fails.
pub fn finish(
    threads: impl IntoIterator<Item = JoinHandle<()>>,
    heap: &Heap,
    ledger: &Ledger,
    min_locks: usize,
) {
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ledger.live(), 0);
    heap.assert_all_free(min_locks);
}

/// A central heap over its own zeroed arena, with the middle layer in front of it, as the
/// models share them (in a loom `Arc`).
pub struct Heap {
    /// The middle layer (`TRANSFER` locks) and the heap behind brkmalloc's own mutex (the
    /// `CENTRAL` lock).
    pub heap: Backend<FixedArena>,
    /// The arena's memory; declared after `heap`, so it is dropped after it.
    _buf: Box<[u128]>,
}

impl Heap {
    /// A heap over an arena of `pages` pages, with the top pad off so that each growth takes
    /// one page and small models stay small.
    ///
    /// The arena starts [`ARENA_PAGE_OFFSET`] bytes into a page, wherever the buffer lands, so
    /// the models are deterministic: a block whose payload lies less than 32 bytes into a page
    /// takes the front end's central path instead of its cache (`UserPtr::header_on_same_page`),
    /// and with an arbitrary buffer address the setup of a model could differ from run to run.
    pub fn new(pages: usize) -> Self {
        let cap = pages * PAGE;
        let mut buf = vec![0u128; (cap + PAGE) / 16].into_boxed_slice();
        let start = buf.as_mut_ptr().cast::<u8>();
        let skip = (ARENA_PAGE_OFFSET + PAGE - start.addr() % PAGE) % PAGE;
        // SAFETY: `skip < PAGE`, and the buffer holds `cap + PAGE` bytes.
        let base = NonNull::new(unsafe { start.add(skip) }).unwrap();
        // SAFETY: the `cap` bytes from `base` are zeroed, 16-aligned (both `start` and `skip`
        // are), owned by `Heap` and outlive the heap (field order).
        let arena = unsafe { FixedArena::new(base, cap) };
        let mut heap = CentralHeap::new(arena);
        heap.top_pad = 0;
        Self { heap: Backend::new(heap), _buf: buf }
    }

    /// The end-of-model check: the heap and middle-layer invariants hold (deep walk); after
    /// the layer is drained (`malloc_trim`), nothing is in use and every byte merged back into
    /// one free block; the central lock's acquisition count includes the model's at least
    /// `min_locks` acquisitions and this check's own.
    pub fn assert_all_free(&self, min_locks: usize) {
        let mut h = self.heap.central.lock();
        if let Err(e) = h.check(true) {
            panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
        }
        self.check_layer(&h);
        if self.heap.layer.held().blocks > 0 {
            event("blocks left in the middle layer");
        }
        self.heap.layer.drain(&mut h).expect("the middle layer holds a damaged block");
        let st = h.stats();
        assert_eq!(st.used_blocks, 0, "blocks still in use: {st:?}");
        assert_eq!(st.free_blocks, 1, "free space did not merge into one block: {st:?}");
        assert_eq!(h.segment_count(), 1, "{st:?}");
        drop(h);
        if self.heap.central.raw().contended_count() > 0 {
            event("lock contended");
        }
        // Counter::add_owned under the lock: every acquisition counted, none lost.
        assert!(
            self.heap.central.raw().acquisitions() > min_locks,
            "lock acquisitions were not counted"
        );
    }

    /// Checks the middle layer against the heap `h` (locked by the caller: CENTRAL → TRANSFER).
    pub fn check_layer(&self, h: &CentralHeap<FixedArena>) {
        if let Err(e) = self.heap.layer.check(h) {
            panic!("middle layer invariant broken: {} at {:#x}", e.what, e.addr);
        }
    }

    /// The front end for a thread with cache `tc` (or none: every request goes to the
    /// central heap, as for a thread whose cache is torn down). A misuse report fails the
    /// model: the models never misuse the heap.
    pub fn front(&self, tc: Option<&mut ThreadCache>) -> Front<Explicit<'_, FixedArena>> {
        let mut env = Explicit::new(&self.heap, tc);
        env.on_misuse = misuse;
        Front(env)
    }

    /// `malloc(n)` on a thread without a cache.
    pub fn malloc(&self, n: usize) -> NonNull<u8> {
        self.front(None).alloc(n).expect("arena exhausted")
    }

    /// `free(p)` on a thread without a cache.
    pub fn free(&self, p: NonNull<u8>) {
        // SAFETY: the models free only live blocks they own.
        unsafe { self.front(None).dealloc(p) };
    }

    /// [`Self::malloc`], recorded in `ledger` and filled.
    pub fn malloc_block(&self, ledger: &Ledger, n: usize, seed: u8) -> Block {
        ledger.take(self.malloc(n), n, seed)
    }

    /// [`Self::free`] of a recorded block, after checking its contents.
    pub fn free_block(&self, ledger: &Ledger, b: Block) {
        ledger.give_back(&b);
        self.free(b.ptr());
    }

    /// `realloc` of a recorded block on a thread without a cache: the front end resizes it in
    /// place (one acquisition of the lock) or moves it. The ledger forgets the old extent
    /// before the call (a shrink in place frees the tail to other threads) and records the
    /// result after it.
    pub fn realloc_block(&self, ledger: &Ledger, b: Block, n: usize) -> Block {
        ledger.give_back(&b);
        // SAFETY: a live block of this heap; on success the old pointer is forgotten.
        let q = unsafe { self.front(None).realloc(b.ptr(), n) }.expect("arena exhausted");
        event(if q == b.ptr() { "realloc in place" } else { "realloc moved" });
        let kept = Block { p: q.addr().get(), n: b.n.min(n), seed: b.seed };
        verify(&kept);
        ledger.take(q, n, b.seed)
    }
}

impl Heap {
    /// Thread exit: checks the cache against the heap (T1, T2, T4, T5: a block in the wrong
    /// list, a count that disagrees, fails here), then tears it down (`cache_destructor`).
    pub fn exit(&self, tc: &mut ThreadCache) {
        if let Err(e) = tc.check(&self.heap.central.lock()) {
            panic!("cache invariant broken: {} at {:#x}", e.what, e.addr);
        }
        tc.tear_down(&self.heap).unwrap();
    }
}

/// The models' misuse hook: a correct program must never get a report.
fn misuse(func: &str, what: Misuse, p: NonNull<u8>) {
    panic!("{func}(): misuse reported for a correct model: {what:?} at {p:p}");
}

/// The smallest byte limit for which `max_count` (the allocator's own sizing rule) gives class 0
/// (32-byte blocks) a list of `max` blocks.
pub fn class0_limit(max: u32) -> usize {
    (16..1 << 20)
        .step_by(16)
        .find(|&b| max_count(0, b) == max)
        .unwrap_or_else(|| panic!("no byte limit gives class 0 a list of {max}"))
}

/// An active cache whose class-0 list holds at most `max` blocks ([`class0_limit`]). Its refill
/// batch is `min(4, max / 2)`; a full list flushes down to `max / 2`.
pub fn active_cache(max: u32) -> ThreadCache {
    let mut tc = ThreadCache::new();
    tc.activate(class0_limit(max));
    tc
}

/// `malloc(n)` on the thread whose cache is `tc`: the front end (pop, refill, or the central
/// heap).
pub fn cache_malloc(tc: &mut ThreadCache, heap: &Heap, n: usize) -> NonNull<u8> {
    heap.front(Some(tc)).alloc(n).expect("arena exhausted")
}

/// `free(p)` on the thread whose cache is `tc`: the front end (the header check, the class,
/// the double-free key, push; a full list flushes under the lock, an inactive cache frees to
/// the central heap).
///
/// # Safety
/// `p` is a live block of `heap` that the caller gives up.
pub unsafe fn cache_free(tc: &mut ThreadCache, heap: &Heap, p: NonNull<u8>) {
    // SAFETY: forwarded contract.
    unsafe { heap.front(Some(tc)).dealloc(p) };
}

/// [`cache_malloc`] of `n` bytes, recorded in `ledger` and filled with `seed`'s pattern.
pub fn cache_malloc_block(
    tc: &mut ThreadCache,
    heap: &Heap,
    ledger: &Ledger,
    n: usize,
    seed: u8,
) -> Block {
    ledger.take(cache_malloc(tc, heap, n), n, seed)
}

/// [`cache_free`] of a recorded block, after checking its contents.
pub fn cache_free_block(tc: &mut ThreadCache, heap: &Heap, ledger: &Ledger, b: Block) {
    ledger.give_back(&b);
    // SAFETY: a recorded block is live in `heap`; the ledger forgot it just above.
    unsafe { cache_free(tc, heap, b.ptr()) };
}

/// A live block as the models track it: address, length the program may use, pattern seed.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Payload address.
    pub p: usize,
    /// Bytes written and checked.
    pub n: usize,
    /// Pattern seed.
    pub seed: u8,
}

impl Block {
    /// The payload pointer.
    pub fn ptr(&self) -> NonNull<u8> {
        NonNull::new(self.p as *mut u8).unwrap()
    }
}

/// Every block that is live in this iteration, across threads. It is a `std` mutex, which
/// loom does not see: it adds no happens-before edge to the model, and no loom operation
/// happens while it is held, so it cannot block a loom thread.
#[derive(Default)]
pub struct Ledger(std::sync::Mutex<Vec<(usize, usize)>>);

impl Ledger {
    /// Records a block handed out by the allocator: it must not overlap any live block, header
    /// included. Fills it with its pattern.
    pub fn take(&self, p: NonNull<u8>, n: usize, seed: u8) -> Block {
        let lo = p.addr().get() - HEADER;
        let hi = p.addr().get() + n.max(1);
        assert_eq!(p.addr().get() % 16, 0, "misaligned block");
        {
            let mut live = self.0.lock().unwrap();
            for &(l, h) in live.iter() {
                assert!(
                    hi <= l || h <= lo,
                    "block [{lo:#x}, {hi:#x}) overlaps live [{l:#x}, {h:#x})"
                );
            }
            live.push((lo, hi));
        }
        let b = Block { p: p.addr().get(), n, seed };
        fill(&b);
        b
    }

    /// Checks a block's contents and forgets it (the caller frees it next).
    pub fn give_back(&self, b: &Block) {
        verify(b);
        let lo = b.p - HEADER;
        let mut live = self.0.lock().unwrap();
        let i = live.iter().position(|&(l, _)| l == lo).expect("block not live");
        live.swap_remove(i);
    }

    /// Changes the recorded length of a live block (a realloc in place), checking the new
    /// range against every other live block.
    pub fn resize(&self, b: &Block, n: usize) {
        let lo = b.p - HEADER;
        let hi = b.p + n.max(1);
        let mut live = self.0.lock().unwrap();
        let i = live.iter().position(|&(l, _)| l == lo).expect("block not live");
        live.swap_remove(i);
        for &(l, h) in live.iter() {
            assert!(hi <= l || h <= lo, "block [{lo:#x}, {hi:#x}) overlaps live [{l:#x}, {h:#x})");
        }
        live.push((lo, hi));
    }

    /// Number of live blocks.
    pub fn live(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn byte(seed: u8, i: usize) -> u8 {
    seed.wrapping_mul(31).wrapping_add(i as u8)
}

/// Writes the block's pattern.
pub fn fill(b: &Block) {
    for i in 0..b.n {
        // SAFETY: the block has `n` usable bytes and belongs to the caller.
        unsafe { (b.p as *mut u8).add(i).write(byte(b.seed, i)) };
    }
}

/// Checks the block's pattern.
pub fn verify(b: &Block) {
    for i in 0..b.n {
        // SAFETY: as in `fill`.
        let got = unsafe { (b.p as *const u8).add(i).read() };
        assert_eq!(got, byte(b.seed, i), "block {:#x}: byte {i} changed", b.p);
    }
}
