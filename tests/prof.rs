//! The heap profiler (`prof:1`) from outside, under `LD_PRELOAD`.
//!
//! The C programs in `tests/c/prof_*` are built (PIE, `-g`) next to the preload tests' build of
//! `libbrkmalloc.so` (`tests/common/preload.rs`). The profiles they leave are parsed here and their
//! return addresses symbolized with the program's symbol table (`nm`) and the mappings the
//! profile records, independently of the profiler's own code. `go tool pprof` must read the
//! same files (Debian's `golang-go`; `ci/test.sh` installs it).
//!
//! Every child runs with the tests' timeout, so a deadlock fails the test instead of hanging it.
//! Numbers are printed (`cargo test --test prof -- --nocapture` shows them).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::child::{Run, require, run};
use common::preload::{c_program, scratch, so};

const MIB: f64 = (1 << 20) as f64;

/// The names of the files in `dir`.
fn files(dir: &Path) -> Vec<String> {
    let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name());
    names.map(|n| n.to_string_lossy().into_owned()).collect()
}

/// Runs `argv` in `dir` (with the tests' timeout), with the preload and `conf` when `conf` is
/// given; `extra_env` for both.
fn run_in(argv: &[&str], conf: Option<&str>, dir: &Path, extra_env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).current_dir(dir);
    c.env_remove("LD_PRELOAD").env_remove("BRKMALLOC_CONF");
    if let Some(conf) = conf {
        c.env("LD_PRELOAD", so()).env("BRKMALLOC_CONF", conf);
    }
    c.envs(extra_env.iter().copied());
    let r = run(&mut c);
    assert!(!r.timed_out, "{argv:?} timed out (deadlock?): {}", r.report());
    r
}

fn program(name: &str) -> String {
    c_program(name).to_string_lossy().into_owned()
}

/// One line of a heap profile.
#[derive(Debug)]
struct Site {
    live_objs: u64,
    live_bytes: u64,
    alloc_bytes: u64,
    frames: Vec<u64>,
}

/// An executable mapping recorded in the profile.
#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

struct Profile {
    header: (u64, u64),
    sites: Vec<Site>,
    maps: Vec<Mapping>,
}

fn pair(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once(':').unwrap_or_else(|| panic!("bad counts '{s}'"));
    (a.trim().parse().unwrap(), b.trim().parse().unwrap())
}

/// Parses gperftools' heap profile text format, checking its shape.
fn parse(text: &str) -> Profile {
    let mut lines = text.lines();
    let head = lines.next().expect("empty profile");
    let rest = head.strip_prefix("heap profile: ").expect("header line");
    let (counts, tag) = rest.split_once(" @ ").expect("header '@'");
    assert_eq!(tag, "heapprofile");
    let (live, _alloc) = counts.split_once(" [").expect("header '['");
    let header = pair(live);
    let mut sites = Vec::new();
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
        let (counts, frames) = l.split_once(" @ ").unwrap_or_else(|| panic!("bad line '{l}'"));
        let (live, alloc) = counts.split_once(" [").unwrap();
        let (live_objs, live_bytes) = pair(live);
        let (_, alloc_bytes) = pair(alloc.trim_end_matches(']'));
        let frames = frames
            .split(' ')
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap())
            .collect();
        sites.push(Site { live_objs, live_bytes, alloc_bytes, frames });
    }
    assert_eq!(lines.next(), Some("MAPPED_LIBRARIES:"));
    let mut maps = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') {
            continue;
        }
        let (s, e) = f[0].split_once('-').unwrap();
        maps.push(Mapping {
            start: u64::from_str_radix(s, 16).unwrap(),
            end: u64::from_str_radix(e, 16).unwrap(),
            offset: u64::from_str_radix(f[2], 16).unwrap(),
            path: f[5].to_string(),
        });
    }
    assert!(!maps.is_empty(), "no executable mappings recorded");
    let sum: u64 = sites.iter().map(|s| s.live_bytes).sum();
    assert_eq!(header.1, sum, "header total differs from the sum of the lines");
    Profile { header, sites, maps }
}

