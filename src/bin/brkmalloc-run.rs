//! `cargo run --release -- <program> [args…]`: builds `libbrkmalloc.so` if needed and runs the
//! program with it in `LD_PRELOAD`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: cargo run --release -- <program> [args...]");
        eprintln!("runs <program> with libbrkmalloc.so in LD_PRELOAD");
        return ExitCode::from(2);
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Build the cdylib with the same cargo and profile directory as this launcher.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "brkmalloc-preload", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("brkmalloc-run: building libbrkmalloc.so failed ({s})");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("brkmalloc-run: cannot run cargo: {e}");
            return ExitCode::FAILURE;
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("release").join("libbrkmalloc.so");
    if !lib.exists() {
        eprintln!("brkmalloc-run: {} was not built", lib.display());
        return ExitCode::FAILURE;
    }
    let mut preload = lib.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        if !old.is_empty() {
            preload.push(":");
            preload.push(old);
        }
    }
    let err = Command::new(&program).args(args).env("LD_PRELOAD", preload).exec();
    eprintln!("brkmalloc-run: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}
