//! Runtime options, read once from `BRKMALLOC_CONF` in the environment without allocating.
//!
//! `BRKMALLOC_CONF="key:value,key:value"` (the shape of jemalloc's `MALLOC_CONF`). An unknown
//! key or a bad value prints one warning line naming it and keeps the default. The options are
//! documented in the README (option, effect, suggested value).
//!
//! Every option is a relaxed atomic: options are tuning values read on slow paths, and no data
//! is published through them. They are set once at load time (and by `mallopt`).

use crate::diag::Line;
use crate::size_class::MAX_CLASS_REQUEST;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use core::sync::atomic::AtomicU8;

/// Byte written over freed memory with `junk:1` (new memory gets its complement, `0xa5`).
pub const JUNK_FREE: u8 = 0x5a;

/// `stats` values.
pub const STATS_OFF: usize = 0;
/// Human table at exit.
pub const STATS_TEXT: usize = 1;
/// One JSON object at exit.
pub const STATS_JSON: usize = 2;

/// Default `mmap_threshold` (glibc's `M_MMAP_THRESHOLD`).
pub const DEFAULT_MMAP_THRESHOLD: usize = 128 << 10;
/// Default `trim_threshold` (glibc's `M_TRIM_THRESHOLD`).
pub const DEFAULT_TRIM_THRESHOLD: usize = crate::central::DEFAULT_TRIM_THRESHOLD;
/// Default `tcache_max_bytes`: per-thread cache limit.
pub const DEFAULT_TCACHE_MAX_BYTES: usize = crate::thread_cache::DEFAULT_MAX_BYTES;
/// Default `purge_delay_ms`: free memory idle this long goes back to the OS.
pub const DEFAULT_PURGE_DELAY_MS: usize = 1000;
/// `large_cache:auto` (the default): the bound follows the peak of live large blocks
/// (`large_cache.rs`).
pub const LARGE_CACHE_AUTO: usize = usize::MAX;

/// Print statistics at exit: `STATS_OFF`, `STATS_TEXT`, `STATS_JSON`.
pub static STATS: AtomicUsize = AtomicUsize::new(STATS_OFF);
/// Print the options in force at start-up.
pub static VERBOSE: AtomicBool = AtomicBool::new(false);
/// Requests at least this large get their own mapping.
pub static MMAP_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_MMAP_THRESHOLD);
/// Whether the mmap threshold was set by the user (`mmap_threshold` or `mallopt`); otherwise
/// it rises dynamically, as glibc's does.
pub static MMAP_THRESHOLD_FIXED: AtomicBool = AtomicBool::new(false);
/// The dynamic mmap threshold never rises above this (glibc's `DEFAULT_MMAP_THRESHOLD_MAX`).
pub const MMAP_THRESHOLD_MAX: usize = 32 << 20;
/// Largest request served by the thread caches: `min(MAX_CLASS_REQUEST, mmap_threshold - 1)`.
pub static SMALL_LIMIT: AtomicUsize = AtomicUsize::new(MAX_CLASS_REQUEST);
/// A free top of the break at least this large is given back.
pub static TRIM_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_TRIM_THRESHOLD);
/// Extra bytes per heap growth and kept at the top by a trim (`M_TOP_PAD`).
pub static TOP_PAD: AtomicUsize = AtomicUsize::new(crate::central::DEFAULT_TOP_PAD);
/// Per-thread cache limit in bytes.
pub static TCACHE_MAX_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_TCACHE_MAX_BYTES);
/// Thread caches on (`tcache:1`) or off.
pub static TCACHE: AtomicBool = AtomicBool::new(true);
/// Idle free memory is purged after this many milliseconds.
pub static PURGE_DELAY_MS: AtomicUsize = AtomicUsize::new(DEFAULT_PURGE_DELAY_MS);
/// Bytes of freed large mappings kept for reuse: `LARGE_CACHE_AUTO`, or a fixed bound (0 turns
/// the cache off).
pub static LARGE_CACHE_BYTES: AtomicUsize = AtomicUsize::new(LARGE_CACHE_AUTO);
/// Start a background thread that purges idle memory.
pub static BACKGROUND_PURGE: AtomicBool = AtomicBool::new(false);
/// Fill new and freed memory with junk bytes (`junk:1`, or glibc's `M_PERTURB`).
pub static JUNK: AtomicBool = AtomicBool::new(false);
/// The byte freed memory is filled with while [`JUNK`] is on; new memory gets its complement
/// (glibc's `M_PERTURB` convention: `junk:1` is perturb byte `JUNK_FREE`).
static JUNK_BYTE: AtomicUsize = AtomicUsize::new(JUNK_FREE as usize);
/// `quarantine:N`: freed heap blocks wait in a FIFO of this many bytes before reuse, filled
/// and checked on the way out (0 = off; `quarantine.rs`).
pub static QUARANTINE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Run the heap verifier every this many central-heap operations (0 = never).
pub static CHECK_EVERY: AtomicUsize = AtomicUsize::new(0);
/// Abort on a detected misuse (default), or report it, leak the block and go on (the flag
/// lives with the reporting, `diag.rs`).
pub use crate::diag::ABORT_ON_ERROR;