/// Function symbols of `exe`: (start, end, name), from `nm`.
fn symbols(exe: &str) -> Vec<(u64, u64, String)> {
    let o = Command::new("nm").args(["-S", "--defined-only", exe]).output().expect("nm");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 || !matches!(f[2], "T" | "t") {
                return None;
            }
            let a = u64::from_str_radix(f[0], 16).ok()?;
            Some((a, a + u64::from_str_radix(f[1], 16).ok()?, f[3].to_string()))
        })
        .collect()
}

/// The function of `exe` that holds the return address `ip`, through the profile's mappings
/// (a PIE's file offsets equal its virtual addresses).
fn function_of(p: &Profile, syms: &[(u64, u64, String)], exe: &str, ip: u64) -> Option<String> {
    let m = p.maps.iter().find(|m| m.path == exe && m.start <= ip && ip < m.end)?;
    let vaddr = ip - 1 - m.start + m.offset;
    syms.iter().find(|(a, b, _)| *a <= vaddr && vaddr < *b).map(|s| s.2.clone())
}

/// Live bytes by the function of each line's innermost frame.
fn by_leaf(p: &Profile, exe: &str) -> BTreeMap<String, (u64, u64, u64)> {
    let syms = symbols(exe);
    let mut out = BTreeMap::new();
    for s in &p.sites {
        let name = function_of(p, &syms, exe, s.frames[0]).unwrap_or_else(|| "(other)".into());
        let e = out.entry(name).or_insert((0, 0, 0));
        e.0 += s.live_bytes;
        e.1 += s.live_objs;
        e.2 += s.alloc_bytes;
    }
    out
}

fn within(got: u64, want: f64, tol: f64) -> bool {
    (got as f64 - want).abs() <= want * tol
}

/// The accuracy test: three sites hold 64, 8 and 1 MiB at exit, allocated from four
/// threads in blocks of varied sizes; a fourth allocates ~1 GiB in all and frees it.
#[test]
fn profile_attributes_each_site_within_15_percent() {
    let dir = scratch("prof-accuracy");
    let exe = program("prof_sites");
    let plain = run_in(&[&exe], None, &dir, &[]);
    assert!(plain.ok(), "{}", plain.report());
    let conf = format!("prof:1,prof_sample:1k,prof_prefix:{}/exit", dir.display());
    let dump = dir.join("explicit.heap");
    let o = run_in(&[&exe, dump.to_str().unwrap()], Some(&conf), &dir, &[]);
    let stdout = &o.stdout;
    assert!(o.ok(), "{}", o.report());
    assert!(stdout.lines().any(|l| l == "dump 0"), "brkmalloc_prof_dump failed: {stdout}");
    let plain_out = &plain.stdout;
    assert_eq!(stdout.lines().last(), plain_out.lines().last(), "output differs from glibc's");

    let p = parse(&fs::read_to_string(&dump).unwrap());
    let sites = by_leaf(&p, &exe);
    let want = [("site_64m", 64.0), ("site_8m", 8.0), ("site_1m", 1.0)];
    for (name, mib) in want {
        let (live, objs, _) = sites.get(name).copied().unwrap_or_default();
        eprintln!(
            "accuracy: {name}: {:.2} MiB held (want {mib} MiB, {:+.1} %), ~{objs} objects",
            live as f64 / MIB,
            (live as f64 / (mib * MIB) - 1.0) * 100.0
        );
        assert!(within(live, mib * MIB, 0.15), "{name}: {live} bytes, want {mib} MiB ±15 %");
    }
    let live = |n: &str| sites.get(n).map_or(0, |s| s.0);
    assert!(live("site_64m") > live("site_8m") && live("site_8m") > live("site_1m"), "order");
    let (temp_live, _, temp_alloc) = sites.get("site_temp").copied().unwrap_or_default();
    eprintln!(
        "accuracy: site_temp: {temp_live} bytes held, {:.0} MiB allocated in all",
        temp_alloc as f64 / MIB
    );
    assert!(temp_live < (1 << 20), "freed memory still attributed: {temp_live}");
    assert!(temp_alloc > 512 << 20, "the transient site's allocations were not sampled");
    let total = p.header.1;
    eprintln!(
        "accuracy: total {:.2} MiB held (want 73 MiB, {:+.1} %), {} stacks",
        total as f64 / MIB,
        (total as f64 / (73.0 * MIB) - 1.0) * 100.0,
        p.sites.len()
    );
    assert!(within(total, 73.0 * MIB, 0.10), "total {total}, want 73 MiB ±10 %");

    // The profile written at exit: same process, same sites.
    let at_exit: Vec<_> = files(&dir)
        .into_iter()
        .filter(|n| n.starts_with("exit.") && n.ends_with(".0.heap"))
        .collect();
    assert_eq!(at_exit.len(), 1, "one profile at exit: {at_exit:?}");
    let q = parse(&fs::read_to_string(dir.join(&at_exit[0])).unwrap());
    assert!(within(by_leaf(&q, &exe)["site_64m"].0, 64.0 * MIB, 0.15));
}

