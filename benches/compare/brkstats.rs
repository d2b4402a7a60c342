//! brkmalloc's own statistics for a run: the environment that makes it write
//! them (`BRKMALLOC_CONF=stats:json,stats_file:PATH`), the JSON object it
//! writes at exit, and the workload's own count of malloc+free calls (its
//! `calls N` line), so that the central lock acquisitions can be given per
//! 1000 calls.

use std::path::Path;

use serde_json::Value;

/// What one run's statistics file says.  Invariant: every field is the sum
/// over the JSON objects in the file (one per process that exited through
/// `exit`), and is `None` when no object had it (older builds lack the
/// middle layer's fields).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrkStats {
    /// Top-level "allocs".
    pub allocs: Option<u64>,
    /// "lock": {"acquisitions"}.
    pub acquisitions: Option<u64>,
    /// "lock": {"contended"}.
    pub contended: Option<u64>,
    /// brkmalloc's own figure, tenths of acquisitions per 1000 calls
    /// ("per_1000_calls_x10", in "lock" or at the top level).
    pub per_1000_x10: Option<u64>,
    /// Per-class "layer_hits", "layer_misses", "layer_puts",
    /// "layer_overflows", summed over the classes.
    pub layer: [Option<u64>; 4],
}

/// The per-class middle-layer fields, in the order of `BrkStats::layer`.
pub const LAYER_FIELDS: [&str; 4] = ["layer_hits", "layer_misses", "layer_puts", "layer_overflows"];

/// The environment that makes brkmalloc append its statistics to `path` at exit.
pub fn conf_env(path: &Path) -> (String, String) {
    ("BRKMALLOC_CONF".to_string(), format!("stats:json,stats_file:{}", path.display()))
}

fn add(acc: &mut Option<u64>, v: Option<u64>) {
    if let Some(v) = v {
        *acc = Some(acc.unwrap_or(0) + v);
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Parse a statistics file: one JSON object per line, each `{"brkmalloc":{...}}`
/// (a bare object is accepted too).  Lines that are not JSON are skipped.
/// `None` when the file is missing or holds no object.
pub fn parse(text: &str) -> Option<BrkStats> {
    let mut s = BrkStats::default();
    let mut any = false;
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let b = v.get("brkmalloc").unwrap_or(&v);
        any = true;
        add(&mut s.allocs, num(b, "allocs"));
        let lock = b.get("lock");
        add(&mut s.acquisitions, lock.and_then(|l| num(l, "acquisitions")));
        add(&mut s.contended, lock.and_then(|l| num(l, "contended")));
        add(
            &mut s.per_1000_x10,
            lock.and_then(|l| num(l, "per_1000_calls_x10"))
                .or_else(|| num(b, "per_1000_calls_x10")),
        );
        for class in b.get("classes").and_then(Value::as_array).into_iter().flatten() {
            for (acc, key) in s.layer.iter_mut().zip(LAYER_FIELDS) {
                add(acc, num(class, key));
            }
        }
    }
    any.then_some(s)
}

/// Read and parse a statistics file.
pub fn read(path: &Path) -> Option<BrkStats> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// The workload's `calls N` line (the last one in its log).
pub fn workload_calls(log_text: &str) -> Option<u64> {
    log_text.lines().rev().find_map(|l| l.strip_prefix("calls ")?.trim().parse().ok())
}

/// The malloc+free calls to divide by: the workload's own count, else twice
/// brkmalloc's allocations.  The flag says which (true: the workload's).
pub fn calls(workload: Option<u64>, stats: &BrkStats) -> Option<(u64, bool)> {
    match workload {
        Some(c) if c > 0 => Some((c, true)),
        _ => stats.allocs.filter(|&a| a > 0).map(|a| (2 * a, false)),
    }
}

/// Central lock acquisitions per 1000 malloc+free calls.
pub fn per_1000(acquisitions: u64, calls: u64) -> f64 {
    acquisitions as f64 * 1000.0 / calls.max(1) as f64
}

/// Checked by `parser_self_check` at the start of a scaling run, so that a
/// change of the format shows as an error rather than as empty columns.
pub fn parser_self_check() -> Result<(), String> {
    let old = r#"{"brkmalloc":{"pid":7,"allocs":1000,"cache_allocs":900,"classes":[{"class":1,"size":16,"refills":3}],"heap":{"bytes":1},"lock":{"acquisitions":42,"contended":2}}}"#;
    let new = r#"{"brkmalloc":{"allocs":10,"classes":[{"class":1,"layer_hits":5,"layer_misses":1},{"class":2,"layer_hits":2,"layer_puts":4,"layer_overflows":0}],"lock":{"acquisitions":8,"contended":0,"per_1000_calls_x10":4000}}}"#;
    let text = format!("not json\n{old}\n{new}\n");
    let got = parse(&text).ok_or("stats parser: no object found")?;
    let want = BrkStats {
        allocs: Some(1010),
        acquisitions: Some(50),
        contended: Some(2),
        per_1000_x10: Some(4000),
        layer: [Some(7), Some(1), Some(4), Some(0)],
    };
    if got != want {
        return Err(format!("stats parser self-check: got {got:?}, want {want:?}"));
    }
    if parse("garbage").is_some() || workload_calls("x\ncalls 12\n") != Some(12) {
        return Err("stats parser self-check: garbage or calls line misread".into());
    }
    Ok(())
}
