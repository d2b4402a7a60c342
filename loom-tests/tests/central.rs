//! Threads doing malloc, free and realloc through the central heap (`Mutex<CentralHeap>`,
//! brkmalloc's `RawLock`): no two live blocks overlap, contents survive, and at the end the heap
//! invariants hold and everything has merged back into one free block.
//!
//! Twins (ci/loom.sh): `lock` (the lock's test-and-set is a load and a store), `lock-ordering`
//! (acquire and release weakened to relaxed), `wake` (unlock never wakes a sleeper).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{Heap, Ledger, check};

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

#[test]
fn two_threads_malloc_realloc_free() {
    check("central::two_threads_malloc_realloc_free", || {
        let heap = Arc::new(Heap::new(PAGES));
        let ledger = Arc::new(Ledger::default());
        let t = {
            let (heap, ledger) = (heap.clone(), ledger.clone());
            thread::spawn(move || malloc_realloc_free(&heap, &ledger, 1))
        };
        malloc_realloc_free(&heap, &ledger, 2);
        t.join().unwrap();
        assert_eq!(ledger.live(), 0);
        heap.assert_all_free(2 * 5);
    });
}

/// Three threads; each mallocs one block, one of them reallocs it, and all free. Kept smaller
/// than the two-thread script: a third thread multiplies the interleavings.
#[test]
fn three_threads_malloc_free() {
    check("central::three_threads_malloc_free", || {
        let heap = Arc::new(Heap::new(PAGES));
        let ledger = Arc::new(Ledger::default());
        let spawn = |id: u8| {
            let (heap, ledger) = (heap.clone(), ledger.clone());
            thread::spawn(move || {
                let mut a = heap.malloc_block(&ledger, 16 * id as usize, id);
                if id == 1 {
                    a = heap.realloc_block(&ledger, a, 100);
                }
                heap.free_block(&ledger, a);
            })
        };
        let ts = [spawn(1), spawn(2)];
        let a = heap.malloc_block(&ledger, 48, 3);
        heap.free_block(&ledger, a);
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(ledger.live(), 0);
        heap.assert_all_free(3 * 2);
    });
}
