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
//! The library and the C program are built by `tests/common/preload.rs` (into
//! `target/preload-test`, as for `tests/preload.rs`; `glibc_compat.c` with `-fno-builtin`).
//! Every child runs with the timeout of `tests/common/child.rs`.

mod common;

use std::fs;
use std::path::Path;

use brkmalloc::transfer::LAYER_BYTES_PER_CACHE;
use common::child::{Run, run};
use common::compare::command;
use common::preload::{Alloc, c_pass, c_run, scratch};

/// One mode of `glibc_compat.c`: on glibc (control), then under the preload.
fn compat(mode: &str) -> Run {
    c_pass("glibc_compat", &[mode], Alloc::Glibc);
    c_pass("glibc_compat", &[mode], Alloc::Brk(""))
}

/// `prog args` run in `dir` on `alloc` (the environment of [`common::compare::program`]).
fn run_in(dir: &Path, alloc: Alloc, prog: &str, args: &[&str]) -> Run {
    let mut cmd = command(prog, dir, args);
    alloc.apply(&mut cmd);
    run(&mut cmd)
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
    let plain = run_in(dir, Alloc::Glibc, prog, args);
    let with = run_in(dir, Alloc::Brk("stats:1"), prog, args);
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
    let r = run_in(&dir, Alloc::Brk("stats:json"), "ls", &["."]);
    assert!(r.ok(), "{}", r.report());
    let line = r.stderr.lines().find(|l| l.starts_with("{\"brkmalloc\":")).unwrap_or("");
    assert!(line.ends_with("}}}"), "no JSON report: {}", r.report());
}

#[test]
fn stats_file_one_per_process_with_forked_children() {
    let dir = scratch("stats_file_pid");
    let conf = format!("stats_file:{}/st.%p.txt", dir.display());
    let r = c_run("glibc_compat", &["fork_children"], Alloc::Brk(&conf));
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
        // Every process has one active cache at exit, the parent's threads having exited and
        // a child's gone with the fork: the middle layer's budget is one cache's share (a
        // child used to keep the parent's five).
        let budget = body.split("budget ").nth(1).and_then(|b| b.split(' ').next());
        assert_eq!(
            budget,
            Some(LAYER_BYTES_PER_CACHE.to_string().as_str()),
            "{name}: the layer counts the caches of threads that are gone:\n{body}"
        );
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
        let r = run_in(&dir, Alloc::Brk(&conf), "ls", &["."]);
        assert!(r.ok(), "{}", r.report());
    }
    let body = fs::read_to_string(&file).expect("read");
    assert_eq!(body.matches("{\"brkmalloc\":").count(), 2, "two JSON reports appended:\n{body}");
    let conf = format!("stats_file:{}/no/such/dir/x", dir.display());
    let r = run_in(&dir, Alloc::Brk(&conf), "ls", &["."]);
    assert!(r.ok(), "{}", r.report());
    assert!(r.stderr.contains("stats_file: cannot open"), "no warning: {}", r.report());
    assert!(r.stderr.contains(HEADER), "no fallback to stderr: {}", r.report());
}
