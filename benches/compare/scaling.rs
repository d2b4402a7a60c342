//! The scaling benchmark (`--scaling`) and the central lock table
//! (`--locks`): the multi-threaded workloads at many thread counts, every
//! allocator interleaved as in the main harness, and brkmalloc's central lock
//! acquisitions per 1000 malloc+free calls from its own statistics
//! (`brkstats`).  Writes scaling.md + scaling.svg, or locks.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use plotters::prelude::*;

use crate::allocs::Allocator;
use crate::brkstats::{self, BrkStats};
use crate::charts::{self, Line, Panel};
use crate::machine::{self, Machine};
use crate::report::{Cell, Spread, spread};
use crate::runner::Status;
use crate::sharing;
use crate::workloads::{self, Ctx, Outcome, Workload};

/// The default thread counts of the scaling mode.
pub const THREADS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Scaling,
    Locks,
}

/// Default rounds of both modes: the producer/consumer lock counts vary by
/// ±10 % with the scheduling, so medians of 3.
pub const ROUNDS: usize = 3;

/// What the driver set up for us.
pub struct Setup<'a> {
    pub root: &'a Path,
    pub out: &'a Path,
    pub ctx: Ctx,
    pub commit: &'a str,
    pub threads: Vec<u32>,
    /// `--only`: the scaling workloads to run (all when None).
    pub only: Option<Vec<String>>,
    pub save: bool,
    pub started: Instant,
    pub load_start: &'a str,
}

/// One configuration: a workload (with this mode's amount of work) at a
/// thread count, and its label in the tables.
struct Config {
    w: Workload,
    threads: u32,
    label: String,
}

/// One run: the outcome, the workload's own malloc+free count and
/// brkmalloc's statistics (brkmalloc builds only).
struct Run {
    out: Outcome,
    calls: Option<u64>,
    stats: Option<BrkStats>,
}

impl Run {
    /// (central lock acquisitions per 1000 calls, whether the divisor is the
    /// workload's own count).
    fn per_1000(&self) -> Option<(f64, bool)> {
        let s = self.stats.as_ref()?;
        let (calls, own) = brkstats::calls(self.calls, s)?;
        Some((brkstats::per_1000(s.acquisitions?, calls), own))
    }
}

/// A workload of the main harness with `(quick, full)` amounts of work.
fn workload(name: &str, (quick, full): (u64, u64)) -> Result<Workload, String> {
    let mut w = workloads::all()
        .into_iter()
        .find(|w| w.name == name)
        .ok_or(format!("no workload {name}"))?;
    (w.quick, w.full) = (quick, full);
    Ok(w)
}

/// Scaling mode: every workload at every thread count.  The amounts keep a
/// default run (3 rounds, 7 thread counts, 5 allocators) near 10 minutes on
/// 2 cores: about 1 s per run.
fn scaling_configs(threads: &[u32], only: Option<&[String]>) -> Result<Vec<Config>, String> {
    let all = [
        ("prodcons", (600_000, 6_000_000)),
        ("server", (600_000, 6_000_000)),
        ("threadchurn", (600, 6_000)),
    ];
    for o in only.unwrap_or_default() {
        if !all.iter().any(|(n, _)| n == o) {
            return Err(format!("--scaling runs prodcons, server and threadchurn, not '{o}'"));
        }
    }
    let mut v = Vec::new();
    for (name, amounts) in
        all.into_iter().filter(|(n, _)| only.is_none_or(|o| o.iter().any(|x| x == n)))
    {
        for &t in threads {
            let w = workload(name, amounts)?;
            v.push(Config { label: format!("{name} ×{t}"), w, threads: t });
        }
    }
    Ok(v)
}

