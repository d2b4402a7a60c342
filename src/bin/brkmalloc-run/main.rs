//! `brkmalloc-run [OPTIONS] [--] PROGRAM [ARGS...]`: runs a program with `libbrkmalloc.so` in
//! `LD_PRELOAD`, and with the options given on the command line added to `BRKMALLOC_CONF`.
//!
//! Which library it preloads is decided by `locate` (in order: `--lib`/`BRKMALLOC_LIB`, a
//! rebuild through cargo when it runs from the source tree, next to itself, `../lib`, the
//! system library directories, the copy embedded at build time); see the README's "Install".
//!
//! With `--profile` or `--leaks` it runs the program with the heap profiler on, waits for it,
//! and reports on the profiles it wrote (`profile`: top sites, flame graph, leak summary).
//!
//! Exit status: the program's own (the launcher `exec`s it, or waits for it when profiling);
//! 127 when the program is not found, 126 when it cannot be executed, 2 for a usage error, 1
//! when no library can be found.

mod embedded;
mod locate;
mod profile;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;

/// Run a program on the brkmalloc allocator (LD_PRELOAD).
#[derive(Parser, Debug)]
#[command(
    name = "brkmalloc-run",
    version,
    override_usage = "brkmalloc-run [OPTIONS] [--] PROGRAM [ARGS]...\n       brkmalloc-run --print-lib",
    after_help = "\
Examples:
  brkmalloc-run --stats sqlite3 :memory: 'select 1'
  brkmalloc-run --stats=json --conf tcache_max_bytes:256k,junk:1 -- ./server --port 80
  brkmalloc-run --profile sqlite3 test.db < queries.sql     (top sites, flame graph)
  brkmalloc-run --leaks ./server                           (what is still held at exit)

Environment:
  BRKMALLOC_CONF  options; --conf and --stats are added after it, so they win
  BRKMALLOC_LIB   the library to preload (as --lib)
  LD_PRELOAD      kept, after libbrkmalloc

Exit status: the program's; 127 if it is not found, 126 if it cannot be executed,
2 for a usage error, 1 if no libbrkmalloc.so is found."
)]
struct Cli {
    /// Print statistics at exit: a table, or JSON with --stats=json
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        value_parser = ["text", "json"]
    )]
    stats: Option<String>,

    /// Add brkmalloc options, as in BRKMALLOC_CONF (repeatable; later ones win)
    #[arg(long, value_name = "KEY:VALUE,...", value_parser = parse_conf)]
    conf: Vec<String>,

    /// Preload this library instead of searching for one [env: BRKMALLOC_LIB]
    #[arg(long, value_name = "PATH")]
    lib: Option<PathBuf>,

    /// Print the path of the library that would be preloaded, and exit
    #[arg(long)]
    print_lib: bool,

    /// Profile the heap (BRKMALLOC_CONF=prof:1): at the end, print the top allocation sites by
    /// bytes held, symbolized, and write a flame graph SVG of held bytes by stack, from the
    /// profile that held the most (at exit, or one of the --interval ones)
    #[arg(long, help_heading = "Heap profiling")]
    profile: bool,

    /// Print the leak summary at exit: the sites that still hold sampled memory, scaled to
    /// estimated bytes and objects, symbolized (turns the profiler on)
    #[arg(long, help_heading = "Heap profiling")]
    leaks: bool,

    /// Mean bytes between two samples (prof_sample)
    #[arg(long, value_name = "BYTES", default_value = "512k", help_heading = "Heap profiling")]
    prof_sample: String,

    /// Also write a profile every BYTES allocated (prof_interval; 0: only at exit), so that a
    /// program that frees everything before it exits still shows where its memory went
    #[arg(long, value_name = "BYTES", default_value = "16m", help_heading = "Heap profiling")]
    interval: String,

    /// Where the profiles and the flame graph go
    #[arg(
        long,
        value_name = "DIR",
        default_value = "brkmalloc-profile",
        help_heading = "Heap profiling"
    )]
    out: PathBuf,

    /// Sites listed by --profile and --leaks
    #[arg(long, value_name = "N", default_value_t = 20, help_heading = "Heap profiling")]
    top: usize,

    /// The program to run, and its arguments
    #[arg(
        value_name = "PROGRAM [ARGS]",
        required_unless_present = "print_lib",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

/// Checks that every comma-separated item of a `--conf` value is `key:value`.
fn parse_conf(value: &str) -> Result<String, String> {
    match value.split(',').find(|item| !item.is_empty() && !item.contains(':')) {
        Some(bad) => Err(format!("`{bad}` is not key:value")),
        None => Ok(value.to_owned()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = cli.lib.clone().or_else(|| std::env::var_os("BRKMALLOC_LIB").map(PathBuf::from));
    let lib = match locate::library(explicit) {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("brkmalloc-run: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.print_lib {
        println!("{}", lib.display());
        return ExitCode::SUCCESS;
    }
    let (program, args) = cli.command.split_first().expect("clap requires PROGRAM");
    let mut cmd = Command::new(program);
    cmd.args(args).env("LD_PRELOAD", preload_value(&lib));
    if cli.profile || cli.leaks {
        let opts = profile::Options {
            out: cli.out.clone(),
            sample: cli.prof_sample.clone(),
            interval: cli.interval.clone(),
            top: cli.top,
            leaks: cli.leaks,
            profile: cli.profile,
        };
        return profile::run(cmd, &conf_value(&cli), &opts);
    }
    let err = cmd.env("BRKMALLOC_CONF", conf_value(&cli)).exec();
    let name = program.to_string_lossy();
    // As a shell reports it: 127 for a program that is not there, 126 for one that is there
    // but cannot be run.
    if err.kind() == std::io::ErrorKind::NotFound {
        if name.contains('/') {
            eprintln!("brkmalloc-run: {name}: no such file");
        } else {
            eprintln!("brkmalloc-run: {name}: command not found");
        }
        return ExitCode::from(127);
    }
    eprintln!("brkmalloc-run: {name}: cannot execute: {err}");
    ExitCode::from(126)
}

/// The library first, then whatever `LD_PRELOAD` held already.
fn preload_value(lib: &std::path::Path) -> OsString {
    let mut preload = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|old| !old.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    preload
}

/// `BRKMALLOC_CONF` from the environment, then `--conf`, then `--stats`: the library applies
/// them in order, so the command line wins.
fn conf_value(cli: &Cli) -> OsString {
    let mut items: Vec<OsString> = std::env::var_os("BRKMALLOC_CONF").into_iter().collect();
    items.extend(cli.conf.iter().map(OsString::from));
    if let Some(format) = &cli.stats {
        items.push(if format == "json" { "stats:json" } else { "stats:1" }.into());
    }
    items.retain(|item| !item.is_empty());
    items.join(OsStr::new(","))
}
