//! Real threads through `brkmalloc::api`: churn with contents checked, cross-thread frees,
//! thread exit with full caches, fork while other threads hold cached blocks, and 100,000
//! short-lived threads.
//!
//! The test binary itself runs on glibc's malloc; brkmalloc's heap is a separate static, so
//! its counters only see what these tests allocate through `api`. The tests check those
//! counters (every block comes back once its thread exits), so they run one at a time
//! ([`serial`]), and each leaves its own thread's cache empty when it ends.
#![allow(clippy::std_instead_of_core)]

mod common;

use common::rng::Rng;

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use brkmalloc::api;

/// Serialises the tests of this file: they check process-wide heap counters.
static SERIAL: Mutex<()> = Mutex::new(());

/// Held for a whole test; on drop flushes the test thread's cache, so the next test's
/// baseline does not move when this thread exits.
struct Serial {
    _guard: MutexGuard<'static, ()>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        brkmalloc::flush_thread_cache();
    }
}

fn serial() -> Serial {
    Serial { _guard: SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner) }
}

/// The start of a test: its turn ([`serial`]), and the count of blocks in use then, the
/// baseline of its [`assert_all_returned`] checks.
fn begin() -> (Serial, usize) {
    let s = serial();
    (s, used_blocks())
}

/// In-use blocks of the central heap once the calling thread's cache is flushed.
fn used_blocks() -> usize {
    brkmalloc::flush_thread_cache();
    brkmalloc::heap_stats().used_blocks
}

/// The heap invariants hold `when`, and the count of blocks in use is back to `base` (else
/// `leak` explains what was lost).
fn assert_all_returned(base: usize, when: &str, leak: &str) {
    assert_heap_ok(when);
    assert_eq!(used_blocks(), base, "{when}: {leak}");
}

fn assert_heap_ok(when: &str) {
    if let Err(e) = brkmalloc::check_heap() {
        panic!("{when}: heap invariant broken: {} at {:#x}", e.what, e.addr);
    }
}

/// A barrier that fails instead of hanging when a thread never arrives (say, it panicked).
struct Rendezvous {
    n: usize,
    /// Threads arrived in this generation, and the generation.
    state: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl Rendezvous {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self { n, state: Mutex::new((0, 0)), cv: Condvar::new() })
    }

    /// Waits for all `n` threads; returns `true` in the last one to arrive.
    fn wait(&self) -> bool {
        let mut g = self.state.lock().unwrap();
        let generation = g.1;
        g.0 += 1;
        if g.0 == self.n {
            *g = (0, generation + 1);
            self.cv.notify_all();
            return true;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.1 == generation {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!("rendezvous: {} of {} threads arrived in 60 s (one panicked?)", g.0, self.n);
            };
            g = self.cv.wait_timeout(g, left).unwrap().0;
        }
        false
    }
}

/// Largest block the tests fill with the pattern.
const MAX_FILL: usize = 64 << 10;
/// Pattern offsets: a block holds `PAT[off..off + n]`, so blocks with different offsets differ.
const OFFSETS: usize = 4093;

/// A pseudo-random byte string; block contents are windows of it (memcpy/memcmp even in debug).
fn pat() -> &'static [u8] {
    static PAT: OnceLock<Vec<u8>> = OnceLock::new();
    PAT.get_or_init(|| {
        let mut r = Rng::new(0x5eed);
        (0..MAX_FILL + OFFSETS).map(|_| (r.next() >> 56) as u8).collect()
    })
}

/// A block with its size and pattern offset (sent between threads as plain numbers).
#[derive(Clone, Copy, Debug)]
struct Block {
    p: usize,
    n: usize,
    off: usize,
}

impl Block {
    fn ptr(self) -> *mut u8 {
        self.p as *mut u8
    }

