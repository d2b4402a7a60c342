//! `cargo bench --bench compare [-- --quick]`: brkmalloc against glibc,
//! jemalloc, tcmalloc and mimalloc on the same workloads, interleaved, with
//! a Markdown report and SVG charts in target/bench/.  See benches/README.md.

mod allocs;
mod brkstats;
mod callgrind;
mod charts;
mod machine;
mod report;
mod runner;
mod scaling;
mod sharing;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use allocs::Allocator;
use report::{Cell, Results};
use runner::Status;
use workloads::{Ctx, Kind, Outcome};

const USAGE: &str = "\
usage: cargo bench --bench compare [-- OPTIONS]

  --quick            quick mode (reduced work, about 3 minutes; CI's smoke test)
  --rounds N         rounds (default 5; --scaling and --locks 3)
  --alloc LIST       allocators, comma separated (default glibc,jemalloc,tcmalloc,mimalloc,brkmalloc)
  --only LIST        workloads, comma separated (churn,server,prodcons,falseshare,mixed,strings,
                     large,malloclarge,threadchurn,python,sqlite,redis,memcached)
  --threads LIST     thread counts for the threaded workloads (default 1,2,4,8;
                     --scaling 1,2,4,8,16,32,64)
  --scaling          only the scaling benchmark: prodcons, server and threadchurn at
                     every thread count, brkmalloc's central lock acquisitions per
                     1000 calls from its statistics; writes scaling.md, scaling.svg
                     and a false-sharing placement table (about 7 minutes on 2
                     cores; with --quick a tenth of the work; --only picks workloads)
  --locks            only the central lock table (issue 11): prodcons 2+2 and 4+4,
                     server, churn under brkmalloc and the BRKMALLOC_EXTRA builds;
                     writes locks.md (about 25 s per build)
  --no-real          skip python, sqlite, redis and memcached
  --no-callgrind     skip the callgrind instruction counts
  --fastpath         only the fast-path probe under callgrind (64 live blocks of
                     16-128 B, one free + one malloc per step) for every allocator
                     and brkmalloc --no-default-features; writes fastpath.md
  --fastpath-steps N its steps (default 12800000; --quick 1280000); the
                     marginal figure is from a second run of N/2 steps
  --timeout SECS     per-run limit (default 60 quick, 300 full)
  --save / --no-save copy report and charts to benches/results/ and update
                     benches/README.md (default: on in full mode only)
  --self-test        only check that the harness reports a corrupting, crashing
                     and hanging allocator (also runs at the start of --quick)
  --out DIR          output directory (default <target>/bench)

Exit status: 1 when any run crashed or failed its checks (timeouts are
reported but do not fail the run), or brkmalloc could not be built.
";

struct Opts {
    quick: bool,
    /// None: the mode's default.
    rounds: Option<usize>,
    allocs: Vec<String>,
    only: Option<Vec<String>>,
    /// None: the mode's default.
    threads: Option<Vec<u32>>,
    scaling: bool,
    locks: bool,
    real: bool,
    callgrind: bool,
    fastpath_only: bool,
    fastpath_steps: Option<u64>,
    timeout: Option<u64>,
    save: Option<bool>,
    self_test_only: bool,
    out: Option<PathBuf>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn parse_args() -> Result<Option<Opts>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary with no arguments: do nothing then rather than a full benchmark.
    if args.is_empty() {
        eprintln!("compare: no arguments; run it with `cargo bench --bench compare [-- --quick]`");
        return Ok(None);
    }
    let mut o = Opts {
        quick: false,
        rounds: None,
        allocs: allocs::ALL_NAMES.iter().map(|s| s.to_string()).collect(),
        only: None,
        threads: None,
        scaling: false,
        locks: false,
        real: true,
        callgrind: true,
        fastpath_only: false,
        fastpath_steps: None,
        timeout: None,
        save: None,
        self_test_only: false,
        out: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--quick" => o.quick = true,
            "--full" => o.quick = false,
            "--rounds" => {
                o.rounds = Some(val("--rounds")?.parse().map_err(|_| "--rounds: not a number")?)
            }
            "--alloc" => o.allocs = list(&val("--alloc")?),
            "--only" => o.only = Some(list(&val("--only")?)),
            "--threads" => {
                o.threads = Some(
                    list(&val("--threads")?)
                        .iter()
                        .map(|t| t.parse::<u32>().map_err(|_| format!("--threads: bad '{t}'")))
                        .collect::<Result<_, _>>()?,
                )
            }
            "--scaling" => o.scaling = true,
            "--locks" => o.locks = true,
            "--no-real" => o.real = false,
            "--no-callgrind" => o.callgrind = false,
            "--fastpath" => o.fastpath_only = true,
            "--fastpath-steps" => {
                o.fastpath_steps = Some(
                    val("--fastpath-steps")?
                        .parse()
                        .ok()
                        .filter(|&n: &u64| n >= 2)
                        .ok_or("--fastpath-steps: not a number >= 2")?,
                )
            }
            "--timeout" => {
                o.timeout = Some(val("--timeout")?.parse().map_err(|_| "--timeout: not a number")?)
            }
            "--save" => o.save = Some(true),
            "--no-save" => o.save = Some(false),
            "--self-test" => o.self_test_only = true,
            "--out" => o.out = Some(PathBuf::from(val("--out")?)),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if o.rounds == Some(0) || o.threads.as_ref().is_some_and(|t| t.is_empty() || t.contains(&0)) {
        return Err("--rounds and --threads must be positive".into());
    }
    for a in &o.allocs {
        if !allocs::ALL_NAMES.contains(&a.as_str()) {
            return Err(format!("unknown allocator '{a}'"));
        }
    }
    Ok(Some(o))
}

/// The repository root: where benches/workloads/ is.
fn find_root() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_MANIFEST_DIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    candidates.into_iter().find(|d| d.join("benches/workloads/common.h").is_file())
}

/// The cargo target directory: $CARGO_TARGET_DIR, else from this
/// executable's path (<target>/release/deps/compare-<hash>).
fn find_target(root: &Path) -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        return if t.is_absolute() { t } else { root.join(t) };
    }
    if let Ok(exe) = std::env::current_exe() {
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let profile = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().map(Path::to_path_buf)
        } else {
            Some(dir)
        };
        if let Some(t) = profile.and_then(|p| p.parent().map(Path::to_path_buf)) {
            return t;
        }
    }
    root.join("target")
}

