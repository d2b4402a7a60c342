//! Fault injection at the memory source seam: [`Faulty`] wraps any [`MemorySource`] and makes
//! chosen OS calls fail — every `n`th call, or at a seeded random rate — while it keeps the
//! ledger of bytes obtained and given back (FS1), so a test can show that no byte was lost.
//!
//! The central heap is generic over its source, so the production heap (`ProcessSource`) pays
//! nothing for this: only the unit tests, the shadow-model test and the fuzz driver
//! (`fuzz/driver.rs`) instantiate the heap over a `Faulty` source.

use core::ptr::NonNull;

use crate::os::{Grown, MemorySource};

/// The OS calls a memory source makes, as counted and failed by [`Faulty`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsCall {
    /// `grow`: `sbrk` up, or an `mmap` fallback segment.
    Grow = 0,
    /// `shrink`: `sbrk` down (the trim of the top of the break).
    Shrink = 1,
    /// `release`: `munmap` of a wholly free fallback segment.
    Release = 2,
    /// `purge`: `madvise(MADV_DONTNEED)` of free pages.
    Purge = 3,
}

/// Number of [`OsCall`] kinds.
pub const NCALLS: usize = 4;

impl OsCall {
    /// Every kind, in index order.
    pub const ALL: [OsCall; NCALLS] =
        [OsCall::Grow, OsCall::Shrink, OsCall::Release, OsCall::Purge];

    /// The bit of this kind in a call mask.
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The name used in tables: the syscall behind it.
    pub const fn name(self) -> &'static str {
        match self {
            OsCall::Grow => "grow (sbrk/mmap)",
            OsCall::Shrink => "shrink (sbrk-)",
            OsCall::Release => "release (munmap)",
            OsCall::Purge => "purge (madvise)",
        }
    }
}

/// A mask with every call kind.
pub const ALL_CALLS: u8 = (1 << NCALLS) - 1;

/// When [`Faulty`] fails a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every call succeeds (as far as the wrapped source lets it).
    Off,
    /// Every `n`th call of each chosen kind fails (counted per kind; `n >= 1`).
    EveryNth(u32),
    /// Each call of a chosen kind fails with probability `per_mille / 1000`, drawn from a
    /// generator seeded with `seed` (the same seed fails the same calls).
    Random {
        /// Seed of the generator (any value; 0 is replaced by a constant).
        seed: u64,
        /// Failure rate in thousandths.
        per_mille: u32,
    },
}

/// A memory source that fails the calls its [`Plan`] picks, and counts.
///
/// # Invariants
/// - FS1: `obtained` is the sum of the lengths of every successful `grow`, `returned` of every
///   successful `shrink` and `release`; the memory the wrapped source still lends the heap is
///   `obtained - returned`.
/// - FS2: a failed call touches neither the wrapped source nor the memory: the caller sees the
///   failure an OS would report (`None`, `false`) and owns what it owned before.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    plan: Plan,
    mask: u8,
    rng: u64,
    calls: [u64; NCALLS],
    failed: [u64; NCALLS],
    obtained: usize,
    returned: usize,
}

impl<S: MemorySource> Faulty<S> {
    /// `inner` with no faults planned.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Plan::Off,
            mask: 0,
            rng: 1,
            calls: [0; NCALLS],
            failed: [0; NCALLS],
            obtained: 0,
            returned: 0,
        }
    }

    /// From now on, fails the calls of the kinds in `mask` (bits of [`OsCall::bit`]) as `plan`
    /// says; call counts restart.
    pub fn set_plan(&mut self, plan: Plan, mask: u8) {
        self.plan = plan;
        self.mask = mask;
        self.calls = [0; NCALLS];
        if let Plan::Random { seed, .. } = plan {
            self.rng = if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed };
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped source, mutably.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Calls made since the plan was set, per [`OsCall`] index.
    pub fn calls(&self) -> [u64; NCALLS] {
        self.calls
    }

    /// Failures injected so far, per [`OsCall`] index.
    pub fn failed(&self) -> [u64; NCALLS] {
        self.failed
    }

    /// Failures injected so far, all kinds.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    /// Bytes obtained by successful growths (FS1).
    pub fn obtained(&self) -> usize {
        self.obtained
    }

    /// Bytes given back by successful shrinks and releases (FS1).
    pub fn returned(&self) -> usize {
        self.returned
    }

    /// Whether this call of kind `call` fails; counts it.
    fn fails(&mut self, call: OsCall) -> bool {
        let i = call as usize;
        self.calls[i] = self.calls[i].wrapping_add(1);
        if self.mask & call.bit() == 0 {
            return false;
        }
        let fail = match self.plan {
            Plan::Off => false,
            Plan::EveryNth(n) => self.calls[i] % u64::from(n.max(1)) == 0,
            Plan::Random { per_mille, .. } => {
                // xorshift64*
                self.rng ^= self.rng >> 12;
                self.rng ^= self.rng << 25;
                self.rng ^= self.rng >> 27;
                let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
                r % 1000 < u64::from(per_mille)
            }
        };
        if fail {
            self.failed[i] += 1;
        }
        fail
    }
}

