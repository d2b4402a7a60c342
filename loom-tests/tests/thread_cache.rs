//! Thread caches in front of one central heap: batched refill, flush of a full list, blocks
//! handed between threads and freed (and reused) there, and a thread's exit flush while another
//! thread allocates. malloc and free go through the front end (`loom_tests::{cache_malloc,
//! cache_free}` call `brkmalloc::heap::Front`), which drives `ThreadCache` (pop, push,
//! `alloc_slow`, `free_slow`); the models call `flush_all` and `tear_down` as the thread-exit
//! destructor does, and check each cache against the heap before it goes (`Heap::exit`).
//!
//! Every model ends with the heap walker and "all memory merged back into one free block", so a
//! block lost or duplicated by a flush or a refill fails it; the ledger catches two threads
//! holding overlapping blocks at the moment it happens.
//!
//! Twins (ci/loom.sh): `lock`, `lock-ordering`, `wake`, and `routing` (the front end pushes
//! a freed block into the wrong list: caught by the cache check at exit).
#![cfg(loom)]

use loom::sync::mpsc::channel;
use loom_tests::{
    Block, Heap, Ledger, active_cache as cache, cache_free, cache_malloc, event, finish,
    heap_models, spawn_with,
};

use brkmalloc::thread_cache::{State, ThreadCache};

/// Arena pages (refills carve from the first page; the second absorbs interleavings in which
/// memory sits in a cache while another thread needs some).
const PAGES: usize = 2;
/// Request size: class 0 (32-byte blocks).
const N: usize = 24;

/// `malloc` through the cache, recorded and filled.
fn malloc(tc: &mut ThreadCache, heap: &Heap, ledger: &Ledger, seed: u8) -> Block {
    ledger.take(cache_malloc(tc, heap, N), N, seed)
}

/// `free` through the cache of a recorded block.
fn free(tc: &mut ThreadCache, heap: &Heap, ledger: &Ledger, b: Block) {
    ledger.give_back(&b);
    // SAFETY: a live block of `heap`, given up here.
    unsafe { cache_free(tc, heap, b.ptr()) };
}

heap_models! {
    pages: PAGES;

    /// Thread A allocates two blocks through its cache (one batched refill) and sends them to
    /// thread B, then allocates again (a second refill) and exits (its exit flush returns what it
    /// still caches). B, whose smaller cache already holds one block, frees A's blocks into it: the
    /// second push finds the list full and flushes under the lock, racing A's refill or exit flush.
    /// B then allocates from its cache, reusing a block of A's, and exits.
    fn cross_thread_free(heap, ledger) {
        let (tx, rx) = channel::<[Block; 2]>();
        let a = spawn_with(heap, ledger, move |heap, ledger| {
            let mut tc = cache(4);
            let b1 = malloc(&mut tc, heap, ledger, 1); // refill: a batch of 2
            let b2 = malloc(&mut tc, heap, ledger, 2); // pop
            tx.send([b1, b2]).unwrap();
            let b3 = malloc(&mut tc, heap, ledger, 3); // refill again
            free(&mut tc, heap, ledger, b3);
            heap.exit(&mut tc);
        });
        let mut tc = cache(2);
        let own = malloc(&mut tc, heap, ledger, 4); // refill: a batch of 1
        free(&mut tc, heap, ledger, own);
        let got = rx.recv().unwrap();
        for b in got {
            free(&mut tc, heap, ledger, b); // the second one flushes
        }
        // A's blocks, now in B's cache, serve B's next malloc without the lock.
        let again = malloc(&mut tc, heap, ledger, 9);
        if got.iter().any(|b| b.p == again.p) {
            event("reused a block freed by another thread");
        }
        free(&mut tc, heap, ledger, again);
        heap.exit(&mut tc);
        finish([a], heap, ledger, 2);
    }

    /// Thread A's class-0 list is full; its next free flushes the two oldest blocks to the central
    /// heap while thread B refills its own empty cache from it. B may be handed memory that A has
    /// just flushed.
    fn flush_races_refill(heap, ledger) {
        // Set-up, before any thread exists: A's list full (4 of 4), plus one more live block.
        let mut tc_a = cache(4);
        let filled: Vec<Block> =
            (0..4).map(|i| malloc(&mut tc_a, heap, ledger, 10 + i)).collect();
        let extra = heap.malloc_block(ledger, N, 20);
        let cached: Vec<usize> = filled.iter().map(|b| b.p).collect();
        for b in filled {
            free(&mut tc_a, heap, ledger, b);
        }
        assert_eq!(tc_a.count(0), 4, "cache invariant broken: freed blocks missing from their list");
        let a = spawn_with(heap, ledger, move |heap, ledger| {
            free(&mut tc_a, heap, ledger, extra); // full: flush 2, then push
            assert_eq!(tc_a.count(0), 3);
            heap.exit(&mut tc_a);
        });
        let mut tc_b = cache(4);
        let b1 = malloc(&mut tc_b, heap, ledger, 30); // refill: a batch of 2
        let b2 = malloc(&mut tc_b, heap, ledger, 31); // pop
        if cached.contains(&b1.p) || cached.contains(&b2.p) {
            event("refill got blocks another thread flushed");
        }
        free(&mut tc_b, heap, ledger, b1);
        free(&mut tc_b, heap, ledger, b2);
        heap.exit(&mut tc_b);
        finish([a], heap, ledger, 4);
    }

    /// Thread A exits while thread B allocates. A's exit runs `process.rs`'s destructor protocol:
    /// flush everything (rounds 1–2), then tear down (round 3); a free after that (another TLS
    /// destructor's) finds the cache torn down and goes to the central heap.
    fn thread_exit_while_others_allocate(heap, ledger) {
        let a = spawn_with(heap, ledger, move |heap, ledger| {
            let mut tc = cache(4);
            let a1 = malloc(&mut tc, heap, ledger, 1); // refill
            let a2 = malloc(&mut tc, heap, ledger, 2); // pop
            free(&mut tc, heap, ledger, a1); // push
            // Thread exit: `cache_destructor`, rounds 1..2, then round 3.
            tc.flush_all(&heap.heap).unwrap();
            heap.exit(&mut tc);
            assert_eq!(tc.state(), State::TornDown);
            // A later destructor frees: the torn-down cache sends it to the central heap.
            free(&mut tc, heap, ledger, a2);
            assert_eq!(tc.bytes(), 0);
        });
        let mut tc = cache(4);
        let b1 = malloc(&mut tc, heap, ledger, 3); // refill
        let big = heap.malloc_block(ledger, 100, 4); // above the cache's class limit
        free(&mut tc, heap, ledger, b1);
        heap.free_block(ledger, big);
        heap.exit(&mut tc);
        finish([a], heap, ledger, 6);
    }
}