/// Lock table mode: the rows of issue 11's first table, at its sizes
/// (about 20 M calls for producer/consumer, 24 M server, 40 M churn).
fn lock_configs() -> Result<Vec<Config>, String> {
    let rows = [
        ("producer/consumer, 2+2 threads", "prodcons", 4, (1_000_000, 10_000_000)),
        ("producer/consumer, 4+4 threads", "prodcons", 8, (1_000_000, 10_000_000)),
        (
            "server simulation, 4 lineages (arrays handed to new threads)",
            "server",
            4,
            (1_200_000, 12_000_000),
        ),
        ("single-thread churn", "churn", 1, (2_000_000, 20_000_000)),
    ];
    rows.into_iter()
        .map(|(label, name, threads, amounts)| {
            Ok(Config { w: workload(name, amounts)?, threads, label: label.to_string() })
        })
        .collect()
}

fn is_brk(a: &Allocator) -> bool {
    !a.is_peer && a.name.starts_with("brkmalloc")
}

/// One run; brkmalloc builds write their statistics to a file of their own.
fn run_one(ctx: &Ctx, c: &Config, alloc: &Allocator, round: usize) -> Run {
    let tag = format!("{}-t{}-{}-r{round}", c.w.name, c.threads, alloc.name);
    let stats_path = ctx.tmp_dir.join(format!("stats-{tag}.json"));
    let _ = std::fs::remove_file(&stats_path);
    let env: Vec<(String, String)> =
        if is_brk(alloc) { vec![brkstats::conf_env(&stats_path)] } else { Vec::new() };
    let log = ctx.log_dir.join(format!("scaling-{tag}.log"));
    let amount = c.w.amount(ctx.quick);
    let out = workloads::run_synth_with(ctx, &c.w, c.threads, amount, alloc, &env, log);
    let log_text = std::fs::read_to_string(&out.log).unwrap_or_default();
    let calls = brkstats::workload_calls(&log_text);
    let stats = if is_brk(alloc) { brkstats::read(&stats_path) } else { None };
    Run { out, calls, stats }
}

/// Every configuration × allocator, `rounds` times, interleaved (round, then
/// configuration, then allocator).  A configuration that timed out is not
/// run again.  runs[config][alloc].
fn run_all(
    ctx: &Ctx,
    configs: &[Config],
    allocs: &[Allocator],
    rounds: usize,
) -> Vec<Vec<Vec<Run>>> {
    let mut runs: Vec<Vec<Vec<Run>>> =
        configs.iter().map(|_| allocs.iter().map(|_| Vec::new()).collect()).collect();
    for round in 1..=rounds {
        for (ci, c) in configs.iter().enumerate() {
            for (a, alloc) in allocs.iter().enumerate() {
                let cell = &mut runs[ci][a];
                if cell.iter().any(|r| r.out.status == Status::Timeout) {
                    continue;
                }
                let r = run_one(ctx, c, alloc, round);
                r.out.progress((round, rounds), c.w.name, c.threads, alloc.name);
                if let Some((p, _)) = r.per_1000() {
                    eprintln!("    central lock: {p:.2} acquisitions per 1000 calls");
                }
                cell.push(r);
            }
        }
    }
    runs
}

/// The lock figures of one cell over its successful runs.
struct Locks {
    per_1000: Option<Spread>,
    calls: Option<Spread>,
    acquisitions: Option<Spread>,
    /// brkmalloc's own per-1000 figure (median), when the build writes it.
    own: Option<f64>,
    /// Middle layer: hits, misses, puts, overflows (medians), when written.
    layer: [Option<f64>; 4],
    /// Whether every divisor was the workload's own count.
    own_calls: bool,
}

impl Locks {
    fn of(runs: &[Run]) -> Locks {
        let ok: Vec<&Run> = runs.iter().filter(|r| r.out.status.is_ok()).collect();
        let med = |f: &dyn Fn(&Run) -> Option<f64>| {
            Spread::of(ok.iter().filter_map(|r| f(r)).collect::<Vec<f64>>())
        };
        let stat = |f: fn(&BrkStats) -> Option<u64>| {
            move |r: &Run| r.stats.as_ref().and_then(f).map(|v| v as f64)
        };
        let layer = [0, 1, 2, 3].map(|i| {
            Spread::of(
                ok.iter().filter_map(|r| r.stats.as_ref()?.layer[i]).map(|v| v as f64).collect(),
            )
            .map(|s| s.med)
        });
        Locks {
            per_1000: med(&|r| r.per_1000().map(|p| p.0)),
            calls: med(&|r| {
                r.stats.as_ref().and_then(|s| brkstats::calls(r.calls, s)).map(|c| c.0 as f64)
            }),
            acquisitions: med(&stat(|s| s.acquisitions)),
            own: med(&stat(|s| s.per_1000_x10)).map(|s| s.med / 10.0),
            layer,
            own_calls: ok.iter().all(|r| r.per_1000().is_none_or(|p| p.1)),
        }
    }
}