    /// Allocates `n` bytes with `api::malloc` (or `calloc`, checking the zeroes) and fills them.
    fn new(n: usize, off: usize, zeroed: bool) -> Block {
        let p = if zeroed { api::calloc(1, n) } else { api::malloc(n) }.cast::<u8>();
        assert!(!p.is_null(), "malloc({n}) failed");
        assert_eq!(p.addr() % 16, 0, "malloc({n}) misaligned: {p:?}");
        // SAFETY: a live block of ours.
        let usable = unsafe { api::malloc_usable_size(p.cast()) };
        assert!(usable >= n, "malloc({n}) gave {usable} usable bytes");
        if zeroed {
            // SAFETY: `n` usable bytes.
            let s = unsafe { std::slice::from_raw_parts(p, n) };
            assert!(s.iter().all(|&x| x == 0), "calloc({n}) not zeroed: {p:?}");
        }
        let b = Block { p: p.addr(), n, off: off % OFFSETS };
        b.fill_from(0);
        b
    }

    fn fill_from(self, from: usize) {
        // SAFETY: the block has `n` usable bytes and belongs to the caller.
        unsafe {
            ptr::copy_nonoverlapping(
                pat()[self.off + from..].as_ptr(),
                self.ptr().add(from),
                self.n - from,
            );
        }
    }

    fn verify(self, what: &str) {
        // SAFETY: as in `fill_from`.
        let s = unsafe { std::slice::from_raw_parts(self.ptr(), self.n) };
        let want = &pat()[self.off..self.off + self.n];
        if s != want {
            let at = s.iter().zip(want).position(|(a, b)| a != b).unwrap();
            panic!("{what}: block {:#x} ({} B) overwritten at offset {at}", self.p, self.n);
        }
    }

    /// `realloc` to `n` bytes: the prefix must survive; the rest is filled.
    fn realloc(self, n: usize) -> Block {
        // SAFETY: a live block of ours, not used again under its old address.
        let q = unsafe { api::realloc(self.ptr().cast(), n) }.cast::<u8>();
        assert!(!q.is_null(), "realloc({n}) failed");
        assert_eq!(q.addr() % 16, 0);
        let b = Block { p: q.addr(), n, off: self.off };
        let keep = self.n.min(n);
        Block { n: keep, ..b }.verify("prefix after realloc");
        b.fill_from(keep);
        b
    }

    fn free(self, what: &str) {
        self.verify(what);
        // SAFETY: a live block of ours, freed once.
        unsafe { api::free(self.ptr().cast::<c_void>()) };
    }

    /// The bytes the block occupies (usable size, header excluded).
    fn range(self) -> (usize, usize) {
        // SAFETY: a live block of ours.
        (self.p, self.p + unsafe { api::malloc_usable_size(self.ptr().cast()) })
    }
}

/// Asserts that no two of `ranges` overlap.
fn assert_disjoint(ranges: &mut [(usize, usize)], what: &str) {
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "{what}: live blocks overlap: {:#x?} and {:#x?}", w[0], w[1]);
    }
}

/// A request size: mostly 1..2000, some up to 16 KiB, a few up to 64 KiB.
fn churn_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=89 => 1 + rng.below(2000),
        90..=97 => 2000 + rng.below(14 << 10),
        _ => rng.below(MAX_FILL + 1),
    }
}

/// The live blocks of one thread, with their ranges kept sorted for the overlap check.
#[derive(Default)]
struct Live {
    blocks: Vec<Block>,
    ranges: BTreeMap<usize, usize>,
}

impl Live {
    fn insert(&mut self, b: Block) {
        let (s, e) = b.range();
        if let Some((&ps, &pe)) = self.ranges.range(..=s).next_back() {
            assert!(pe <= s, "block {s:#x}..{e:#x} overlaps live {ps:#x}..{pe:#x}");
        }
        if let Some((&ns, &ne)) = self.ranges.range(s..).next() {
            assert!(e <= ns, "block {s:#x}..{e:#x} overlaps live {ns:#x}..{ne:#x}");
        }
        self.ranges.insert(s, e);
        self.blocks.push(b);
    }

    fn take(&mut self, k: usize) -> Block {
        let b = self.blocks.swap_remove(k);
        assert!(self.ranges.remove(&b.p).is_some());
        b
    }

    /// [`Live::take`] of a block chosen by `rng` (there must be one).
    fn take_any(&mut self, rng: &mut Rng) -> Block {
        let k = rng.below(self.blocks.len());
        self.take(k)
    }

