//! The crate's remaining atomics, each against the argument in the comment next to it.
//!
//! | atomic | where | ordering | model |
//! |---|---|---|---|
//! | `RawLock::state` (`CENTRAL`, `LARGE`) | `sync.rs`; `process::HEAP`, `large::REGISTRY` | Acquire/Release | every heap model (`central`, `thread_cache`, `fork`, `once`) |
//! | `RawLock::acquisitions` | `sync.rs` | `Counter::add_owned` (writers hold the lock) | [`lock_counts_every_acquisition`] |
//! | `RawLock::contended` | `sync.rs` | `Counter::add` | [`lock_counts_every_acquisition`] |
//! | `Once` (state + value) | `sync.rs`; `process.rs` exit key | Acquire/Release | `once::first_mallocs_*` |
//! | `Claim` | `sync.rs`; `fork::INSTALLED` | Relaxed | `once::claim_has_one_winner` |
//! | statistics counters and peaks | `large.rs` `LIVE_*`/`MAX_*` (`sync::Counter` itself); `stats.rs`, `process.rs` `CHECK_OPS` (`fetch_add` Relaxed, as `Counter::add`) | Relaxed | [`counters`] |
//! | tuning values and flags | `config.rs` options, `LOAD_STATE`; `process.rs` `CONFIG_APPLIED`; `purge.rs` `LAST_PURGE_MS`; `diag.rs` `ABORT_ON_ERROR` | Relaxed load/store, nothing published through them | none needed (no data depends on them) |
//! | header words | `block.rs` `load_word`/`store_word` | Relaxed (B7) | not loom (raw memory); ThreadSanitizer (`ci/tsan.sh`) |
//!
//! Twin (ci/loom.sh): `counter` (`Counter::add` as a load and a store: an update is lost).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::check;

use brkmalloc::sync::{Counter, Mutex};

/// Statistic counters, the type `large.rs` keeps its statistics in (`LIVE_BYTES` and
/// `MAX_BYTES` are `sync::Counter`s; `count_map`/`count_unmap` are these calls): two threads
/// update one counter while a third reads it. Thread 1 adds; thread 2 does what `large.rs` does
/// on a moving realloc (add the new length, then subtract the old). Every value read is a sum of a prefix of each thread's updates, never a wrapped
/// "negative" one, and the final value is exact. Each add raises a peak, as `large.rs` does:
/// the peak ends at the largest value any add returned.
#[test]
fn counters() {
    check("atomics::counters", || {
        let live = Arc::new(Counter::new());
        let peak = Arc::new(Counter::new());
        peak.raise_to(live.add(100)); // a block mapped before the threads start
        let t1 = {
            let (live, peak) = (live.clone(), peak.clone());
            thread::spawn(move || {
                peak.raise_to(live.add(5));
                peak.raise_to(live.add(1));
            })
        };
        let t2 = {
            let (live, peak) = (live.clone(), peak.clone());
            thread::spawn(move || {
                peak.raise_to(live.add(300)); // realloc: the new mapping
                live.sub(100); // ... then the old one goes
            })
        };
        let seen = live.get();
        let valid = [100, 105, 106, 400, 405, 406, 300, 305, 306];
        assert!(valid.contains(&seen), "read an impossible value {seen}");
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(live.get(), 306, "an update was lost");
        let p = peak.get();
        assert!([400, 405, 406].contains(&p), "impossible peak {p}");
    });
}

/// The lock's own statistics: `acquisitions` is written only by the owner (`add_owned`, a load
/// and a store), `contended` by every waiter (`add`). After two threads lock twice each, both
/// are exact.
#[test]
fn lock_counts_every_acquisition() {
    check("atomics::lock_counts_every_acquisition", || {
        let m = Arc::new(Mutex::new(0u32));
        let t = {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    *m.lock() += 1;
                }
            })
        };
        for _ in 0..2 {
            *m.lock() += 1;
        }
        t.join().unwrap();
        assert_eq!(*m.lock(), 4);
        assert_eq!(m.raw().acquisitions(), 5, "an acquisition was not counted");
        assert!(m.raw().contended_count() <= 4);
    });
}
