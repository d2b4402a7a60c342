//! The fuzz driver (`fuzz/driver.rs`) on stable: pseudo-random operation sequences and every
//! file of the committed seed corpus (`fuzz/corpus/heap_ops/`), each against the shadow model
//! with the heap walker after every step. `cargo +nightly fuzz run heap_ops` explores further.
#![allow(clippy::std_instead_of_core)]

mod common;

use common::rng::Rng;

#[path = "../fuzz/driver.rs"]
mod driver;

use std::path::Path;

/// Input `i` of the random series: 2–8 KiB of pseudo-random bytes.
fn input(i: u64) -> Vec<u8> {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (i + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let len = 2048 + (rng.next() % 6144) as usize;
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Runs inputs `lo..hi` of the random series (split over several tests so that they run on
/// every core).
fn random_inputs(lo: u64, hi: u64) {
    for i in lo..hi {
        let data = input(i);
        if std::env::var_os("DRIVER_TRACE").is_some() {
            eprintln!("random input {i} ({} bytes)", data.len());
        }
        driver::run(&data);
    }
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_0() {
    random_inputs(0, 75);
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_1() {
    random_inputs(75, 150);
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_2() {
    random_inputs(150, 225);
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_3() {
    random_inputs(225, 300);
}

#[test]
fn seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/heap_ops");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the seed corpus {} is empty", dir.display());
    // Under Miri every fifth file, each cut to `driver::MAX_OPS` operations.
    for f in files.iter().step_by(if cfg!(miri) { 5 } else { 1 }) {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("{}", f.display());
        driver::run(&data);
    }
}

/// Edge cases of the input format: empty and truncated inputs end cleanly.
#[test]
fn short_inputs() {
    for len in (0..64).step_by(if cfg!(miri) { 7 } else { 1 }) {
        driver::run(&input(1000)[..len]);
    }
}

/// The driver with the memory source failing OS calls (`brkmalloc::faults`): every `n`th call
/// of each kind, or at seeded random rates, from the first operation on (inputs may change the
/// plan with their own `Faults` operations). Each failure must surface as a failed allocation
/// or an unchanged block, with every invariant, the contents and the byte ledger intact after
/// every step, and the heap serving again once the calls succeed. Prints the failures injected
/// per OS call and operation kind.
#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_with_failing_os_calls() {
    use brkmalloc::faults::{NCALLS, OsCall, Plan, write_table};
    let plans = [
        Plan::EveryNth(2),
        Plan::EveryNth(5),
        Plan::Random { seed: 1, per_mille: 100 },
        Plan::Random { seed: 2, per_mille: 500 },
    ];
    let mut total = driver::Tally::new();
    for (k, &plan) in plans.iter().enumerate() {
        for i in 0..30 {
            for (op, add) in driver::run_with(&input(1000 + 30 * k as u64 + i), plan, 0) {
                let row = total.entry(op).or_insert([0; NCALLS]);
                for (a, b) in row.iter_mut().zip(add) {
                    *a += b;
                }
            }
        }
    }
    let rows: Vec<_> = total.iter().map(|(op, r)| (op.as_str(), *r)).collect();
    let mut table = String::new();
    write_table(&mut table, "fuzz driver (Front over Explicit): injected failures", &rows).unwrap();
    eprintln!("{table}");
    for c in OsCall::ALL {
        let n: u64 = total.values().map(|r| r[c as usize]).sum();
        assert!(n > 0, "no {} failure was injected", c.name());
    }
}

/// The driver with a quarantine on the central free path (`quarantine:N`): blocks wait, are
/// checked when they leave, and the shadow model (contents, overlap, counts with the waiting
/// blocks) holds after every step; a limit of 1 byte releases each block at the next free.
#[test]
#[cfg_attr(miri, ignore = "hours under Miri; ci/miri.sh runs the seed corpus")]
fn random_inputs_with_a_quarantine() {
    for (k, limit) in [1usize, 16 << 10, 256 << 10].into_iter().enumerate() {
        for i in 0..25 {
            driver::run_with(&input(2000 + 25 * k as u64 + i), brkmalloc::faults::Plan::Off, limit);
        }
    }
}
