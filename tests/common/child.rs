//! Running a child process to completion with a timeout, and describing how it ended.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Generous per-process limit: nothing the tests run should take more than a few seconds, but
/// the machine may be busy with other tests. A hang (an allocator deadlock) fails the test
/// instead of hanging `cargo test`.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished child process left behind.
///
/// Invariant: `timed_out` is true exactly when the child (or a process of its group still
/// holding its pipes) was killed at the deadline; `status` is then the status of that kill.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Run {
    /// Exit status 0 and no timeout.
    pub fn ok(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// "exit 0", "signal 6 (SIGABRT)", ... plus a note on a timeout.
    pub fn how(&self) -> String {
        let mut s = describe(self.status);
        if self.timed_out {
            let _ = write!(s, " (killed after the {}s timeout: hung?)", TIMEOUT.as_secs());
        }
        s
    }

    /// How it ended and the tails of its output, for an assertion message.
    pub fn report(&self) -> String {
        format!(
            "ended with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.how(),
            tail(&self.stdout, 6000),
            tail(&self.stderr, 6000)
        )
    }

    /// The number after `key=` on stdout or stderr (the C programs' `key=value` lines).
    pub fn value(&self, key: &str) -> i64 {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{key}=N` line in the output; {}", self.report()))
    }

    /// The first `brkmalloc: ` line on stderr (a misuse report).
    pub fn message(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.starts_with("brkmalloc: "))
    }
}

/// "exit N" or "signal N (NAME)".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit {code}");
    }
    let sig = status.signal().unwrap_or(0);
    let name = match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGALRM => "SIGALRM",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "?",
    };
    format!("signal {sig} ({name})")
}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `None` when `prog` is an executable on PATH, else a message naming the Debian package to
/// install.
pub fn missing(prog: &str, package: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(prog))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    });
    (!found).then(|| {
        format!(
            "`{prog}` is not on PATH; install the Debian package `{package}` \
             (apt-get install {package})"
        )
    })
}

/// Panics with the Debian package to install when `prog` is not on PATH.
pub fn require(prog: &str, package: &str) {
    if let Some(msg) = missing(prog, package) {
        panic!("{msg}");
    }
}

/// Sends SIGKILL to the process group `pgid`.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) has no memory effects; `pgid` is the group `run` created for its child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Runs `cmd` to completion with [`TIMEOUT`], capturing stdout and stderr. The child gets its
/// own process group, and the whole group is killed on a timeout (so grandchildren holding
/// the pipes cannot hang the test).
pub fn run(cmd: &mut Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
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
            kill_group(pid);
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(5));
    };
    if !timed_out {
        // Leftover background processes of the child would keep the pipes open: give them
        // the same deadline, then kill the group.
        while !(out_reader.is_finished() && err_reader.is_finished()) {
            if Instant::now() >= deadline {
                kill_group(pid);
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    Run { status, stdout, stderr, timed_out }
}
