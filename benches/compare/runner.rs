//! Running one child process: spawn it in its own process group, wait for it
//! with `wait4` (for its rusage), kill the group on timeout, and classify the
//! outcome.  Nothing here panics on a failed child.

use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Ok,
    /// Killed by a signal it did not ask for (SIGSEGV, SIGABRT, ...).
    Crash(i32),
    /// Still running at the deadline; the whole process group was killed.
    Timeout,
    /// Exited non-zero (the workloads exit 3 on a pattern mismatch, 4 when
    /// malloc returns NULL).
    VerifyFail(i32),
    /// Exited 0 but its output was wrong (the SQL check, the server checks).
    BadOutput(String),
    /// The harness could not run it at all.
    Error(String),
}

impl Status {
    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok)
    }
    /// Failures that fail the run (CI): everything except a timeout, which
    /// on a loaded machine may be only slowness.
    pub fn is_hard_failure(&self) -> bool {
        !matches!(self, Status::Ok | Status::Timeout)
    }
    /// Short label for tables: `CRASH(SIGSEGV)`, `TIMEOUT`, `VERIFY-FAIL(3)`.
    pub fn label(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::Crash(sig) => format!("CRASH({})", signal_name(*sig)),
            Status::Timeout => "TIMEOUT".into(),
            Status::VerifyFail(code) => format!("VERIFY-FAIL({code})"),
            Status::BadOutput(_) => "VERIFY-FAIL(output)".into(),
            Status::Error(_) => "ERROR".into(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::BadOutput(why) => write!(f, "VERIFY-FAIL(output: {why})"),
            Status::Error(why) => write!(f, "ERROR({why})"),
            other => f.write_str(&other.label()),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// What `wait4` told us about a finished child.
#[derive(Clone, Debug)]
pub struct Exit {
    pub status: Status,
    pub wall_s: f64,
    /// ru_maxrss, KiB.
    pub maxrss_kib: i64,
    /// Raw wait status, for the "terminated by our own SIGTERM" check.
    pub raw_signal: Option<i32>,
}

/// A spawned child in its own process group.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub start: Instant,
}

/// Spawn `cmd` with stdout/stderr going to `log` (stdin null), in a new
/// process group.
pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Spawned, String> {
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err)).process_group(0);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    // We reap it ourselves with wait4; dropping `Child` neither waits nor kills.
    let pid = child.id() as libc::pid_t;
    drop(child);
    Ok(Spawned { pid, start })
}

fn decode(status: libc::c_int, ru: &libc::rusage, wall_s: f64, timed_out: bool) -> Exit {
    let (st, raw_signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let st = if timed_out { Status::Timeout } else { Status::Crash(sig) };
        (st, Some(sig))
    } else if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        let st = if timed_out {
            Status::Timeout
        } else if code == 0 {
            Status::Ok
        } else {
            Status::VerifyFail(code)
        };
        (st, None)
    } else {
        (Status::Error(format!("wait status {status:#x}")), None)
    };
    Exit { status: st, wall_s, maxrss_kib: ru.ru_maxrss, raw_signal }
}

/// Kill the whole process group (the child and anything it started).
pub fn kill_group(pid: libc::pid_t, sig: i32) {
    // SAFETY: plain syscall; ESRCH when the group is gone is fine.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// Block until the child exits or `timeout` passes (then SIGKILL its group
/// and reap it).  Always reaps the child.
pub fn wait(sp: &Spawned, timeout: Duration) -> Exit {
    let timed_out = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    let pid = sp.pid;
    let flag = timed_out.clone();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
            flag.store(true, Ordering::SeqCst);
            kill_group(pid, libc::SIGKILL);
        }
    });
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: pid is our child; pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break rc;
    };
    let wall = sp.start.elapsed().as_secs_f64();
    let _ = tx.send(());
    let _ = watchdog.join();
    // Leftovers of the group (helpers a program started) go too.
    kill_group(pid, libc::SIGKILL);
    if rc != pid {
        return Exit {
            status: Status::Error(format!("wait4: {}", std::io::Error::last_os_error())),
            wall_s: wall,
            maxrss_kib: 0,
            raw_signal: None,
        };
    }
    decode(status, &ru, wall, timed_out.load(Ordering::SeqCst))
}

/// Non-blocking check whether a child has already exited (and reap it).
pub fn try_wait(sp: &Spawned) -> Option<Exit> {
    let mut status: libc::c_int = 0;
    // SAFETY: as in `wait`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(sp.pid, &mut status, libc::WNOHANG, &mut ru) };
    if rc == sp.pid {
        kill_group(sp.pid, libc::SIGKILL);
        Some(decode(status, &ru, sp.start.elapsed().as_secs_f64(), false))
    } else {
        None
    }
}

/// Spawn and wait: the common case.
pub fn run(cmd: &mut Command, log: &Path, timeout: Duration) -> Exit {
    match spawn(cmd, log) {
        Ok(sp) => wait(&sp, timeout),
        Err(e) => Exit { status: Status::Error(e), wall_s: 0.0, maxrss_kib: 0, raw_signal: None },
    }
}

/// Run a helper command to completion and return its stdout (trimmed), or
/// None when it cannot be run or fails.  For version probes and the like.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Like `capture` but also returns stderr and ignores the exit status.
pub fn capture_all(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(s.trim().to_string())
}

/// The last `n` lines of a log file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let s = String::from_utf8_lossy(&s);
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join("\n")
}

/// A shell-ish rendering of a command with its environment, so a failure
/// can be reproduced by pasting it.
pub fn render(env: &[(String, String)], program: &Path, args: &[String]) -> String {
    let mut s = String::new();
    for (k, v) in env {
        s.push_str(&format!("{k}={} ", quote(v)));
    }
    s.push_str(&quote(&program.display().to_string()));
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where a program is on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}
