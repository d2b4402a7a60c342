//! The thread-event countdown: one word the malloc fast path counts down on every pop, whose
//! sign says that a thread event is due — a cache collection, or (heap profiling on) a
//! profile sample.
//!
//! Each pop subtracts its class's *weight* (`value -= weights[c]`, then `js`: one load more
//! than a plain decrement). Profiling off, every weight is 1: the word counts pops, a
//! collection is due every [`GC_INTERVAL`] of them, and the pops are the statistics'
//! `cache_allocs`, as before. Profiling on, a weight is `usable_size << 32 | 1`: the high half
//! counts bytes down to the next event (the next sample, or at most [`GC_CHECK_BYTES`] to look
//! at the collection), the low half still counts pops, so the statistics stay exact and the
//! collection stays driven by pops (checked at the next event).
//!
//! ```text
//!   value (i64) = (bytes_left − 1) << 32  |  low      armed with low = u32::MAX
//!   after k pops of S bytes:  armed − value = S << 32 | k     (exact while k < 2^32)
//!   value < 0  ⇔  S ≥ bytes_left                              (bytes_left < 2^31)
//! ```

use crate::size_class::{CLASS_CODES, HEADER, NCLASSES, class_size};
use crate::stats;

/// Allocations between two collections of one class (round robin).
pub const GC_INTERVAL: u32 = 1024;
/// With profiling on, the longest byte count between two events, so that a due collection
/// is noticed soon (1024 pops of the smallest class are 24 KiB).
pub const GC_CHECK_BYTES: u64 = 32 << 10;
/// `sample_left` while no sample is armed: profiling off, or a sample being recorded (the
/// re-entrancy guard: allocations made while unwinding are not sampled). Zero, so that a
/// zero-filled countdown has none (E1).
pub const NO_SAMPLE: u64 = 0;
/// The low half a byte-mode countdown is armed with.
const LOW: i64 = u32::MAX as i64;
/// Longest byte count one arming covers (the high half stays non-negative).
const MAX_ARM: u64 = (1 << 31) - 1;

/// The thread events due after an allocation ([`Countdown::take_events`]).
///
/// # Invariants
/// None beyond its fields': plain flags, each acted on at most once by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// A collection ([`super::ThreadCache::collect`]).
    pub collect: bool,
    /// A heap profile sample of this allocation: sampling stays disarmed until the caller
    /// sets the next interval ([`Countdown::start_sampling`]).
    pub sample: bool,
}

/// One thread's event countdown (see the module documentation).
///
/// # Invariants
/// - E1: all-zero bytes are a valid idle countdown (weights 0: pops count nothing), so a
///   zero-filled cache is one (T3).
/// - E2: `settled - value` (wrapping) is `S << 32 | k`: the `k` pops and (byte mode) `S` bytes
///   counted since the last settlement, not yet in the statistics or in `gc_pops`/`sample_left`.
/// - E3: after arming, `value < 0` iff a collection is due (pop mode: `gc_pops` reached
///   [`GC_INTERVAL`]) or, in byte mode, the bytes armed for (`min(sample_left,
///   GC_CHECK_BYTES)`) were counted.
#[derive(Debug)]
#[repr(C)]
pub struct Countdown {
    /// Counted down by the weights; negative: an event is due (E3).
    value: i64,
    /// `value` at the last settlement (E2).
    settled: i64,
    /// Per class code: 1, or in byte mode `usable << 32 | 1`; 0 for codes without a list.
    weights: [u64; CLASS_CODES],
    /// Bytes until the next sample ([`NO_SAMPLE`]: none armed), as of the last settlement.
    sample_left: u64,
    /// The profiler's per-thread generator state (0: not seeded yet).
    rng: u64,
    /// Pops since the last collection, as of the last settlement.
    gc_pops: u32,
    /// 1 when the weights count bytes (profiling on), else 0.
    bytes_mode: u16,
    /// 1 when the bytes counted reached the armed sample and [`Self::take_events`] has not
    /// reported it yet.
    sample_due: u16,
}

impl Countdown {
    /// An idle countdown (E1).
    pub const fn new() -> Self {
        Self {
            value: 0,
            settled: 0,
            weights: [0; CLASS_CODES],
            sample_left: NO_SAMPLE,
            rng: 0,
            gc_pops: 0,
            bytes_mode: 0,
            sample_due: 0,
        }
    }

    /// Counts a pop of class code `c`: the fast path's one load and one subtraction.
    #[inline(always)]
    pub fn count(&mut self, c: usize) {
        // SAFETY: class codes are below CLASS_CODES (the caller's table or six header bits).
        let w = unsafe { *self.weights.get_unchecked(c) };
        self.value = self.value.wrapping_sub(w as i64);
    }

    /// Whether an event is due (E3): then call [`Self::take_events`].
    #[inline(always)]
    pub fn due(&self) -> bool {
        self.value < 0
    }

    /// Starts counting pops (cache activation): weight 1 for every class with a list.
    pub fn start(&mut self) {
        for c in 0..NCLASSES {
            self.weights[c] = 1;
        }
        self.gc_pops = 0;
        self.arm();
    }

