//! The cache of freed large mappings: page ranges of freed large blocks, kept mapped and
//! resident so that the next large request reuses them instead of paying a page fault and a
//! kernel zeroing for every page of a fresh mapping.
//!
//! ```text
//!  free(large) ──► give(span) ──► [ span | span | … ]  ≤ bound() bytes, ≤ SLOTS spans
//!                                   │ best fit (smallest ≥ len), a large rest split off
//!  malloc(large) ◄── obtain(len) ◄──┘ else the largest span grown with mremap, else mmap
//!                   decay(): spans unused for purge_delay_ms are unmapped
//! ```
//!
//! The cache holds whole pages only; a span is one page range inside one kernel mapping (a
//! split keeps both halves inside it), so a block carved from a span can still be resized with
//! `mremap`. No span is ever merged with a neighbour: two adjacent spans may lie in two kernel
//! mappings, and `mremap` refuses a range that spans two.
//!
//! The lock (`LARGE_CACHE`) comes after `LARGE` in the lock order (`sync.rs`): `large.rs`
//! takes it while holding the registry lock on the realloc path; nothing takes the registry
//! lock while holding this one. No syscall runs under it: spans are taken out first and
//! unmapped after the lock is released.

use core::ptr::NonNull;

use crate::config;
use crate::os::{self, PAGE};
use crate::sync::{AtomicUsize, Mutex, Ordering};

/// Most spans the cache holds.
pub const SLOTS: usize = 256;
/// A split-off remainder shorter than this is unmapped instead of cached (too small to serve a
/// large block; it would only take a slot).
pub const MIN_SPAN: usize = 64 << 10;
/// Automatic bound (`large_cache:auto`, the default): at least this many bytes, or the room
/// left under the peak of live large bytes plus a slack of 1/[`AUTO_PEAK_SLACK_DIVISOR`],
/// whichever is larger (`large.rs` computes the room).
pub const AUTO_MIN_BYTES: usize = 64 << 20;
/// See [`AUTO_MIN_BYTES`].
pub const AUTO_PEAK_SLACK_DIVISOR: usize = 4;
/// … and never more than this many times the live large bytes (above the floor).
pub const AUTO_LIVE_FACTOR: usize = 4;

/// A cached page range.
///
/// # Invariants
/// - SP1: `[base, base + len)` is page-aligned, `len > 0`, lies inside one mapping of ours, and
///   no live block or other span overlaps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub base: NonNull<u8>,
    /// Length in bytes (a page multiple).
    pub len: usize,
    /// When it entered the cache (ms on the coarse monotonic clock).
    pub since_ms: usize,
}

// SAFETY: a span is an address range owned by the cache; moving it between threads moves the
// ownership (SP1), and the cache lives in a Mutex.
unsafe impl Send for Span {}

const NO_SPAN: Span = Span { base: NonNull::dangling(), len: 0, since_ms: 0 };

/// The spans themselves, without syscalls (the functions below do those).
///
/// # Invariants
/// - LC1: `spans[..n]` are the cached spans (each SP1, pairwise disjoint); `n <= SLOTS`.
/// - LC2: `bytes` is the sum of `spans[..n].len`.
/// - LC3: under the automatic bound, a freed span is admitted only while `churn` is set: a
///   large request missed after a span had been refused (the program maps again what it
///   freed), until an idle pass finds no hit since the previous one. A burst freed for good is
///   unmapped at once, as glibc does, instead of staying resident until the next call.
#[derive(Debug)]
pub struct LargeCache {
    spans: [Span; SLOTS],
    n: usize,
    bytes: usize,
    churn: bool,
    refused: bool,
    hit: bool,
}

impl LargeCache {
    /// An empty cache, admitting nothing yet under the automatic bound (LC3).
    pub const fn new() -> Self {
        Self { spans: [NO_SPAN; SLOTS], n: 0, bytes: 0, churn: false, refused: false, hit: false }
    }

    /// Whether a freed span may enter (LC3): always under a fixed bound (`auto` false), else
    /// while the program churns; a refusal is remembered.
    pub fn admits(&mut self, auto: bool) -> bool {
        if !auto || self.churn {
            return true;
        }
        self.refused = true;
        false
    }

    /// A large request found nothing cached: if a span was refused before, the program maps
    /// again what it freed, and freed spans are admitted from now on (LC3).
    pub fn note_miss(&mut self) {
        self.churn |= self.refused;
    }

    /// A large request was served from the cache.
    pub fn note_hit(&mut self) {
        self.hit = true;
    }

