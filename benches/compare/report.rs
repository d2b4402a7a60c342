//! Medians, ratios and the Markdown report.

use std::fmt::Write as _;

use crate::allocs::Allocator;
use crate::callgrind::CgResult;
use crate::machine::Machine;
use crate::workloads::{Outcome, Workload};

/// Every run, by configuration and allocator.
pub struct Results {
    pub workloads: Vec<Workload>,
    /// (index into workloads, threads)
    pub configs: Vec<(usize, u32)>,
    pub allocs: Vec<Allocator>,
    /// runs[config][alloc]
    pub runs: Vec<Vec<Vec<Outcome>>>,
    pub rounds: usize,
    pub quick: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { med, min: v[0], max: v[n - 1] })
    }
}

/// Statistics of one (configuration, allocator) cell, over its successful
/// runs; the failures are counted and always shown next to them.
pub struct Cell {
    pub total: usize,
    pub ok: usize,
    /// (label, count), e.g. ("CRASH(SIGSEGV)", 2)
    pub fails: Vec<(String, usize)>,
    pub time: Option<Spread>,
    pub rss_mib: Option<Spread>,
    pub rps: Option<Spread>,
}

impl Cell {
    pub fn of(runs: &[Outcome]) -> Cell {
        let ok: Vec<&Outcome> = runs.iter().filter(|r| r.status.is_ok()).collect();
        let mut fails: Vec<(String, usize)> = Vec::new();
        for r in runs.iter().filter(|r| !r.status.is_ok()) {
            let l = r.status.label();
            match fails.iter_mut().find(|(k, _)| *k == l) {
                Some((_, c)) => *c += 1,
                None => fails.push((l, 1)),
            }
        }
        Cell {
            total: runs.len(),
            ok: ok.len(),
            fails,
            time: Spread::of(ok.iter().map(|r| r.wall_s).collect()),
            rss_mib: Spread::of(ok.iter().map(|r| r.maxrss_kib as f64 / 1024.0).collect()),
            rps: Spread::of(ok.iter().filter_map(|r| r.rps).collect()),
        }
    }

    /// Lower is better: median seconds, or 1/median requests per second.
    pub fn cost(&self, has_rps: bool) -> Option<f64> {
        if has_rps { self.rps.map(|s| 1.0 / s.med) } else { self.time.map(|s| s.med) }
    }

    pub fn failed(&self) -> bool {
        !self.fails.is_empty()
    }

    pub fn fail_text(&self) -> String {
        self.fails.iter().map(|(l, c)| format!("{l}×{c}")).collect::<Vec<_>>().join(", ")
    }
}

/// Ratios of one cell against glibc and against the best peer.
pub struct Ratios {
    pub vs_glibc: Option<f64>,
    pub vs_best: Option<f64>,
    pub best_name: Option<&'static str>,
}

pub fn ratios(
    cells: &[Cell],
    allocs: &[Allocator],
    i: usize,
    metric: impl Fn(&Cell) -> Option<f64>,
) -> Ratios {
    let mine = metric(&cells[i]);
    let glibc = allocs.iter().position(|a| a.name == "glibc").and_then(|g| metric(&cells[g]));
    let best = allocs
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_peer)
        .filter_map(|(j, a)| metric(&cells[j]).map(|v| (v, a.name)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    Ratios {
        vs_glibc: mine.zip(glibc).map(|(m, g)| m / g),
        vs_best: mine.zip(best).map(|(m, b)| m / b.0),
        best_name: best.map(|b| b.1),
    }
}

impl Results {
    pub fn cells(&self, c: usize) -> Vec<Cell> {
        self.runs[c].iter().map(|r| Cell::of(r)).collect()
    }
    pub fn label(&self, c: usize) -> String {
        let (w, t) = self.configs[c];
        let w = &self.workloads[w];
        if w.threaded { format!("{} ×{t}", w.name) } else { w.name.to_string() }
    }
    pub fn hard_failures(&self) -> usize {
        self.runs.iter().flatten().flatten().filter(|r| r.status.is_hard_failure()).count()
    }
    pub fn timeouts(&self) -> usize {
        self.runs
            .iter()
            .flatten()
            .flatten()
            .filter(|r| matches!(r.status, crate::runner::Status::Timeout))
            .count()
    }
}

fn x(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.2}"),
        None => "–".into(),
    }
}

