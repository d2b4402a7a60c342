//! The two transcendental functions the sampling law needs, `ln` and `exp_m1`, computed here
//! rather than by `f64::ln`/`f64::exp_m1`: those call libm's `log` and `expm1`, and linking
//! libm made every process that preloads the library map and touch libm.so.6 (+328 KiB of
//! resident memory at start, measured with `/proc/<pid>/smaps` under `sleep`), a tenth of the
//! peak RSS of the harness's smallest workloads. Sampling needs a few digits, these give ~15.

/// ln 2.
const LN_2: f64 = core::f64::consts::LN_2;

/// `ln(x)` for a finite `x > 0` (other inputs give an unspecified value, never a panic).
pub fn ln(x: f64) -> f64 {
    if !(x > 0.0 && x.is_finite()) {
        return 0.0;
    }
    // x = m · 2^e with m in [1, 2) (subnormals scaled up first).
    let (x, bias) = if x < f64::MIN_POSITIVE { (x * (1u64 << 54) as f64, -54) } else { (x, 0) };
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023 + bias;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    // Centre m on 1: [√½, √2), so that s below stays under 0.172.
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m − 1)/(m + 1): 2 (s + s³/3 + s⁵/5 + …).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 40.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    e as f64 * LN_2 + 2.0 * sum
}

/// `e^x − 1` for `x <= 0`, accurate for small `|x|` too (positive inputs give an unspecified
/// value, never a panic).
pub fn exp_m1_neg(x: f64) -> f64 {
    if x.is_nan() || x > 0.0 {
        return 0.0;
    }
    if x < -745.0 {
        return -1.0;
    }
    // Halve x until |x| < 1/2, take the Taylor series of e^x − 1 there, then square back up:
    // e^(2y) − 1 = (e^y − 1)(e^y − 1 + 2).
    let mut y = x;
    let mut halvings = 0;
    while y < -0.5 {
        y /= 2.0;
        halvings += 1;
    }
    let mut term = y;
    let mut sum = 0.0;
    let mut n = 1.0;
    while n < 24.0 {
        sum += term;
        n += 1.0;
        term *= y / n;
    }
    for _ in 0..halvings {
        sum *= sum + 2.0;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn ln_matches_std() {
        let mut x = 1e-300f64;
        while x < 1e300 {
            assert!(close(ln(x), x.ln()), "ln({x}) = {} vs {}", ln(x), x.ln());
            x *= 1.37;
        }
        for &x in &[1.0, 0.5, 2.0, 1.0 - 1e-12, f64::MIN_POSITIVE / 8.0, 1.0 / (1u64 << 53) as f64]
        {
            assert!((ln(x) - x.ln()).abs() <= 1e-12 * x.ln().abs().max(1.0), "ln({x})");
        }
        assert_eq!(ln(0.0), 0.0);
        assert_eq!(ln(-1.0), 0.0);
    }

    #[test]
    fn exp_m1_neg_matches_std() {
        let mut x = -1e-15f64;
        while x > -800.0 {
            let (a, b) = (exp_m1_neg(x), x.exp_m1());
            assert!((a - b).abs() <= 1e-12 * b.abs(), "exp_m1({x}) = {a} vs {b}");
            x *= 1.21;
        }
        assert_eq!(exp_m1_neg(0.0), 0.0);
        assert_eq!(exp_m1_neg(-1000.0), -1.0);
    }
}
