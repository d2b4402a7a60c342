//! `--profile` and `--leaks`: runs the program with the heap profiler on, reads the profile it
//! writes at exit (gperftools' heap profile text format, `src/prof/writer.rs`), symbolizes its
//! return addresses with the debug information or symbol tables of the objects it maps
//! (`addr2line`/`object`), and prints the top allocation sites by bytes held, a flame graph SVG
//! of held bytes by stack (`inferno`), or jemalloc's shape of leak summary.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use object::{Object as _, ObjectSegment as _};

/// Frames shown per site in the tables.
const FRAMES_SHOWN: usize = 4;

/// One stack of the profile, with its estimated live and allocated totals.
///
/// # Invariants
/// As read from the file: `ips` is non-empty, innermost first; the counts are estimates.
#[derive(Debug, Clone)]
pub struct Stack {
    pub live_objs: u64,
    pub live_bytes: u64,
    pub alloc_bytes: u64,
    /// Return addresses, innermost first.
    pub ips: Vec<u64>,
}

/// An executable mapping of the profiled process.
///
/// # Invariants
/// `start < end`; `offset` is the file offset mapped at `start`; `path` is absolute.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// A parsed heap profile.
///
/// # Invariants
/// `maps` holds only the executable file mappings of `MAPPED_LIBRARIES`.
#[derive(Debug, Default)]
pub struct HeapProfile {
    pub stacks: Vec<Stack>,
    pub maps: Vec<Mapping>,
}

/// `<objs>: <bytes>` → the two numbers.
fn counts(s: &str) -> Option<(u64, u64)> {
    let (objs, bytes) = s.trim().split_once(':')?;
    Some((objs.trim().parse().ok()?, bytes.trim().parse().ok()?))
}

impl HeapProfile {
    /// Parses the text of a heap profile.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if !header.starts_with("heap profile:") {
            return Err(format!("not a heap profile (first line: {header:?})"));
        }
        let mut p = HeapProfile::default();
        let mut in_maps = false;
        for line in lines {
            if in_maps {
                if let Some(m) = Self::mapping(line) {
                    p.maps.push(m);
                }
            } else if line == "MAPPED_LIBRARIES:" {
                in_maps = true;
            } else if let Some((nums, ips)) = line.split_once(" @ ") {
                let (live, alloc) = nums.split_once('[').ok_or("missing '['")?;
                let (live_objs, live_bytes) = counts(live).ok_or("bad live counts")?;
                let (_, alloc_bytes) = counts(alloc.trim_end_matches(']')).ok_or("bad counts")?;
                let ips = ips
                    .split_whitespace()
                    .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("bad address in {line:?}: {e}"))?;
                p.stacks.push(Stack { live_objs, live_bytes, alloc_bytes, ips });
            }
        }
        Ok(p)
    }

    /// One `/proc/self/maps` line, if it maps a file executable.
    fn mapping(line: &str) -> Option<Mapping> {
        let mut f = line.split_whitespace();
        let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
        let path = f.nth(2)?;
        if !perms.contains('x') || !path.starts_with('/') {
            return None;
        }
        let (s, e) = range.split_once('-')?;
        Some(Mapping {
            start: u64::from_str_radix(s, 16).ok()?,
            end: u64::from_str_radix(e, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
            path: path.to_string(),
        })
    }
}

/// A symbolized frame.
///
/// # Invariants
/// `function` is never empty (an `object+0xoff` name when nothing better is known).
#[derive(Debug, Clone)]
pub struct Frame {
    pub function: String,
    /// `file:line`, or the object's file name when there is no line information.
    pub place: String,
}

/// An object file opened for symbolization.
///
/// # Invariants
/// `segments` are the object's loadable segments as its headers give them (empty when the
/// file cannot be read: then every lookup finds nothing).
struct ObjectFile {
    loader: Option<addr2line::Loader>,
    /// PT_LOAD segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
    name: String,
}

