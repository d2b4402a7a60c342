//! What the results were measured on: date, machine, versions, commit.

use std::path::Path;

use crate::runner::{capture, capture_all};

pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub online_cpus: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub os: String,
    pub gcc: String,
    pub commit: String,
    pub programs: Vec<(String, String)>,
}

/// UTC date and time, "2026-05-20 14:03 UTC", without pulling in a date crate.
pub fn utc_now() -> String {
    // SAFETY: time(NULL) and gmtime_r on a zeroed tm are always valid.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min
        )
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `git rev-parse --short HEAD` plus "+dirty" when the tree has changes.
pub fn git_commit(root: &Path) -> String {
    let r = root.display().to_string();
    let head = capture("git", &["-C", &r, "rev-parse", "--short=12", "HEAD"]);
    let dirty = capture("git", &["-C", &r, "status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    match head {
        Some(h) if dirty => format!("{h} + uncommitted changes"),
        Some(h) => h,
        None => "no commit yet (working tree)".into(),
    }
}

/// `commit` is the one taken when the run started (what brkmalloc was built from).
pub fn probe(commit: &str, python: Option<&Path>) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let online_cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(online_cpus);
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let kernel = capture("uname", &["-srm"]).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| l["PRETTY_NAME=".len()..].trim_matches('"').to_string())
        .unwrap_or_default();
    let gcc = capture("gcc", &["-dumpfullversion"]).unwrap_or_default();
    let mut programs = Vec::new();
    let py = python.and_then(|p| p.to_str());
    if let Some((py, v)) = py.and_then(|py| capture_all(py, &["--version"]).map(|v| (py, v))) {
        programs.push(("python3".into(), format!("{v} ({py})")));
    }
    if let Some(v) = capture("sqlite3", &["--version"]) {
        programs.push(("sqlite3".into(), v.split_whitespace().next().unwrap_or("").to_string()));
    }
    if let Some(v) = capture("redis-server", &["--version"]) {
        let ver = v
            .split_whitespace()
            .find(|t| t.starts_with("v="))
            .map(|t| t[2..].to_string())
            .unwrap_or(v.clone());
        programs.push(("redis-server".into(), ver));
    }
    if let Some(v) = capture("memcached", &["-V"]) {
        programs.push(("memcached".into(), v.replace("memcached ", "")));
    }
    if let Some(v) = capture("valgrind", &["--version"]) {
        programs.push(("valgrind".into(), v.replace("valgrind-", "")));
    }
    Machine {
        date: utc_now(),
        cpu,
        cores,
        online_cpus,
        mem_gib: mem_kib / 1024.0 / 1024.0,
        kernel,
        os,
        gcc,
        commit: commit.to_string(),
        programs,
    }
}

/// The 1, 5 and 15 minute load averages, "0.52 0.40 0.31".
pub fn loadavg() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

impl Machine {
    pub fn one_line(&self) -> String {
        format!("{}, {} cores, {:.1} GiB, {}", self.cpu, self.cores, self.mem_gib, self.kernel)
    }
}
