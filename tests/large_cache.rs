//! The cache of freed large mappings (issue 13), in process through `brkmalloc::api`: the
//! byte bound holds under a random sequence of large mallocs, callocs, reallocs and frees,
//! every block keeps its contents, calloc reads zero on reused mappings, and the counters
//! move. (RSS, decay, `malloc_trim`, fork and mappings are checked from outside, under
//! `LD_PRELOAD`, by the `large_*` tests of `tests/options.rs`.)
//!
//! One test function: the cache and the options are process-wide.

use std::ffi::c_void;

use brkmalloc::api;
use brkmalloc::large_cache::{self, SLOTS};

/// splitmix64, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn byte(i: usize, tag: u64) -> u8 {
    (i as u64).wrapping_mul(131).wrapping_add(tag) as u8
}

/// Writes the pattern at every 4 KiB step and at the last byte (cheap, and covers every page).
fn fill(p: *mut c_void, n: usize, tag: u64) {
    let p = p.cast::<u8>();
    for i in (0..n).step_by(4096).chain(std::iter::once(n - 1)) {
        // SAFETY: `i < n`, inside a live block of at least `n` bytes.
        unsafe { p.add(i).write(byte(i, tag)) };
    }
}

/// Checks the first `n` bytes of a block that [`fill`] wrote with `filled` bytes.
fn check(p: *mut c_void, n: usize, filled: usize, tag: u64, what: &str) {
    let p = p.cast::<u8>();
    for i in (0..n).step_by(4096).chain(Some(filled - 1).filter(|&l| l < n)) {
        // SAFETY: as in `fill`.
        let v = unsafe { p.add(i).read() };
        assert_eq!(v, byte(i, tag), "{what}: byte {i} of {n}");
    }
}

const BOUND: usize = 24 << 20;

fn assert_bounded(step: usize) {
    let s = large_cache::stats();
    assert!(s.bytes <= BOUND, "step {step}: {} bytes cached, bound {BOUND}", s.bytes);
    assert!(s.spans <= SLOTS, "step {step}: {} spans", s.spans);
}

#[test]
fn byte_bound_contents_and_counters_under_a_random_sequence() {
    // A fixed threshold (the dynamic one would move these sizes into the heap) and a small
    // fixed bound, so that the sequence overflows it all the time.
    brkmalloc::config::parse(b"mmap_threshold:128k,large_cache:24m,purge_delay_ms:1000000");
    assert_eq!(large_cache::bound(usize::MAX), BOUND);
    let before = large_cache::stats();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut slots: Vec<(*mut c_void, usize, u64)> = vec![(std::ptr::null_mut(), 0, 0); 12];
    for step in 0..600 {
        let k = (rng.next() % slots.len() as u64) as usize;
        let n = (128 << 10) + (rng.next() % (8 << 20)) as usize;
        let (p, have, tag) = slots[k];
        let new_tag = rng.next();
        let r = rng.next() % 8;
        if !p.is_null() && r < 3 {
            // SAFETY: a live block of ours.
            let q = unsafe { api::realloc(p, n) };
            assert!(!q.is_null(), "step {step}: realloc to {n}");
            check(q, have.min(n), have, tag, "realloc");
            fill(q, n, new_tag);
            slots[k] = (q, n, new_tag);
        } else {
            // SAFETY: NULL or a live block of ours.
            unsafe { api::free(p) };
            let q = if r == 7 { api::calloc(1, n) } else { api::malloc(n) };
            assert!(!q.is_null(), "step {step}: malloc({n})");
            if r == 7 {
                let z = q.cast::<u8>();
                for i in (0..n).step_by(512) {
                    // SAFETY: inside the fresh block.
                    assert_eq!(unsafe { z.add(i).read() }, 0, "step {step}: calloc byte {i}");
                }
            }
            fill(q, n, new_tag);
            slots[k] = (q, n, new_tag);
        }
        // SAFETY: a live block of ours.
        assert!(unsafe { api::malloc_usable_size(slots[k].0) } >= slots[k].1);
        assert_bounded(step);
    }
    for (p, n, tag) in slots {
        check(p, n, n, tag, "final");
        // SAFETY: a live block of ours.
        unsafe { api::free(p) };
        assert_bounded(usize::MAX);
    }
    let after = large_cache::stats();
    assert!(after.hits > before.hits + 100, "{before:?} -> {after:?}");
    assert!(after.misses > before.misses, "the first blocks are fresh mappings");
    assert!(after.bytes > 0, "the freed blocks are cached");
    assert_eq!(api::malloc_trim(0), 1, "malloc_trim(0) releases the cached mappings");
    let trimmed = large_cache::stats();
    assert_eq!((trimmed.bytes, trimmed.spans), (0, 0), "malloc_trim(0) empties the cache");
    assert!(trimmed.decayed_bytes >= before.decayed_bytes + after.bytes);
}