impl ObjectFile {
    fn open(path: &str) -> Self {
        let name = Path::new(path).file_name().map_or(path.into(), |n| n.to_string_lossy().into());
        let segments = fs::read(path)
            .ok()
            .and_then(|data| {
                let file = object::File::parse(&*data).ok()?;
                Some(
                    file.segments()
                        .map(|s| {
                            let (off, size) = s.file_range();
                            (off, size, s.address())
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        ObjectFile { loader: addr2line::Loader::new(path).ok(), segments, name }
    }

    /// The frames (inlined ones first) at file offset `off`.
    fn frames_at(&self, off: u64) -> Vec<Frame> {
        let Some(&(seg_off, _, vaddr)) =
            self.segments.iter().find(|(o, size, _)| *o <= off && off < o + size)
        else {
            return Vec::new();
        };
        let Some(loader) = &self.loader else { return Vec::new() };
        let probe = off - seg_off + vaddr;
        let mut out = Vec::new();
        if let Ok(mut it) = loader.find_frames(probe) {
            while let Ok(Some(f)) = it.next() {
                let Some(function) = f.function.as_ref().and_then(|n| n.demangle().ok()) else {
                    continue;
                };
                let place = match f.location {
                    Some(l) if l.file.is_some() => {
                        let file = l.file.unwrap_or_default();
                        let file = file.rsplit('/').next().unwrap_or(file);
                        format!("{file}:{}", l.line.unwrap_or(0))
                    }
                    _ => self.name.clone(),
                };
                out.push(Frame { function: function.into_owned(), place });
            }
        }
        if out.is_empty()
            && let Some(sym) = loader.find_symbol(probe)
        {
            let function = addr2line::demangle_auto(sym.into(), None).into_owned();
            out.push(Frame { function, place: self.name.clone() });
        }
        out
    }
}

/// Symbolizes the return addresses of one profile, caching objects and addresses.
///
/// # Invariants
/// `cache[ip]` is what [`Symbolizer::lookup`] gives for `ip` with these `maps`.
pub struct Symbolizer<'a> {
    maps: &'a [Mapping],
    objects: HashMap<String, ObjectFile>,
    cache: HashMap<u64, Vec<Frame>>,
}

impl<'a> Symbolizer<'a> {
    pub fn new(maps: &'a [Mapping]) -> Self {
        Symbolizer { maps, objects: HashMap::new(), cache: HashMap::new() }
    }

    /// The frames of the call that returns to `ip`, innermost (inlined) first; one
    /// `object+0xoff` frame when nothing better is known.
    pub fn frames(&mut self, ip: u64) -> &[Frame] {
        if !self.cache.contains_key(&ip) {
            let frames = self.lookup(ip);
            self.cache.insert(ip, frames);
        }
        &self.cache[&ip]
    }

    fn lookup(&mut self, ip: u64) -> Vec<Frame> {
        // The call instruction ends just before the return address.
        let at = ip.saturating_sub(1);
        let Some(m) = self.maps.iter().find(|m| m.start <= at && at < m.end) else {
            return vec![Frame { function: format!("{ip:#x}"), place: "?".into() }];
        };
        let off = at - m.start + m.offset;
        let obj = self.objects.entry(m.path.clone()).or_insert_with(|| ObjectFile::open(&m.path));
        let frames = obj.frames_at(off);
        if frames.is_empty() {
            return vec![Frame {
                function: format!("{}+{off:#x}", obj.name),
                place: obj.name.clone(),
            }];
        }
        frames
    }

    /// The stack `ips` as frames, innermost first, inlined frames expanded.
    pub fn stack(&mut self, ips: &[u64]) -> Vec<Frame> {
        ips.iter().flat_map(|&ip| self.frames(ip).to_vec()).collect()
    }
}

/// `12.3 MiB`.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

/// The stacks holding memory, largest first, at most `n`.
fn top_held(p: &HeapProfile, n: usize) -> Vec<&Stack> {
    let mut v: Vec<&Stack> = p.stacks.iter().filter(|s| s.live_bytes > 0).collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
    v.truncate(n);
    v
}

/// Whether `f` was named only by its object and offset (a stripped library's internal
/// function).
fn unnamed(f: &Frame) -> bool {
    f.function.contains("+0x")
}

/// A site for the table: the innermost frame, then up to `FRAMES_SHOWN - 1` named callers;
/// runs of unnamed frames in between are shown as `…`.
fn site_label(frames: &[Frame]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut skipped = false;
    for (i, f) in frames.iter().enumerate() {
        if parts.len() == FRAMES_SHOWN {
            break;
        }
        if i > 0 && unnamed(f) {
            skipped = true;
            continue;
        }
        if std::mem::take(&mut skipped) {
            parts.push("…".into());
        }
        parts.push(format!("{} ({})", f.function, f.place));
    }
    parts.join(" <- ")
}

/// The `--profile` table: the top sites by bytes held.
pub fn top_sites_report(p: &HeapProfile, sym: &mut Symbolizer, n: usize) -> String {
    let total: u64 = p.stacks.iter().map(|s| s.live_bytes).sum();
    let allocated: u64 = p.stacks.iter().map(|s| s.alloc_bytes).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Heap held: ~{} in {} stacks (~{} allocated until then; estimates from samples)",
        human(total),
        p.stacks.iter().filter(|s| s.live_bytes > 0).count(),
        human(allocated)
    );
    let _ = writeln!(out, "{:>11} {:>6} {:>9}  site (innermost first)", "held", "%", "objects");
    for s in top_held(p, n) {
        let site = site_label(&sym.stack(&s.ips));
        let _ = writeln!(
            out,
            "{:>11} {:>5.1}% {:>9}  {}",
            human(s.live_bytes),
            100.0 * s.live_bytes as f64 / total.max(1) as f64,
            s.live_objs,
            site
        );
    }
    out
}

/// The `--leaks` summary, in the shape of jemalloc's.
pub fn leak_report(p: &HeapProfile, sym: &mut Symbolizer, n: usize) -> String {
    let held: Vec<&Stack> = p.stacks.iter().filter(|s| s.live_bytes > 0).collect();
    let bytes: u64 = held.iter().map(|s| s.live_bytes).sum();
    let objs: u64 = held.iter().map(|s| s.live_objs).sum();
    let mut out = format!(
        "<brkmalloc>: Leak approximation summary: ~{bytes} bytes, ~{objs} objects, >= {} contexts\n",
        held.len()
    );
    for (i, s) in top_held(p, n).into_iter().enumerate() {
        let _ = writeln!(
            out,
            "<brkmalloc>: #{}: ~{} bytes in ~{} objects allocated at:",
            i + 1,
            s.live_bytes,
            s.live_objs
        );
        for f in sym.stack(&s.ips).iter().take(2 * FRAMES_SHOWN) {
            let _ = writeln!(out, "<brkmalloc>:       {} ({})", f.function, f.place);
        }
    }
    out
}

/// The flame graph of held bytes by stack (root at the bottom), as SVG.
pub fn flame_graph(p: &HeapProfile, sym: &mut Symbolizer, title: &str) -> Result<Vec<u8>, String> {
    let mut lines = Vec::new();
    for s in p.stacks.iter().filter(|s| s.live_bytes > 0) {
        let names: Vec<String> =
            sym.stack(&s.ips).iter().rev().map(|f| f.function.replace([';', ' '], "_")).collect();
        lines.push(format!("{} {}", names.join(";"), s.live_bytes));
    }
    if lines.is_empty() {
        return Err("no held memory to draw".into());
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = title.to_string();
    opt.count_name = "bytes".to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)
        .map_err(|e| format!("flame graph: {e}"))?;
    Ok(svg)
}

/// The profiles `<dir>/prof.<pid>.<seq>.heap` of process `pid`, by sequence number.
fn profiles_of(dir: &Path, pid: u32) -> Vec<(u64, PathBuf)> {
    let prefix = format!("prof.{pid}.");
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq: u64 = name.strip_prefix(&prefix)?.strip_suffix(".heap")?.parse().ok()?;
            Some((seq, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// What `--profile` and `--leaks` were asked for.
///
/// # Invariants
/// `sample` and `interval` are passed to `BRKMALLOC_CONF` as given (it checks them).
pub struct Options {
    pub out: PathBuf,
    pub sample: String,
    pub interval: String,
    pub top: usize,
    pub leaks: bool,
    pub profile: bool,
}

/// Reads every profile of `pid` in `dir`: the one written at exit (the last), and the one that
/// held the most memory.
fn read_profiles(
    dir: &Path,
    pid: u32,
) -> Result<(HeapProfile, PathBuf, HeapProfile, PathBuf), String> {
    let mut last = None;
    let mut most: Option<(u64, HeapProfile, PathBuf)> = None;
    for (_, path) in profiles_of(dir, pid) {
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let p = HeapProfile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let held: u64 = p.stacks.iter().map(|s| s.live_bytes).sum();
        if most.as_ref().is_none_or(|(h, _, _)| held > *h) {
            most = Some((held, HeapProfile::parse(&text)?, path.clone()));
        }
        last = Some((p, path));
    }
    match (last, most) {
        (Some((l, lp)), Some((_, m, mp))) => Ok((l, lp, m, mp)),
        _ => Err(format!("the program left no heap profile in {}", dir.display())),
    }
}

/// Runs `cmd` with the profiler on (its options added to `base_conf`, the launcher's
/// `BRKMALLOC_CONF`) and reports as `opts` asks. Returns the program's exit status.
pub fn run(mut cmd: Command, base_conf: &OsStr, opts: &Options) -> ExitCode {
    if let Err(e) = fs::create_dir_all(&opts.out) {
        eprintln!("brkmalloc-run: cannot create {}: {e}", opts.out.display());
        return ExitCode::FAILURE;
    }
    let out = fs::canonicalize(&opts.out).unwrap_or_else(|_| opts.out.clone());
    // Profiles of an earlier run would be taken for this one's.
    for e in fs::read_dir(&out).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("prof.") && name.ends_with(".heap") {
            let _ = fs::remove_file(e.path());
        }
    }
    let mut conf = base_conf.to_string_lossy().into_owned();
    if !conf.is_empty() {
        conf.push(',');
    }
    let _ = write!(
        conf,
        "prof:1,prof_sample:{},prof_interval:{},prof_prefix:{}/prof",
        opts.sample,
        opts.interval,
        out.display()
    );
    let mut child = match cmd.env("BRKMALLOC_CONF", conf).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("brkmalloc-run: cannot run {:?}: {e}", cmd.get_program());
            return ExitCode::from(127);
        }
    };
    let pid = child.id();
    let status = child.wait().map(|s| s.code().unwrap_or(128)).unwrap_or(127);
    let code = ExitCode::from(status.clamp(0, 255) as u8);
    let (at_exit, exit_path, peak, peak_path) = match read_profiles(&out, pid) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("brkmalloc-run: {e}");
            return code;
        }
    };
    if opts.profile {
        eprintln!("\nbrkmalloc-run: the profile that held the most: {}", peak_path.display());
        let mut sym = Symbolizer::new(&peak.maps);
        eprint!("{}", top_sites_report(&peak, &mut sym, opts.top));
        let svg_path = out.join("flamegraph.svg");
        let title = format!("Heap held: {:?} ({})", cmd.get_program(), peak_path.display());
        match flame_graph(&peak, &mut sym, &title).and_then(|svg| {
            fs::write(&svg_path, svg).map_err(|e| format!("{}: {e}", svg_path.display()))
        }) {
            Ok(()) => eprintln!("flame graph: {}", svg_path.display()),
            Err(e) => eprintln!("brkmalloc-run: {e}"),
        }
    }
    if opts.leaks {
        eprintln!("\nbrkmalloc-run: held at exit: {}", exit_path.display());
        let mut sym = Symbolizer::new(&at_exit.maps);
        eprint!("{}", leak_report(&at_exit, &mut sym, opts.top));
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "heap profile: 3: 3072 [5: 9000] @ heapprofile\n\
        2: 2048 [3: 6000] @ 0x1010 0x1020\n\
        1: 1024 [2: 3000] @ 0x1030\n\
        0: 0 [1: 10] @ 0x5000\n\
        \n\
        MAPPED_LIBRARIES:\n\
        00001000-00002000 r-xp 00001000 fe:00 1 /usr/bin/prog\n\
        00002000-00003000 rw-p 00002000 fe:00 1 /usr/bin/prog\n\
        7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]\n";

    #[test]
    fn parses_stacks_and_executable_mappings() {
        let p = HeapProfile::parse(SAMPLE).unwrap();
        assert_eq!(p.stacks.len(), 3);
        assert_eq!(p.stacks[0].ips, vec![0x1010, 0x1020]);
        assert_eq!((p.stacks[0].live_objs, p.stacks[0].live_bytes), (2, 2048));
        assert_eq!(p.stacks[2].alloc_bytes, 10);
        assert_eq!(p.maps.len(), 1, "{:?}", p.maps);
        assert_eq!(p.maps[0].offset, 0x1000);
        assert!(HeapProfile::parse("garbage").is_err());
    }

    #[test]
    fn top_sites_are_largest_first_and_skip_freed_ones() {
        let p = HeapProfile::parse(SAMPLE).unwrap();
        let t = top_held(&p, 10);
        assert_eq!(t.iter().map(|s| s.live_bytes).collect::<Vec<_>>(), vec![2048, 1024]);
        let mut sym = Symbolizer::new(&p.maps);
        let leaks = leak_report(&p, &mut sym, 10);
        assert!(leaks.starts_with("<brkmalloc>: Leak approximation summary: ~3072 bytes, ~3"));
        assert!(leaks.contains("#2: ~1024 bytes"));
        // Unknown objects still name something.
        assert!(!sym.frames(0x9999)[0].function.is_empty());
    }
}