/// Median [min–max], or only the median when the runs agree (one round).
fn spread_or_one(v: Option<Spread>) -> String {
    match v {
        Some(s) if s.min == s.max => format!("{:.2}", s.med),
        other => spread(other, 2),
    }
}

fn millions(v: Option<Spread>) -> String {
    v.map(|s| format!("{:.2} M", s.med / 1e6)).unwrap_or_else(|| "–".into())
}

fn count(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.0} k", v / 1e3),
        Some(v) => format!("{v:.0}"),
        None => "–".into(),
    }
}

/// The time cell: median [min–max] seconds, and the failures.
fn time_text(cell: &Cell) -> String {
    let t = spread(cell.time, 3);
    if cell.failed() { format!("{t} **{}**", cell.fail_text()) } else { t }
}

/// Header lines shared by both reports.
fn header(s: &mut String, title: &str, m: &Machine, allocs: &[Allocator], setup: &Setup<'_>) {
    let _ = writeln!(s, "# {title}\n");
    let _ = writeln!(s, "- **date**: {}", m.date);
    let _ = writeln!(s, "- **commit**: {}", m.commit);
    let _ = writeln!(
        s,
        "- **machine**: {} — **{} cores available** ({} online), {:.1} GiB RAM; {}; {}",
        m.cpu, m.cores, m.online_cpus, m.mem_gib, m.kernel, m.os
    );
    for a in allocs {
        let path = a.preload.as_ref().map(|p| format!(" — `LD_PRELOAD={}`", p.display()));
        let _ = writeln!(s, "- **{}**: {}{}", a.name, a.version, path.unwrap_or_default());
    }
    let _ = writeln!(
        s,
        "- **brkmalloc statistics**: every brkmalloc run has `BRKMALLOC_CONF=stats:json,stats_file:<file>`; the central lock acquisitions come from the JSON object written at exit, divided by the workload's own count of malloc+free calls (its `calls N` line; otherwise 2 × brkmalloc's `allocs`, marked †). Statistics are always counted; the option only writes them at exit.",
    );
    let _ = writeln!(
        s,
        "- **load average** (1/5/15 min): {} at the start, {} at the end; total time of this run: {:.0} s",
        setup.load_start,
        machine::loadavg(),
        setup.started.elapsed().as_secs_f64()
    );
}

