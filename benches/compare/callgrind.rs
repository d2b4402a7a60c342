//! Instructions per call inside `malloc` and `free`, from
//! `valgrind --tool=callgrind` on a workload that takes `1 OPS` (churn, and
//! fastpath: the fast-path probe of 64 live blocks of 16–128 B).
//!
//! The callgrind output is parsed directly: every `calls=` line carries the
//! call count and the inclusive cost of those calls, so summing them over
//! all callers of `malloc` (and `free`) gives inclusive Ir per call, exactly
//! what `callgrind_annotate --inclusive=yes` shows divided by the calls.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::allocs::Allocator;
use crate::runner::{self, Status};

#[derive(Clone, Debug, Default)]
pub struct CgResult {
    pub alloc: String,
    pub malloc_calls: u64,
    pub malloc_ir: u64,
    pub free_calls: u64,
    pub free_ir: u64,
    pub total_ir: u64,
    /// Which symbols in which objects were measured.
    pub symbols: String,
    /// Marginal Ir per malloc+free call between the OPS/2 and OPS runs.
    pub marginal: Option<f64>,
    pub error: Option<String>,
}

#[derive(Default)]
struct Target {
    calls: u64,
    ir: u64,
    /// calls per callee object
    objects: HashMap<String, u64>,
}

/// Strip callgrind's recursion/context suffixes (`malloc'2`).
fn base_name(name: &str) -> &str {
    name.split('\'').next().unwrap_or(name)
}

/// Parse a callgrind output file written with `--compress-strings=no
/// --compress-pos=no`. Returns per-callee-name call totals and the total Ir.
fn parse(text: &str) -> (HashMap<String, Target>, u64) {
    let mut targets: HashMap<String, Target> = HashMap::new();
    let mut total = 0u64;
    let mut cur_fn = String::new();
    let mut cur_ob = String::new();
    let mut call_ob: Option<String> = None;
    let mut call_fn: Option<String> = None;
    let mut pending_calls: Option<u64> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ob=") {
            cur_ob = v.to_string();
        } else if let Some(v) = line.strip_prefix("fn=") {
            cur_fn = base_name(v).to_string();
        } else if let Some(v) = line.strip_prefix("cob=") {
            call_ob = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("cfn=") {
            call_fn = Some(base_name(v).to_string());
        } else if let Some(v) = line.strip_prefix("calls=") {
            pending_calls = v.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) =
            line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:"))
        {
            total =
                total.max(v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0));
        } else if let Some(calls) = pending_calls.filter(|_| {
            line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        }) {
            pending_calls = None;
            // The cost line of a call: position then inclusive Ir.
            let ir: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            let callee = call_fn.take().unwrap_or_default();
            let obj = call_ob.take().unwrap_or_else(|| cur_ob.clone());
            if callee != cur_fn {
                let t = targets.entry(callee).or_default();
                t.calls += calls;
                t.ir += ir;
                *t.objects.entry(obj).or_default() += calls;
            }
        }
    }
    (targets, total)
}

fn main_object(t: &Target) -> String {
    t.objects
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(o, _)| {
            if o == "???" {
                return "(object not named by valgrind)".to_string();
            }
            Path::new(o)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_else(|| o.clone())
        })
        .unwrap_or_default()
}

