//! The `libbrkmalloc.so` built into the launcher by build.rs (release builds from a checkout),
//! unpacked on first use into a cache directory keyed by a hash of its bytes:
//! `$BRKMALLOC_CACHE_DIR`, else `$XDG_CACHE_HOME/brkmalloc`, else `$HOME/.cache/brkmalloc`,
//! else `/tmp/brkmalloc-<uid>`; then `<hash>/libbrkmalloc.so.0` inside it.
//!
//! Every run compares the cached file with the embedded bytes (about 2 MB, well under a
//! millisecond) and rewrites it when they differ, so a damaged or stale cache cannot be
//! preloaded. The file is written beside its final name and renamed into place, so that
//! concurrent first runs never see half a library. The directories are created `0700`, and a
//! cache directory that another user owns or can write to is refused: whoever can write the
//! file chooses the code that runs in the program.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The library's bytes; empty when build.rs embedded none.
static LIBRARY: &[u8] = include_bytes!(env!("BRKMALLOC_EMBEDDED_LIB"));

/// FNV-1a of `LIBRARY`, in hex (build.rs).
const HASH: &str = env!("BRKMALLOC_EMBEDDED_HASH");

/// The unpacked library, `None` when the launcher carries none.
pub fn unpack() -> Result<Option<PathBuf>, String> {
    if LIBRARY.is_empty() {
        return Ok(None);
    }
    let dir = cache_root().join(HASH);
    let path = dir.join("libbrkmalloc.so.0");
    if fs::read(&path).is_ok_and(|bytes| bytes == LIBRARY) {
        return Ok(Some(path));
    }
    let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail("cannot create the cache directory", &dir, e))?;
    check_private(&dir)?;
    let partial = dir.join(format!(".libbrkmalloc.so.0.{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(&partial)
        .and_then(|mut f| f.write_all(LIBRARY));
    written.map_err(|e| fail("cannot write", &partial, e))?;
    fs::rename(&partial, &path).map_err(|e| fail("cannot rename into place", &path, e))?;
    Ok(Some(path))
}

/// Where unpacked libraries live (see the module comment).
fn cache_root() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("BRKMALLOC_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("brkmalloc");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("brkmalloc");
    }
    PathBuf::from(format!("/tmp/brkmalloc-{}", euid()))
}

/// The directory is ours and nobody else can write to it.
fn check_private(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != euid() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing the cache directory {}: not owned by this user or writable by others \
             (set BRKMALLOC_CACHE_DIR)",
            dir.display()
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