/// Prove that the harness reports what it must: a corrupting allocator as
/// VERIFY-FAIL, a crashing one as CRASH, a hanging one as TIMEOUT.
fn self_test(bin_dir: &Path, log_dir: &Path) -> Result<String, String> {
    callgrind::parser_self_check()?;
    let shim = bin_dir.join("badalloc.so");
    let churn = bin_dir.join("churn");
    let cases = [
        ("corrupt", Status::VerifyFail(3), 30u64),
        ("crash", Status::Crash(libc::SIGSEGV), 30),
        ("hang", Status::Timeout, 1),
    ];
    let mut seen = Vec::new();
    for (mode, want, limit) in cases {
        let mut cmd = std::process::Command::new(&churn);
        cmd.args(["1", "100000"]).env("LD_PRELOAD", &shim).env("BADALLOC", mode);
        let exit = runner::run(
            &mut cmd,
            &log_dir.join(format!("selftest-{mode}.log")),
            Duration::from_secs(limit),
        );
        if exit.status != want {
            return Err(format!(
                "harness self-test: BADALLOC={mode} gave {} instead of {}",
                exit.status, want
            ));
        }
        seen.push(format!("{mode} → {}", exit.status.label()));
    }
    Ok(format!("passed (a broken malloc shim is reported: {})", seen.join(", ")))
}

