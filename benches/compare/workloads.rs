//! The workloads: C programs under benches/workloads/ compiled with gcc at
//! run time, and the real programs (python3, sqlite3, redis-server,
//! memcached).  `run_once` runs one workload once under one allocator and
//! classifies the outcome.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::allocs::Allocator;
use crate::runner::{self, Exit, Status};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A C program in benches/workloads/<name>.c: `prog THREADS OPS [extra...]`.
    Synthetic,
    Python,
    Sqlite,
    Redis,
    Memcached,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub title: &'static str,
    pub kind: Kind,
    pub threaded: bool,
    /// Amount of work in quick and full mode (ops, rows, requests...).
    pub quick: u64,
    pub full: u64,
    /// What `quick`/`full` count.
    pub unit: &'static str,
    /// Extra arguments after THREADS OPS, quick and full.
    pub extra_quick: &'static [&'static str],
    pub extra_full: &'static [&'static str],
}

impl Workload {
    pub fn amount(&self, quick: bool) -> u64 {
        if quick { self.quick } else { self.full }
    }
    pub fn extra(&self, quick: bool) -> &'static [&'static str] {
        if quick { self.extra_quick } else { self.extra_full }
    }
    /// Throughput (requests/s) is measured by a client rather than from the
    /// wall time.
    pub fn has_rps(&self) -> bool {
        matches!(self.kind, Kind::Redis | Kind::Memcached)
    }
    pub fn is_real(&self) -> bool {
        !matches!(self.kind, Kind::Synthetic)
    }
}

/// A C workload: `(quick, full)` amounts of `unit`, and the extra arguments
/// for quick and full mode.
const fn synth(
    name: &'static str,
    title: &'static str,
    threaded: bool,
    (quick, full): (u64, u64),
    unit: &'static str,
    (extra_quick, extra_full): (&'static [&'static str], &'static [&'static str]),
) -> Workload {
    Workload {
        name,
        title,
        kind: Kind::Synthetic,
        threaded,
        quick,
        full,
        unit,
        extra_quick,
        extra_full,
    }
}

