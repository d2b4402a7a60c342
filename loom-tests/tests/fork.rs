//! The fork handlers' lock protocol against concurrent allocation, as far as loom can express
//! it: loom cannot fork, so the model runs what `fork.rs` does around `fork()` on one thread
//! while another thread allocates.
//!
//! - `prepare`: every lock in the lock order (DESIGN.md): `BACKEND.lock_all()` (`CENTRAL`, then
//!   the middle layer's class locks, `TRANSFER`), then `REGISTRY.raw().lock()` (`LARGE`). The registry lives in a mapping of its own, which loom
//!   cannot make, so a `Mutex<Vec<usize>>` of brkmalloc's stands in for it: the same lock type,
//!   taken the way `large.rs` takes it (alone, never inside `CENTRAL`);
//! - the fork itself: the child gets a copy of the heap as it is at this instant, so the model
//!   inspects it there, with the lock held and no guard (`Mutex::with_raw_locked`): it must pass
//!   the heap walker, i.e. no thread is half-way through an update, and the child's first
//!   allocation must work on it;
//! - `parent` and `child`: both unlocked, in reverse order; then the thread allocates again, as
//!   both the parent and the child do after `fork` returns.
//!
//! Meanwhile another thread allocates and frees through the central heap, through a thread
//! cache (refill, exit flush) and through the large-block registry, checking the heap after
//! each step. Loom fails the model if the
//! two overlap (a causality violation on the heap's cell) or if anyone waits forever (a lost
//! wake-up after the raw unlock).
//!
//! Twins (ci/loom.sh): `lock` (prepare then fails to exclude the other thread), `wake`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;

use brkmalloc::sync::Mutex;
use loom_tests::{Heap, Ledger, active_cache, cache_free, cache_malloc, check};

fn heap_is_consistent(heap: &Heap) {
    let r = heap.heap.central.lock().check(true);
    if let Err(e) = r {
        panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
    }
}

#[test]
fn fork_handlers_against_malloc() {
    check("fork::fork_handlers_against_malloc", || {
        let heap = Arc::new(Heap::new(2));
        let ledger = Arc::new(Ledger::default());
        // `large::REGISTRY`'s stand-in: the live large blocks.
        let registry = Arc::new(Mutex::new(Vec::<usize>::with_capacity(4)));
        let other = {
            let (heap, ledger, registry) = (heap.clone(), ledger.clone(), registry.clone());
            thread::spawn(move || {
                let a = heap.malloc_block(&ledger, 40, 1);
                heap_is_consistent(&heap);
                registry.lock().push(0x1000); // large::alloc: register a mapping
                let gone = registry.lock().pop(); // large::free
                assert_eq!(gone, Some(0x1000));
                let mut tc = active_cache(4);
                let b = ledger.take(cache_malloc(&mut tc, &heap, 24), 24, 2); // refill
                heap.free_block(&ledger, a);
                ledger.give_back(&b);
                // SAFETY: a live block of the heap, given up here.
                unsafe { cache_free(&mut tc, &heap, b.ptr()) };
                tc.tear_down(&heap.heap).unwrap(); // exit flush
                heap_is_consistent(&heap);
            })
        };
        // fork::prepare: CENTRAL, the layer's class locks, then LARGE.
        heap.heap.lock_all();
        registry.raw().lock();
        // fork(): what the child inherits.
        // SAFETY: this thread took the raw lock just above and holds no guard.
        unsafe {
            heap.heap.central.with_raw_locked(|h| {
                if let Err(e) = h.check(true) {
                    panic!("the child would inherit a broken heap: {} at {:#x}", e.what, e.addr);
                }
                // `lock_all` took the layer's locks too, and no guard exists (the enclosing
                // block's contract).
                if let Err(e) = heap.heap.layer.check_locked(h) {
                    panic!("the child would inherit a broken layer: {} at {:#x}", e.what, e.addr);
                }
                // The child's first allocation, on its copy (here: undone before the unlock).
                let (p, _) = h.alloc(100, false).expect("the child cannot allocate");
                h.free(p).expect("the child cannot free");
            });
            // SAFETY: as above, for the registry's lock.
            registry.with_raw_locked(|r| assert!(r.len() <= 1, "a torn registry: {r:?}"));
        }
        // fork::parent / fork::child, in reverse order
        // SAFETY: this thread holds both raw locks (prepare).
        unsafe {
            registry.raw().unlock();
            heap.heap.unlock_all();
        }
        // After fork returns, in the parent or the child: allocation works.
        let c = heap.malloc_block(&ledger, 64, 3);
        heap.free_block(&ledger, c);
        other.join().unwrap();
        assert_eq!(ledger.live(), 0);
        assert!(registry.lock().is_empty());
        heap.assert_all_free(4);
    });
}