/// Longest `stats_file` path, in bytes.
pub const STATS_FILE_MAX: usize = 255;
/// `stats_file:PATH`: the report goes to this file instead of stderr (`%p` is the pid). Bytes
/// as atomics so that no `unsafe` is needed: written once while the options load, read at
/// exit (Relaxed, published by the `Release` store of [`STATS_FILE_LEN`]).
static STATS_FILE: [AtomicU8; STATS_FILE_MAX] = [const { AtomicU8::new(0) }; STATS_FILE_MAX];
/// Length of the `stats_file` path; 0 for none.
static STATS_FILE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Default `prof_sample`: mean bytes between two heap profile samples (jemalloc's
/// `lg_prof_sample:19`).
pub const DEFAULT_PROF_SAMPLE: usize = 512 << 10;
/// Longest `prof_prefix` kept (longer ones are rejected).
pub const PROF_PREFIX_MAX: usize = 200;
/// Sampled heap profiling on (`prof:1`; `prof_leak:1` turns it on too).
pub static PROF: AtomicBool = AtomicBool::new(false);
/// Mean bytes between two samples (`prof_sample`).
pub static PROF_SAMPLE: AtomicUsize = AtomicUsize::new(DEFAULT_PROF_SAMPLE);
/// Write a profile every this many bytes sampled allocations stand for (`prof_interval`; 0:
/// only at exit and on request).
pub static PROF_INTERVAL: AtomicUsize = AtomicUsize::new(0);
/// Print the leak summary at exit (`prof_leak`).
pub static PROF_LEAK: AtomicBool = AtomicBool::new(false);
/// Write the profile at exit (`prof_final`, default on with `prof:1`).
pub static PROF_FINAL: AtomicBool = AtomicBool::new(true);
/// `prof_prefix`: profiles go to `<prefix>.<pid>.<seq>.heap` (default `brkmalloc`). Bytes
/// copied out of the environment, as [`STATS_FILE`].
static PROF_PREFIX: [AtomicU8; PROF_PREFIX_MAX] = [const { AtomicU8::new(0) }; PROF_PREFIX_MAX];
/// Length of `PROF_PREFIX` (0: the default).
static PROF_PREFIX_LEN: AtomicUsize = AtomicUsize::new(0);

/// Load state: not yet, in progress, done.
static LOAD_STATE: AtomicUsize = AtomicUsize::new(0);

/// Reads `BRKMALLOC_CONF` once. Cheap after the first call: one relaxed load.
#[inline]
pub fn ensure_loaded() {
    // Relaxed: the options themselves are relaxed values; a thread that sees 2 may see
    // defaults for a moment, which is harmless.
    if LOAD_STATE.load(Ordering::Relaxed) != 2 {
        load();
    }
}

/// Whether `BRKMALLOC_CONF` has been read.
pub fn loaded() -> bool {
    LOAD_STATE.load(Ordering::Relaxed) == 2
}

#[cold]
#[inline(never)]
fn load() {
    // SAFETY: reading the `environ` pointer; libc sets it before any constructor runs.
    let env = unsafe { libc::environ };
    if env.is_null() {
        return; // Too early (only possible inside the dynamic loader): try again later.
    }
    // Relaxed: one thread parses; a concurrent caller just proceeds with the defaults.
    if LOAD_STATE.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    let mut i = 0;
    loop {
        // SAFETY: `environ` is a NULL-terminated array of C strings.
        let entry = unsafe { *env.add(i) };
        if entry.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated C string owned by libc for the process's life.
        let bytes = unsafe { core::ffi::CStr::from_ptr(entry) }.to_bytes();
        if let Some(value) = bytes.strip_prefix(b"BRKMALLOC_CONF=") {
            parse(value);
        }
        i += 1;
    }
    LOAD_STATE.store(2, Ordering::Relaxed);
    if STATS.load(Ordering::Relaxed) != STATS_OFF {
        // Now, while stderr is open: many programs close it before they exit (and a
        // `stats_file` that cannot be opened falls back to it).
        crate::diag::open_report_fd();
    }
    if VERBOSE.load(Ordering::Relaxed) {
        print_options();
    }
}

/// Applies every `key:value` of `conf`; warns about what it cannot use.
#[cold]
#[inline(never)]
pub fn parse(conf: &[u8]) {
    for item in conf.split(|&b| b == b',') {
        if item.is_empty() {
            continue;
        }
        let mut kv = item.splitn(2, |&b| b == b':');
        let key = kv.next().unwrap_or(b"");
        let Some(value) = kv.next() else {
            warn(b"option without a value (expected key:value): ", item);
            continue;
        };
        if !apply(key, value) {
            warn(b"bad value for option, default kept: ", item);
        }
    }
    SMALL_LIMIT.store(small_limit(MMAP_THRESHOLD.load(Ordering::Relaxed)), Ordering::Relaxed);
}

/// The cache limit implied by an mmap threshold.
pub fn small_limit(mmap_threshold: usize) -> usize {
    MAX_CLASS_REQUEST.min(mmap_threshold.saturating_sub(1))
}

/// Sets one option; `false` for a bad value. Unknown keys warn here and return `true`.
fn apply(key: &[u8], value: &[u8]) -> bool {
    match key {
        b"stats" => match value {
            b"0" | b"off" | b"false" => STATS.store(STATS_OFF, Ordering::Relaxed),
            b"1" | b"on" | b"true" | b"text" => STATS.store(STATS_TEXT, Ordering::Relaxed),
            b"json" => STATS.store(STATS_JSON, Ordering::Relaxed),
            _ => return false,
        },
        b"stats_file" => return set_stats_file(value),
        b"verbose" => return set_bool(&VERBOSE, value),
        // Setting either threshold turns glibc's dynamic threshold off, as in glibc (only
        // when the value is valid: a rejected value keeps the defaults, dynamics included).
        b"mmap_threshold" => return fix_threshold(set_size(&MMAP_THRESHOLD, value, 1)),
        b"trim_threshold" => return fix_threshold(set_size(&TRIM_THRESHOLD, value, 0)),
        b"top_pad" => return set_size(&TOP_PAD, value, 0),
        b"tcache_max_bytes" => return set_size(&TCACHE_MAX_BYTES, value, 0),
        b"tcache" => return set_bool(&TCACHE, value),
        b"purge_delay_ms" => return set_size(&PURGE_DELAY_MS, value, 0),
        b"background_purge" => return set_bool(&BACKGROUND_PURGE, value),
        b"large_cache" if value == b"auto" => {
            LARGE_CACHE_BYTES.store(LARGE_CACHE_AUTO, Ordering::Relaxed)
        }
        b"large_cache" => return set_size(&LARGE_CACHE_BYTES, value, 0),
        b"junk" => return set_bool(&JUNK, value),
        b"quarantine" => return set_size(&QUARANTINE_BYTES, value, 0),
        b"check" => return set_size(&CHECK_EVERY, value, 0),
        b"abort_on_error" => return set_bool(&ABORT_ON_ERROR, value),
        b"prof" => return set_bool(&PROF, value),
        b"prof_sample" => return set_size(&PROF_SAMPLE, value, 1),
        b"prof_interval" => return set_size(&PROF_INTERVAL, value, 0),
        b"prof_final" => return set_bool(&PROF_FINAL, value),
        b"prof_leak" => {
            let ok = set_bool(&PROF_LEAK, value);
            if ok && PROF_LEAK.load(Ordering::Relaxed) {
                PROF.store(true, Ordering::Relaxed);
            }
            return ok;
        }
        // Printable, no `,` (the item separator) and no space.
        b"prof_prefix" if value.iter().all(|c| (0x21..0x7f).contains(c)) => {
            return store_bytes(&PROF_PREFIX, &PROF_PREFIX_LEN, value);
        }
        b"prof_prefix" => return false,
        _ => warn(b"unknown option ignored: ", key),
    }
    true
}

/// `stats_file:PATH`: stores the path and turns the text report on if `stats` is off.
fn set_stats_file(path: &[u8]) -> bool {
    if !store_bytes(&STATS_FILE, &STATS_FILE_LEN, path) {
        return false;
    }
    if STATS.load(Ordering::Relaxed) == STATS_OFF {
        STATS.store(STATS_TEXT, Ordering::Relaxed);
    }
    true
}

/// Stores a non-empty string option without NUL bytes that fits `slots`, then its length
/// (Release: publishes the bytes to the Acquire load of the length).
fn store_bytes(slots: &[AtomicU8], len: &AtomicUsize, value: &[u8]) -> bool {
    if value.is_empty() || value.len() > slots.len() || value.contains(&0) {
        return false;
    }
    for (slot, &b) in slots.iter().zip(value) {
        slot.store(b, Ordering::Relaxed);
    }
    len.store(value.len(), Ordering::Release);
    true
}

/// Copies `prof_prefix` (or the default `brkmalloc`) into `out`; returns its length.
pub fn prof_prefix(out: &mut [u8; PROF_PREFIX_MAX]) -> usize {
    let n = PROF_PREFIX_LEN.load(Ordering::Acquire);
    if n == 0 {
        let d = b"brkmalloc";
        out[..d.len()].copy_from_slice(d);
        return d.len();
    }
    for (o, slot) in out.iter_mut().zip(&PROF_PREFIX[..n]) {
        *o = slot.load(Ordering::Relaxed);
    }
    n
}

/// The `stats_file` path with `%p` replaced by `pid`, NUL-terminated in `out`; `None` when no
/// file was asked for (or the expansion does not fit).
pub fn stats_file_path(pid: usize, out: &mut [u8; 2 * STATS_FILE_MAX]) -> Option<&[u8]> {
    let len = STATS_FILE_LEN.load(Ordering::Acquire);
    if len == 0 {
        return None;
    }
    let mut n = 0;
    let mut i = 0;
    while i < len {
        let b = STATS_FILE[i].load(Ordering::Relaxed);
        if b == b'%' && i + 1 < len && STATS_FILE[i + 1].load(Ordering::Relaxed) == b'p' {
            let mut digits = crate::diag::Line::new();
            digits.dec(pid);
            for &d in digits.as_bytes() {
                *out.get_mut(n)? = d;
                n += 1;
            }
            i += 2;
        } else {
            *out.get_mut(n)? = b;
            n += 1;
            i += 1;
        }
    }
    *out.get_mut(n)? = 0;
    Some(&out[..=n])
}

fn fix_threshold(ok: bool) -> bool {
    if ok {
        MMAP_THRESHOLD_FIXED.store(true, Ordering::Relaxed);
    }
    ok
}

fn set_bool(slot: &AtomicBool, value: &[u8]) -> bool {
    let v = match value {
        b"1" | b"true" | b"on" | b"yes" => true,
        b"0" | b"false" | b"off" | b"no" => false,
        _ => return false,
    };
    slot.store(v, Ordering::Relaxed);
    true
}

fn set_size(slot: &AtomicUsize, value: &[u8], min: usize) -> bool {
    match parse_size(value) {
        Some(v) if v >= min => {
            slot.store(v, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// A decimal number with an optional `k`, `m` or `g` suffix (powers of 1024).
pub fn parse_size(value: &[u8]) -> Option<usize> {
    let (digits, shift) = match value.last()? {
        b'k' | b'K' => (&value[..value.len() - 1], 10),
        b'm' | b'M' => (&value[..value.len() - 1], 20),
        b'g' | b'G' => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    n.checked_mul(1 << shift)
}

fn warn(what: &[u8], item: &[u8]) {
    let mut line = Line::new();
    line.str("brkmalloc: BRKMALLOC_CONF: ").str(ascii(what)).str("'").str(ascii(item)).str("'\n");
    line.write_stderr();
}

/// The printable ASCII prefix of `b` (options are ASCII; anything else is cut, not printed raw).
fn ascii(b: &[u8]) -> &str {
    let end = b.iter().position(|c| !(0x20..0x7f).contains(c)).unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("")
}

/// Prints the options in force (`verbose:1`).
pub fn print_options() {
    let r = Ordering::Relaxed;
    let options = [
        ("stats:", STATS.load(r)),
        ("mmap_threshold:", MMAP_THRESHOLD.load(r)),
        ("trim_threshold:", TRIM_THRESHOLD.load(r)),
        ("tcache:", TCACHE.load(r) as usize),
        ("tcache_max_bytes:", TCACHE_MAX_BYTES.load(r)),
        ("purge_delay_ms:", PURGE_DELAY_MS.load(r)),
        ("background_purge:", BACKGROUND_PURGE.load(r) as usize),
        ("junk:", JUNK.load(r) as usize),
        ("quarantine:", QUARANTINE_BYTES.load(r)),
        ("check:", CHECK_EVERY.load(r)),
        ("abort_on_error:", ABORT_ON_ERROR.load(r) as usize),
    ];
    let mut l = Line::new();
    l.str("brkmalloc: options:");
    for (name, value) in options {
        l.str(" ").str(name).dec(value);
    }
    l.str(" large_cache:");
    match LARGE_CACHE_BYTES.load(r) {
        LARGE_CACHE_AUTO => l.str("auto"),
        v => l.dec(v),
    };
    // The profiler's options on the same line (one `Line` holds 256 bytes).
    l.write_stderr();
    let mut l = Line::new();
    let prof = [
        ("prof:", PROF.load(r) as usize),
        ("prof_sample:", PROF_SAMPLE.load(r)),
        ("prof_interval:", PROF_INTERVAL.load(r)),
        ("prof_leak:", PROF_LEAK.load(r) as usize),
    ];
    for (name, value) in prof {
        l.str(" ").str(name).dec(value);
    }
    l.str("\n").write_stderr();
}

/// The byte written over freed memory while `junk` is on.
pub fn junk_free_byte() -> u8 {
    JUNK_BYTE.load(Ordering::Relaxed) as u8
}

/// The byte written over new memory while `junk` is on: the complement of the free byte.
pub fn junk_alloc_byte() -> u8 {
    !junk_free_byte()
}

/// glibc's `mallopt(M_PERTURB, byte)`: junk filling with `byte` (freed memory) and its
/// complement (new memory); 0 turns it off.
pub fn set_perturb(byte: u8) {
    if byte != 0 {
        JUNK_BYTE.store(byte as usize, Ordering::Relaxed);
    }
    JUNK.store(byte != 0, Ordering::Relaxed);
}

/// Whether the thread caches may be used: off with `tcache:0`, and with `junk`, `check` or
/// `quarantine`, whose work happens on the central paths.
pub fn caches_enabled() -> bool {
    let r = Ordering::Relaxed;
    TCACHE.load(r) && !JUNK.load(r) && CHECK_EVERY.load(r) == 0 && QUARANTINE_BYTES.load(r) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"64k"), Some(64 << 10));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_size(b"1g"), Some(1 << 30));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"k"), None);
        assert_eq!(parse_size(b"12x"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
        assert_eq!(parse_size(b"18014398509481984k"), None, "overflow in the suffix");
    }

    #[test]
    fn stats_file_expands_the_pid() {
        let mut buf = [0u8; 2 * STATS_FILE_MAX];
        assert!(set_stats_file(b"/tmp/st.%p.txt"));
        assert_eq!(stats_file_path(4242, &mut buf), Some(&b"/tmp/st.4242.txt\0"[..]));
        assert!(set_stats_file(b"%p%p/%"));
        assert_eq!(stats_file_path(7, &mut buf), Some(&b"77/%\0"[..]));
        assert!(!set_stats_file(b""));
        assert!(!set_stats_file(&[b'a'; STATS_FILE_MAX + 1]));
        assert!(set_stats_file(&[b'%'; STATS_FILE_MAX]), "the longest path");
        assert!(stats_file_path(1, &mut buf).is_some());
        assert!(set_stats_file(&b"%p".repeat(STATS_FILE_MAX / 2)));
        assert_eq!(stats_file_path(1_234_567, &mut buf), None, "expansion too long");
        STATS_FILE_LEN.store(0, Ordering::Release);
        STATS.store(STATS_OFF, Ordering::Relaxed);
    }

    #[test]
    fn small_limit_follows_the_mmap_threshold() {
        assert_eq!(small_limit(4096), 4095);
        assert_eq!(small_limit(1 << 20), MAX_CLASS_REQUEST);
        assert_eq!(small_limit(0), 0);
    }
}
