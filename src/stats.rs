//! Counters of the thread caches and the central paths.
//!
//! Nothing is counted on the fast paths. Per size class, the slow paths count refills and
//! flushes and the blocks they moved, the middle layer's batches, hits and misses, and the allocations and frees the central heap served
//! directly; the allocations served from the caches are counted in whole collection intervals
//! (each cache's countdown, `thread_cache.rs`), merged at collection, at thread exit and before
//! a report. All counters are `Relaxed`: they are statistics, read only for reports, and order
//! nothing.
//!
//! Under `--cfg loom` the counters are no-ops (loom atomics cannot live in statics).

use crate::size_class::NCLASSES;

/// What is counted per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Refills from the central heap (each one a cache miss).
    Refills = 0,
    /// Blocks those refills brought.
    RefilledBlocks,
    /// Flushes of a list back to the central heap.
    Flushes,
    /// Blocks those flushes returned.
    FlushedBlocks,
    /// Small allocations served by the central heap directly (caches off or torn down).
    DirectAllocs,
    /// Small frees done in the central heap directly.
    DirectFrees,
    /// Batches a flush handed to the middle layer (`transfer.rs`).
    LayerPuts,
    /// Flushes the middle layer refused (class full): their batch went to the central heap.
    LayerOverflows,
    /// Refills served by a batch of the middle layer.
    LayerHits,
    /// Refills that found the middle layer's class empty (and went to the central heap).
    LayerMisses,
    /// Batches the middle layer returned to the central heap (idle, or `malloc_trim`).
    LayerReleased,
}

/// Number of [`Counter`] kinds.
pub const NCOUNTERS: usize = 11;

/// Counters of one class, as plain numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Refills from the central heap (cache misses).
    pub refills: usize,
    /// Blocks moved into caches by refills.
    pub refilled_blocks: usize,
    /// Flushes to the central heap.
    pub flushes: usize,
    /// Blocks moved out of caches by flushes.
    pub flushed_blocks: usize,
    /// Allocations of this class served by the central heap directly.
    pub direct_allocs: usize,
    /// Frees of this class done in the central heap directly.
    pub direct_frees: usize,
    /// Batches handed to the middle layer.
    pub layer_puts: usize,
    /// Batches the middle layer refused (sent to the central heap).
    pub layer_overflows: usize,
    /// Refills served by the middle layer.
    pub layer_hits: usize,
    /// Refills the middle layer could not serve.
    pub layer_misses: usize,
    /// Batches the middle layer returned to the central heap.
    pub layer_released: usize,
}

#[cfg(not(loom))]
mod imp {
    use super::{ClassStats, Counter, NCLASSES, NCOUNTERS};
    use crate::sync::{AtomicUsize, Ordering};

    static COUNTERS: [[AtomicUsize; NCOUNTERS]; NCLASSES] =
        [const { [const { AtomicUsize::new(0) }; NCOUNTERS] }; NCLASSES];
    static CACHE_ALLOCS: AtomicUsize = AtomicUsize::new(0);
    static BIG_ALLOCS: AtomicUsize = AtomicUsize::new(0);

    /// Adds `n` to counter `k` of class `c`.
    #[inline]
    pub fn add(c: usize, k: Counter, n: usize) {
        if n != 0 && c < NCLASSES {
            // Relaxed: a statistic (module docs).
            COUNTERS[c][k as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` allocations served from a thread cache.
    #[inline]
    pub fn add_cache_allocs(n: usize) {
        // Relaxed: a statistic.
        CACHE_ALLOCS.fetch_add(n, Ordering::Relaxed);
    }

    /// Allocations served from thread caches (merged so far).
    pub fn cache_allocs() -> usize {
        CACHE_ALLOCS.load(Ordering::Relaxed)
    }

    /// Counts an allocation above the size classes (central heap or mapping).
    #[inline]
    pub fn add_big_alloc() {
        // Relaxed: a statistic.
        BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }

    /// Allocations above the size classes.
    pub fn big_allocs() -> usize {
        BIG_ALLOCS.load(Ordering::Relaxed)
    }

    /// The counters of class `c`.
    pub fn class(c: usize) -> ClassStats {
        let get = |k: Counter| COUNTERS[c][k as usize].load(Ordering::Relaxed);
        ClassStats {
            refills: get(Counter::Refills),
            refilled_blocks: get(Counter::RefilledBlocks),
            flushes: get(Counter::Flushes),
            flushed_blocks: get(Counter::FlushedBlocks),
            direct_allocs: get(Counter::DirectAllocs),
            direct_frees: get(Counter::DirectFrees),
            layer_puts: get(Counter::LayerPuts),
            layer_overflows: get(Counter::LayerOverflows),
            layer_hits: get(Counter::LayerHits),
            layer_misses: get(Counter::LayerMisses),
            layer_released: get(Counter::LayerReleased),
        }
    }
}

#[cfg(loom)]
mod imp {
    use super::{ClassStats, Counter};

    /// No-op under loom.
    #[inline]
    pub fn add(_c: usize, _k: Counter, _n: usize) {}

    /// No-op under loom.
    #[inline]
    pub fn add_cache_allocs(_n: usize) {}

    /// Zero under loom.
    pub fn cache_allocs() -> usize {
        0
    }

    /// No-op under loom.
    #[inline]
    pub fn add_big_alloc() {}

    /// Zero under loom.
    pub fn big_allocs() -> usize {
        0
    }

    /// Zero under loom.
    pub fn class(_c: usize) -> ClassStats {
        ClassStats::default()
    }
}

pub use imp::{add, add_big_alloc, add_cache_allocs, big_allocs, cache_allocs, class};

/// The counters of every class.
pub fn classes() -> [ClassStats; NCLASSES] {
    core::array::from_fn(class)
}