pub fn all() -> Vec<Workload> {
    vec![
        synth(
            "churn",
            "single-thread churn: 4096 slots replaced at random by 16-512 B blocks (skewed small)",
            false,
            (1_000_000, 6_000_000),
            "ops",
            (&[], &[]),
        ),
        synth(
            "server",
            "server simulation: each thread replaces random slots of its own 2000-slot array (16-1000 B), then hands the array to a new thread and exits",
            true,
            (800_000, 6_000_000),
            "ops (total)",
            (&["2000", "5000"], &["2000", "20000"]),
        ),
        synth(
            "prodcons",
            "producer/consumer: ceil(T/2) threads allocate 16-512 B messages, floor(T/2) threads check and free them (batches of 64 through bounded queues)",
            true,
            (800_000, 6_000_000),
            "messages",
            (&[], &[]),
        ),
        synth(
            "falseshare",
            "false sharing (cache-scratch): 8 B objects handed from main to each thread, freed there, then malloc/write 500 times/free",
            true,
            (80_000, 600_000),
            "iterations (total)",
            (&["8", "500"], &["8", "500"]),
        ),
        synth(
            "mixed",
            "mixed: per-thread 1000 slots of 16-256 B (75 %), 256 B-16 KiB, 64 KiB-1 MiB (0.5 %), realloc growth (13 %), slots swapped through a shared exchange array (7 %)",
            true,
            (200_000, 3_000_000),
            "ops (total)",
            (&["1000"], &["1000"]),
        ),
        synth(
            "strings",
            "realloc-heavy string building: 256 strings grown by 1-48 chars with realloc per append, to 256 B-64 KiB",
            false,
            (600_000, 4_000_000),
            "appends",
            (&["256"], &["256"]),
        ),
        synth(
            "large",
            "large blocks: 16 slots of 64 KiB-16 MiB (log-uniform), 1/4 of the ops realloc; every page written and checked",
            false,
            (300, 4_000),
            "ops",
            (&["16"], &["16"]),
        ),
        synth(
            "malloclarge",
            "mimalloc-bench's malloc-large: 20 slots replaced at random by 5-25 MiB buffers, each zeroed whole (malloc + memset, as make_unique<char[]>)",
            false,
            (200, 2_000),
            "iterations",
            (&["20"], &["20"]),
        ),
        synth(
            "threadchurn",
            "thread churn: short-lived threads, T alive at a time, each 64 live blocks + 200 churn ops, 8 blocks freed by main after the thread exits",
            true,
            (400, 12_000),
            "threads created",
            (&["200"], &["200"]),
        ),
        Workload {
            name: "python",
            title: "python3 (PYTHONMALLOC=malloc): JSON round trip, string/tuple churn, object tree, sorting",
            kind: Kind::Python,
            threaded: false,
            quick: 4_000,
            full: 40_000,
            unit: "scale",
            extra_quick: &[],
            extra_full: &[],
        },
        Workload {
            name: "sqlite",
            title: "sqlite3 :memory:: insert, index, group by, update, delete, self-join",
            kind: Kind::Sqlite,
            threaded: false,
            quick: 20_000,
            full: 200_000,
            unit: "rows",
            extra_quick: &[],
            extra_full: &[],
        },
        Workload {
            name: "redis",
            title: "redis-server under redis-benchmark (50 clients, 128 B values, set/get/lpush/lpop/sadd/hset/mset/lrange_100), then BGSAVE (fork) checked",
            kind: Kind::Redis,
            threaded: false,
            quick: 4_000,
            full: 50_000,
            unit: "requests per test",
            extra_quick: &[],
            extra_full: &[],
        },
        Workload {
            name: "memcached",
            title: "memcached -t T under a T-thread get/set client (30 % set, 16 B-2 KiB values, every hit checked)",
            kind: Kind::Memcached,
            threaded: true,
            quick: 8_000,
            full: 160_000,
            unit: "requests (total)",
            extra_quick: &[],
            extra_full: &[],
        },
    ]
}

/// Everything a run needs to know about its surroundings.
pub struct Ctx {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub quick: bool,
    pub timeout: Duration,
    pub python: Option<PathBuf>,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    pub wall_s: f64,
    pub maxrss_kib: i64,
    pub rps: Option<f64>,
    pub log: PathBuf,
    pub repro: String,
}

impl Outcome {
    /// The progress line on stderr (and how to reproduce a failure).
    pub fn progress(&self, (round, rounds): (usize, usize), name: &str, threads: u32, alloc: &str) {
        let rps = self.rps.map(|r| format!(" {r:.0} req/s")).unwrap_or_default();
        eprintln!(
            "[{round}/{rounds}] {name:<12} t={threads} {alloc:<9} {:>8.3} s {:>8.1} MiB{rps} {}",
            self.wall_s,
            self.maxrss_kib as f64 / 1024.0,
            self.status
        );
        if !self.status.is_ok() {
            eprintln!("    reproduce: {}\n    log: {}", self.repro, self.log.display());
        }
    }
}

