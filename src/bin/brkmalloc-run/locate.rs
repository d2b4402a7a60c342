//! Which `libbrkmalloc.so` the launcher preloads. The first of:
//!
//! 1. `--lib PATH` or `BRKMALLOC_LIB=PATH` (an error if it is not a file);
//! 2. from the source tree (the launcher is the one cargo built in this checkout's target
//!    directory): `cargo build --release --lib -p brkmalloc -p brkmalloc-preload`, then that
//!    build's `target/release/libbrkmalloc.so`, so that an edit to the allocator is always what
//!    runs;
//! 3. next to the launcher: `libbrkmalloc.so.0`, then `libbrkmalloc.so`;
//! 4. in `../lib` from the launcher, then in `../lib/<multiarch>` (an install prefix, such as
//!    `/usr/local` or the Debian package's `/usr`);
//! 5. the system library directories: `/usr/local/lib/<multiarch>`, `/usr/local/lib`,
//!    `/usr/lib/<multiarch>`, `/usr/lib`, `/lib/<multiarch>`, `/lib`;
//! 6. the copy embedded in the launcher at build time (release builds from a checkout, e.g.
//!    `cargo install --path .`), unpacked once into a cache directory (see `embedded`).
//!
//! The launcher's own path is `/proc/self/exe`, symlinks resolved: a symlink to the launcher
//! looks beside the real file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::embedded;

/// The library to preload, as an absolute path, or what was tried.
pub fn library(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))
        } else {
            Err(format!("{}: no such library (from --lib or BRKMALLOC_LIB)", path.display()))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the launcher's path: {e}"))?;
    if let Some(manifest) = source_tree(&exe) {
        return build_in_tree(&manifest);
    }
    let candidates = installed_candidates(exe.parent().unwrap_or(Path::new("/")));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    if let Some(unpacked) = embedded::unpack()? {
        return Ok(unpacked);
    }
    let tried: Vec<String> = candidates.iter().map(|p| format!("  {}", p.display())).collect();
    Err(format!(
        "no libbrkmalloc.so found; tried:\n{}\nand this launcher carries no copy of its own. \
         Install the library (the Debian package, or libbrkmalloc.so.0 beside the launcher), \
         or set BRKMALLOC_LIB.",
        tried.join("\n")
    ))
}

/// The checkout's `Cargo.toml` when `exe` is the launcher cargo built in that checkout's
/// target directory (`BRKMALLOC_PROFILE_DIR`, from build.rs) and the checkout is still there.
fn source_tree(exe: &Path) -> Option<PathBuf> {
    let profile_dir = Path::new(env!("BRKMALLOC_PROFILE_DIR")).canonicalize().ok()?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    (exe.starts_with(&profile_dir) && manifest.is_file()).then_some(manifest)
}

/// Rebuilds the library with cargo (a no-op when it is up to date) and returns it.
fn build_in_tree(manifest: &Path) -> Result<PathBuf, String> {
    let profile_dir = Path::new(env!("BRKMALLOC_PROFILE_DIR"));
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        // The same packages as `cargo build --release` (the default members), so that the
        // allocator crate gets the same features and neither build undoes the other's.
        .args([
            "build",
            "--quiet",
            "--release",
            "--lib",
            "-p",
            "brkmalloc",
            "-p",
            "brkmalloc-preload",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo to build libbrkmalloc.so: {e}"))?;
    if !status.success() {
        return Err(format!("building libbrkmalloc.so failed ({status})"));
    }
    let lib = target_dir.join("release").join("libbrkmalloc.so");
    if lib.is_file() { Ok(lib) } else { Err(format!("{} was not built", lib.display())) }
}

/// Steps 3 to 5, in order.
fn installed_candidates(exe_dir: &Path) -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    let prefix_lib = normalize(&exe_dir.join("../lib"));
    let mut dirs = vec![prefix_lib.clone(), prefix_lib.join(&multiarch)];
    for system in ["/usr/local/lib", "/usr/lib", "/lib"] {
        dirs.extend([Path::new(system).join(&multiarch), PathBuf::from(system)]);
    }
    let mut candidates = vec![exe_dir.join("libbrkmalloc.so.0"), exe_dir.join("libbrkmalloc.so")];
    candidates.extend(dirs.iter().map(|dir| dir.join("libbrkmalloc.so.0")));
    candidates
}

/// `a/b/../c` → `a/c` (the launcher's directory has no symlinks left, so this is exact).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
