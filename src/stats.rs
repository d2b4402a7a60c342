//! Per-size-class counters of the thread caches and the central paths.
//!
//! Each thread cache counts its pops and pushes in plain fields (no atomic on the fast path)
//! and merges them here on its slow paths, at collection and at thread exit; refills, flushes
//! and misses are counted here directly, on the slow paths. All counters are `Relaxed`: they
//! are statistics, read only for reports, and order nothing.
//!
//! Under `--cfg loom` the counters are no-ops (loom atomics cannot live in statics).

use crate::size_class::NCLASSES;

/// What is counted per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Blocks popped from a thread cache (cache hits, plus the pop after each refill).
    Pops = 0,
    /// Blocks pushed into a thread cache by `free`.
    Pushes,
    /// Refills from the central heap.
    Refills,
    /// Pops that needed a refill first.
    Misses,
    /// Flushes of a list back to the central heap.
    Flushes,
    /// Small allocations served by the central heap directly (caches off or torn down).
    DirectAllocs,
    /// Small frees done in the central heap directly.
    DirectFrees,
}

/// Number of [`Counter`] kinds.
pub const NCOUNTERS: usize = 7;

/// Counters of one class, as plain numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Allocations of this class (cache pops and direct allocations).
    pub allocs: usize,
    /// Frees of this class (cache pushes and direct frees).
    pub frees: usize,
    /// Allocations served from a cache without a refill.
    pub cache_hits: usize,
    /// Refills from the central heap.
    pub refills: usize,
    /// Flushes to the central heap.
    pub flushes: usize,
}

#[cfg(not(loom))]
mod imp {
    use super::{ClassStats, Counter, NCLASSES, NCOUNTERS};
    use crate::sync::{AtomicUsize, Ordering};

    static COUNTERS: [[AtomicUsize; NCOUNTERS]; NCLASSES] =
        [const { [const { AtomicUsize::new(0) }; NCOUNTERS] }; NCLASSES];

    /// Adds `n` to counter `k` of class `c`.
    #[inline]
    pub fn add(c: usize, k: Counter, n: usize) {
        if n != 0 {
            // Relaxed: a statistic (module docs).
            COUNTERS[c][k as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The merged counters of class `c`.
    pub fn class(c: usize) -> ClassStats {
        let get = |k: Counter| COUNTERS[c][k as usize].load(Ordering::Relaxed);
        let pops = get(Counter::Pops);
        ClassStats {
            allocs: pops + get(Counter::DirectAllocs),
            frees: get(Counter::Pushes) + get(Counter::DirectFrees),
            cache_hits: pops.saturating_sub(get(Counter::Misses)),
            refills: get(Counter::Refills),
            flushes: get(Counter::Flushes),
        }
    }
}

#[cfg(loom)]
mod imp {
    use super::{ClassStats, Counter};

    /// No-op under loom.
    #[inline]
    pub fn add(_c: usize, _k: Counter, _n: usize) {}

    /// Zero under loom.
    pub fn class(_c: usize) -> ClassStats {
        ClassStats::default()
    }
}

pub use imp::{add, class};

/// The merged counters of every class.
pub fn classes() -> [ClassStats; NCLASSES] {
    core::array::from_fn(class)
}