    /// Frees every block, verifying its contents (`what` names the place in a failure).
    fn free_all(&mut self, what: &str) {
        self.ranges.clear();
        for b in self.blocks.drain(..) {
            b.free(what);
        }
    }
}

/// 16 threads churning malloc/calloc/realloc/free with contents verified; twice during the run
/// all threads stop and the union of their live blocks is checked for overlap.
#[test]
fn sixteen_threads_churn_with_contents_checked() {
    let (_s, base) = begin();
    const THREADS: usize = 16;
    const OPS: usize = 30_000;
    let barrier = Rendezvous::new(THREADS);
    let all: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let all = Arc::clone(&all);
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 1);
                let mut live = Live::default();
                let target = 50 + rng.below(300);
                for op in 0..OPS {
                    if op % (OPS / 2) == OPS / 2 - 1 {
                        // A quiescent point: every thread's live set is published and checked.
                        all.lock().unwrap().extend(live.ranges.iter().map(|(&s, &e)| (s, e)));
                        if barrier.wait() {
                            let mut v = std::mem::take(&mut *all.lock().unwrap());
                            assert_disjoint(&mut v, "all threads");
                        }
                        barrier.wait();
                        for b in &live.blocks {
                            b.verify("after the global check");
                        }
                    }
                    let r = rng.below(100);
                    if live.blocks.is_empty() || (r < 45 && live.blocks.len() < 2 * target) {
                        let n = churn_size(&mut rng);
                        let b = Block::new(n, rng.below(OFFSETS), r % 20 == 0);
                        live.insert(b);
                    } else if r < 85 || live.blocks.len() > 2 * target {
                        live.take_any(&mut rng).free("churn free");
                    } else {
                        let b = live.take_any(&mut rng);
                        b.verify("before realloc");
                        let n = churn_size(&mut rng);
                        live.insert(b.realloc(n));
                    }
                }
                live.free_all("final free");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_all_returned(base, "after churn", "blocks leaked: exited threads' caches not drained?");
}

/// Producers allocate and hand blocks through channels to consumers, which verify, sometimes
/// reallocate, and free them (into their own caches, which their own allocations then reuse).
#[test]
fn cross_thread_frees_through_channels() {
    const PRODUCERS: usize = 8;
    const CONSUMERS: usize = 8;
    const PER_PRODUCER: usize = 20_000;
    let (_s, base) = begin();
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..CONSUMERS).map(|_| mpsc::sync_channel::<Block>(256)).unzip();
    let consumed = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let consumed = Arc::clone(&consumed);
            thread::spawn(move || {
                let mut rng = Rng::new(1000 + t as u64);
                let mut own = Live::default();
                for b in rx {
                    b.verify("received block");
                    let b = if rng.below(5) == 0 { b.realloc(churn_size(&mut rng)) } else { b };
                    b.free("consumer free");
                    consumed.fetch_add(1, Ordering::Relaxed);
                    // Own allocations reuse the blocks just freed into this cache.
                    own.insert(Block::new(1 + rng.below(1500), rng.below(OFFSETS), false));
                    if own.blocks.len() > 64 {
                        own.take_any(&mut rng).free("consumer's own block");
                    }
                }
                own.free_all("consumer's own block at exit");
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let senders = senders.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(2000 + t as u64);
                let mut own = Live::default();
                for _ in 0..PER_PRODUCER {
                    let b = Block::new(churn_size(&mut rng), rng.below(OFFSETS), false);
                    senders[rng.below(CONSUMERS)].send(b).unwrap();
                    // Some blocks stay with the producer for a while (its cache then holds a
                    // mix of its own frees and refills).
                    if rng.below(4) == 0 {
                        own.insert(Block::new(1 + rng.below(600), rng.below(OFFSETS), false));
                    }
                    if own.blocks.len() > 32 {
                        own.take_any(&mut rng).free("producer's own block");
                    }
                }
                own.free_all("producer's own block at exit");
            })
        })
        .collect();
    drop(senders);
    for h in producers.into_iter().chain(consumers) {
        h.join().unwrap();
    }
    assert_eq!(consumed.load(Ordering::Relaxed), PRODUCERS * PER_PRODUCER);
    assert_all_returned(base, "after cross-thread frees", "blocks leaked");
}

