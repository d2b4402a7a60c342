//! Passive false sharing by placement: `falseshare` (Hoard's cache-scratch)
//! once per allocator and thread count, reading its `shared-lines S of T`
//! line: how many threads' live objects share a 64-byte line with another
//! thread's.  Unlike the timing, this shows on any number of cores, and it is
//! deterministic, so one short run per cell is the measurement.

use std::fmt::Write as _;

use crate::allocs::Allocator;
use crate::workloads::{self, Ctx};

/// Loop iterations per thread: enough for every thread to reach its first
/// object, little enough to cost nothing.
const PER_THREAD: u64 = 200;

/// One cell: (S, T) or the reason there is none (a failed run).
type Cell = Result<(u64, u64), String>;

fn parse(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find_map(|l| l.strip_prefix("shared-lines "))?;
    let (s, t) = line.split_once(" of ")?;
    Some((s.trim().parse().ok()?, t.trim().parse().ok()?))
}

/// Every allocator at every thread count above 1.  cells[thread index][alloc].
pub fn measure(ctx: &Ctx, allocs: &[Allocator], threads: &[u32]) -> Vec<(u32, Vec<Cell>)> {
    let Some(w) = workloads::all().into_iter().find(|w| w.name == "falseshare") else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for &t in threads.iter().filter(|&&t| t > 1) {
        let mut row = Vec::new();
        for a in allocs {
            let log = ctx.log_dir.join(format!("sharing-t{t}-{}.log", a.name));
            let o = workloads::run_synth_with(ctx, &w, t, PER_THREAD * t as u64, a, &[], log);
            let text = std::fs::read_to_string(&o.log).unwrap_or_default();
            row.push(match (o.status.is_ok(), parse(&text)) {
                (true, Some(st)) => Ok(st),
                (true, None) => Err("no shared-lines line".into()),
                (false, _) => Err(o.status.label()),
            });
        }
        rows.push((t, row));
    }
    rows
}

/// The report section: threads × allocators, "S / T".
pub fn section(rows: &[(u32, Vec<Cell>)], allocs: &[Allocator]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "## Passive false sharing: threads whose object shares a cache line with another thread's\n\n\
         `falseshare` (Hoard's cache-scratch: the main thread allocates one 8 B object per \
         thread back to back, each thread frees its object and then allocates, writes and frees \
         its own in a loop). Every thread records its first loop object and waits until all \
         threads hold theirs; *S / T* counts the threads whose object shares a 64-byte line with \
         another thread's live one (0 is best). Deterministic: one run of 200 iterations per \
         thread and cell.\n\n",
    );
    let _ = write!(s, "| threads |");
    for a in allocs {
        let _ = write!(s, " {} |", a.name);
    }
    let _ = writeln!(s, "\n|---:|{}", "---:|".repeat(allocs.len()));
    for (t, row) in rows {
        let _ = write!(s, "| {t} |");
        for c in row {
            match c {
                Ok((sh, of)) => {
                    let _ = write!(s, " {sh} / {of} |");
                }
                Err(e) => {
                    let _ = write!(s, " **{e}** |");
                }
            }
        }
        s.push('\n');
    }
    s.push('\n');
    s
}

/// Whether any run failed hard (crashed or failed its checks).
pub fn failed(rows: &[(u32, Vec<Cell>)]) -> bool {
    rows.iter().flat_map(|r| &r.1).any(|c| c.as_ref().is_err_and(|e| e != "TIMEOUT"))
}