    /// An idle pass: without a hit since the previous one, the cache stops admitting (LC3).
    pub fn note_idle_pass(&mut self) {
        if !self.hit {
            self.churn = false;
            self.refused = false;
        }
        self.hit = false;
    }

    /// Bytes cached.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Spans cached.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether `len` more bytes fit under `bound` in a free slot.
    pub fn fits(&self, len: usize, bound: usize) -> bool {
        self.n < SLOTS && self.bytes.saturating_add(len) <= bound
    }

    /// Adds `s`; the caller checked [`Self::fits`] (LC1: a slot is free).
    pub fn push(&mut self, s: Span) {
        debug_assert!(self.n < SLOTS);
        self.spans[self.n] = s;
        self.n += 1;
        self.bytes += s.len;
    }

    fn remove(&mut self, i: usize) -> Span {
        let s = self.spans[i];
        self.n -= 1;
        self.spans[i] = self.spans[self.n];
        self.bytes -= s.len;
        s
    }

    /// Removes the smallest span of at least `len` bytes (best fit).
    pub fn take_fit(&mut self, len: usize) -> Option<Span> {
        let i =
            (0..self.n).filter(|&i| self.spans[i].len >= len).min_by_key(|&i| self.spans[i].len)?;
        Some(self.remove(i))
    }

    /// Removes the largest span.
    pub fn take_largest(&mut self) -> Option<Span> {
        let i = (0..self.n).max_by_key(|&i| self.spans[i].len)?;
        Some(self.remove(i))
    }

    /// Removes the span that entered the cache first.
    pub fn take_oldest(&mut self) -> Option<Span> {
        let i = (0..self.n).min_by_key(|&i| self.spans[i].since_ms)?;
        Some(self.remove(i))
    }

    /// Removes a span shorter than `len` bytes.
    pub fn take_shorter(&mut self, len: usize) -> Option<Span> {
        let i = (0..self.n).find(|&i| self.spans[i].len < len)?;
        Some(self.remove(i))
    }

    /// Removes a span that has been cached for at least `delay_ms` at `now_ms`.
    pub fn take_idle(&mut self, now_ms: usize, delay_ms: usize) -> Option<Span> {
        let i = (0..self.n).find(|&i| now_ms.wrapping_sub(self.spans[i].since_ms) >= delay_ms)?;
        Some(self.remove(i))
    }
}

impl Default for LargeCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide cache (lock `LARGE_CACHE`, after `LARGE` in the lock order).
pub(crate) static CACHE: Mutex<LargeCache> = Mutex::new(LargeCache::new());

/// Bytes cached (statistics, Relaxed; a copy of LC2 written under the lock).
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// Spans cached (statistics, Relaxed).
static SPANS: AtomicUsize = AtomicUsize::new(0);
/// Large requests served (wholly or partly) from cached pages (statistics, Relaxed).
static HITS: AtomicUsize = AtomicUsize::new(0);
/// Large requests that needed a fresh mapping (statistics, Relaxed).
static MISSES: AtomicUsize = AtomicUsize::new(0);
/// Bytes unmapped by decay and `malloc_trim` (statistics, Relaxed).
static DECAYED: AtomicUsize = AtomicUsize::new(0);

/// The cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes cached now.
    pub bytes: usize,
    /// Spans cached now.
    pub spans: usize,
    /// Large requests served from cached pages.
    pub hits: usize,
    /// Large requests that mapped fresh memory.
    pub misses: usize,
    /// Bytes returned to the OS after `purge_delay_ms` idle (and by `malloc_trim`).
    pub decayed_bytes: usize,
}

/// A snapshot of the counters.
pub fn stats() -> CacheStats {
    let r = Ordering::Relaxed;
    CacheStats {
        bytes: BYTES.load(r),
        spans: SPANS.load(r),
        hits: HITS.load(r),
        misses: MISSES.load(r),
        decayed_bytes: DECAYED.load(r),
    }
}

/// Locks the cache, runs `f`, publishes the byte and span counts, unlocks.
fn with_cache<R>(f: impl FnOnce(&mut LargeCache) -> R) -> R {
    let mut c = CACHE.lock();
    let r = f(&mut c);
    // Relaxed: statistics.
    BYTES.store(c.bytes(), Ordering::Relaxed);
    SPANS.store(c.len(), Ordering::Relaxed);
    r
}