impl<S: MemorySource> MemorySource for Faulty<S> {
    fn grow(&mut self, min_len: usize) -> Option<Grown> {
        if self.fails(OsCall::Grow) {
            return None;
        }
        let g = self.inner.grow(min_len)?;
        self.obtained += g.len;
        Some(g)
    }

    fn shrink(&mut self, end: NonNull<u8>, len: usize) -> bool {
        if self.fails(OsCall::Shrink) || !self.inner.shrink(end, len) {
            return false;
        }
        self.returned += len;
        true
    }

    unsafe fn release(&mut self, base: NonNull<u8>, len: usize) -> bool {
        if self.fails(OsCall::Release) {
            return false;
        }
        // SAFETY: forwarded contract.
        if !unsafe { self.inner.release(base, len) } {
            return false;
        }
        self.returned += len;
        true
    }

    unsafe fn purge(&mut self, start: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded contract (FS2: a failed purge leaves the pages alone).
        !self.fails(OsCall::Purge) && unsafe { self.inner.purge(start, len) }
    }
}

/// Writes a Markdown table of failures: one row per name in `rows` (an operation), one column
/// per [`OsCall`], preceded by `title` (the tests print it: what was injected where).
///
/// # Errors
/// As `out`'s.
pub fn write_table(
    out: &mut impl core::fmt::Write,
    title: &str,
    rows: &[(&str, [u64; NCALLS])],
) -> core::fmt::Result {
    write!(out, "{title}\n| operation |")?;
    for c in OsCall::ALL {
        write!(out, " {} |", c.name())?;
    }
    write!(out, " all |\n| --- |")?;
    for _ in 0..=NCALLS {
        write!(out, " ---: |")?;
    }
    let mut total = [0u64; NCALLS];
    for (name, row) in rows {
        write!(out, "\n| {name} |")?;
        for (t, v) in total.iter_mut().zip(row) {
            *t += v;
            write!(out, " {v} |")?;
        }
        write!(out, " {} |", row.iter().sum::<u64>())?;
    }
    write!(out, "\n| all |")?;
    for t in total {
        write!(out, " {t} |")?;
    }
    write!(out, " {} |", total.iter().sum::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::FixedArena;

    #[test]
    fn every_nth_fails_exactly_those_calls() {
        let mut buf = vec![0u128; (1 << 20) / 16];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: zeroed, 16-aligned, owned by the test and outliving the source.
        let mut f = Faulty::new(unsafe { FixedArena::new(base, 1 << 20) });
        f.set_plan(Plan::EveryNth(3), OsCall::Grow.bit());
        let got: Vec<bool> = (0..6).map(|_| f.grow(4096).is_some()).collect();
        assert_eq!(got, [true, true, false, true, true, false]);
        assert_eq!(f.failed(), [2, 0, 0, 0]);
        assert_eq!(f.obtained(), 4 * 4096);
        // Shrink is not in the mask: it succeeds and is accounted.
        let end = NonNull::new(base.as_ptr().wrapping_add(4 * 4096)).unwrap();
        assert!(f.shrink(end, 4096));
        assert_eq!(f.returned(), 4096);
        drop(buf);
    }

    #[test]
    fn a_random_plan_is_reproducible_and_near_its_rate() {
        let mut buf = vec![0u128; 16];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        let run = |seed| {
            // SAFETY: as above; purges of 16 bytes inside the buffer.
            let mut f = Faulty::new(unsafe { FixedArena::new(base, 256) });
            f.set_plan(Plan::Random { seed, per_mille: 100 }, ALL_CALLS);
            // SAFETY: the range lies inside the buffer and holds nothing of value.
            let v: Vec<bool> = (0..10_000).map(|_| unsafe { f.purge(base, 16) }).collect();
            (v, f.failed()[OsCall::Purge as usize])
        };
        let (a, fa) = run(7);
        let (b, _) = run(7);
        assert_eq!(a, b, "same seed, same failures");
        assert!((800..1200).contains(&fa), "rate 10% gave {fa} failures of 10,000");
        drop(buf);
    }
}
