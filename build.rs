//! Embeds `libbrkmalloc.so` in the `brkmalloc-run` launcher, so that a launcher installed with
//! `cargo install --path .` works once the checkout is gone (README, "Install").
//!
//! Only for plain release builds with the `launcher` feature and the `preload/` sources
//! present: it runs `cargo build --release -p brkmalloc-preload` in a target directory of its
//! own (`<target>/embed`; the outer cargo holds the lock on `<target>/release`) and hands the
//! launcher the file's path and an FNV-1a hash of its bytes (the name of its cache
//! directory). Everywhere else (debug builds, loom/sanitizer/fuzz builds, `cargo package`'s
//! verification build, which has no `preload/`, or `BRKMALLOC_EMBED=0`) it embeds nothing
//! and the launcher relies on finding an installed library. The nested build compiles this
//! crate, and so runs this script, again: it runs with `BRKMALLOC_EMBED=0`, which ends the
//! recursion. The allocator library itself never sees any of this.
//!
//! It also hands the launcher the directory its own profile builds into
//! (`BRKMALLOC_PROFILE_DIR`), which is how a launcher knows that it runs from the source tree.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BRKMALLOC_EMBED");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let profile_dir = out.ancestors().nth(3).expect("OUT_DIR has a profile directory");
    println!("cargo:rustc-env=BRKMALLOC_PROFILE_DIR={}", profile_dir.display());

    let embedded = if wants_embedding() { build_library(profile_dir) } else { None };
    let (path, hash) = match embedded {
        Some(so) => {
            let bytes = std::fs::read(&so).expect("the library cargo just built");
            (so, fnv1a(&bytes))
        }
        None => {
            // An empty file: the launcher treats an empty embedded library as "none".
            let empty = out.join("no-embedded-library");
            std::fs::write(&empty, b"").expect("OUT_DIR is writable");
            (empty, 0)
        }
    };
    println!("cargo:rustc-env=BRKMALLOC_EMBEDDED_LIB={}", path.display());
    println!("cargo:rustc-env=BRKMALLOC_EMBEDDED_HASH={hash:016x}");
}

/// Builds with these cfgs (from RUSTFLAGS; cargo passes them to build scripts as
/// `CARGO_CFG_*`) compile this crate for their own tests: the loom models (`ci/loom.sh`, a
/// release build), the sanitizers, the fuzzer, Miri, the planted defects. A nested build would
/// inherit their RUSTFLAGS and fail or waste minutes.
const SPECIAL_CFGS: &[&str] = &[
    "CARGO_CFG_LOOM",
    "CARGO_CFG_SANITIZE",
    "CARGO_CFG_FUZZING",
    "CARGO_CFG_MIRI",
    "CARGO_CFG_BRKMALLOC_SABOTAGE",
    "CARGO_CFG_BRKMALLOC_PLANTED_RACE",
];

/// Release profile, the launcher feature on, no special cfg, and the preload crate's sources
/// at hand.
fn wants_embedding() -> bool {
    if env::var_os("CARGO_FEATURE_LAUNCHER").is_none()
        || SPECIAL_CFGS.iter().any(|cfg| env::var_os(cfg).is_some())
    {
        return false;
    }
    match env::var("BRKMALLOC_EMBED").as_deref() {
        Ok("0") => return false,
        Ok("1") => {}
        _ if env::var("PROFILE").as_deref() != Ok("release") => return false,
        _ => {}
    }
    let manifest = Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("preload")
        .join("Cargo.toml");
    manifest.exists()
}

/// Builds the preload crate into `<target>/embed`; `None` (with a cargo warning) on failure,
/// so that a launcher still comes out, one that needs an installed library.
fn build_library(profile_dir: &Path) -> Option<PathBuf> {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    // What the library is built from: not src/bin, so that an edit to the launcher does
    // not rebuild the allocator (cargo rebuilds a package whose build script reran).
    watch_sources(&root.join("src"));
    for path in ["preload/src", "preload/Cargo.toml", "preload/build.rs", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = profile_dir.parent()?.join("embed");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut nested = Command::new(cargo);
    nested
        .args(["build", "--release", "--quiet", "-p", "brkmalloc-preload", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The nested build compiles this crate again (the preload crate depends on it), and
        // so runs this script again: without this it would recurse forever.
        .env("BRKMALLOC_EMBED", "0");
    // What cargo set for this script describes this package's build, not the nested one's
    // (CARGO_FEATURE_LAUNCHER would leak into the nested build scripts, for one).
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if BUILD_SCRIPT_ENV.contains(&&*key)
            || BUILD_SCRIPT_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
        {
            nested.env_remove(&*key);
        }
    }
    let status = nested.status();
    let so = target_dir.join("release").join("libbrkmalloc.so");
    match status {
        Ok(s) if s.success() && so.exists() => Some(so),
        Ok(s) => warn(&format!("building the embedded libbrkmalloc.so failed ({s})")),
        Err(e) => warn(&format!("cannot run cargo to build the embedded libbrkmalloc.so: {e}")),
    }
}

/// `rerun-if-changed` for every file under `dir` but the launcher's (`src/bin`).
fn watch_sources(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name() != Some("bin".as_ref()) {
                watch_sources(&path);
            }
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Variables cargo sets for a build script (besides `CARGO`, `CARGO_MAKEFLAGS` and `RUSTC`,
/// which the nested cargo may use).
const BUILD_SCRIPT_ENV: &[&str] = &[
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTDOC",
    "RUSTC_LINKER",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
];
const BUILD_SCRIPT_ENV_PREFIXES: &[&str] =
    &["CARGO_FEATURE_", "CARGO_CFG_", "CARGO_PKG_", "CARGO_MANIFEST_", "DEP_"];

fn warn(msg: &str) -> Option<PathBuf> {
    println!("cargo:warning={msg}; the launcher will need an installed library");
    None
}

/// 64-bit FNV-1a: names the cache directory of one build of the library.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
