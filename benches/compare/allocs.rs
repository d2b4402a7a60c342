//! The allocators under comparison: where their libraries are, their
//! versions, installing the Debian packages that are missing, and building
//! brkmalloc's cdylib.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::runner::{capture, which};

#[derive(Clone, Debug)]
pub struct Allocator {
    pub name: &'static str,
    /// The library to LD_PRELOAD; None for glibc.
    pub preload: Option<PathBuf>,
    /// Package and version, for the report.
    pub version: String,
    /// One of the established allocators we compare against (all but brkmalloc).
    pub is_peer: bool,
}

impl Allocator {
    /// The LD_PRELOAD value for this allocator, if any.  `force_libc` makes
    /// glibc's malloc win even in programs linked against another allocator
    /// (Debian's redis-server links libjemalloc): preloading libc.so.6 puts it
    /// ahead of the program's own libraries in symbol lookup.
    pub fn preload_value(&self, force_libc: bool) -> Option<String> {
        match &self.preload {
            Some(p) => Some(p.display().to_string()),
            None if force_libc => find_lib("libc.so.6").map(|p| p.display().to_string()),
            None => None,
        }
    }
}

struct External {
    name: &'static str,
    soname: &'static str,
    package: &'static str,
}

const EXTERNAL: [External; 3] = [
    External { name: "jemalloc", soname: "libjemalloc.so.2", package: "libjemalloc2" },
    External {
        name: "tcmalloc",
        soname: "libtcmalloc_minimal.so.4",
        package: "libtcmalloc-minimal4",
    },
    External { name: "mimalloc", soname: "libmimalloc.so.2", package: "libmimalloc2.0" },
];

pub const ALL_NAMES: [&str; 5] = ["glibc", "jemalloc", "tcmalloc", "mimalloc", "brkmalloc"];

/// Find a shared library by soname in the usual places (ldconfig's cache first).
pub fn find_lib(soname: &str) -> Option<PathBuf> {
    if let Some(out) = capture("ldconfig", &["-p"]).or_else(|| capture("/sbin/ldconfig", &["-p"])) {
        let prefix = format!("{soname} ");
        let found = out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&prefix) && l.contains("x86-64"))
            .filter_map(|l| l.split_once("=> ").map(|(_, p)| PathBuf::from(p.trim())))
            .find(|p| p.exists());
        if found.is_some() {
            return found;
        }
    }
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/lib64",
    ] {
        let p = Path::new(dir).join(soname);
        if p.exists() {
            return Some(p);
        }
    }
    None
}

pub fn deb_version(package: &str) -> Option<String> {
    capture("dpkg-query", &["-W", "-f=${Version}", package]).filter(|s| !s.is_empty())
}

fn is_root() -> bool {
    // SAFETY: no arguments, no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// Install Debian packages when we are root and apt-get exists; otherwise (or
/// on failure) print the exact command and return false.
pub fn apt_install(packages: &[&str]) -> bool {
    if packages.is_empty() {
        return true;
    }
    let cmdline = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if !is_root() || which("apt-get").is_none() {
        eprintln!(
            "compare: missing packages; install them with:\n    sudo apt-get update && sudo {cmdline}"
        );
        return false;
    }
    eprintln!("compare: installing missing packages: {cmdline}");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if install() {
        return true;
    }
    eprintln!("compare: apt-get install failed; running apt-get update and retrying");
    let _ = Command::new("apt-get").args(["update", "-q"]).status();
    if install() {
        return true;
    }
    eprintln!("compare: could not install; run by hand:\n    apt-get update && {cmdline}");
    false
}

/// The external allocators that were asked for, installing missing ones.
/// Returns the allocators found and notes about those that are not.
pub fn externals(wanted: &[String], notes: &mut Vec<String>) -> Vec<Allocator> {
    let missing: Vec<&str> = EXTERNAL
        .iter()
        .filter(|e| wanted.iter().any(|w| w == e.name) && find_lib(e.soname).is_none())
        .map(|e| e.package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing);
    }
    let mut out = Vec::new();
    for e in EXTERNAL.iter().filter(|e| wanted.iter().any(|w| w == e.name)) {
        match find_lib(e.soname) {
            Some(path) => out.push(Allocator {
                name: e.name,
                version: format!(
                    "{} {}",
                    e.package,
                    deb_version(e.package).unwrap_or_else(|| "(version unknown)".into())
                ),
                preload: Some(path),
                is_peer: true,
            }),
            None => notes.push(format!(
                "{} is not installed ({}); skipped. Install: apt-get install -y {}",
                e.name, e.soname, e.package
            )),
        }
    }
    out
}

pub fn glibc() -> Allocator {
    let v = capture("getconf", &["GNU_LIBC_VERSION"])
        .unwrap_or_else(|| "glibc (version unknown)".into());
    let deb = deb_version("libc6").map(|d| format!(" (libc6 {d})")).unwrap_or_default();
    Allocator {
        name: "glibc",
        preload: None,
        version: format!("{v}{deb}, no preload"),
        is_peer: true,
    }
}

/// `cargo build --release -p brkmalloc-preload EXTRA` into `target_dir`;
/// returns `target_dir/release/libbrkmalloc.so`.
fn build_preload(root: &Path, target_dir: &Path, extra: &[&str]) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let line = format!("cargo build --release -p brkmalloc-preload {}", extra.join(" "));
    let line = line.trim_end();
    eprintln!("compare: building brkmalloc: {line}");
    let out = Command::new(&cargo)
        .args(["build", "--release", "-p", "brkmalloc-preload"])
        .args(extra)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(format!("`{line}` failed:\n{tail}"));
    }
    let so = target_dir.join("release").join("libbrkmalloc.so");
    if !so.is_file() {
        return Err(format!("the build succeeded but {} is missing", so.display()));
    }
    Ok(so)
}

/// Build `target/release/libbrkmalloc.so` (or use $BRKMALLOC_SO).  Returns
/// the allocator or the reason it is not available.
pub fn brkmalloc(root: &Path, target: &Path, commit: &str) -> Result<Allocator, String> {
    if let Some(p) = std::env::var_os("BRKMALLOC_SO") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("BRKMALLOC_SO={} does not exist", p.display()));
        }
        return Ok(Allocator {
            name: "brkmalloc",
            version: format!("{} (from BRKMALLOC_SO)", p.display()),
            preload: Some(p),
            is_peer: false,
        });
    }
    let so = build_preload(root, target, &[])?;
    Ok(Allocator {
        name: "brkmalloc",
        version: format!("brkmalloc {} at {}", env!("CARGO_PKG_VERSION"), commit),
        preload: Some(so),
        is_peer: false,
    })
}

/// brkmalloc without its hardening checks (`--no-default-features`), built in
/// `<target>/nohard` so that it does not replace the default build.  Only the
/// instruction counts use it (the cost of the checks on the fast path).
pub fn brkmalloc_nohard(root: &Path, target: &Path, commit: &str) -> Result<Allocator, String> {
    let so = build_preload(root, &target.join("nohard"), &["--no-default-features"])?;
    Ok(Allocator {
        name: "brkmalloc-nohard",
        version: format!(
            "brkmalloc {} at {}, --no-default-features (no hardening)",
            env!("CARGO_PKG_VERSION"),
            commit
        ),
        preload: Some(so),
        is_peer: false,
    })
}