/// gcc -O2 -pthread every workload program into bin_dir (when stale).
pub fn compile_c(root: &Path, bin_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(bin_dir).map_err(|e| e.to_string())?;
    let src = root.join("benches").join("workloads");
    let header = src.join("common.h");
    let progs = [
        "churn",
        "fastpath",
        "server",
        "prodcons",
        "falseshare",
        "mixed",
        "strings",
        "large",
        "malloclarge",
        "threadchurn",
        "mcclient",
    ];
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    for name in progs.iter().copied().chain(std::iter::once("badalloc")) {
        let c = src.join(format!("{name}.c"));
        let out = if name == "badalloc" { bin_dir.join("badalloc.so") } else { bin_dir.join(name) };
        let newest = mtime(&c).max(mtime(&header));
        if mtime(&out).is_some() && mtime(&out) >= newest {
            continue;
        }
        let mut cmd = Command::new("gcc");
        cmd.args(["-O2", "-g", "-Wall", "-pthread"]);
        if name == "badalloc" {
            cmd.args(["-shared", "-fPIC"]);
        }
        cmd.arg("-o").arg(&out).arg(&c);
        let o = cmd.output().map_err(|e| format!("cannot run gcc: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "gcc failed for {}:\n{}",
                c.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    Ok(())
}

fn base_env(alloc: &Allocator, force_libc: bool) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(p) = alloc.preload_value(force_libc) {
        env.push(("LD_PRELOAD".to_string(), p));
    }
    env
}

fn command(program: &Path, args: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn outcome(exit: Exit, rps: Option<f64>, log: PathBuf, repro: String) -> Outcome {
    Outcome {
        status: exit.status,
        wall_s: exit.wall_s,
        maxrss_kib: exit.maxrss_kib,
        rps,
        log,
        repro,
    }
}

fn error(why: String, log: PathBuf) -> Outcome {
    Outcome {
        status: Status::Error(why),
        wall_s: 0.0,
        maxrss_kib: 0,
        rps: None,
        log,
        repro: String::new(),
    }
}

pub fn run_once(ctx: &Ctx, w: &Workload, threads: u32, alloc: &Allocator, round: usize) -> Outcome {
    let log = ctx.log_dir.join(format!("{}-t{}-{}-r{}.log", w.name, threads, alloc.name, round));
    match w.kind {
        Kind::Synthetic => run_synth(ctx, w, threads, alloc, log),
        Kind::Python => run_python(ctx, w, alloc, log),
        Kind::Sqlite => run_sqlite(ctx, w, alloc, log),
        Kind::Redis => run_redis(ctx, w, alloc, log),
        Kind::Memcached => run_memcached(ctx, w, threads, alloc, log),
    }
}

/// The argv of a synthetic workload.
pub fn synthetic_args(w: &Workload, threads: u32, amount: u64, quick: bool) -> Vec<String> {
    let mut args = vec![threads.to_string(), amount.to_string()];
    args.extend(w.extra(quick).iter().map(|s| s.to_string()));
    args
}

fn run_synth(ctx: &Ctx, w: &Workload, threads: u32, alloc: &Allocator, log: PathBuf) -> Outcome {
    run_synth_with(ctx, w, threads, w.amount(ctx.quick), alloc, &[], log)
}

/// One run of a C workload with `amount` of work and `extra_env` on top of
/// the allocator's preload (the scaling mode's statistics file).
pub fn run_synth_with(
    ctx: &Ctx,
    w: &Workload,
    threads: u32,
    amount: u64,
    alloc: &Allocator,
    extra_env: &[(String, String)],
    log: PathBuf,
) -> Outcome {
    let prog = ctx.bin_dir.join(w.name);
    let args = synthetic_args(w, threads, amount, ctx.quick);
    let mut env = base_env(alloc, false);
    env.extend_from_slice(extra_env);
    let repro = runner::render(&env, &prog, &args);
    let exit = runner::run(&mut command(&prog, &args, &env), &log, ctx.timeout);
    outcome(exit, None, log, repro)
}

fn run_python(ctx: &Ctx, w: &Workload, alloc: &Allocator, log: PathBuf) -> Outcome {
    let Some(py) = &ctx.python else {
        return error("python3 not found".into(), log);
    };
    let script = ctx.root.join("benches/workloads/pywork.py");
    let args = vec![script.display().to_string(), w.amount(ctx.quick).to_string()];
    let mut env = base_env(alloc, false);
    env.push(("PYTHONMALLOC".into(), "malloc".into()));
    env.push(("PYTHONHASHSEED".into(), "0".into()));
    let repro = runner::render(&env, py, &args);
    let mut exit = runner::run(&mut command(py, &args, &env), &log, ctx.timeout);
    if exit.status.is_ok() && !runner::tail(&log, 3).contains("pywork ok") {
        exit.status = Status::BadOutput("no 'pywork ok' line".into());
    }
    outcome(exit, None, log, repro)
}

fn run_sqlite(ctx: &Ctx, w: &Workload, alloc: &Allocator, log: PathBuf) -> Outcome {
    let Some(sqlite) = runner::which("sqlite3") else {
        return error("sqlite3 not found".into(), log);
    };
    let rows = w.amount(ctx.quick);
    let script = ctx.tmp_dir.join(format!("sqlwork-{rows}.sql"));
    if !script.exists() {
        let tpl = match std::fs::read_to_string(ctx.root.join("benches/workloads/sqlwork.sql")) {
            Ok(t) => t,
            Err(e) => return error(format!("read sqlwork.sql: {e}"), log),
        };
        if let Err(e) = std::fs::write(&script, tpl.replace("@ROWS@", &rows.to_string())) {
            return error(format!("write {}: {e}", script.display()), log);
        }
    }
    let args = vec![":memory:".to_string(), format!(".read {}", script.display())];
    let env = base_env(alloc, false);
    let repro = runner::render(&env, &sqlite, &args);
    let mut exit = runner::run(&mut command(&sqlite, &args, &env), &log, ctx.timeout);
    if exit.status.is_ok() {
        let last = runner::tail(&log, 1);
        if last.trim() != "OK" {
            exit.status = Status::BadOutput(format!("last line '{}' instead of 'OK'", last.trim()));
        }
    }
    outcome(exit, None, log, repro)
}

fn free_port() -> Option<u16> {
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    Some(l.local_addr().ok()?.port())
}

/// Wait until the server accepts connections; Err(exit) if it died first.
fn wait_ready(server: &runner::Spawned, port: u16, limit: Duration) -> Result<(), Option<Exit>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(exit) = runner::try_wait(server) {
            return Err(Some(exit));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(None)
}

/// Stop a server with `sig` (SIGKILL after 20 s) and classify its exit:
/// exit code 0 or death by our own signal is fine.
fn stop_server(server: &runner::Spawned, sig: i32) -> Exit {
    runner::kill_group(server.pid, sig);
    let mut exit = runner::wait(server, Duration::from_secs(20));
    if exit.raw_signal == Some(sig) {
        exit.status = Status::Ok;
    }
    exit
}

struct ServerRun {
    status: Status,
    client_wall: f64,
    maxrss_kib: i64,
    rps: Option<f64>,
}

impl ServerRun {
    /// The run's outcome: the client's wall time and the server's peak RSS.
    fn outcome(self, log: PathBuf, repro: String) -> Outcome {
        Outcome {
            status: self.status,
            wall_s: self.client_wall,
            maxrss_kib: self.maxrss_kib,
            rps: self.rps,
            log,
            repro,
        }
    }
}

/// Common skeleton: start the server, wait for it, run the client (and the
/// checks), stop the server, and combine: the first failure wins.
fn with_server(
    ctx: &Ctx,
    server_cmd: &mut Command,
    server_log: &Path,
    port: u16,
    stop_signal: i32,
    client: impl FnOnce() -> (Status, f64, Option<f64>),
) -> ServerRun {
    let server = match runner::spawn(server_cmd, server_log) {
        Ok(s) => s,
        Err(e) => {
            return ServerRun {
                status: Status::Error(e),
                client_wall: 0.0,
                maxrss_kib: 0,
                rps: None,
            };
        }
    };
    if let Err(died) = wait_ready(&server, port, Duration::from_secs(15)) {
        let (status, rss) = match died {
            Some(exit) => {
                let st = if exit.status.is_ok() {
                    Status::BadOutput("server exited at start-up".into())
                } else {
                    exit.status
                };
                (st, exit.maxrss_kib)
            }
            None => {
                let exit = stop_server(&server, libc::SIGKILL);
                (Status::Error("server did not accept connections in 15 s".into()), exit.maxrss_kib)
            }
        };
        return ServerRun { status, client_wall: 0.0, maxrss_kib: rss, rps: None };
    }
    let (client_status, wall, rps) = client();
    let exit = stop_server(&server, stop_signal);
    // A server crash is the allocator's failure and is reported first.
    let status = if !exit.status.is_ok() { exit.status.clone() } else { client_status };
    let _ = ctx;
    ServerRun { status, client_wall: wall, maxrss_kib: exit.maxrss_kib, rps }
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let p = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &p];
    all.extend_from_slice(args);
    runner::capture("redis-cli", &all)
}

/// BGSAVE (a fork while the heap is full), then check the server answers
/// and kept its data.
fn redis_checks(port: u16) -> Status {
    match redis_cli(port, &["BGSAVE"]) {
        Some(s) if s.contains("started") => {}
        other => return Status::BadOutput(format!("BGSAVE answered {other:?}")),
    }
    let start = Instant::now();
    loop {
        let info = redis_cli(port, &["INFO", "persistence"]).unwrap_or_default();
        if info.contains("rdb_bgsave_in_progress:0") {
            if !info.contains("rdb_last_bgsave_status:ok") {
                return Status::BadOutput(
                    "BGSAVE child failed (rdb_last_bgsave_status not ok)".into(),
                );
            }
            break;
        }
        if info.is_empty() {
            return Status::BadOutput("server stopped answering INFO after BGSAVE".into());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Status::BadOutput("BGSAVE did not finish in 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dbsize: u64 = redis_cli(port, &["DBSIZE"]).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if dbsize == 0 {
        return Status::BadOutput("DBSIZE is 0 after the benchmark".into());
    }
    let v = "brkmalloc-bench-check-value-0123456789";
    if redis_cli(port, &["SET", "bench:check", v]).as_deref() != Some("OK")
        || redis_cli(port, &["GET", "bench:check"]).as_deref() != Some(v)
    {
        return Status::BadOutput("SET/GET check failed".into());
    }
    Status::Ok
}

/// Requests/s over all tests of a `redis-benchmark --csv` output: total
/// requests / total time (the harmonic mean of the per-test rates).
fn parse_redis_csv(text: &str) -> Option<f64> {
    let mut inv = 0.0;
    let mut n = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        if fields.len() < 2 || fields[0] == "test" {
            continue;
        }
        match fields[1].parse::<f64>() {
            Ok(rps) if rps > 0.0 => {
                inv += 1.0 / rps;
                n += 1;
            }
            _ => {}
        }
    }
    (n > 0).then(|| n as f64 / inv)
}

fn run_redis(ctx: &Ctx, w: &Workload, alloc: &Allocator, log: PathBuf) -> Outcome {
    let (Some(server_bin), Some(bench_bin)) =
        (runner::which("redis-server"), runner::which("redis-benchmark"))
    else {
        return error("redis-server/redis-benchmark not found".into(), log);
    };
    let Some(port) = free_port() else {
        return error("no free port".into(), log);
    };
    let dir = ctx.tmp_dir.join(format!("redis-{port}"));
    let _ = std::fs::create_dir_all(&dir);
    let server_args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Debian's redis-server links libjemalloc: "glibc" must preload libc.so.6.
    let env = base_env(alloc, true);
    let repro_server = runner::render(&env, &server_bin, &server_args);
    let server_log = log.with_extension("server.log");
    let bench_args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-n",
        &w.amount(ctx.quick).to_string(),
        "-c",
        "50",
        "-r",
        "100000",
        "-d",
        "128",
        "-t",
        "set,get,lpush,lpop,sadd,hset,mset,lrange_100",
        "--csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let repro =
        format!("{} &  then: {}", repro_server, runner::render(&[], &bench_bin, &bench_args));
    let (timeout, client_log) = (ctx.timeout, &log);
    let mut server = command(&server_bin, &server_args, &env);
    // redis shuts down cleanly and quickly on SIGTERM.
    let run = with_server(ctx, &mut server, &server_log, port, libc::SIGTERM, || {
        let exit = runner::run(&mut command(&bench_bin, &bench_args, &[]), client_log, timeout);
        if !exit.status.is_ok() {
            return (
                Status::BadOutput(format!("redis-benchmark ended {}", exit.status)),
                exit.wall_s,
                None,
            );
        }
        let text = std::fs::read_to_string(client_log).unwrap_or_default();
        let rps = parse_redis_csv(&text);
        if rps.is_none() {
            return (
                Status::BadOutput("no rps in redis-benchmark output".into()),
                exit.wall_s,
                None,
            );
        }
        (redis_checks(port), exit.wall_s, rps)
    });
    let _ = std::fs::remove_dir_all(&dir);
    run.outcome(log, repro)
}

fn run_memcached(
    ctx: &Ctx,
    w: &Workload,
    threads: u32,
    alloc: &Allocator,
    log: PathBuf,
) -> Outcome {
    let Some(server_bin) = runner::which("memcached") else {
        return error("memcached not found".into(), log);
    };
    let Some(port) = free_port() else {
        return error("no free port".into(), log);
    };
    let mut server_args: Vec<String> = [
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-t",
        &threads.to_string(),
        "-m",
        "512",
        "-c",
        "1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        server_args.extend(["-u".to_string(), "root".to_string()]);
    }
    let env = base_env(alloc, false);
    let client = ctx.bin_dir.join("mcclient");
    let per_thread = (w.amount(ctx.quick) / threads as u64).max(1);
    let client_args =
        vec![port.to_string(), threads.to_string(), per_thread.to_string(), "2000".to_string()];
    let repro = format!(
        "{} &  then: {}",
        runner::render(&env, &server_bin, &server_args),
        runner::render(&[], &client, &client_args)
    );
    let server_log = log.with_extension("server.log");
    let mut server = command(&server_bin, &server_args, &env);
    // memcached takes up to a second to stop on SIGTERM (its clock tick);
    // its answers are already checked, so it is killed.
    let (timeout, client_log) = (ctx.timeout, &log);
    let run = with_server(ctx, &mut server, &server_log, port, libc::SIGKILL, || {
        let exit = runner::run(&mut command(&client, &client_args, &[]), client_log, timeout);
        match exit.status {
            Status::Ok => {}
            // A wrong value from the server is the allocator's verification failure.
            Status::VerifyFail(3) => return (Status::VerifyFail(3), exit.wall_s, None),
            other => {
                return (Status::BadOutput(format!("mcclient ended {other}")), exit.wall_s, None);
            }
        }
        let text = runner::tail(client_log, 2);
        let rps = text
            .split_whitespace()
            .skip_while(|t| *t != "rps")
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok());
        match rps {
            Some(r) => (Status::Ok, exit.wall_s, Some(r)),
            None => (Status::BadOutput("no rps in mcclient output".into()), exit.wall_s, None),
        }
    });
    run.outcome(log, repro)
}

/// The Debian packages the real programs come from, by program.
pub const REAL_PACKAGES: [(&str, &str); 5] = [
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("redis-cli", "redis-tools"),
    ("memcached", "memcached"),
    ("sqlite3", "sqlite3"),
];

/// The real python3 interpreter (not pyenv's shim script, which would start
/// helper processes under the preload too).
pub fn find_python() -> Option<PathBuf> {
    if let Some(p) = runner::capture("pyenv", &["which", "python3"]) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let p = runner::which("python3")?;
    // Resolve a shim to the interpreter it would run.
    if let Some(real) = runner::capture(p.to_str()?, &["-c", "import sys; print(sys.executable)"]) {
        let real = PathBuf::from(real);
        if real.is_file() {
            return Some(real);
        }
    }
    Some(p)
}
