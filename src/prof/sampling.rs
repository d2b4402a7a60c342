//! The sampling law: exponentially distributed intervals between samples, and the weight that
//! turns one sampled allocation into an unbiased estimate of bytes and objects.
//!
//! Every allocated byte has the same chance `1/R` of ending an interval (`R` = `prof_sample`,
//! the mean interval), so the intervals are exponential with mean `R` (tcmalloc's and
//! jemalloc's scheme). An allocation of `s` bytes is then sampled with probability
//! `1 − e^(−s/R)`, and stands for `1 / (1 − e^(−s/R))` allocations of its size.

/// The longest interval drawn: far beyond any real mean, well below the countdown's
/// "never" value (`thread_cache::NO_SAMPLE`).
const MAX_INTERVAL: f64 = (1u64 << 46) as f64;

/// One step of xorshift64* (Vigna): a fast generator, good enough for sampling decisions.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A non-zero seed for a thread's generator from `salt` (its cache's address) and the clock.
pub fn seed(salt: usize) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; clock_gettime does not allocate.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let s = (salt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (ts.tv_nsec as u64).rotate_left(32)
        ^ ts.tv_sec as u64;
    if s == 0 { 0x853c_49e6_748f_ea9b } else { s }
}

/// Bytes until the next sample: exponential with mean `mean`, at least 1. `state` is the
/// thread's generator (seeded by the caller when 0).
pub fn next_interval(state: &mut u64, mean: usize) -> usize {
    // 53 random bits as a uniform number in (0, 1].
    let u = ((next_random(state) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let v = -super::nolibm::ln(u) * mean as f64;
    if v >= MAX_INTERVAL { MAX_INTERVAL as usize } else { (v as usize).max(1) }
}

/// What one sampled allocation stands for.
///
/// # Invariants
/// - W1: `bytes >= size` of the sample and `objs_milli >= 1000`: a sample stands for at least
///   itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weight {
    /// Estimated bytes allocated at this site per sample of this size.
    pub bytes: u64,
    /// Estimated allocations, in thousandths (kept as an integer so that adding a sample and
    /// removing it again cancel exactly).
    pub objs_milli: u64,
}

/// The weight of a sampled allocation of `size` bytes that was sampled with probability
/// `1 − e^(−counted/mean)` (`counted`: the bytes the countdown counted for it, the usable size
/// of its size class for a cached one), under mean interval `mean`: `size` scaled by the
/// inverse probability, so the estimate is unbiased for the bytes asked for.
pub fn weight(size: usize, counted: usize, mean: usize) -> Weight {
    let size = size.max(1);
    let ratio = counted.max(1) as f64 / mean.max(1) as f64;
    // 1 − e^(−x), accurate for small x too.
    let p = -super::nolibm::exp_m1_neg(-ratio);
    if p >= 1.0 || p <= 0.0 {
        return Weight { bytes: size as u64, objs_milli: 1000 };
    }
    let objs = 1.0 / p;
    Weight {
        bytes: ((size as f64 * objs) as u64).max(size as u64),
        objs_milli: ((objs * 1000.0) as u64).max(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_exponential_with_the_mean() {
        let mut s = seed(12345);
        let mean = 512 << 10;
        let n = 200_000;
        let (mut sum, mut below_mean) = (0f64, 0usize);
        for _ in 0..n {
            let v = next_interval(&mut s, mean);
            assert!(v >= 1);
            sum += v as f64;
            below_mean += usize::from(v < mean);
        }
        let avg = sum / n as f64;
        assert!((avg / mean as f64 - 1.0).abs() < 0.02, "mean {avg}");
        // P(X < mean) = 1 − 1/e ≈ 0.632 for an exponential law.
        let frac = below_mean as f64 / n as f64;
        assert!((frac - 0.632).abs() < 0.01, "P(X < mean) = {frac}");
    }

    #[test]
    fn weights_scale_small_blocks_up_and_large_ones_not() {
        let mean = 512 << 10;
        let w = weight(64, 64, mean);
        // A 64-byte block is sampled with probability ~64/R: it stands for ~R/64 blocks.
        assert!((w.objs_milli as f64 / 1000.0 - (mean as f64 / 64.0)).abs() < 1.0, "{w:?}");
        assert!((w.bytes as f64 - mean as f64).abs() < 64.0, "{w:?}");
        let big = weight(64 << 20, 64 << 20, mean);
        assert_eq!(big, Weight { bytes: 64 << 20, objs_milli: 1000 });
        let mid = weight(mean, mean, mean);
        // 1 / (1 − 1/e) ≈ 1.582.
        assert!((mid.objs_milli as f64 / 1000.0 - 1.582).abs() < 0.002, "{mid:?}");
    }
}