/// `go tool pprof -top` reads the profile and names the three functions, largest first.
#[test]
fn go_pprof_names_the_functions() {
    let dir = scratch("prof-pprof");
    let exe = program("prof_sites");
    let dump = dir.join("p.heap");
    let o = run_in(&[&exe, dump.to_str().unwrap()], Some("prof:1,prof_final:0"), &dir, &[]);
    assert!(o.ok(), "{}", o.report());
    require("go", "golang-go");
    let go = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&exe)
        .arg(&dump)
        .env("HOME", &dir)
        .output()
        .expect("`go` not found: install golang-go (ci/test.sh does)");
    let text = String::from_utf8_lossy(&go.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&go.stderr));
    assert!(go.status.success());
    let pos = |n: &str| text.find(n).unwrap_or_else(|| panic!("pprof does not name {n}"));
    assert!(pos("site_64m") < pos("site_8m"), "order of the sites in pprof's top");
    assert!(text.contains("Type: inuse_space"));
}

/// `prof_leak:1`: the function that leaks in a loop comes first in the summary, by name.
#[test]
fn leak_summary_names_the_leaking_function_first() {
    let dir = scratch("prof-leak");
    let exe = program("prof_leak");
    let o = run_in(&[&exe], Some("prof_leak:1,prof_final:0,prof_sample:16k"), &dir, &[]);
    assert!(o.ok(), "{}", o.report());
    assert_eq!(o.stdout, "done\n");
    let err = &o.stderr;
    eprintln!("{err}");
    let summary = err
        .lines()
        .find(|l| l.starts_with("<brkmalloc>: Leak approximation summary: ~"))
        .expect("no summary line");
    let bytes: u64 = summary.split('~').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    // 4000 × 4 KiB leaked + the 64 KiB table (+ whatever libc keeps).
    assert!(within(bytes, 16_000_000.0 + 65536.0, 0.25), "leak estimate {bytes}");
    let first = err.lines().find(|l| l.starts_with("<brkmalloc>: #1: ")).expect("no sites");
    assert!(first.contains(" at leaky_function+"), "first site: {first}");
    assert!(!err.contains("tidy_function"), "a function that frees all it takes is listed");
    assert!(!dir.read_dir().unwrap().any(|_| true), "prof_final:0 wrote a file");
}

