//! Real programs compared with and without the preload: a session of commands runs once on
//! plain glibc and once under `LD_PRELOAD=libbrkmalloc.so`, and the transcripts (commands,
//! stdout, exit status) must be equal.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::child::{Run, describe, run, tail};
use super::preload::{Alloc, scratch};

/// The record of one session of commands: what is compared, and what helps
/// when it differs.
pub struct Transcript<'a> {
    alloc: Alloc<'a>,
    /// Commands, their stdout and exit status: must be equal across allocators.
    text: String,
    /// stderr of every command, for the failure message.
    stderr: String,
    /// Commands that did not exit 0 (or timed out).
    failures: Vec<String>,
}

impl<'a> Transcript<'a> {
    pub fn new(alloc: Alloc<'a>) -> Self {
        Transcript { alloc, text: String::new(), stderr: String::new(), failures: Vec::new() }
    }

    /// Runs `cmd` (stdin null unless set) under this transcript's allocator,
    /// records it under the label `what`, and returns the run.
    pub fn step(&mut self, what: &str, mut cmd: Command) -> Run {
        self.alloc.apply(&mut cmd);
        let r = run(&mut cmd);
        let _ = write!(self.text, "$ {what}\n{}[{}]\n", r.stdout, describe(r.status));
        if !r.stderr.is_empty() {
            let _ = write!(self.stderr, "$ {what}\n{}\n", tail(&r.stderr, 4000));
        }
        if !r.ok() {
            self.failures.push(format!("{what}: {}", r.how()));
        }
        r
    }
}

/// Common environment for the real programs: C locale, UTC, a private HOME.
pub fn program(prog: &str, home: &Path) -> Command {
    let mut cmd = Command::new(prog);
    cmd.env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::null());
    cmd
}

/// [`program`] `prog` with the arguments `args`.
pub fn command(prog: &str, home: &Path, args: &[&str]) -> Command {
    let mut cmd = program(prog, home);
    cmd.args(args);
    cmd
}

/// Runs `session` once on glibc and once under the preload, each in its own
/// scratch directory, and requires the same transcript.
pub fn compare(name: &str, session: impl Fn(&mut Transcript, &Path)) {
    let base = scratch(name);
    let mut runs = Vec::new();
    for alloc in [Alloc::Glibc, Alloc::Brk("")] {
        let dir = base.join(alloc.name());
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut t = Transcript::new(alloc);
        session(&mut t, &dir);
        // Kept for a post-mortem look (`diff glibc.transcript brkmalloc.transcript`).
        let _ = fs::write(base.join(format!("{}.transcript", alloc.name())), &t.text);
        let _ = fs::write(base.join(format!("{}.stderr", alloc.name())), &t.stderr);
        runs.push(t);
    }
    let (glibc, brk) = (&runs[0], &runs[1]);
    assert!(
        glibc.failures.is_empty(),
        "{name}: the reference run on plain glibc failed: {:?}\n--- stderr ---\n{}",
        glibc.failures,
        tail(&glibc.stderr, 8000)
    );
    assert!(
        brk.failures.is_empty() && glibc.text == brk.text,
        "{name}: under LD_PRELOAD=libbrkmalloc.so the output differs from glibc's.\n\
         failed commands: {:?}\n{}\n--- stderr under the preload ---\n{}",
        brk.failures,
        first_difference(&glibc.text, &brk.text),
        tail(&brk.stderr, 8000)
    );
}

/// Where two transcripts part ways, with a little context.
fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = la.iter().zip(&lb).position(|(x, y)| x != y).unwrap_or(la.len().min(lb.len()));
    if la.len() == lb.len() && i == la.len() {
        return "transcripts are equal".into();
    }
    let from = i.saturating_sub(3);
    let show = |v: &[&str]| {
        v[from.min(v.len())..(i + 4).min(v.len())]
            .iter()
            .map(|l| format!("  {}", tail(l, 300)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "first difference at transcript line {} (of {} vs {}):\n--- glibc ---\n{}\n--- brkmalloc ---\n{}",
        i + 1,
        la.len(),
        lb.len(),
        show(&la),
        show(&lb)
    )
}
