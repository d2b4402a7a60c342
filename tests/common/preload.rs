//! `libbrkmalloc.so` and the C programs of `tests/c/`, built on first use, and the choice of
//! allocator for a child process.
//!
//! The cdylib is built once per test binary into its own target directory
//! (`target/preload-test`, so the build does not wait on the lock held by the running
//! `cargo test`; `PRELOAD_TEST_DIR` overrides it). Cargo runs test binaries one after another,
//! so two of them never build it at the same time; the first builds, the others find it up to
//! date. The test crate's `hardening` feature is passed on: `cargo test --no-default-features`
//! preloads the non-hardened build (from `target/preload-test-nohard`). C programs are
//! compiled with gcc (g++ for `.cc`) into `<dir>/cbin/` when a test first asks for them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::child::{Run, missing, run};

/// The directory the preload tests build into.
fn out_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PRELOAD_TEST_DIR") {
        return PathBuf::from(d);
    }
    let name = if cfg!(feature = "hardening") { "preload-test" } else { "preload-test-nohard" };
    workspace().join("target").join(name)
}

/// The repository root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The path of a file of `tests/data/`, as a command-line argument.
pub fn data(name: &str) -> String {
    let path = workspace().join("tests").join("data").join(name);
    path.to_str().expect("utf-8 path").to_owned()
}

/// A `Command` for a helper tool (cargo, gcc) that must not run on the preload.
fn tool(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("LD_PRELOAD").env_remove("BRKMALLOC_CONF").stdin(Stdio::null());
    cmd
}

fn build_so() -> Result<PathBuf, String> {
    let out = out_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = tool(&cargo);
    cmd.args(["build", "--release", "-p", "brkmalloc-preload", "--manifest-path"])
        .arg(workspace().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out);
    if !cfg!(feature = "hardening") {
        cmd.arg("--no-default-features");
    }
    let build = cmd.output().map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !build.status.success() {
        return Err(format!(
            "building libbrkmalloc.so failed ({}):\n{}",
            build.status,
            String::from_utf8_lossy(&build.stderr)
        ));
    }
    let so = out.join("release").join("libbrkmalloc.so");
    if !so.is_file() {
        return Err(format!("the build succeeded but {} is missing", so.display()));
    }
    Ok(so)
}

/// Absolute path of `libbrkmalloc.so`, built on the first call (panics if it cannot be).
pub fn so() -> &'static Path {
    static SO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match SO.get_or_init(build_so) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// gcc flags for `tests/c/<name>.c` beyond the common ones.
fn extra_cflags(name: &str) -> &'static [&'static str] {
    match name {
        // It checks errno after malloc-family calls: gcc otherwise assumes that they leave
        // errno alone.
        "glibc_compat" => &["-fno-builtin"],
        _ => &[],
    }
}

fn compile(name: &str) -> Result<PathBuf, String> {
    // A C++ program when `<name>.cc` exists.
    let cc_src = workspace().join("tests").join("c").join(format!("{name}.cc"));
    let (cc, package, src) = if cc_src.is_file() {
        ("g++", "g++", cc_src)
    } else {
        ("gcc", "gcc", workspace().join("tests").join("c").join(format!("{name}.c")))
    };
    if let Some(msg) = missing(cc, package) {
        return Err(msg);
    }
    let cbin = out_dir().join("cbin");
    fs::create_dir_all(&cbin).map_err(|e| format!("mkdir {}: {e}", cbin.display()))?;
    let exe = cbin.join(name);
    // Written under a temporary name and renamed, so that no one runs a half-written file.
    let partial = cbin.join(format!("{name}.partial-{}", std::process::id()));
    let res = tool(cc)
        .args(["-O1", "-g", "-pthread", "-Wall"])
        .args(extra_cflags(name))
        .arg("-o")
        .arg(&partial)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !res.status.success() {
        return Err(format!(
            "{cc} failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    fs::rename(&partial, &exe).map_err(|e| format!("rename to {}: {e}", exe.display()))?;
    Ok(exe)
}

/// The executable of `tests/c/<name>.c` (or `.cc`, with g++), compiled on the first call for that name in this
/// test binary (panics with gcc's messages if it does not compile).
pub fn c_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    match built.entry(name.to_string()).or_insert_with(|| compile(name)) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A fresh, empty scratch directory `<dir>/tmp/<name>`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = out_dir().join("tmp").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Which allocator a child process runs on; `Brk` carries the `BRKMALLOC_CONF` value
/// (`""`: unset). `BRKMALLOC_CONF` is never inherited from the test's environment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Alloc<'a> {
    Glibc,
    Brk(&'a str),
}

impl Alloc<'_> {
    /// "glibc" or "brkmalloc" (for file names).
    pub fn name(self) -> &'static str {
        match self {
            Alloc::Glibc => "glibc",
            Alloc::Brk(_) => "brkmalloc",
        }
    }

    /// Sets the child's environment: `LD_PRELOAD` and `CTEST_EXPECT_BRKMALLOC=1` (the C
    /// programs' strict mode) for brkmalloc, neither for glibc.
    pub fn apply(self, cmd: &mut Command) {
        cmd.env_remove("BRKMALLOC_CONF");
        match self {
            Alloc::Glibc => {
                cmd.env_remove("LD_PRELOAD").env_remove("CTEST_EXPECT_BRKMALLOC");
            }
            Alloc::Brk(conf) => {
                cmd.env("LD_PRELOAD", so()).env("CTEST_EXPECT_BRKMALLOC", "1");
                if !conf.is_empty() {
                    cmd.env("BRKMALLOC_CONF", conf);
                }
            }
        }
    }

    /// "on plain glibc (no preload)", "under LD_PRELOAD=libbrkmalloc.so [BRKMALLOC_CONF=...]".
    pub fn describe(self) -> String {
        match self {
            Alloc::Glibc => "on plain glibc (no preload)".into(),
            Alloc::Brk("") => "under LD_PRELOAD=libbrkmalloc.so".into(),
            Alloc::Brk(conf) => {
                format!("under LD_PRELOAD=libbrkmalloc.so BRKMALLOC_CONF={conf}")
            }
        }
    }

    /// A command for `tests/c/<name>.c` with `args` on this allocator (stdin: /dev/null).
    pub fn c_command(self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(c_program(name));
        cmd.args(args).stdin(Stdio::null());
        self.apply(&mut cmd);
        cmd
    }
}

/// Runs `tests/c/<name>.c` with `args` on `alloc` (with the timeout of [`run`]).
pub fn c_run(name: &str, args: &[&str], alloc: Alloc) -> Run {
    run(&mut alloc.c_command(name, args))
}

/// Runs `tests/c/<name>.c` with `args` on `alloc` and asserts that it exited 0.
pub fn c_pass(name: &str, args: &[&str], alloc: Alloc) -> Run {
    let r = c_run(name, args, alloc);
    let blame = match alloc {
        Alloc::Glibc => " (the test program itself is wrong)",
        Alloc::Brk(_) => "",
    };
    assert!(r.ok(), "tests/c/{name}.c {args:?} failed {}{blame}; {}", alloc.describe(), r.report());
    r
}

/// The usual C test: glibc as a control that the program is right, then the preload.
pub fn c_test(name: &str, args: &[&str]) {
    c_pass(name, args, Alloc::Glibc);
    c_pass(name, args, Alloc::Brk(""));
}