/// A forked child writes its own profile, with its own blocks.
#[test]
fn fork_child_writes_its_own_profile() {
    let (dir, exe, o) = profiled("fork", "prof_fork", "prof_sample:4k", "f");
    let out = &o.stdout;
    let child: u32 = out.trim().strip_prefix("child ").unwrap().parse().unwrap();
    let files = files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let name = format!("f.{child}.0.heap");
    assert!(files.contains(&name), "no profile from the child: {files:?}");
    let c = by_leaf(&parse(&fs::read_to_string(dir.join(&name)).unwrap()), &exe);
    let parent_file = files.iter().find(|f| **f != name).unwrap();
    let p = by_leaf(&parse(&fs::read_to_string(dir.join(parent_file)).unwrap()), &exe);
    // The child holds both sites (it inherited the parent's blocks), the parent one.
    assert!(within(c["child_site"].0, 3.0 * MIB, 0.2), "{c:?}");
    assert!(within(c["parent_site"].0, 2.0 * MIB, 0.2), "{c:?}");
    assert!(within(p["parent_site"].0, 2.0 * MIB, 0.2), "{p:?}");
    assert!(!p.contains_key("child_site"), "{p:?}");
}

/// `prof_interval`: a profile every N bytes allocated, numbered in sequence.
#[test]
fn prof_interval_writes_numbered_profiles() {
    let (dir, _, _) = profiled("interval", "prof_sites", "prof_interval:256m", "i");
    let mut seqs: Vec<u32> =
        files(&dir).iter().map(|n| n.rsplit('.').nth(1).unwrap().parse().unwrap()).collect();
    seqs.sort();
    // About 1.1 GiB allocated: 4 interval profiles (give or take sampling) and the final one.
    assert!((4..=7).contains(&seqs.len()), "{seqs:?}");
    assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "numbering");
    for e in fs::read_dir(&dir).unwrap() {
        let p = parse(&fs::read_to_string(e.unwrap().path()).unwrap());
        assert!(!p.sites.is_empty());
    }
}

/// With profiling off, `brkmalloc_prof_dump` says so and nothing is written.
#[test]
fn prof_off_dumps_nothing() {
    let dir = scratch("prof-off");
    let exe = program("prof_sites");
    let o = run_in(&[&exe, dir.join("x.heap").to_str().unwrap()], Some("prof:0"), &dir, &[]);
    assert!(o.ok(), "{}", o.report());
    let out = &o.stdout;
    assert!(out.lines().any(|l| l == "dump 2"), "ENOENT expected: {out}");
    assert!(!dir.read_dir().unwrap().any(|_| true));
}

/// Runs test program `prog` in a fresh scratch directory `test` with `prof:1` and `opts`,
/// profiles going to `<dir>/<prefix>.<pid>.<seq>.heap`; checks it succeeded.
fn profiled(test: &str, prog: &str, opts: &str, prefix: &str) -> (PathBuf, String, Run) {
    let dir = scratch(&format!("prof-{test}"));
    let exe = program(prog);
    let conf = format!("prof:1,{opts},prof_prefix:{}/{prefix}", dir.display());
    let o = run_in(&[&exe], Some(&conf), &dir, &[]);
    assert!(o.ok(), "{}", o.report());
    (dir, exe, o)
}

