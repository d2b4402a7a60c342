//! glibc's behaviour where brkmalloc used to differ, and statistics that arrive (issue 14),
//! checked under `LD_PRELOAD`:
//!
//! - `glibc_*`: the five cases of `tests/c/glibc_compat.c` (fork with stdio threads, fork from
//!   a signal handler inside fork, `posix_memalign`'s errno, `mallopt`'s return values and
//!   `M_PERTURB`, `malloc_stats` under cancellation), each run on plain glibc first (the
//!   control: the program itself is right) and then under the preload.
//! - `stats_*`: `stats:1` reports from programs that close stderr before exiting (`ls`,
//!   `sort`: gnulib's `close_stdout`), and `stats_file:PATH` with `%p`, one file per process
//!   including forked children.
//!
//! The library and the C program are built once into `target/preload-test` (shared with
//! `tests/preload.rs`; cargo's lock orders the two builds). Every child runs with a timeout.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Setup {
    so: PathBuf,
    prog: PathBuf,
    tmp: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    match SETUP.get_or_init(build) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<Setup, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target").join("preload-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let b = Command::new(&cargo)
        .args(["build", "--release", "-p", "brkmalloc-preload", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !b.status.success() {
        return Err(format!(
            "building the preload failed:\n{}",
            String::from_utf8_lossy(&b.stderr)
        ));
    }
    let cbin = out.join("cbin");
    fs::create_dir_all(&cbin).map_err(|e| e.to_string())?;
    let prog = cbin.join("glibc_compat");
    // -fno-builtin: gcc otherwise assumes that malloc-family calls leave errno alone.
    let g = Command::new("gcc")
        .args(["-O1", "-fno-builtin", "-g", "-pthread", "-Wall", "-o"])
        .arg(&prog)
        .arg(root.join("tests/c/glibc_compat.c"))
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !g.status.success() {
        return Err(format!("gcc failed:\n{}", String::from_utf8_lossy(&g.stderr)));
    }
    let tmp = out.join("tmp");
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    Ok(Setup { so: out.join("release").join("libbrkmalloc.so"), prog, tmp })
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    fn report(&self) -> String {
        let how = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, s) => format!("signal {}", s.unwrap_or(0)),
        };
        let t = if self.timed_out { " (killed after the timeout: hung?)" } else { "" };
        format!(
            "ended with {how}{t}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` in its own process group with [`TIMEOUT`], capturing its output.
fn run(cmd: &mut Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let o = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: kill(2) on the process group created for this child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    Run {
        status,
        stdout: text(o.join().expect("reader")),
        stderr: text(e.join().expect("reader")),
        timed_out,
    }
}

/// `prog args` on plain glibc (`conf` None) or under the preload with `BRKMALLOC_CONF=conf`.
fn command(prog: &Path, args: &[&str], conf: Option<&str>) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).env_remove("LD_PRELOAD").env_remove("BRKMALLOC_CONF");
    if let Some(conf) = conf {
        cmd.env("LD_PRELOAD", &setup().so).env("BRKMALLOC_CONF", conf);
    }
    cmd
}

/// A fresh scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = setup().tmp.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir scratch");
    dir
}

/// One mode of `glibc_compat.c`: on glibc (control), then under the preload.
fn compat(mode: &str) -> Run {
    let prog = &setup().prog;
    let r = run(&mut command(prog, &[mode], None));
    assert!(
        r.ok(),
        "glibc_compat {mode} failed on plain glibc (the test is wrong): {}",
        r.report()
    );
    let r = run(&mut command(prog, &[mode], Some("")));
    assert!(r.ok(), "glibc_compat {mode} failed under LD_PRELOAD=libbrkmalloc.so: {}", r.report());
    r
}

#[test]
fn glibc_fork_while_threads_flush_and_getline() {
    let r = compat("fork_stdio");
    assert!(r.stdout.contains("no deadlock"), "{}", r.report());
}

#[test]
fn glibc_fork_from_a_signal_handler_inside_fork() {
    let r = compat("fork_signal");
    assert!(r.stdout.contains("interrupting fork"), "{}", r.report());
}

#[test]
fn glibc_posix_memalign_enomem_sets_errno() {
    compat("memalign_errno");
}

#[test]
fn glibc_mallopt_return_values() {
    compat("mallopt");
}

#[test]
fn glibc_mallopt_perturb_fills() {
    compat("perturb");
}

