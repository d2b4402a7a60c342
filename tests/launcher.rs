//! The `brkmalloc-run` command line: exit codes, how `--conf`/`--stats` reach
//! `BRKMALLOC_CONF`, `LD_PRELOAD` kept, the library search, `--help` and `--version`.
//!
//! Every run names its library with `BRKMALLOC_LIB` (a scratch file: what is checked here is
//! what the launcher passes on, not the allocator), so no test builds the library or waits
//! on cargo. The installed forms (Debian package, `cargo install`) are tested by
//! ci/package.sh.
#![cfg(feature = "launcher")]

use std::path::PathBuf;
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("launcher").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the launcher with `BRKMALLOC_LIB` set to a scratch file and a clean environment for
/// the variables it edits.
fn launcher(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let lib = dir.join("libbrkmalloc.so.0");
    std::fs::write(&lib, b"").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brkmalloc-run"));
    cmd.args(args).env("BRKMALLOC_LIB", &lib).env_remove("BRKMALLOC_CONF").env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn options_reach_the_environment_in_order() {
    let dir = scratch("options");
    let lib = dir.join("libbrkmalloc.so.0");
    let show = "printf '%s|%s\\n' \"$BRKMALLOC_CONF\" \"$LD_PRELOAD\"";
    let out = launcher(
        &dir,
        &["--conf", "junk:1,tcache:0", "--conf", "check:5", "--stats=json", "--", "sh", "-c", show],
        &[("BRKMALLOC_CONF", "verbose:1"), ("LD_PRELOAD", "/other.so")],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let want =
        format!("verbose:1,junk:1,tcache:0,check:5,stats:json|{}:/other.so\n", lib.display());
    assert_eq!(stdout(&out), want);
    let out = launcher(&dir, &["--stats", "sh", "-c", "echo \"$BRKMALLOC_CONF\""], &[]);
    assert_eq!(stdout(&out), "stats:1\n");
}

#[test]
fn program_arguments_are_passed_untouched() {
    let dir = scratch("args");
    // Without `--`: everything from the program's name on belongs to the program.
    let out = launcher(&dir, &["printf", "%s,", "--stats", "-x", "--", "a b"], &[]);
    assert_eq!(stdout(&out), "--stats,-x,--,a b,");
}

#[test]
fn exit_codes_follow_the_shell() {
    let dir = scratch("exit");
    let out = launcher(&dir, &["brkmalloc-no-such-program-xyz"], &[]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("brkmalloc-no-such-program-xyz"));
    let script = dir.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = launcher(&dir, &[script.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let out = launcher(&dir, &["sh", "-c", "exit 7"], &[]);
    assert_eq!(out.status.code(), Some(7));
    for bad in [&["--conf", "nocolon", "true"][..], &["--stats=xml", "true"], &[]] {
        assert_eq!(launcher(&dir, bad, &[]).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn library_choice() {
    let dir = scratch("choice");
    let out = launcher(&dir, &["--print-lib"], &[]);
    assert_eq!(stdout(&out), format!("{}\n", dir.join("libbrkmalloc.so.0").display()));
    let other = dir.join("other.so");
    std::fs::write(&other, b"").unwrap();
    let out = launcher(&dir, &["--lib", other.to_str().unwrap(), "--print-lib"], &[]);
    assert_eq!(stdout(&out), format!("{}\n", other.display()), "--lib wins over BRKMALLOC_LIB");
    let out = launcher(&dir, &["--print-lib"], &[("BRKMALLOC_LIB", "/nonexistent/lib.so")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lib.so"));
}

#[test]
fn help_and_version() {
    let dir = scratch("help");
    let help = stdout(&launcher(&dir, &["--help"], &[]));
    for word in ["--stats", "--conf", "--lib", "--print-lib", "--version", "127", "126"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let version = stdout(&launcher(&dir, &["--version"], &[]));
    assert_eq!(version, format!("brkmalloc-run {}\n", env!("CARGO_PKG_VERSION")));
}