pub fn spread(s: Option<Spread>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} [{:.p$}–{:.p$}]", s.med, s.min, s.max, p = prec),
        None => "–".into(),
    }
}

fn rps_text(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{:.0} [{:.0}–{:.0}]", s.med, s.min, s.max),
        None => "–".into(),
    }
}

/// A summary cell: the ratio, or the failure, or both.
/// The fast-path probe's section: `workloads/fastpath.c` under callgrind.
pub fn fastpath_section(rows: &[CgResult], steps: u64) -> String {
    let mut s = format!(
        "## Fast path probe: instructions per call (callgrind, fastpath workload, {steps} steps)\n\n\
         64 live blocks of 16–128 B; each step frees one at random and allocates one of a random \
         size in its place, nothing else (`benches/workloads/fastpath.c`). Same columns as the \
         churn table; *marginal* is from this run and one of {} steps, the figure to compare \
         (start-up cost cancels). `brkmalloc-nohard` is brkmalloc built with \
         `--no-default-features` (no hardening checks). Alone: \
         `cargo bench --bench compare -- --fastpath`.\n\n",
        steps / 2
    );
    s.push_str(&cg_table(rows));
    s
}

/// One row per allocator: calls and inclusive Ir per call of malloc and free.
fn cg_table(rows: &[CgResult]) -> String {
    let mut s = String::from(
        "| allocator | malloc calls | Ir / malloc | free calls | Ir / free | Ir / (malloc+free) | marginal Ir / (malloc+free) | program Ir / (malloc+free) | symbols measured |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for cg in rows {
        match &cg.error {
            Some(e) => {
                let _ = writeln!(s, "| {} | **{}** | | | | | | | |", cg.alloc, e);
            }
            None => {
                let calls = (cg.malloc_calls + cg.free_calls).max(1) as f64;
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} | {} |",
                    cg.alloc,
                    cg.malloc_calls,
                    cg.malloc_ir as f64 / cg.malloc_calls.max(1) as f64,
                    cg.free_calls,
                    cg.free_ir as f64 / cg.free_calls.max(1) as f64,
                    (cg.malloc_ir + cg.free_ir) as f64 / calls,
                    cg.marginal.map(|m| format!("{m:.1}")).unwrap_or_else(|| "–".into()),
                    cg.total_ir as f64 / calls,
                    cg.symbols
                );
            }
        }
    }
    s.push('\n');
    s
}

fn summary_cell(cell: &Cell, ratio: Option<f64>) -> String {
    match (cell.failed(), cell.ok) {
        (false, _) => x(ratio),
        (true, 0) => format!("**{}**", cell.fail_text()),
        (true, _) => format!("{} **{}**", x(ratio), cell.fail_text()),
    }
}

pub struct Extra<'a> {
    pub machine: &'a Machine,
    pub notes: &'a [String],
    pub callgrind: &'a [CgResult],
    pub callgrind_ops: u64,
    /// The fast-path probe under callgrind, and its steps.
    pub fastpath: &'a [CgResult],
    pub fastpath_steps: u64,
    pub self_test: Option<&'a str>,
    pub charts: &'a [(&'a str, &'a str)],
    pub elapsed_s: f64,
    /// Load averages at the start and the end of the run.
    pub load: (&'a str, &'a str),
}