/// The byte bound in force: `large_cache:N`, or with `large_cache:auto` the larger of
/// [`AUTO_MIN_BYTES`] and `room`: what live large blocks may grow by before they and the cache
/// together pass 5/4 of their peak, at most [`AUTO_LIVE_FACTOR`] times the live bytes.
pub fn bound(room: usize) -> usize {
    // Relaxed: a tuning value (config.rs).
    match config::LARGE_CACHE_BYTES.load(Ordering::Relaxed) {
        config::LARGE_CACHE_AUTO => AUTO_MIN_BYTES.max(room),
        v => v,
    }
}

/// Milliseconds on the coarse monotonic clock (a vDSO read).
pub fn now_ms() -> usize {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as usize * 1000 + ts.tv_nsec as usize / 1_000_000
}

/// Unmaps `s` (it left the cache, or never entered it).
fn unmap(s: Span) {
    // SAFETY: SP1 — a range of one mapping of ours that nothing uses.
    unsafe { os::unmap(s.base, s.len) };
}

/// Gives the page range `[base, base + len)` to the cache (a freed block, a tail cut off a
/// block); it is unmapped instead when the cache is off, when it is shorter than
/// [`MIN_SPAN`] or the mmap threshold (no large request would fit it: the threshold rises
/// with glibc's dynamic rule), or larger than the bound. Spans that became shorter than the
/// threshold go first, then the oldest, to make room.
///
/// # Safety
/// The range is page-aligned, inside one mapping of ours, and nothing uses it any more.
pub unsafe fn give(base: NonNull<u8>, len: usize, room: usize) {
    let s = Span { base, len, since_ms: now_ms() };
    give_span(s, bound(room));
}

fn give_span(s: Span, bound: usize) {
    // Relaxed: a tuning value (config.rs).
    let useful = MIN_SPAN.max(config::MMAP_THRESHOLD.load(Ordering::Relaxed));
    if s.len < useful || s.len > bound {
        return unmap(s);
    }
    // Relaxed: a tuning value (config.rs).
    let auto = config::LARGE_CACHE_BYTES.load(Ordering::Relaxed) == config::LARGE_CACHE_AUTO;
    if !with_cache(|c| c.admits(auto)) {
        return unmap(s);
    }
    loop {
        let victim = with_cache(|c| {
            if let Some(v) = c.take_shorter(useful) {
                Some(v)
            } else if c.fits(s.len, bound) {
                c.push(s);
                None
            } else {
                c.take_oldest()
            }
        });
        match victim {
            Some(v) => unmap(v),
            None => return,
        }
    }
}

/// A span at most this fraction larger than the request is used whole (the block gets the
/// extra pages) instead of being split: splitting off small remainders fragments the cache.
pub const WHOLE_SPAN_SLACK_DIVISOR: usize = 4;

/// Keeps the first `len` bytes of `s` and returns the rest to the cache (or unmaps it), unless
/// the rest is small ([`WHOLE_SPAN_SLACK_DIVISOR`]); returns the base and the length kept.
fn split(s: Span, len: usize, bound: usize) -> (NonNull<u8>, usize) {
    if s.len - len <= len / WHOLE_SPAN_SLACK_DIVISOR {
        return (s.base, s.len);
    }
    // SAFETY: `len < s.len`, inside the span.
    let tail = unsafe { s.base.add(len) };
    give_span(Span { base: tail, len: s.len - len, since_ms: s.since_ms }, bound);
    (s.base, len)
}

/// A mapping of at least `len` bytes (a page multiple) for a new large block: its base, its
/// length, and how many of its first bytes may hold old data (the rest reads as zero). The
/// best-fitting cached span (split), else the largest cached span grown with `mremap`, else a
/// fresh mapping. `None` when memory is exhausted.
pub fn obtain(len: usize, room: usize) -> Option<(NonNull<u8>, usize, usize)> {
    debug_assert!(len % PAGE == 0);
    let bound = bound(room);
    if bound != 0 {
        let (fit, largest) = with_cache(|c| {
            let r = match c.take_fit(len) {
                Some(s) => (Some(s), None),
                None => (None, c.take_largest()),
            };
            if r == (None, None) { c.note_miss() } else { c.note_hit() }
            r
        });
        if let Some(s) = fit {
            // Relaxed: statistics.
            HITS.fetch_add(1, Ordering::Relaxed);
            let (base, got) = split(s, len, bound);
            return Some((base, got, got));
        }
        if let Some(s) = largest {
            // SAFETY: SP1 — a whole range of one mapping, which `remap` grows or moves.
            if let Some(base) = unsafe { os::remap(s.base, s.len, len) } {
                HITS.fetch_add(1, Ordering::Relaxed);
                return Some((base, len, s.len));
            }
            unmap(s);
        }
    }
    MISSES.fetch_add(1, Ordering::Relaxed);
    os::map(len).map(|b| (b, len, 0))
}