fn ensure_real_programs(real: &[&str], notes: &mut Vec<String>) {
    let mut missing: Vec<&str> = Vec::new();
    for (prog, pkg) in workloads::REAL_PACKAGES {
        let needed = match prog {
            "sqlite3" => real.contains(&"sqlite"),
            "memcached" => real.contains(&"memcached"),
            _ => real.contains(&"redis"),
        };
        if needed && runner::which(prog).is_none() && !missing.contains(&pkg) {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() && !allocs::apt_install(&missing) {
        notes.push(format!(
            "could not install {}; the workloads that need them are skipped (apt-get install -y {})",
            missing.join(" "),
            missing.join(" ")
        ));
    }
}

fn save_results(root: &Path, out: &Path, files: &[&str], date: &str, commit: &str, machine: &str) {
    let dest = root.join("benches").join("results");
    if let Err(e) = std::fs::create_dir_all(&dest) {
        eprintln!("compare: cannot create {}: {e}", dest.display());
        return;
    }
    for f in files {
        if let Err(e) = std::fs::copy(out.join(f), dest.join(f)) {
            eprintln!("compare: cannot copy {f} to {}: {e}", dest.display());
        }
    }
    let readme = root.join("benches").join("README.md");
    let Ok(text) = std::fs::read_to_string(&readme) else {
        return;
    };
    let (start, end) = ("<!-- bench-results:start -->", "<!-- bench-results:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        return;
    };
    if b < a {
        return;
    }
    let section = format!(
        "{start}\nLatest full run: **{date}**, commit `{commit}`, on {machine}. \
         Full report with every number: [results/report.md](results/report.md).\n\n\
         ![time ratio vs glibc](results/time_ratio.svg)\n\n\
         ![peak RSS ratio vs glibc](results/peak_rss_ratio.svg)\n\n\
         ![throughput against threads](results/throughput.svg)\n"
    );
    let new = format!("{}{}{}", &text[..a], section, &text[b..]);
    if let Err(e) = std::fs::write(&readme, new) {
        eprintln!("compare: cannot update {}: {e}", readme.display());
    }
}

/// Draws one chart (into the file its closure names).
type Draw<'a> = Box<dyn Fn() -> Result<(), Box<dyn std::error::Error>> + 'a>;

/// A bar chart of `metric`'s ratio to glibc per configuration, drawn into `path`.
fn ratio_chart<'a>(
    res: &'a Results,
    path: &Path,
    title: &'static str,
    metric: fn(&Cell, bool) -> Option<f64>,
) -> Draw<'a> {
    let path = path.to_path_buf();
    Box::new(move || charts::ratio_bars(res, &path, title, "ratio to glibc (log scale)", &metric))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("compare: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(opts: Opts) -> Result<ExitCode, String> {
    let started = Instant::now();
    let load_start = machine::loadavg();
    let root = find_root().ok_or("cannot find the repository (benches/workloads/common.h)")?;
    let target = find_target(&root);
    let out = opts.out.clone().unwrap_or_else(|| target.join("bench"));
    let bin_dir = out.join("bin");
    let log_dir = out.join("logs");
    let tmp_dir = out.join("tmp");
    let _ = std::fs::remove_dir_all(&log_dir);
    let _ = std::fs::remove_dir_all(&tmp_dir);
    for d in [&out, &bin_dir, &log_dir, &tmp_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    eprintln!("compare: output in {}", out.display());
    workloads::compile_c(&root, &bin_dir)?;

    let mut notes: Vec<String> = Vec::new();
    let mut exit_fail = false;
    let self_test = if (opts.quick && !opts.scaling && !opts.locks) || opts.self_test_only {
        match self_test(&bin_dir, &log_dir) {
            Ok(s) => {
                eprintln!("compare: self-test {s}");
                Some(s)
            }
            Err(e) => {
                eprintln!("compare: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        None
    };
    if opts.self_test_only {
        return Ok(ExitCode::SUCCESS);
    }

    // Allocators, in the order of the interleaving.
    let commit = machine::git_commit(&root);
    let mut allocs: Vec<Allocator> = Vec::new();
    if opts.allocs.iter().any(|a| a == "glibc") {
        allocs.push(allocs::glibc());
    }
    allocs.extend(allocs::externals(&opts.allocs, &mut notes));
    if opts.allocs.iter().any(|a| a == "brkmalloc") {
        match allocs::brkmalloc(&root, &target, &commit) {
            Ok(b) => allocs.push(b),
            Err(e) => {
                eprintln!("compare: brkmalloc unavailable: {e}");
                notes.push(format!(
                    "**brkmalloc could not be built; it is missing from every table**: {}",
                    e.lines().next().unwrap_or("")
                ));
                exit_fail = true;
            }
        }
    }
    // Extra builds to compare in the same run, e.g. brkmalloc without its hardening checks:
    // BRKMALLOC_EXTRA="brkmalloc-nocheck=target/nocheck/release/libbrkmalloc.so[,name=path]".
    if let Ok(extra) = std::env::var("BRKMALLOC_EXTRA") {
        for item in extra.split(',').filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((name, path)) if std::path::Path::new(path).is_file() => {
                    allocs.push(allocs::Allocator {
                        name: Box::leak(name.to_string().into_boxed_str()),
                        preload: Some(std::path::PathBuf::from(path)),
                        version: format!("{path} (from BRKMALLOC_EXTRA)"),
                        is_peer: false,
                    });
                }
                _ => {
                    eprintln!(
                        "compare: BRKMALLOC_EXTRA item {item:?} ignored (name=path of a file)"
                    );
                    notes.push(format!("BRKMALLOC_EXTRA item `{item}` ignored"));
                }
            }
        }
    }
    if allocs.is_empty() {
        return Err("no allocator to run".into());
    }
    if opts.scaling || opts.locks {
        let setup = scaling::Setup {
            root: &root,
            out: &out,
            ctx: workloads::Ctx {
                root: root.clone(),
                bin_dir: bin_dir.clone(),
                log_dir: log_dir.clone(),
                tmp_dir: tmp_dir.clone(),
                quick: opts.quick,
                timeout: Duration::from_secs(opts.timeout.unwrap_or(300)),
                python: None,
            },
            commit: &commit,
            threads: opts.threads.clone().unwrap_or_else(|| scaling::THREADS.to_vec()),
            only: opts.only.clone(),
            save: opts.save.unwrap_or(!opts.quick),
            started,
            load_start: &load_start,
        };
        let mode = if opts.locks { scaling::Mode::Locks } else { scaling::Mode::Scaling };
        let rounds = opts.rounds.unwrap_or(scaling::ROUNDS);
        let failed = scaling::run(&setup, mode, rounds, allocs, notes)? || exit_fail;
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let rounds = opts.rounds.unwrap_or(5);
    let threads = opts.threads.clone().unwrap_or_else(|| vec![1, 2, 4, 8]);

    // The fast-path probe: every allocator and the non-hardened build under callgrind.
    let fp_steps = opts.fastpath_steps.unwrap_or(if opts.quick { 1_280_000 } else { 12_800_000 });
    let want_fastpath = opts.fastpath_only || (opts.callgrind && opts.only.is_none());
    let mut fastpath = Vec::new();
    if want_fastpath {
        if runner::which("valgrind").is_none() {
            notes.push(
                "valgrind is not installed: no instruction counts (apt-get install -y valgrind)"
                    .into(),
            );
        } else {
            let mut fp_allocs = allocs.clone();
            if allocs.iter().any(|a| a.name == "brkmalloc") {
                match allocs::brkmalloc_nohard(&root, &target, &commit) {
                    Ok(b) => fp_allocs.push(b),
                    Err(e) => notes.push(format!(
                        "brkmalloc --no-default-features could not be built: {}",
                        e.lines().next().unwrap_or("")
                    )),
                }
            }
            fastpath = callgrind::measure_all(
                &fp_allocs,
                &bin_dir.join("fastpath"),
                fp_steps,
                &out.join("callgrind"),
            );
        }
    }
    if opts.fastpath_only {
        let mut md = String::new();
        for n in &notes {
            md.push_str(&format!("- {n}\n"));
        }
        md.push_str(&report::fastpath_section(&fastpath, fp_steps));
        println!("{md}");
        let path = out.join("fastpath.md");
        std::fs::write(&path, &md).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("compare: wrote {}", path.display());
        let failed = exit_fail || fastpath.iter().any(|c| c.error.is_some());
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }

    // Workloads and configurations.
    let mut wls = workloads::all();
    if let Some(only) = &opts.only {
        for name in only {
            if !wls.iter().any(|w| w.name == name) {
                return Err(format!("unknown workload '{name}'"));
            }
        }
        wls.retain(|w| only.iter().any(|o| o == w.name));
    }
    if !opts.real {
        wls.retain(|w| !w.is_real());
    }
    let real: Vec<&str> = wls.iter().filter(|w| w.is_real()).map(|w| w.name).collect();
    ensure_real_programs(&real, &mut notes);
    let python = if real.contains(&"python") { workloads::find_python() } else { None };
    wls.retain(|w| {
        let have = match w.kind {
            Kind::Synthetic => true,
            Kind::Python => python.is_some(),
            Kind::Sqlite => runner::which("sqlite3").is_some(),
            Kind::Redis => ["redis-server", "redis-benchmark", "redis-cli"]
                .iter()
                .all(|p| runner::which(p).is_some()),
            Kind::Memcached => runner::which("memcached").is_some(),
        };
        if !have {
            notes.push(format!("workload {} skipped: its program is not installed", w.name));
        }
        have
    });
    let mut configs: Vec<(usize, u32)> = Vec::new();
    for (i, w) in wls.iter().enumerate() {
        if w.threaded {
            configs.extend(threads.iter().map(|&t| (i, t)));
        } else {
            configs.push((i, 1));
        }
    }

    let ctx = Ctx {
        root: root.clone(),
        bin_dir: bin_dir.clone(),
        log_dir: log_dir.clone(),
        tmp_dir,
        quick: opts.quick,
        timeout: Duration::from_secs(opts.timeout.unwrap_or(if opts.quick { 60 } else { 300 })),
        python: python.clone(),
    };

    // The interleaved rounds: for each round, every configuration, every allocator.
    let mut runs: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); allocs.len()]; configs.len()];
    let mut timed_out = vec![vec![false; allocs.len()]; configs.len()];
    for round in 0..rounds {
        for (c, &(wi, threads)) in configs.iter().enumerate() {
            let w = &wls[wi];
            for (a, alloc) in allocs.iter().enumerate() {
                if timed_out[c][a] {
                    continue; // one hang per cell is enough; it is reported
                }
                let o = workloads::run_once(&ctx, w, threads, alloc, round + 1);
                o.progress((round + 1, rounds), w.name, threads, alloc.name);
                if o.status == Status::Timeout {
                    timed_out[c][a] = true;
                }
                runs[c][a].push(o);
            }
        }
    }
    if timed_out.iter().flatten().any(|t| *t) {
        notes.push("a configuration that timed out once is not run again in later rounds (its cell shows fewer runs)".into());
    }

    // Every run, raw, for anyone who wants to redo the statistics.
    let mut csv = String::from("workload,threads,allocator,round,status,wall_s,maxrss_kib,rps\n");
    for (c, &(wi, threads)) in configs.iter().enumerate() {
        for (a, alloc) in allocs.iter().enumerate() {
            for (r, o) in runs[c][a].iter().enumerate() {
                csv.push_str(&format!(
                    "{},{},{},{},{},{:.6},{},{}\n",
                    wls[wi].name,
                    threads,
                    alloc.name,
                    r + 1,
                    o.status.label(),
                    o.wall_s,
                    o.maxrss_kib,
                    o.rps.map(|v| format!("{v:.1}")).unwrap_or_default()
                ));
            }
        }
    }
    if let Err(e) = std::fs::write(out.join("runs.csv"), csv) {
        eprintln!("compare: cannot write runs.csv: {e}");
    }

    // Fast-path instruction counts.
    let cg_ops: u64 = if opts.quick { 200_000 } else { 1_000_000 };
    let mut cg = Vec::new();
    if opts.callgrind && wls.iter().any(|w| w.name == "churn") {
        if runner::which("valgrind").is_some() {
            cg = callgrind::measure_all(
                &allocs,
                &bin_dir.join("churn"),
                cg_ops,
                &out.join("callgrind"),
            );
        } else {
            notes.push(
                "valgrind is not installed: no instruction counts (apt-get install -y valgrind)"
                    .into(),
            );
        }
    }

    let res = Results { workloads: wls, configs, allocs, runs, rounds, quick: opts.quick };

    // Charts.
    let mut chart_files: Vec<(&str, &str)> = Vec::new();
    let charts: [(&str, &str, Draw<'_>); 3] = [
        (
            "time_ratio.svg",
            "time ratio vs glibc",
            ratio_chart(
                &res,
                &out.join("time_ratio.svg"),
                "Time ÷ glibc time (median; lower is better; servers: glibc req/s ÷ req/s)",
                |c, rps| c.cost(rps),
            ),
        ),
        (
            "peak_rss_ratio.svg",
            "peak RSS ratio vs glibc",
            ratio_chart(
                &res,
                &out.join("peak_rss_ratio.svg"),
                "Peak RSS ÷ glibc peak RSS (median; lower is better)",
                |c, _| c.rss_mib.map(|r| r.med),
            ),
        ),
        (
            "throughput.svg",
            "throughput against threads",
            Box::new(|| charts::throughput(&res, &out.join("throughput.svg"))),
        ),
    ];
    for (file, alt, draw) in charts.iter() {
        match draw() {
            Ok(()) => chart_files.push((file, alt)),
            Err(e) => {
                eprintln!("compare: chart {file} failed: {e}");
                notes.push(format!("chart {file} could not be drawn: {e}"));
            }
        }
    }

    let m = machine::probe(&commit, python.as_deref());
    let load_end = machine::loadavg();
    let md = report::markdown(
        &res,
        &report::Extra {
            machine: &m,
            notes: &notes,
            callgrind: &cg,
            callgrind_ops: cg_ops,
            fastpath: &fastpath,
            fastpath_steps: fp_steps,
            self_test: self_test.as_deref(),
            charts: &chart_files,
            elapsed_s: started.elapsed().as_secs_f64(),
            load: (&load_start, &load_end),
        },
    );
    println!("{md}");
    let report_path = out.join("report.md");
    std::fs::write(&report_path, &md)
        .map_err(|e| format!("write {}: {e}", report_path.display()))?;
    eprintln!("compare: wrote {}", report_path.display());

    if opts.save.unwrap_or(!opts.quick) {
        let mut files = vec!["report.md", "runs.csv"];
        files.extend(chart_files.iter().map(|(f, _)| *f));
        save_results(&root, &out, &files, &m.date, &m.commit, &m.one_line());
        eprintln!("compare: copied the report and charts to benches/results/");
    }

    let hard = res.hard_failures();
    let timeouts = res.timeouts();
    if timeouts > 0 {
        eprintln!(
            "compare: WARNING: {timeouts} run(s) timed out (reported, not counted as failure)"
        );
    }
    let cg_fail = cg.iter().chain(&fastpath).any(|c| c.error.is_some());
    if cg_fail {
        eprintln!("compare: WARNING: a callgrind measurement failed (see the report)");
    }
    if hard > 0 {
        eprintln!("compare: FAILED: {hard} run(s) crashed or failed verification (see the report)");
        exit_fail = true;
    }
    Ok(if exit_fail { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