    /// Switches to byte mode (profiling on), or stays there, with `interval` bytes to the next
    /// sample.
    pub fn start_sampling(&mut self, interval: u64) {
        self.settle();
        self.sample_due = 0;
        for c in 0..NCLASSES {
            self.weights[c] = ((class_size(c) - HEADER) as u64) << 32 | 1;
        }
        self.bytes_mode = 1;
        self.sample_left = interval.max(1);
        self.arm();
    }

    /// Whether a sample is armed (profiling on and no sample being recorded).
    pub fn sampling(&self) -> bool {
        self.sample_left != NO_SAMPLE
    }

    /// The profiler's generator state.
    pub fn rng(&mut self) -> &mut u64 {
        &mut self.rng
    }

    /// Moves what was counted since the last settlement into the statistics, the collection
    /// count and the sampling countdown (E2). The countdown itself runs on.
    pub fn settle(&mut self) {
        let d = self.settled.wrapping_sub(self.value) as u64;
        self.settled = self.value;
        let pops = d & u64::from(u32::MAX);
        stats::add_cache_allocs(pops as usize);
        self.gc_pops = self.gc_pops.saturating_add(pops as u32);
        self.take_bytes(d >> 32);
    }

    /// Counts `bytes` towards the armed sample; when they reach it, the sample is due and
    /// sampling disarmed until the next interval is set.
    fn take_bytes(&mut self, bytes: u64) {
        if self.sample_left == NO_SAMPLE {
            return;
        }
        if bytes >= self.sample_left {
            self.sample_left = NO_SAMPLE;
            self.sample_due = 1;
        } else {
            self.sample_left -= bytes;
        }
    }

    /// After [`Self::due`]: settles, says which events are due (a due sample disarms
    /// sampling) and re-arms for the next one. `extra` bytes were allocated besides the pops
    /// (an allocation that bypassed the cache; 0 after a pop).
    pub fn take_events(&mut self, extra: u64) -> Events {
        self.settle();
        self.take_bytes(extra);
        let sample = core::mem::take(&mut self.sample_due) != 0;
        let collect = self.gc_pops >= GC_INTERVAL;
        self.arm();
        Events { collect, sample }
    }

    /// Counts an allocation of `n` bytes that bypassed the cache, towards the next sample
    /// only; `true` when it is to be sampled (sampling then stays disarmed, as after
    /// [`Self::take_events`]).
    pub fn count_bypass(&mut self, n: usize) -> bool {
        if !self.sampling() {
            return false;
        }
        self.take_events(n as u64).sample
    }

    /// A collection ran: the count starts again.
    pub fn collected(&mut self) {
        self.settle();
        self.gc_pops = 0;
        self.arm();
    }

    /// Arms `value` for the nearest event (E3); settled first.
    fn arm(&mut self) {
        self.value = if self.sample_due != 0 {
            -1
        } else if self.bytes_mode == 0 {
            i64::from(GC_INTERVAL.saturating_sub(self.gc_pops)) - 1
        } else {
            let b = match self.sample_left {
                NO_SAMPLE => GC_CHECK_BYTES,
                left => left.min(GC_CHECK_BYTES).min(MAX_ARM),
            };
            ((b as i64 - 1) << 32) | LOW
        };
        self.settled = self.value;
    }
}

impl Default for Countdown {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_mode_fires_every_interval_and_counts_pops() {
        let mut cd = Countdown::new();
        cd.start();
        for round in 0..3 {
            for i in 1..=GC_INTERVAL {
                cd.count(0);
                assert_eq!(cd.due(), i == GC_INTERVAL, "round {round} pop {i}");
            }
            let ev = cd.take_events(0);
            assert_eq!(ev, Events { collect: true, sample: false });
            cd.collected();
            assert!(!cd.due());
        }
    }

    #[test]
    fn byte_mode_fires_when_the_interval_is_used_up() {
        let mut cd = Countdown::new();
        cd.start();
        let usable = (class_size(3) - HEADER) as u64;
        // 10 pops' worth of bytes, and a bit: the 11th pop crosses.
        cd.start_sampling(10 * usable + 1);
        for i in 1..=11 {
            cd.count(3);
            assert_eq!(cd.due(), i == 11, "pop {i}");
        }
        let ev = cd.take_events(0);
        assert!(ev.sample && !ev.collect);
        assert!(!cd.sampling(), "disarmed until the next interval is set");
        cd.start_sampling(1 << 40);
        assert!(cd.sampling());
        // Collections still come every GC_INTERVAL pops, noticed at the next event (every
        // GC_CHECK_BYTES, here 1366 pops of 24 bytes): 4 in 6 intervals.
        let mut fired = 0;
        for _ in 0..6 * GC_INTERVAL {
            cd.count(0);
            if cd.due() {
                let ev = cd.take_events(0);
                assert!(!ev.sample);
                if ev.collect {
                    fired += 1;
                    cd.collected();
                }
            }
        }
        assert_eq!(fired, 4, "collections");
    }

    #[test]
    fn bypassing_allocations_count_towards_the_sample() {
        let mut cd = Countdown::new();
        assert!(!cd.count_bypass(1 << 30), "no sampling armed");
        cd.start();
        cd.start_sampling(1000);
        assert!(!cd.count_bypass(999));
        assert!(cd.count_bypass(1));
        assert!(!cd.count_bypass(1 << 20), "disarmed while recording");
    }
}
