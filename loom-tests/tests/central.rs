//! Threads doing malloc, free and realloc through the central heap (`Mutex<CentralHeap>`,
//! brkmalloc's `RawLock`): no two live blocks overlap, contents survive, and at the end the heap
//! invariants hold and everything has merged back into one free block.
//!
//! Twins (ci/loom.sh): `lock` (the lock's test-and-set is a load and a store), `lock-ordering`
//! (acquire and release weakened to relaxed), `wake` (unlock never wakes a sleeper).
#![cfg(loom)]

use loom_tests::{Heap, Ledger, finish, heap_models, spawn_with};

/// Arena pages: the models use well under one page of blocks; the second page lets a realloc
/// that moves grow the heap.
const PAGES: usize = 2;

/// One thread's script: malloc two blocks, grow the first with realloc (in place when its
/// neighbour is free, else a move), free both. Sizes differ per thread so blocks of different
/// threads split and merge each other's neighbours.
fn malloc_realloc_free(heap: &Heap, ledger: &Ledger, id: u8) {
    let n = 24 + 16 * id as usize;
    let a = heap.malloc_block(ledger, n, id * 2);
    let b = heap.malloc_block(ledger, 40, id * 2 + 1);
    let a = heap.realloc_block(ledger, a, 3 * n);
    heap.free_block(ledger, b);
    heap.free_block(ledger, a);
}

heap_models! {
    pages: PAGES;

    fn two_threads_malloc_realloc_free(heap, ledger) {
        let t =
            spawn_with(heap, ledger, move |heap, ledger| malloc_realloc_free(heap, ledger, 1));
        malloc_realloc_free(heap, ledger, 2);
        finish([t], heap, ledger, 2 * 5);
    }

    /// Three threads; each mallocs one block, one of them reallocs it, and all free. Kept smaller
    /// than the two-thread script: a third thread multiplies the interleavings.
    fn three_threads_malloc_free(heap, ledger) {
        let spawn = |id: u8| {
            spawn_with(heap, ledger, move |heap, ledger| {
                let mut a = heap.malloc_block(ledger, 16 * id as usize, id);
                if id == 1 {
                    a = heap.realloc_block(ledger, a, 100);
                }
                heap.free_block(ledger, a);
            })
        };
        let ts = [spawn(1), spawn(2)];
        let a = heap.malloc_block(ledger, 48, 3);
        heap.free_block(ledger, a);
        finish(ts, heap, ledger, 3 * 2);
    }
}
