//! The middle layer (`transfer.rs`) between the thread caches and the central heap: flushes
//! hand whole batches to it and refills take them back under the class's own lock, and the idle
//! pass returns batches nobody took to the central heap. malloc and free go through the front
//! end (`loom_tests::{cache_malloc, cache_free}`), which flushes through
//! `Backend::give_back` and refills through `Transfer::take`; the idle pass is
//! `Backend::purge_idle`, as the purge thread runs it.
//!
//! Every model ends with the layer's invariants (TR1, TR2) checked against the heap, the layer
//! drained, and all memory merged back into one free block, so a batch lost, handed out twice or
//! returned while a cache holds it fails the model; the ledger catches two threads holding the
//! same block at the moment it happens.
//!
//! A refill that finds no room in the heap takes it from the layer (TR7,
//! `Backend::central_refill`): the layer returns a batch to the heap under the central lock,
//! taking its class lock as a flush of another thread puts a batch there.
//!
//! Twins (ci/loom.sh): `lock`, `lock-ordering`, `wake` (on the class locks as on the central
//! one), and `transfer` (a refill takes a batch without removing it from the layer).
#![cfg(loom)]

use brkmalloc::thread_cache::ThreadCache;
use loom_tests::{
    Block, Heap, Ledger, active_cache, cache_free_block as free, cache_malloc_block, event, finish,
    heap_models, spawn_with,
};

/// Arena pages.
const PAGES: usize = 2;

/// `malloc` of 24 bytes (class 0, 32-byte blocks, which the layer serves under loom too)
/// through `tc`, recorded.
fn malloc(tc: &mut ThreadCache, heap: &Heap, ledger: &Ledger, seed: u8) -> Block {
    cache_malloc_block(tc, heap, ledger, 24, seed)
}

/// A cache whose class-0 list (2 blocks at most) is full, one more live block, and the address
/// of the block that freeing it flushes to the layer (the list's older one, as a batch of one).
fn full_cache(heap: &Heap, ledger: &Ledger, seed: u8) -> (ThreadCache, Block, usize) {
    let mut tc = active_cache(2);
    let b: Vec<Block> = (0..3).map(|i| malloc(&mut tc, heap, ledger, seed + i)).collect();
    free(&mut tc, heap, ledger, b[0]);
    free(&mut tc, heap, ledger, b[1]);
    assert_eq!(tc.count(0), 2);
    (tc, b[2], b[0].p)
}

heap_models! {
    pages: PAGES;

    /// Threads A and C each free into a full list, so each flushes a batch to the layer (and
    /// exits, handing its list over as one more batch), while thread B's empty cache refills:
    /// from a batch of A's or C's if one is there yet, else from the central heap.
    fn flushes_race_a_refill(heap, ledger) {
        let (mut tc_a, a, flushed_a) = full_cache(heap, ledger, 1);
        let (mut tc_c, c, flushed_c) = full_cache(heap, ledger, 10);
        let ta = spawn_with(heap, ledger, move |heap, ledger| {
            free(&mut tc_a, heap, ledger, a); // full: a batch of 1 to the layer
            heap.exit(&mut tc_a);
        });
        let tc = spawn_with(heap, ledger, move |heap, ledger| {
            free(&mut tc_c, heap, ledger, c);
            heap.exit(&mut tc_c);
        });
        let mut tc_b = active_cache(2);
        let b = malloc(&mut tc_b, heap, ledger, 20); // refill
        if b.p == flushed_a || b.p == flushed_c {
            event("refill took a batch another thread flushed");
        }
        free(&mut tc_b, heap, ledger, b);
        heap.exit(&mut tc_b);
        finish([ta, tc], heap, ledger, 4);
    }

    /// A batch sits in the layer; thread P runs two idle passes (the first marks it idle, the
    /// second returns it to the central heap unless it was taken in between) while thread B
    /// refills, taking that batch or, once it is gone, carving from the central heap.
    fn idle_return_races_refill(heap, ledger) {
        let (mut tc_a, a, flushed) = full_cache(heap, ledger, 1);
        free(&mut tc_a, heap, ledger, a); // a batch of 1 to the layer
        assert_eq!(heap.heap.layer.batches(0), 1);
        let p = spawn_with(heap, ledger, move |heap, _| {
            let marked = heap.heap.purge_idle(true).unwrap();
            assert_eq!(marked, 0, "the first idle pass returned a batch it had not seen idle");
            if heap.heap.purge_idle(true).unwrap() > 0 {
                event("the idle pass returned the batch");
            }
        });
        let mut tc_b = active_cache(2);
        let b = malloc(&mut tc_b, heap, ledger, 20);
        if b.p == flushed {
            event("refill got the flushed block (from the batch, or carved again)");
        }
        free(&mut tc_b, heap, ledger, b);
        heap.exit(&mut tc_b);
        p.join().unwrap();
        heap.exit(&mut tc_a);
        finish([], heap, ledger, 3);
    }

    /// A batch of 3 blocks sits in the layer and the heap has no room left (its source refuses
    /// to grow, and every free block is taken). Thread B's refill cannot take the batch (its
    /// list holds 2 blocks at most), so the layer gives the batch back to the heap to carve
    /// from (TR7), while thread C flushes a batch of its own into the same class and exits.
    fn refill_takes_room_from_the_layer_as_a_flush_races(heap, ledger) {
        let mut tc_a = active_cache(6);
        let a: Vec<Block> = (0..7).map(|i| malloc(&mut tc_a, heap, ledger, 1 + i)).collect();
        for &b in &a {
            free(&mut tc_a, heap, ledger, b); // the seventh flushes 3 to the layer
        }
        assert_eq!(heap.heap.layer.held().blocks, 3);
        let (mut tc_c, c, _) = full_cache(heap, ledger, 10);
        assert_eq!(heap.heap.layer.held().blocks, 3, "a list of 2 cannot take a batch of 3");
        heap.heap.central.lock().source_mut().fail_after(0);
        let mut filler = Vec::new();
        for n in [4096, 1024, 256, 64, 16] {
            while let Some(p) = heap.front(None).alloc(n) {
                filler.push(ledger.take(p, n, 30));
            }
        }
        let tc = spawn_with(heap, ledger, move |heap, ledger| {
            free(&mut tc_c, heap, ledger, c); // full: a batch of 1 to the layer
            heap.exit(&mut tc_c);
        });
        let mut tc_b = active_cache(2);
        let b = malloc(&mut tc_b, heap, ledger, 20); // room from the layer
        if a.iter().any(|x| x.p == b.p) {
            event("refill carved a block the layer gave back");
        }
        free(&mut tc_b, heap, ledger, b);
        heap.exit(&mut tc_b);
        tc.join().unwrap();
        for f in filler {
            heap.free_block(ledger, f);
        }
        heap.exit(&mut tc_a);
        finish([], heap, ledger, 4);
    }
}