/// Threads that exit while their caches are full: the thread-exit destructor must drain them.
/// Also threads that only ever free (their cache is created by a free), and a pthread key
/// destructor that allocates and frees after brkmalloc's own destructor ran (the late frees go
/// to the central heap or a re-armed cache, and are not lost).
#[test]
fn threads_exiting_with_full_caches_give_every_block_back() {
    let (_s, base) = begin();
    const THREADS: usize = 16;

    // 1. Full caches at exit, checked while the threads are parked.
    let parked = Rendezvous::new(THREADS + 1);
    let go = Rendezvous::new(THREADS + 1);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let parked = Arc::clone(&parked);
            let go = Arc::clone(&go);
            thread::spawn(move || {
                let mut rng = Rng::new(3000 + t as u64);
                let mut live = Live::default();
                for _ in 0..3000 {
                    live.insert(Block::new(1 + rng.below(1024), rng.below(OFFSETS), false));
                }
                while !live.blocks.is_empty() {
                    live.take_any(&mut rng).free("before exit");
                }
                parked.wait();
                go.wait();
            })
        })
        .collect();
    parked.wait();
    let held = brkmalloc::heap_stats().used_blocks - base;
    assert!(held >= THREADS * 100, "the parked threads' caches should hold blocks ({held})");
    assert_heap_ok("threads parked with full caches");
    go.wait();
    for h in handles {
        h.join().unwrap();
    }
    assert_all_returned(
        base,
        "after the threads exited",
        "exited threads' caches were not drained",
    );

    // 2. Threads that only free: blocks allocated here, freed there.
    let mut rng = Rng::new(77);
    let blocks: Vec<Block> =
        (0..4000).map(|_| Block::new(1 + rng.below(3000), rng.below(OFFSETS), false)).collect();
    let handles: Vec<_> = blocks
        .chunks(1000)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            thread::spawn(move || {
                for b in chunk {
                    b.free("freed by a thread that never allocated");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_all_returned(
        base,
        "after free-only threads",
        "free-only threads' caches were not drained",
    );

    // 3. A later pthread key whose destructor allocates and frees in every destructor round,
    //    after brkmalloc's key (created earlier, so its destructor runs first in each round).
    // SAFETY: a fresh block of ours, freed once.
    unsafe { api::free(api::malloc(8)) };
    static KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();
    static LATE_OK: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn late(value: *mut c_void) {
        let round = value.addr();
        let mut ok = true;
        let mut ps = [ptr::null_mut::<c_void>(); 64];
        for (k, slot) in ps.iter_mut().enumerate() {
            let n = 1 + (k * 37 + round * 11) % 900;
            *slot = api::malloc(n);
            if slot.is_null() {
                ok = false;
                continue;
            }
            // SAFETY: `n` usable bytes.
            unsafe { ptr::write_bytes(slot.cast::<u8>(), (k + round) as u8, n) };
        }
        for (k, &p) in ps.iter().enumerate() {
            if p.is_null() {
                continue;
            }
            let n = 1 + (k * 37 + round * 11) % 900;
            // SAFETY: as above.
            let s = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
            ok &= s.iter().all(|&x| x == (k + round) as u8);
            // SAFETY: a live block of ours, freed once.
            unsafe { api::free(p) };
        }
        if ok {
            LATE_OK.fetch_add(1, Ordering::Relaxed);
        }
        if round < 4 {
            // SAFETY: a valid key; the value is a round counter, never dereferenced.
            unsafe {
                libc::pthread_setspecific(*KEY.get().unwrap(), ptr::without_provenance(round + 1))
            };
        }
    }
    let key = *KEY.get_or_init(|| {
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: a valid out slot; the destructor lives forever.
        assert_eq!(unsafe { libc::pthread_key_create(&mut k, Some(late)) }, 0);
        k
    });
    LATE_OK.store(0, Ordering::Relaxed);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng::new(5000 + t);
                let mut live = Live::default();
                for _ in 0..500 {
                    live.insert(Block::new(1 + rng.below(700), rng.below(OFFSETS), false));
                }
                live.free_all("before exit");
                // SAFETY: a valid key; the value is a round counter, never dereferenced.
                unsafe { libc::pthread_setspecific(key, ptr::without_provenance(1)) };
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // glibc runs up to 4 destructor rounds: the late destructor ran in each of them.
    assert_eq!(LATE_OK.load(Ordering::Relaxed), 8 * 4, "late destructor rounds (all verified)");
    assert_all_returned(
        base,
        "after late destructors",
        "blocks freed by a late destructor were lost",
    );
}

/// What a forked child does: allocate, verify, free through brkmalloc, check the heap and its
/// counters. Only brkmalloc and memory writes: no std allocation, no locks, no panics.
/// Returns 0 on success, else the number of the failed check.
fn child_work(round: usize) -> i32 {
    const N: usize = 300;
    if brkmalloc::check_heap().is_err() {
        return 2;
    }
    brkmalloc::flush_thread_cache();
    let before = brkmalloc::heap_stats().used_blocks;
    let mut ps = [ptr::null_mut::<u8>(); N];
    let intact = |p: *mut u8, n: usize, v: u8| {
        // SAFETY: a live block with at least `n` usable bytes.
        let s = unsafe { std::slice::from_raw_parts(p, n) };
        // All bytes equal `v`: the first does, and each equals the next (a memcmp, no loop in
        // debug builds).
        s[0] == v && s[1..] == s[..n - 1]
    };
    let size = |k: usize| match k % 50 {
        0 => 40_000 + k,
        1 => 200_000 + k,
        _ => 1 + (k * 131 + round * 7) % 3000,
    };
    for (k, slot) in ps.iter_mut().enumerate() {
        let p = if k % 10 == 3 { api::calloc(1, size(k)) } else { api::malloc(size(k)) };
        if p.is_null() || p.addr() % 16 != 0 {
            return 3;
        }
        let p = p.cast::<u8>();
        if k % 10 == 3 && !intact(p, size(k), 0) {
            return 4;
        }
        // SAFETY: as above.
        unsafe { ptr::write_bytes(p, k as u8, size(k)) };
        *slot = p;
    }
    for (k, &p) in ps.iter().enumerate() {
        if !intact(p, size(k), k as u8) {
            return 5;
        }
    }
    for (k, slot) in ps.iter_mut().enumerate().filter(|(k, _)| k % 3 == 0) {
        let n = size(k) / 2 + 1;
        // SAFETY: a live block of ours.
        let q = unsafe { api::realloc(slot.cast(), n) }.cast::<u8>();
        if q.is_null() || !intact(q, n, k as u8) {
            return 6;
        }
        *slot = q;
    }
    if brkmalloc::check_heap().is_err() {
        return 7;
    }
    for (k, &p) in ps.iter().enumerate() {
        let n = if k % 3 == 0 { size(k) / 2 + 1 } else { size(k) };
        if !intact(p, n, k as u8) {
            return 8;
        }
        // SAFETY: a live block of ours, freed once.
        unsafe { api::free(p.cast()) };
    }
    if brkmalloc::check_heap().is_err() {
        return 9;
    }
    brkmalloc::flush_thread_cache();
    if brkmalloc::heap_stats().used_blocks != before {
        return 10;
    }
    0
}

/// Forks 50 times while 8 threads allocate and free in a loop (their caches full, and the
/// central lock often held at the moment of the fork). Each child allocates through
/// brkmalloc, verifies, and exits 0; a deadlock is caught by a watchdog.
#[test]
fn fork_while_threads_hold_cached_blocks() {
    let (_s, base) = begin();
    // The C library registers the handlers from a constructor; a Rust program calling `api`
    // directly registers them itself.
    brkmalloc::fork::install();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let rounds = Arc::clone(&rounds);
            thread::spawn(move || {
                let mut rng = Rng::new(7000 + t);
                let mut live = Live::default();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        live.insert(Block::new(churn_size(&mut rng), rng.below(OFFSETS), false));
                    }
                    while !live.blocks.is_empty() {
                        live.take_any(&mut rng).free("worker free");
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rounds.load(Ordering::Relaxed) < 16 {
        assert!(Instant::now() < deadline, "the workers stopped (one panicked?)");
        thread::sleep(Duration::from_millis(1));
    }
    let mut failure = None;
    for round in 0..50 {
        // The forking thread's own cache holds blocks too.
        let mine: Vec<Block> =
            (0..32).map(|k| Block::new(1 + (k * 97) % 2000, k + round, false)).collect();
        for b in &mine {
            b.free("parent free");
        }
        // SAFETY: the child only calls brkmalloc and async-signal-safe libc functions, then
        // `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: async-signal-safe; the watchdog kills a deadlocked child.
            unsafe { libc::alarm(20) };
            let code = child_work(round);
            // SAFETY: leaves the child without running any parent state's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: a child of ours; `status` is a valid out slot.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(r >= 0, "waitpid failed");
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: a child of ours that has not been reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failure = Some(if libc::WIFEXITED(status) {
                format!("fork {round}: child failed check {}", libc::WEXITSTATUS(status))
            } else {
                format!(
                    "fork {round}: child killed by signal {} (SIGALRM = deadlock)",
                    libc::WTERMSIG(status)
                )
            });
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in workers {
        h.join().unwrap();
    }
    if let Some(f) = failure {
        panic!("{f}");
    }
    assert_all_returned(base, "parent after forks", "parent leaked blocks");
}

/// 100,000 short-lived threads, each allocating and freeing small blocks and exiting with
/// blocks in its cache: the heap must not grow with the number of threads, and every block
/// must come back.
#[test]
fn hundred_thousand_short_lived_threads() {
    let (_s, base) = begin();
    const WAVES: usize = 2000;
    const PER_WAVE: usize = 50;
    const BLOCKS: usize = 24;
    let start = Instant::now();
    let mut heap_after_1000 = 0;
    for wave in 0..WAVES {
        let handles: Vec<_> = (0..PER_WAVE)
            .map(|t| {
                thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let mut rng = Rng::new((wave * PER_WAVE + t) as u64);
                        let mut blocks = [Block { p: 0, n: 0, off: 0 }; BLOCKS];
                        let mut ranges = [(0, 0); BLOCKS];
                        for (b, r) in blocks.iter_mut().zip(&mut ranges) {
                            *b = Block::new(1 + rng.below(600), rng.below(OFFSETS), false);
                            *r = (b.p, b.p + b.n);
                        }
                        assert_disjoint(&mut ranges, "short-lived thread");
                        // Free all but a few, reuse some from the cache, then free the rest:
                        // the thread exits with its cache holding blocks.
                        for b in &blocks[4..] {
                            b.free("short-lived thread");
                        }
                        for b in &mut blocks[4..BLOCKS / 2] {
                            *b = Block::new(1 + rng.below(600), rng.below(OFFSETS), false);
                        }
                        for b in &blocks[..BLOCKS / 2] {
                            b.free("short-lived thread, second round");
                        }
                    })
                    .expect("spawn")
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        if wave + 1 == 1000 / PER_WAVE {
            assert_eq!(used_blocks(), base, "after 1000 threads");
            heap_after_1000 = brkmalloc::heap_stats().heap_bytes;
        }
    }
    let elapsed = start.elapsed();
    let st = brkmalloc::heap_stats();
    eprintln!(
        "{} threads in {elapsed:?}; heap {} KiB after 1000 threads, {} KiB at the end",
        WAVES * PER_WAVE,
        heap_after_1000 >> 10,
        st.heap_bytes >> 10
    );
    assert_all_returned(base, "after 100,000 threads", "exited threads leaked blocks");
    assert!(
        st.heap_bytes < heap_after_1000 + (16 << 20),
        "heap grew from {heap_after_1000} to {} bytes over 99,000 threads",
        st.heap_bytes
    );
}
