//! Stress tests sized for ThreadSanitizer (`ci/tsan.sh`): many threads, frees on other threads,
//! thread churn with full caches at exit, realloc, and fork while other threads allocate.
//!
//! brkmalloc is this binary's `#[global_allocator]`, so every Rust allocation (the tests'
//! vectors, the channels' nodes, thread spawning) goes through its thread caches and central
//! heap, besides the blocks the tests take through `brkmalloc::api` directly. Under TSan the
//! process's C `malloc` stays TSan's own; brkmalloc exports no C symbols.
//!
//! A memory handoff that brkmalloc failed to order (a block reused by one thread while another
//! still writes it, metadata written outside the lock) is a data race on the block's bytes or
//! headers, which TSan reports with both stacks. `--cfg brkmalloc_planted_race` adds a test with
//! a deliberate race on a block from this allocator: the job runs it and requires a report, which
//! proves that TSan sees accesses to brkmalloc's memory at all.
//!
//! Natively (`cargo test`, debug) the file takes about 1 s; under TSan about 10 s (2 cores).
#![cfg(not(loom))]
#![allow(clippy::std_instead_of_core)]

mod common;

use common::rng::Rng;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;

use brkmalloc::api;

#[global_allocator]
static A: brkmalloc::BrkMalloc = brkmalloc::BrkMalloc;

/// A block from `brkmalloc::api`, with the length and pattern the tests check.
struct Block {
    p: usize,
    n: usize,
    seed: u8,
}

// The block is owned by whoever holds the `Block`; sending it sends that ownership.
impl Block {
    fn new(n: usize, seed: u8) -> Block {
        let p = match seed % 4 {
            0 => api::calloc(1, n),
            1 => {
                let mut p: *mut c_void = std::ptr::null_mut();
                // SAFETY: a valid out pointer.
                assert_eq!(unsafe { api::posix_memalign(&mut p, 64, n) }, 0);
                assert_eq!(p.addr() % 64, 0);
                p
            }
            _ => api::malloc(n),
        };
        assert!(!p.is_null(), "out of memory for {n} bytes");
        if seed % 4 == 0 {
            // SAFETY: `calloc` returned `n` bytes.
            let s = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
            assert!(s.iter().all(|&b| b == 0), "calloc returned dirty memory");
        }
        let b = Block { p: p.addr(), n, seed };
        b.fill();
        b
    }

    fn fill(&self) {
        // SAFETY: `n` usable bytes, owned by the holder.
        unsafe { std::ptr::write_bytes(self.p as *mut u8, self.seed, self.n) };
    }

    fn verify(&self) {
        // SAFETY: as in `fill`.
        let s = unsafe { std::slice::from_raw_parts(self.p as *const u8, self.n) };
        assert!(s.iter().all(|&b| b == self.seed), "block {:#x} ({} B) changed", self.p, self.n);
    }

    /// `realloc` to `n` bytes: the common prefix must survive.
    fn realloc(self, n: usize) -> Block {
        self.verify();
        // SAFETY: a live block of ours; `self` is consumed.
        let q = unsafe { api::realloc(self.p as *mut c_void, n) };
        assert!(!q.is_null());
        let keep = self.n.min(n);
        // SAFETY: `q` has at least `n >= keep` bytes.
        let s = unsafe { std::slice::from_raw_parts(q as *const u8, keep) };
        assert!(s.iter().all(|&b| b == self.seed), "realloc lost contents");
        let b = Block { p: q.addr(), n, seed: self.seed.wrapping_add(1) };
        b.fill();
        b
    }

    fn free(self) {
        self.verify();
        // SAFETY: a live block of ours, freed once.
        unsafe { api::free(self.p as *mut c_void) };
    }
}

/// A request size: mostly thread-cache sizes, some central-heap sizes, a few large (mmap)
/// blocks.
fn size(rng: &mut Rng) -> usize {
    let r = rng.next();
    match r % 64 {
        0 => (128 << 10) + (r >> 20) as usize % (64 << 10),
        1..=6 => (r >> 20) as usize % (48 << 10),
        _ => 1 + (r >> 20) as usize % 600,
    }
}

fn assert_heap_ok() {
    if let Err(e) = brkmalloc::check_heap() {
        panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
    }
}

/// Eight threads in a ring: each allocates, reallocs and frees its own blocks, and hands a
/// third of them to the next thread, which checks and frees them (so every thread's cache
/// receives blocks that other threads' caches refilled). Rust-side allocations (the vectors,
/// the channel nodes) are cross-thread frees too.
#[test]
fn ring_of_threads_with_cross_thread_frees() {
    const THREADS: usize = 8;
    const OPS: usize = 3000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Block>()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<Block>>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = txs[(t + 1) % THREADS].clone();
            let rx = rxs[t].take().unwrap();
            thread::spawn(move || {
                let mut rng =
                    Rng::new(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc));
                let mut mine: Vec<Block> = Vec::new();
                for i in 0..OPS {
                    while let Ok(b) = rx.try_recv() {
                        b.free();
                    }
                    match rng.next() % 8 {
                        0..=3 => mine.push(Block::new(size(&mut rng), (i % 251) as u8)),
                        4 if !mine.is_empty() => {
                            let k = rng.next() as usize % mine.len();
                            let b = mine.swap_remove(k);
                            mine.push(b.realloc(size(&mut rng)));
                        }
                        5 if !mine.is_empty() => {
                            let k = rng.next() as usize % mine.len();
                            // The receiver may have exited already: then free it here.
                            if let Err(mpsc::SendError(b)) = tx.send(mine.swap_remove(k)) {
                                b.free();
                            }
                        }
                        _ if !mine.is_empty() => {
                            let k = rng.next() as usize % mine.len();
                            mine.swap_remove(k).free();
                        }
                        _ => {}
                    }
                    if mine.len() > 64 {
                        for b in mine.drain(..32) {
                            b.free();
                        }
                    }
                }
                for b in mine {
                    b.free();
                }
                drop(tx);
                // Drain until every sender (the previous thread) is gone.
                for b in rx {
                    b.free();
                }
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
    assert_heap_ok();
}

/// A producer allocates, a consumer frees: every block crosses threads, so the consumer's cache
/// fills and flushes while the producer's refills, all the time.
#[test]
fn producer_consumer() {
    let (tx, rx) = mpsc::sync_channel::<Block>(64);
    let consumer = thread::spawn(move || {
        let mut n = 0;
        for b in rx {
            b.free();
            n += 1;
        }
        n
    });
    let mut rng = Rng::new(42);
    for i in 0..20_000 {
        let n = 1 + (rng.next() % 300) as usize;
        tx.send(Block::new(n, (i % 13) as u8)).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), 20_000);
    assert_heap_ok();
}

