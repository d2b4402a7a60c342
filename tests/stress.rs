//! Threads on the one locked heap: random sizes, contents checked, cross-thread frees.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::thread;

use brkmalloc::api;

/// A block with its size and pattern seed; sent between threads.
struct Block {
    p: usize,
    n: usize,
    seed: u8,
}

fn fill(b: &Block) {
    // SAFETY: `p` has `n` usable bytes and belongs to the current holder.
    unsafe { std::ptr::write_bytes(b.p as *mut u8, b.seed, b.n) };
}

fn verify_and_free(b: Block) {
    // SAFETY: as in `fill`.
    let s = unsafe { std::slice::from_raw_parts(b.p as *const u8, b.n) };
    assert!(s.iter().all(|&x| x == b.seed), "block {:#x} ({} B) was overwritten", b.p, b.n);
    // SAFETY: a live block of ours, freed once.
    unsafe { api::free(b.p as *mut c_void) };
}

#[test]
fn eight_threads_with_cross_thread_frees() {
    let shared: Arc<Mutex<Vec<Block>>> = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let mut rng = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut mine: Vec<Block> = Vec::new();
                for i in 0..40_000u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let n = match rng % 100 {
                        0 => (rng >> 8) as usize % (300 << 10),
                        1..=10 => (rng >> 8) as usize % (64 << 10),
                        _ => (rng >> 8) as usize % 512,
                    };
                    match (rng >> 40) % 4 {
                        0 | 1 => {
                            let p = api::malloc(n);
                            assert!(!p.is_null());
                            assert_eq!(p.addr() % 16, 0);
                            let b = Block { p: p.addr(), n, seed: (i % 251) as u8 };
                            fill(&b);
                            mine.push(b);
                        }
                        2 if !mine.is_empty() => {
                            let b = mine.swap_remove((rng >> 20) as usize % mine.len());
                            // Half the frees go to another thread.
                            if rng & 1 == 0 {
                                shared.lock().unwrap().push(b);
                            } else {
                                verify_and_free(b);
                            }
                        }
                        3 if !mine.is_empty() => {
                            let k = (rng >> 20) as usize % mine.len();
                            let b = &mut mine[k];
                            let s = unsafe { std::slice::from_raw_parts(b.p as *const u8, b.n) };
                            assert!(s.iter().all(|&x| x == b.seed));
                            // SAFETY: a live block of ours held by this thread.
                            let q = unsafe { api::realloc(b.p as *mut c_void, n.max(1)) };
                            assert!(!q.is_null());
                            let keep = b.n.min(n.max(1));
                            let s = unsafe { std::slice::from_raw_parts(q as *const u8, keep) };
                            assert!(s.iter().all(|&x| x == b.seed), "realloc lost contents");
                            b.p = q.addr();
                            b.n = n.max(1);
                            fill(b);
                        }
                        _ => {
                            let theirs: Vec<Block> = std::mem::take(&mut *shared.lock().unwrap());
                            theirs.into_iter().for_each(verify_and_free);
                        }
                    }
                }
                mine.into_iter().for_each(verify_and_free);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    std::mem::take(&mut *shared.lock().unwrap()).into_iter().for_each(verify_and_free);
    // The workers' caches were flushed at their exit; flush this thread's too.
    brkmalloc::flush_thread_cache();
    if let Err(e) = brkmalloc::check_heap() {
        panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
    }
    assert_eq!(brkmalloc::heap_stats().used_blocks, 0, "every block came back");
}