/// Stacks captured in real programs at a high sampling rate: the output is the same as
/// without the preload, nothing hangs or crashes, and the profile has deep stacks.
fn real_program(name: &str, argv: &[&str], input: Option<&str>, sample: &str) {
    let dir = scratch(&format!("prof-{name}"));
    let exe = argv[0];
    if !exe.contains('/') {
        // python3 and sqlite3: Debian's packages of the same names (ci/test.sh installs them).
        require(exe, exe);
    }
    let mut args: Vec<&str> = argv.to_vec();
    let script;
    if let Some(text) = input {
        script = dir.join("input");
        fs::write(&script, text).unwrap();
        args.push(script.to_str().unwrap());
    }
    let py = [("PYTHONMALLOC", "malloc")];
    let plain = run_in(&args, None, &dir, &py);
    assert!(plain.ok(), "{}", plain.report());
    let conf = format!("prof:1,prof_sample:{sample},prof_prefix:{}/p", dir.display());
    let o = run_in(&args, Some(&conf), &dir, &py);
    assert!(o.ok(), "{name} under the profiler: {}", o.report());
    assert_eq!(o.stdout, plain.stdout, "{name}: output differs");
    // A wrapper script (pyenv's shims) runs helpers that write profiles too: take the
    // process that allocated the most.
    let p = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "heap"))
        .map(|f| parse(&fs::read_to_string(f).unwrap()))
        .max_by_key(|p| p.sites.iter().map(|s| s.alloc_bytes).sum::<u64>())
        .unwrap_or_else(|| panic!("{name}: no profile written"));
    let deepest = p.sites.iter().map(|s| s.frames.len()).max().unwrap_or(0);
    let total: u64 = p.sites.iter().map(|s| s.alloc_bytes).sum();
    eprintln!("{name}: {} stacks, deepest {deepest} frames, {total} bytes sampled", p.sites.len());
    assert!(p.sites.len() >= 5 && deepest >= 6, "{name}: shallow stacks");
}

#[test]
fn stacks_in_a_cpp_program_with_exceptions() {
    let exe = program("prof_exceptions");
    real_program("cpp", &[&exe], None, "256");
}

#[test]
fn stacks_in_python3() {
    let code = "import json, threading\n\
        def work(k):\n    d = {i: str(i) * (i % 7) for i in range(20000)}\n    \
        return len(json.dumps(d))\n\
        out = []\n\
        ts = [threading.Thread(target=lambda k=k: out.append(work(k))) for k in range(4)]\n\
        [t.start() for t in ts]\n[t.join() for t in ts]\nprint(sorted(out))\n";
    real_program("python3", &["python3"], Some(code), "4k");
}

#[test]
fn stacks_in_sqlite3() {
    let sql = "create table t(a integer primary key, b text);\n\
        with recursive c(x) as (select 1 union all select x + 1 from c where x < 50000)\n\
        insert into t select x, hex(randomblob(40)) from c;\n\
        create index tb on t(b);\n\
        select count(*), sum(length(b)) from t;\n\
        select a % 10, count(*) from t group by 1 order by 1;\n";
    real_program("sqlite3", &["sqlite3", ":memory:", "-init"], Some(sql), "4k");
}

/// The launcher's `--profile` and `--leaks` (symbolized with the programs' debug information),
/// preloading the tests' build of the library.
#[cfg(feature = "launcher")]
#[test]
fn launcher_profile_and_leaks() {
    let dir = scratch("prof-launcher");
    let launcher = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_brkmalloc-run"))
            .args(args)
            .current_dir(&dir)
            .env("BRKMALLOC_LIB", so())
            .env_remove("LD_PRELOAD")
            .env_remove("BRKMALLOC_CONF")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let sites = program("prof_sites");
    // Only the profile at exit (the interval ones may catch the transient site's blocks).
    let err =
        launcher(&["--profile", "--interval", "0", "--prof-sample", "4k", "--out", out, &sites]);
    eprintln!("{err}");
    let table: Vec<&str> =
        err.lines().skip_while(|l| !l.contains("site (innermost first)")).collect();
    assert!(table.len() >= 4, "no table: {err}");
    for (line, name) in table[1..4].iter().zip(["site_64m", "site_8m", "site_1m"]) {
        assert!(line.contains(&format!("{name} (prof_sites.c:")), "want {name}: {line}");
    }
    let svg = fs::read_to_string(dir.join("out/flamegraph.svg")).expect("no flame graph");
    assert!(svg.starts_with("<?xml") && svg.contains("site_64m") && svg.contains("worker"));

    let err = launcher(&["--leaks", "--prof-sample", "16k", "--out", out, &program("prof_leak")]);
    eprintln!("{err}");
    let first = err.lines().skip_while(|l| !l.contains("#1: ")).nth(1).expect("no site");
    assert!(first.contains("leaky_function (prof_leak.c:"), "first leak site: {first}");
}