pub fn markdown(res: &Results, ex: &Extra<'_>) -> String {
    let m = ex.machine;
    let mut s = String::new();
    let mode = if res.quick { "quick" } else { "full" };
    let _ = writeln!(s, "# brkmalloc benchmark: {mode} mode\n");
    let _ = writeln!(s, "- **date**: {}", m.date);
    let _ = writeln!(s, "- **commit**: {}", m.commit);
    let _ = writeln!(
        s,
        "- **machine**: {} — {} cores available ({} online), {:.1} GiB RAM; {}; {}; gcc {}",
        m.cpu, m.cores, m.online_cpus, m.mem_gib, m.kernel, m.os, m.gcc
    );
    for a in &res.allocs {
        let path = a
            .preload
            .as_ref()
            .map(|p| format!(" — `LD_PRELOAD={}`", p.display()))
            .unwrap_or_default();
        let _ = writeln!(s, "- **{}**: {}{}", a.name, a.version, path);
    }
    if !m.programs.is_empty() {
        let progs: Vec<String> = m.programs.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "- **programs**: {}", progs.join("; "));
    }
    let _ = writeln!(
        s,
        "- **method**: {} rounds, every allocator runs every configuration in each round, interleaved (A B C D E, A B C D E, …); wall time and peak RSS (`ru_maxrss` from `wait4`) per run; median [min–max] over the successful runs; ratios are median ÷ glibc's median and ÷ the best peer's median (best of glibc, jemalloc, tcmalloc, mimalloc). Servers: requests/s measured by the client, peak RSS of the server, and the ratio is peer req/s ÷ req/s so that lower is better everywhere. Threaded workloads at 1, 2, 4, 8 threads (8 on {} cores is deliberate oversubscription). Total time of this run: {:.0} s.",
        res.rounds, m.cores, ex.elapsed_s
    );
    let _ = writeln!(
        s,
        "- **load average** (1/5/15 min): {} at the start, {} at the end — other work on the machine during the run adds noise to the timings (not to the instruction counts)",
        ex.load.0, ex.load.1
    );
    for n in ex.notes {
        let _ = writeln!(s, "- **note**: {n}");
    }
    if let Some(st) = ex.self_test {
        let _ = writeln!(s, "- **harness self-test**: {st}");
    }
    s.push('\n');

    // Failures first: they must not hide anywhere.
    let mut failures = String::new();
    for (c, per_alloc) in res.runs.iter().enumerate() {
        for (a, runs) in per_alloc.iter().enumerate() {
            for (round, r) in runs.iter().enumerate() {
                if r.status.is_ok() {
                    continue;
                }
                let _ = writeln!(
                    failures,
                    "- **{}** on `{}` round {}: **{}**  \n  reproduce: `{}`  \n  log: `{}`",
                    res.allocs[a].name,
                    res.label(c),
                    round + 1,
                    r.status,
                    r.repro,
                    r.log.display()
                );
                let tail = crate::runner::tail(&r.log, 4);
                if !tail.trim().is_empty() {
                    let _ = writeln!(failures, "  ```\n{}\n  ```", tail.trim_end());
                }
            }
        }
    }
    let _ = writeln!(s, "## Failures\n");
    if failures.is_empty() {
        let _ = writeln!(s, "None: every run of every allocator exited 0 and passed its checks.\n");
    } else {
        let _ = writeln!(
            s,
            "{} failed runs ({} crashes or verification failures, {} timeouts). Medians below are over the successful runs only, and every cell with a failure says so.\n",
            res.runs.iter().flatten().flatten().filter(|r| !r.status.is_ok()).count(),
            res.hard_failures(),
            res.timeouts()
        );
        s.push_str(&failures);
        s.push('\n');
    }

    let names: Vec<&str> = res.allocs.iter().map(|a| a.name).collect();
    let has_brk = names.contains(&"brkmalloc");
    for (title, what) in [
        ("Time ratio vs glibc (lower is better)", 0),
        ("Peak RSS ratio vs glibc (lower is better)", 1),
    ] {
        let _ = writeln!(s, "## {title}\n");
        let mut head = String::from("| workload |");
        let mut sep = String::from("|---|");
        for n in &names {
            let _ = write!(head, " {n} |");
            sep.push_str("---:|");
        }
        if has_brk {
            head.push_str(" brkmalloc ÷ best peer |");
            sep.push_str("---|");
        }
        let _ = writeln!(s, "{head}\n{sep}");
        for c in 0..res.configs.len() {
            let cells = res.cells(c);
            let has_rps = res.workloads[res.configs[c].0].has_rps();
            let metric = |cell: &Cell| {
                if what == 0 { cell.cost(has_rps) } else { cell.rss_mib.map(|r| r.med) }
            };
            let _ = write!(s, "| {} |", res.label(c));
            for i in 0..cells.len() {
                let r = ratios(&cells, &res.allocs, i, metric);
                let _ = write!(s, " {} |", summary_cell(&cells[i], r.vs_glibc));
            }
            if let Some(b) = names.iter().position(|n| *n == "brkmalloc") {
                let r = ratios(&cells, &res.allocs, b, metric);
                let _ = write!(
                    s,
                    " {} ({}) |",
                    summary_cell(&cells[b], r.vs_best),
                    r.best_name.unwrap_or("–")
                );
            }
            s.push('\n');
        }
        s.push('\n');
    }

    if !ex.callgrind.is_empty() {
        let _ = writeln!(
            s,
            "## Fast path: instructions per call (callgrind, churn workload, {} ops)\n",
            ex.callgrind_ops
        );
        let _ = writeln!(
            s,
            "Inclusive instruction count (Ir) of `malloc` and of `free` divided by their calls, from `valgrind --tool=callgrind` (deterministic, unlike seconds), summed over every call site. *Marginal* compares this run with one of half the ops: (Ir − Ir½) ÷ (calls − calls½), which cancels one-time costs such as initialisation. *Program Ir* is the whole program's instructions (including the workload's pattern writing and checking) per malloc+free call.\n"
        );
        s.push_str(&cg_table(ex.callgrind));
    }
    if !ex.fastpath.is_empty() {
        s.push_str(&fastpath_section(ex.fastpath, ex.fastpath_steps));
    }

    if !ex.charts.is_empty() {
        let _ = writeln!(s, "## Charts\n");
        for (file, alt) in ex.charts {
            let _ = writeln!(s, "![{alt}]({file})\n");
        }
    }

    let _ = writeln!(s, "## Details\n");
    let mut last_w = usize::MAX;
    for c in 0..res.configs.len() {
        let (wi, threads) = res.configs[c];
        let w = &res.workloads[wi];
        if wi != last_w {
            last_w = wi;
            let _ = writeln!(
                s,
                "### {}\n\n{} — {} {} per run.\n",
                w.name,
                w.title,
                w.amount(res.quick),
                w.unit
            );
            let rps_col = if w.has_rps() { " req/s |" } else { "" };
            let rps_sep = if w.has_rps() { "---:|" } else { "" };
            let _ = writeln!(
                s,
                "| threads | allocator | runs ok | time s |{rps_col} ×glibc | ×best peer | peak RSS MiB | ×glibc | ×best peer |\n|---:|---|---|---:|{rps_sep}---:|---:|---:|---:|---:|"
            );
        }
        let cells = res.cells(c);
        let has_rps = w.has_rps();
        for (i, cell) in cells.iter().enumerate() {
            let t = ratios(&cells, &res.allocs, i, |c: &Cell| c.cost(has_rps));
            let m = ratios(&cells, &res.allocs, i, |c: &Cell| c.rss_mib.map(|r| r.med));
            let runs = if cell.failed() {
                format!("{}/{} **{}**", cell.ok, cell.total, cell.fail_text())
            } else {
                format!("{}/{}", cell.ok, cell.total)
            };
            let rps = if has_rps { format!(" {} |", rps_text(cell.rps)) } else { String::new() };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |{} {} | {} | {} | {} | {} |",
                threads,
                res.allocs[i].name,
                runs,
                spread(cell.time, 3),
                rps,
                x(t.vs_glibc),
                x(t.vs_best),
                spread(cell.rss_mib, 1),
                x(m.vs_glibc),
                x(m.vs_best)
            );
        }
        let next_same = c + 1 < res.configs.len() && res.configs[c + 1].0 == wi;
        if !next_same {
            s.push('\n');
        }
    }

    let _ = writeln!(s, "## Reproduce\n");
    let q = if res.quick { " -- --quick" } else { "" };
    let _ = writeln!(
        s,
        "```\ncargo bench --bench compare{q}\n```\n\nEach failed run above carries its own command line. The workload sources are in `benches/workloads/`; the binaries are built into `target/bench/bin/` with `gcc -O2 -pthread`."
    );
    s
}