/// A cached span of at least `len` bytes (best fit, the rest split off) and its length,
/// without a syscall when one fits; `None` otherwise (nothing is mapped then).
pub fn take_warm(len: usize, room: usize) -> Option<(NonNull<u8>, usize)> {
    let bound = bound(room);
    let s = with_cache(|c| {
        let s = c.take_fit(len);
        if s.is_some() {
            c.note_hit();
        }
        s
    })?;
    HITS.fetch_add(1, Ordering::Relaxed);
    Some(split(s, len, bound))
}

/// Unmaps every span idle for `purge_delay_ms` (the idle purge and the background thread);
/// returns whether anything went back.
pub fn decay() -> bool {
    with_cache(LargeCache::note_idle_pass);
    let delay = config::PURGE_DELAY_MS.load(Ordering::Relaxed);
    release_while(|c| c.take_idle(now_ms(), delay))
}

/// Unmaps the oldest spans until at least `bytes` went back (or the cache is empty): the
/// central heap is about to grow by `bytes`, and memory kept for large blocks that did not come
/// back would otherwise add to the process's peak (seen: sqlite3 frees a 16 MiB sorter buffer,
/// then grows its heap, 110 → 121 MiB peak RSS). Returns whether anything went back.
pub fn give_way(bytes: usize) -> bool {
    // Relaxed: a statistic read as a hint; an empty cache skips the lock.
    if BYTES.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let mut left = bytes;
    release_while(|c| {
        if left == 0 {
            return None;
        }
        let s = c.take_oldest()?;
        left = left.saturating_sub(s.len);
        Some(s)
    })
}

/// Unmaps every span (`malloc_trim`); returns whether anything went back.
pub fn release_all() -> bool {
    release_while(LargeCache::take_oldest)
}

fn release_while(mut pick: impl FnMut(&mut LargeCache) -> Option<Span>) -> bool {
    let mut any = false;
    while let Some(s) = with_cache(&mut pick) {
        DECAYED.fetch_add(s.len, Ordering::Relaxed);
        unmap(s);
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(addr: usize, len: usize, since_ms: usize) -> Span {
        Span { base: NonNull::new(addr as *mut u8).unwrap(), len, since_ms }
    }

    #[test]
    fn best_fit_largest_oldest_and_idle() {
        let mut c = LargeCache::new();
        c.push(span(0x10_0000, 8 * PAGE, 5));
        c.push(span(0x20_0000, 2 * PAGE, 3));
        c.push(span(0x30_0000, 4 * PAGE, 9));
        assert_eq!(c.bytes(), 14 * PAGE);
        assert_eq!(c.take_fit(3 * PAGE).unwrap().len, 4 * PAGE, "smallest that fits");
        assert_eq!(c.take_fit(9 * PAGE), None, "nothing fits");
        assert_eq!(c.take_oldest().unwrap().since_ms, 3);
        assert_eq!(c.take_idle(10, 6), None, "cached at 5, only 5 ms idle");
        assert_eq!(c.take_idle(11, 6).unwrap().len, 8 * PAGE);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        c.push(span(0x10_0000, PAGE, 0));
        c.push(span(0x20_0000, 3 * PAGE, 0));
        assert_eq!(c.take_largest().unwrap().len, 3 * PAGE);
    }

    #[test]
    fn admission_follows_churn() {
        let mut c = LargeCache::new();
        assert!(c.admits(false), "a fixed bound admits always");
        c.note_miss();
        assert!(!c.admits(true), "a fresh cache admits nothing under the automatic bound");
        c.note_miss();
        assert!(c.admits(true), "a miss after a refusal: the program maps again what it freed");
        c.note_hit();
        c.note_idle_pass();
        assert!(c.admits(true), "a hit since the last pass keeps it admitting");
        c.note_idle_pass();
        assert!(!c.admits(true), "a pass without a hit stops it");
        c.note_idle_pass();
        c.note_miss();
        assert!(!c.admits(true), "the pass forgot the refusal: a miss alone does not admit");
    }

    #[test]
    fn fits_respects_bytes_and_slots() {
        let mut c = LargeCache::new();
        assert!(c.fits(10, 10));
        assert!(!c.fits(11, 10));
        for i in 0..SLOTS {
            c.push(span(0x100_0000 + i * 0x1_0000, PAGE, 0));
        }
        assert!(!c.fits(PAGE, usize::MAX), "every slot taken");
    }
}