#[test]
fn glibc_malloc_stats_under_cancellation() {
    let r = compat("stats_cancel");
    assert!(r.stdout.contains("in use bytes"), "{}", r.report());
}

// ---- statistics that arrive ---------------------------------------------------------------

const HEADER: &str = "brkmalloc statistics (pid ";

/// `prog args` with and without `stats:1`: the same stdout and status, and the report on
/// stderr although the program closes its stderr before exiting.
fn stats_arrive(prog: &str, args: &[&str], dir: &Path) {
    let plain = run(command(Path::new(prog), args, None).current_dir(dir));
    let with = run(command(Path::new(prog), args, Some("stats:1")).current_dir(dir));
    assert!(plain.ok() && with.ok(), "{prog}: {}\n{}", plain.report(), with.report());
    assert_eq!(plain.stdout, with.stdout, "{prog}: stdout differs under the preload");
    assert!(with.stderr.contains(HEADER), "{prog}: no statistics on stderr: {}", with.report());
    assert!(with.stderr.contains("central heap: "), "{prog}: report cut short: {}", with.report());
}

#[test]
fn stats_reach_ls_which_closes_stderr() {
    let dir = scratch("stats_ls");
    for f in ["b", "a", "c"] {
        fs::write(dir.join(f), f).expect("write");
    }
    stats_arrive("ls", &["-la", "."], &dir);
}

#[test]
fn stats_reach_sort_which_closes_stderr() {
    let dir = scratch("stats_sort");
    let text: String =
        (0..5000u64).map(|i| format!("{}\n", i.wrapping_mul(2_654_435_761) % 100_003)).collect();
    fs::write(dir.join("file"), text).expect("write");
    stats_arrive("sort", &["file"], &dir);
}

#[test]
fn stats_json_reaches_ls() {
    let dir = scratch("stats_json");
    let r = run(command(Path::new("ls"), &["."], Some("stats:json")).current_dir(&dir));
    assert!(r.ok(), "{}", r.report());
    let line = r.stderr.lines().find(|l| l.starts_with("{\"brkmalloc\":")).unwrap_or("");
    assert!(line.ends_with("}}}"), "no JSON report: {}", r.report());
}

#[test]
fn stats_file_one_per_process_with_forked_children() {
    let dir = scratch("stats_file_pid");
    let conf = format!("stats_file:{}/st.%p.txt", dir.display());
    let r = run(&mut command(&setup().prog, &["fork_children"], Some(&conf)));
    assert!(r.ok(), "{}", r.report());
    assert!(!r.stderr.contains(HEADER), "statistics on stderr too: {}", r.report());
    let mut files: Vec<_> =
        fs::read_dir(&dir).expect("readdir").map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 4, "want the parent's and 3 children's files, got {files:?}");
    let parent: &str = r.stdout.split("parent ").nth(1).and_then(|s| s.split(',').next()).unwrap();
    let mut saw_parent = false;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let pid = name.trim_start_matches("st.").trim_end_matches(".txt");
        let body = fs::read_to_string(f).expect("read");
        assert_eq!(body.matches(HEADER).count(), 1, "{name}: one report each:\n{body}");
        assert!(body.contains(&format!("{HEADER}{pid})")), "{name}: pid differs:\n{body}");
        assert!(body.contains("central heap: "), "{name}: report cut short:\n{body}");
        saw_parent |= pid == parent;
    }
    assert!(saw_parent, "no file for the parent {parent}: {files:?}");
}

#[test]
fn stats_file_without_pid_appends_and_bad_path_falls_back() {
    let dir = scratch("stats_file_append");
    let file = dir.join("all.txt");
    let conf = format!("stats_file:{},stats:json", file.display());
    for _ in 0..2 {
        let r = run(command(Path::new("ls"), &["."], Some(&conf)).current_dir(&dir));
        assert!(r.ok(), "{}", r.report());
    }
    let body = fs::read_to_string(&file).expect("read");
    assert_eq!(body.matches("{\"brkmalloc\":").count(), 2, "two JSON reports appended:\n{body}");
    let conf = format!("stats_file:{}/no/such/dir/x", dir.display());
    let r = run(command(Path::new("ls"), &["."], Some(&conf)).current_dir(&dir));
    assert!(r.ok(), "{}", r.report());
    assert!(r.stderr.contains("stats_file: cannot open"), "no warning: {}", r.report());
    assert!(r.stderr.contains(HEADER), "no fallback to stderr: {}", r.report());
}