/// One callgrind run of `PROG 1 OPS`: (malloc calls, malloc Ir, free calls,
/// free Ir, program Ir, symbols).  The output file is
/// `callgrind.PROG.ALLOC.OPS.out` in `out_dir`, with per-line costs (for
/// `callgrind_annotate --auto=yes`).
fn one(
    alloc: &Allocator,
    prog: &Path,
    ops: u64,
    out_dir: &Path,
) -> Result<(u64, u64, u64, u64, u64, String), String> {
    let stem = prog.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let out = out_dir.join(format!("callgrind.{stem}.{}.{ops}.out", alloc.name));
    let log = out_dir.join(format!("callgrind.{stem}.{}.{ops}.log", alloc.name));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args([
            "--compress-strings=no",
            "--compress-pos=no",
            "--dump-instr=no",
            // Keep valgrind from replacing a preloaded malloc (see
            // shared/toolchain-notes.md); harmless for glibc.
            "--soname-synonyms=somalloc=nouserintercepts",
        ])
        .arg(prog)
        .args(["1", &ops.to_string()])
        .env_remove("LD_PRELOAD");
    if let Some(p) = &alloc.preload {
        cmd.env("LD_PRELOAD", p);
    }
    let exit = runner::run(&mut cmd, &log, Duration::from_secs(600));
    if exit.status != Status::Ok {
        return Err(format!("callgrind run {} (log {})", exit.status, log.display()));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("no callgrind output: {e}"))?;
    let (targets, total) = parse(&text);
    match (targets.get("malloc"), targets.get("free")) {
        (Some(m), Some(f)) if m.calls > 0 && f.calls > 0 => {
            let (mo, fo) = (main_object(m), main_object(f));
            let symbols = if mo == fo {
                format!("`malloc`, `free` in {mo}")
            } else {
                format!("`malloc` in {mo}, `free` in {fo}")
            };
            Ok((m.calls, m.ir, f.calls, f.ir, total, symbols))
        }
        _ => Err("no calls to malloc/free found in the callgrind output".into()),
    }
}

/// Callgrind at OPS/2 and at OPS. The plain figures come from the OPS run;
/// the marginal one, (Ir(OPS) - Ir(OPS/2)) / (calls(OPS) - calls(OPS/2)) over
/// malloc+free, cancels one-time costs (initialisation, first growth).
pub fn measure(alloc: &Allocator, prog: &Path, ops: u64, out_dir: &Path) -> CgResult {
    let mut res = CgResult { alloc: alloc.name.to_string(), ..Default::default() };
    let _ = std::fs::create_dir_all(out_dir);
    let half = match one(alloc, prog, ops / 2, out_dir) {
        Ok(h) => h,
        Err(e) => {
            res.error = Some(e);
            return res;
        }
    };
    match one(alloc, prog, ops, out_dir) {
        Ok((mc, mi, fc, fi, total, symbols)) => {
            res.malloc_calls = mc;
            res.malloc_ir = mi;
            res.free_calls = fc;
            res.free_ir = fi;
            res.total_ir = total;
            res.symbols = symbols;
            let dcalls = (mc + fc) as f64 - (half.0 + half.2) as f64;
            let dir = (mi + fi) as f64 - (half.1 + half.3) as f64;
            res.marginal = (dcalls > 0.0).then(|| dir / dcalls);
        }
        Err(e) => res.error = Some(e),
    }
    res
}

/// [`measure`] for each allocator in turn, with a progress line on stderr.
pub fn measure_all(allocs: &[Allocator], prog: &Path, ops: u64, out_dir: &Path) -> Vec<CgResult> {
    let name = prog.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    allocs
        .iter()
        .map(|alloc| {
            eprintln!("compare: callgrind {name} under {}", alloc.name);
            let r = measure(alloc, prog, ops, out_dir);
            if let Some(e) = &r.error {
                eprintln!("    {e}");
            }
            r
        })
        .collect()
}

/// A check of the parser on a hand-written sample, run by `--self-test`.
pub fn parser_self_check() -> Result<(), String> {
    let text = "events: Ir\nsummary: 1000\nob=/a\nfn=main\n0 10\ncob=/lib/x.so\ncfn=malloc\ncalls=4 0\n0 200\ncfn=free\ncalls=4 0\n0 100\nob=/lib/x.so\nfn=malloc\n0 150\ncfn=helper\ncalls=1 0\n0 50\n";
    let (t, total) = parse(text);
    let ok = total == 1000
        && t.get("malloc").map(|m| (m.calls, m.ir)) == Some((4, 200))
        && t.get("free").map(|f| (f.calls, f.ir)) == Some((4, 100))
        && t.get("malloc").map(main_object).as_deref() == Some("x.so");
    if ok { Ok(()) } else { Err("callgrind parser self-check failed".into()) }
}
