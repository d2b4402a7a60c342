//! `prof_leak:1`: at exit, the sites that still hold sampled memory, in the shape of
//! jemalloc's leak summary: a total line, then the top sites by estimated bytes, each with its
//! innermost frames symbolized through `dladdr` (exported symbols) or, for the others, the
//! object's ELF symbol table (`symtab.rs`; stripped libraries keep `object+0xoff`). The
//! launcher's `--leaks` adds file and line from the debug information.

use super::table::{StackRec, Table};
use super::writer::Out;

/// Sites listed.
pub const TOP: usize = 20;
/// Frames shown per site.
const FRAMES: usize = 6;

/// Prints the summary of `t` to stderr.
pub fn print_summary(t: &Table) {
    let mut o = Out::new(2);
    let live = t.stacks().iter().filter(|r| r.live_samples > 0);
    let (mut bytes, mut milli, mut sites) = (0u64, 0u64, 0u64);
    for r in live {
        bytes += r.live_bytes;
        milli += r.live_objs_milli;
        sites += 1;
    }
    o.str("<brkmalloc>: Leak approximation summary: ~")
        .dec(bytes)
        .str(" bytes, ~")
        .dec(milli.div_ceil(1000))
        .str(" objects, >= ")
        .dec(sites)
        .str(" contexts\n");
    // Top sites by live bytes: a selection into a fixed array, no allocation.
    let mut top: [Option<&StackRec>; TOP] = [None; TOP];
    for r in t.stacks().iter().filter(|r| r.live_samples > 0) {
        let mut i = TOP;
        while i > 0 && top[i - 1].is_none_or(|q| q.live_bytes < r.live_bytes) {
            i -= 1;
        }
        if i < TOP {
            top.copy_within(i..TOP - 1, i + 1);
            top[i] = Some(r);
        }
    }
    for (rank, r) in top.iter().flatten().enumerate() {
        o.str("<brkmalloc>: #")
            .dec(rank as u64 + 1)
            .str(": ~")
            .dec(r.live_bytes)
            .str(" bytes in ~")
            .dec(r.live_objs_milli.div_ceil(1000))
            .str(" objects at");
        for (i, &f) in r.frames().iter().take(FRAMES).enumerate() {
            o.str(if i == 0 { " " } else { " <- " });
            symbol(&mut o, f);
        }
        o.str("\n");
    }
    if t.dropped > 0 {
        o.str("<brkmalloc>: ").dec(t.dropped).str(" samples dropped (profile table full)\n");
    }
    o.str("<brkmalloc>: Run `brkmalloc-run --leaks` or pprof on a dump for leak detail\n");
    o.flush();
}

/// Appends `name+0xoff (object)` for the return address `ip`, or `object+0xoff`.
fn symbol(o: &mut Out, ip: usize) {
    // SAFETY: an all-zero Dl_info is a valid out slot.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // The call instruction is just before the return address.
    let at = ip.wrapping_sub(1);
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out slot.
    let found = unsafe { libc::dladdr(at as *const libc::c_void, &mut info) } != 0;
    let obj = if found && !info.dli_fname.is_null() {
        // SAFETY: a NUL-terminated string owned by the loader.
        let full = unsafe { core::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
        full.rsplit(|&c| c == b'/').next().unwrap_or(full)
    } else {
        b"?".as_slice()
    };
    if found && !info.dli_sname.is_null() {
        // SAFETY: as above.
        let name = unsafe { core::ffi::CStr::from_ptr(info.dli_sname) }.to_bytes();
        o.bytes(name).str("+").hex(at - info.dli_saddr as usize).str(" (").bytes(obj).str(")");
        return;
    }
    if found && !info.dli_fname.is_null() {
        // SAFETY: as above. The main program may be named by a relative path: read it
        // through /proc/self/exe then.
        let fname = unsafe { core::ffi::CStr::from_ptr(info.dli_fname) };
        let path = if fname.to_bytes().first() == Some(&b'/') { fname } else { c"/proc/self/exe" };
        let base = info.dli_fbase as usize;
        let named = super::symtab::with_function(path, base, at, &mut |name, start| {
            o.bytes(name).str("+").hex(at - start).str(" (").bytes(obj).str(")");
        });
        if named {
            return;
        }
    }
    o.bytes(obj).str("+").hex(at.wrapping_sub(info.dli_fbase as usize));
}