/// 256 short-lived threads, 16 at a time: each allocates, frees half (its cache keeps them),
/// and hands the other half to the main thread; its exit flushes its cache through the
/// thread-exit destructor while other threads allocate.
#[test]
fn thread_churn_with_full_caches_at_exit() {
    let (tx, rx) = mpsc::channel::<Vec<Block>>();
    for wave in 0..16u64 {
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut rng = Rng::new((wave * 16 + t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                    let mut blocks: Vec<Block> =
                        (0..40).map(|i| Block::new(1 + (rng.next() % 900) as usize, i)).collect();
                    let keep = blocks.split_off(20);
                    for b in blocks {
                        b.free();
                    }
                    tx.send(keep).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for blocks in rx.try_iter() {
            for b in blocks {
                b.free();
            }
        }
    }
    assert_heap_ok();
}

/// Forks while three threads allocate and free (the central lock is often held, caches are
/// full). Each child allocates, reallocs and frees through brkmalloc, checks the heap it
/// inherited, and `_exit`s; the parent checks the status. TSan allows `fork` in a threaded
/// process as long as the child starts no threads.
#[test]
fn fork_while_threads_allocate() {
    brkmalloc::fork::install();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (stop, rounds, start) = (stop.clone(), rounds.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = Rng::new(t + 77);
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let blocks: Vec<Block> =
                        (0..32).map(|i| Block::new(size(&mut rng) % 5000 + 1, i)).collect();
                    for b in blocks {
                        b.free();
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    for round in 0..20 {
        let mine: Vec<Block> = (0..16).map(|i| Block::new(1 + i * 77, round as u8)).collect();
        // SAFETY: the child calls only brkmalloc and async-signal-safe libc functions, starts
        // no thread, and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: async-signal-safe; kills a deadlocked child.
            unsafe { libc::alarm(30) };
            let mut ok = brkmalloc::check_heap().is_ok();
            let mut p = api::malloc(100);
            ok &= !p.is_null();
            // SAFETY: a live block of ours.
            p = unsafe { api::realloc(p, 5000) };
            ok &= !p.is_null();
            // SAFETY: as above, freed once.
            unsafe { api::free(p) };
            for b in mine {
                b.free();
            }
            ok &= brkmalloc::check_heap().is_ok();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child of round {round} failed: status {status:#x}"
        );
        for b in mine {
            b.free();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert_heap_ok();
}

/// Runs `f(t)` for `t` in `0..n` on `n` threads released together (a barrier), and returns
/// how each ended.
#[cfg(any(brkmalloc_planted_race, brkmalloc_sabotage))]
fn together(n: usize, f: impl Fn(usize) + Send + Sync + 'static) -> Vec<thread::Result<()>> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let (f, start) = (f.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                f(t);
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join()).collect()
}

/// The planted race (only with `--cfg brkmalloc_planted_race`): two threads write the same
/// block from this allocator with no synchronisation. TSan must report it; `ci/tsan.sh` fails
/// if it does not.
#[cfg(brkmalloc_planted_race)]
#[test]
fn planted_race_on_a_brkmalloc_block() {
    let shared = Box::new([0u64; 4]);
    let p = Box::into_raw(shared).addr();
    let joined = together(2, move |t| {
        for i in 0..1000 {
            // SAFETY: the block is valid until both writers are joined; the unordered writes
            // are the point of this test.
            unsafe { (p as *mut u64).write_volatile(t as u64 * 1000 + i) };
        }
    });
    for j in joined {
        j.unwrap();
    }
    // SAFETY: the box made above, given back once.
    drop(unsafe { Box::from_raw(p as *mut [u64; 4]) });
}

/// The allocator's own race, planted (only with `--cfg brkmalloc_sabotage`; run alone, by
/// `ci/tsan.sh` with `TSAN_SABOTAGE=1`): the central lock's test-and-set is split into a load
/// and a store (`sync::sabotage::Defect::Lock`), so threads enter the heap together. TSan must
/// report races inside `brkmalloc::central`. Ignored by default: once armed, the defect breaks
/// every allocation of the process, this binary's own included.
#[cfg(brkmalloc_sabotage)]
#[test]
#[ignore = "run alone by ci/tsan.sh (TSAN_SABOTAGE=1)"]
fn sabotaged_central_lock() {
    use brkmalloc::sync::sabotage::{Defect, arm};
    arm(Defect::Lock);
    // A thread's panic is not the point here (the defect may break anything): ignored.
    let _ = together(4, |t| {
        for i in 0..20_000usize {
            // Above the thread caches' largest class: every call takes the central lock.
            let p = api::malloc(40_000 + (i * 16 + t) % 4000);
            // SAFETY: a live block of ours, freed once.
            unsafe { api::free(p) };
        }
    });
}