fn failures(s: &mut String, configs: &[Config], allocs: &[Allocator], runs: &[Vec<Vec<Run>>]) {
    let mut f = String::new();
    for (ci, per_alloc) in runs.iter().enumerate() {
        for (a, cell) in per_alloc.iter().enumerate() {
            for (round, r) in cell.iter().enumerate().filter(|(_, r)| !r.out.status.is_ok()) {
                let _ = writeln!(
                    f,
                    "- **{}** on `{}` round {}: **{}**  \n  reproduce: `{}`",
                    allocs[a].name,
                    configs[ci].label,
                    round + 1,
                    r.out.status,
                    r.out.repro
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Failures\n");
    s.push_str(if f.is_empty() { "None: every run exited 0 and passed its checks.\n" } else { &f });
    s.push('\n');
}

/// One row of lock columns for every brkmalloc build: per 1000 calls [min–max],
/// acquisitions, and brkmalloc's own figure / the middle layer's counters
/// where a build writes them.
fn lock_cols(s: &mut String, cells: &[Locks], (own, layer): (bool, bool)) {
    for l in cells {
        let mark = if l.own_calls { "" } else { " †" };
        let _ = write!(
            s,
            " {} | {}{mark} |",
            count(l.acquisitions.map(|a| a.med)),
            spread_or_one(l.per_1000)
        );
        if own {
            let _ =
                write!(s, " {} |", l.own.map(|o| format!("{o:.1}")).unwrap_or_else(|| "–".into()));
        }
        if layer {
            let _ = write!(s, " {} |", l.layer.map(count).join(" / "));
        }
    }
}

fn lock_head(s: &mut String, first: &str, brks: &[&Allocator], (own, layer): (bool, bool)) {
    let mut head = format!("| {first} | malloc+free calls |");
    let mut sep = String::from("|---|---:|");
    for b in brks {
        let _ = write!(head, " {0}: central lock acquisitions | {0}: per 1000 calls |", b.name);
        sep.push_str("---:|---:|");
        if own {
            let _ = write!(head, " {}: own per 1000 |", b.name);
            sep.push_str("---:|");
        }
        if layer {
            let _ = write!(head, " {}: layer hits / misses / puts / overflows |", b.name);
            sep.push_str("---:|");
        }
    }
    let _ = writeln!(s, "{head}\n{sep}");
}

/// The lock table: one row per configuration, brkmalloc builds as columns.
fn lock_table(
    s: &mut String,
    first: &str,
    configs: &[Config],
    allocs: &[Allocator],
    runs: &[Vec<Vec<Run>>],
) {
    let brk: Vec<usize> = (0..allocs.len()).filter(|&a| is_brk(&allocs[a])).collect();
    let brks: Vec<&Allocator> = brk.iter().map(|&a| &allocs[a]).collect();
    let table: Vec<Vec<Locks>> =
        runs.iter().map(|per| brk.iter().map(|&a| Locks::of(&per[a])).collect()).collect();
    // The optional columns are there for every build when any build writes them.
    let own = table.iter().flatten().any(|c| c.own.is_some());
    let layer = table.iter().flatten().any(|c| c.layer.iter().any(Option::is_some));
    lock_head(s, first, &brks, (own, layer));
    for (ci, cells) in table.iter().enumerate() {
        let calls = cells.iter().find_map(|l| l.calls);
        let _ = write!(s, "| {} | {} |", configs[ci].label, millions(calls));
        lock_cols(s, cells, (own, layer));
        s.push('\n');
    }
    s.push('\n');
}

/// The chart: time against threads per workload, and brkmalloc's lock
/// acquisitions per 1000 calls against threads.
fn chart(
    path: &Path,
    configs: &[Config],
    allocs: &[Allocator],
    runs: &[Vec<Vec<Run>>],
    threads: &[u32],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut names: Vec<&str> = configs.iter().map(|c| c.w.name).collect();
    names.dedup();
    let panels_n = names.len() + 1;
    let cols = 2usize;
    let rows = panels_n.div_ceil(cols);
    let root =
        SVGBackend::new(path, (520 * cols as u32, 360 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.draw(&Text::new(
        "Scaling: time against threads (median; lower is better); brkmalloc's central lock acquisitions per 1000 calls"
            .to_string(),
        (12, 12),
        ("sans-serif", 18).into_font(),
    ))?;
    let panels = body.split_evenly((rows, cols));
    fn xs<'c>(configs: &'c [Config], name: &'c str) -> impl Iterator<Item = (usize, &'c Config)> {
        configs.iter().enumerate().filter(move |(_, c)| c.w.name == name)
    }
    for (pi, name) in names.iter().enumerate() {
        let lines: Vec<Line> = allocs
            .iter()
            .enumerate()
            .map(|(a, alloc)| Line {
                name: alloc.name.to_string(),
                style: charts::color(alloc.name).stroke_width(2),
                points: xs(configs, name)
                    .filter_map(|(ci, c)| {
                        let cell = Cell::of(
                            &runs[ci][a].iter().map(|r| r.out.clone()).collect::<Vec<_>>(),
                        );
                        Some(((c.threads as f64).log2(), cell.time?.med))
                    })
                    .collect(),
            })
            .collect();
        let title = format!("{name}: seconds");
        charts::line_panel(
            &panels[pi],
            &Panel { title: &title, y_desc: "s", log_y: false },
            threads,
            &lines,
            pi == 0,
        )?;
    }
    // One colour per workload, none of them an allocator's colour (charts::color).
    let palette =
        [RGBColor(0, 0, 0), RGBColor(140, 86, 75), RGBColor(23, 190, 207), RGBColor(188, 189, 34)];
    let mut lines = Vec::new();
    for (wi, name) in names.iter().enumerate() {
        for (bi, (a, alloc)) in allocs.iter().enumerate().filter(|(_, a)| is_brk(a)).enumerate() {
            let col = palette[wi % palette.len()];
            let style = if bi == 0 { col.stroke_width(2) } else { col.mix(0.45).stroke_width(2) };
            let points = xs(configs, name)
                .filter_map(|(ci, c)| {
                    let p = Locks::of(&runs[ci][a]).per_1000?.med;
                    (p > 0.0).then_some(((c.threads as f64).log2(), p))
                })
                .collect();
            lines.push(Line { name: format!("{name} ({})", alloc.name), style, points });
        }
    }
    let p = Panel {
        title: "brkmalloc: central lock acquisitions per 1000 calls",
        y_desc: "per 1000 calls (log)",
        log_y: true,
    };
    charts::line_panel(&panels[names.len()], &p, threads, &lines, true)?;
    root.present()?;
    Ok(())
}

/// What a mode measured.
struct Data<'a> {
    configs: &'a [Config],
    allocs: &'a [Allocator],
    /// runs[config][alloc]
    runs: &'a [Vec<Vec<Run>>],
    rounds: usize,
    notes: &'a [String],
}

/// The report's head (with the method line) and its Failures section.
fn head(s: &mut String, title: &str, method: &str, m: &Machine, d: &Data<'_>, setup: &Setup<'_>) {
    header(s, title, m, d.allocs, setup);
    let _ = writeln!(s, "- **method**: {method}");
    for n in d.notes {
        let _ = writeln!(s, "- **note**: {n}");
    }
    failures(s, d.configs, d.allocs, d.runs);
}

/// `sharing`: the passive false sharing section (`sharing::section`).
fn scaling_report(setup: &Setup<'_>, m: &Machine, d: &Data<'_>, sharing: &str) -> String {
    let (configs, allocs, runs) = (d.configs, d.allocs, d.runs);
    let mut s = String::new();
    let mode = if setup.ctx.quick { "quick" } else { "full" };
    let method = format!(
        "{} rounds, every allocator runs every configuration in each round, interleaved; wall time per run, median [min–max] seconds over the successful runs. The same total work at every thread count, so that perfect scaling on N cores divides the time by min(threads, N); thread counts above {} are oversubscribed on this machine.",
        d.rounds, m.cores
    );
    head(&mut s, &format!("brkmalloc scaling benchmark ({mode})"), &method, m, d, setup);
    let _ = writeln!(s, "## Time against threads (seconds; lower is better)\n");
    let mut last = "";
    for (ci, c) in configs.iter().enumerate() {
        if c.w.name != last {
            last = c.w.name;
            let _ = writeln!(
                s,
                "\n### {}\n\n{} — {} {} per run.\n",
                c.w.name,
                c.w.title,
                c.w.amount(setup.ctx.quick),
                c.w.unit
            );
            let mut head = String::from("| threads |");
            let mut sep = String::from("|---:|");
            for a in allocs {
                let _ = write!(head, " {} |", a.name);
                sep.push_str("---:|");
            }
            let _ = writeln!(s, "{head} brkmalloc ÷ best peer |\n{sep}---|");
        }
        let cells: Vec<Cell> = runs[ci]
            .iter()
            .map(|r| Cell::of(&r.iter().map(|r| r.out.clone()).collect::<Vec<_>>()))
            .collect();
        let _ = write!(s, "| {} |", c.threads);
        for cell in &cells {
            let _ = write!(s, " {} |", time_text(cell));
        }
        let r = allocs
            .iter()
            .position(|a| a.name == "brkmalloc")
            .map(|b| crate::report::ratios(&cells, allocs, b, |c| c.time.map(|t| t.med)));
        let ratio = r.and_then(|r| Some(format!("{:.2} ({})", r.vs_best?, r.best_name?)));
        let _ = writeln!(s, " {} |", ratio.unwrap_or_else(|| "–".into()));
    }
    if allocs.iter().any(is_brk) {
        let _ =
            writeln!(s, "\n## brkmalloc: central lock acquisitions per 1000 malloc+free calls\n");
        let _ = writeln!(s, "Medians over the rounds; per 1000 calls as median [min–max].\n");
        lock_table(&mut s, "workload", configs, allocs, runs);
    }
    s.push_str(sharing);
    let _ = writeln!(
        s,
        "## Chart\n\n![time and central lock acquisitions against threads](scaling.svg)"
    );
    s
}

fn locks_report(setup: &Setup<'_>, m: &Machine, d: &Data<'_>) -> String {
    let mut s = String::new();
    let method = format!(
        "{} round(s) per build, interleaved; medians. Programs: {}",
        d.rounds,
        d.configs
            .iter()
            .map(|c| format!(
                "`{} {} {}{}`",
                c.w.name,
                c.threads,
                c.w.amount(setup.ctx.quick),
                c.w.extra(setup.ctx.quick).iter().map(|e| format!(" {e}")).collect::<String>()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let title = "brkmalloc: central lock acquisitions (issue 11's table)";
    head(&mut s, title, &method, m, d, setup);
    lock_table(&mut s, "program", d.configs, d.allocs, d.runs);
    s
}

/// Run the mode; writes its report (and chart) to `out`, copies them to
/// benches/results/ when saving.  Returns whether any run failed hard.
pub fn run(
    setup: &Setup<'_>,
    mode: Mode,
    rounds: usize,
    allocs: Vec<Allocator>,
    mut notes: Vec<String>,
) -> Result<bool, String> {
    brkstats::parser_self_check()?;
    let (configs, allocs) = match mode {
        Mode::Scaling => (scaling_configs(&setup.threads, setup.only.as_deref())?, allocs),
        Mode::Locks => (lock_configs()?, allocs.into_iter().filter(is_brk).collect::<Vec<_>>()),
    };
    if allocs.is_empty() {
        return Err("--locks needs brkmalloc (or a BRKMALLOC_EXTRA build)".into());
    }
    let runs = run_all(&setup.ctx, &configs, &allocs, rounds);
    let sharing = match mode {
        Mode::Scaling => sharing::measure(&setup.ctx, &allocs, &setup.threads),
        Mode::Locks => Vec::new(),
    };
    let m = machine::probe(setup.commit, None);
    let mut files = vec![if mode == Mode::Scaling { "scaling.md" } else { "locks.md" }];
    if mode == Mode::Scaling {
        match chart(&setup.out.join("scaling.svg"), &configs, &allocs, &runs, &setup.threads) {
            Ok(()) => files.push("scaling.svg"),
            Err(e) => notes.push(format!("chart scaling.svg could not be drawn: {e}")),
        }
    }
    let d = Data { configs: &configs, allocs: &allocs, runs: &runs, rounds, notes: &notes };
    let md = match mode {
        Mode::Scaling => scaling_report(setup, &m, &d, &sharing::section(&sharing, &allocs)),
        Mode::Locks => locks_report(setup, &m, &d),
    };
    println!("{md}");
    let path = setup.out.join(files[0]);
    std::fs::write(&path, &md).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("compare: wrote {}", path.display());
    if setup.save {
        let dest = setup.root.join("benches").join("results");
        for f in &files {
            if let Err(e) = std::fs::copy(setup.out.join(f), dest.join(f)) {
                eprintln!("compare: cannot copy {f} to {}: {e}", dest.display());
            }
        }
        eprintln!("compare: copied {} to benches/results/", files.join(", "));
    }
    let hard = runs.iter().flatten().flatten().filter(|r| r.out.status.is_hard_failure()).count();
    if hard > 0 {
        eprintln!("compare: FAILED: {hard} run(s) crashed or failed verification (see the report)");
    }
    Ok(hard > 0 || sharing::failed(&sharing))
}
