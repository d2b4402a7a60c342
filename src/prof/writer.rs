//! The heap profile file: gperftools' legacy heap profile text format, which `pprof` (Go's
//! `go tool pprof` and the standalone one) reads, with the `MAPPED_LIBRARIES` section that lets
//! it symbolize offline:
//!
//! ```text
//! heap profile: <live objs>: <live bytes> [<alloc objs>: <alloc bytes>] @ heapprofile
//! <live objs>: <live bytes> [<alloc objs>: <alloc bytes>] @ 0x<ret addr> 0x<ret addr> …
//! …
//!
//! MAPPED_LIBRARIES:
//! <the contents of /proc/self/maps>
//! ```
//!
//! The numbers are estimates already scaled from the samples (`sampling::weight`), so the
//! header says `heapprofile` (taken as is) rather than `heap_v2/<rate>` (which makes pprof
//! scale by each line's average size, a worse estimate when sizes at one site vary).
//! Written with `write(2)` from a stack buffer: nothing here allocates.

use super::table::{StackRec, Table};
use crate::diag::Line;

/// A buffered writer to a file descriptor, on the stack.
///
/// # Invariants
/// - O1: `len <= buf.len()`; `failed` once any write failed (later output is dropped).
pub struct Out {
    fd: i32,
    buf: [u8; 4096],
    len: usize,
    /// A write failed.
    pub failed: bool,
}

impl Out {
    /// A writer to `fd` (not closed by the writer).
    pub const fn new(fd: i32) -> Self {
        Self { fd, buf: [0; 4096], len: 0, failed: false }
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, mut b: &[u8]) -> &mut Self {
        while !b.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = b.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
            self.len += n;
            b = &b[n..];
        }
        self
    }

    /// Appends a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, v: u64) -> &mut Self {
        let mut l = Line::new();
        l.dec(v as usize);
        self.bytes(l.as_bytes())
    }

    /// Appends `v` as `0x…` in lower-case hexadecimal.
    pub fn hex(&mut self, v: usize) -> &mut Self {
        let mut l = Line::new();
        l.hex(v);
        self.bytes(l.as_bytes())
    }

    /// Writes out what is buffered (retrying on `EINTR` and short writes).
    pub fn flush(&mut self) {
        let mut off = 0;
        while off < self.len && !self.failed {
            // SAFETY: `buf[off..len]` is initialised (O1).
            let n =
                unsafe { libc::write(self.fd, self.buf[off..].as_ptr().cast(), self.len - off) };
            if n > 0 {
                off += n as usize;
            } else if n < 0 && crate::diag::errno() == libc::EINTR {
                continue;
            } else {
                self.failed = true;
            }
        }
        self.len = 0;
    }
}

/// Objects from thousandths, at least 1 when there are bytes.
fn objs(milli: u64, bytes: u64) -> u64 {
    let n = (milli + 500) / 1000;
    if n == 0 && bytes > 0 { 1 } else { n }
}

fn counts(o: &mut Out, lo: u64, lb: u64, ao: u64, ab: u64) {
    o.dec(objs(lo, lb)).str(": ").dec(lb).str(" [").dec(objs(ao, ab)).str(": ").dec(ab).str("]");
}

/// Writes the profile of `t` to `fd`; `false` if a write failed.
pub fn write_profile(t: &Table, fd: i32) -> bool {
    let mut o = Out::new(fd);
    let sum = |f: fn(&StackRec) -> u64| t.stacks().iter().map(f).sum::<u64>();
    o.str("heap profile: ");
    counts(
        &mut o,
        sum(|r| r.live_objs_milli),
        sum(|r| r.live_bytes),
        sum(|r| r.alloc_objs_milli),
        sum(|r| r.alloc_bytes),
    );
    o.str(" @ heapprofile\n");
    for r in t.stacks() {
        counts(&mut o, r.live_objs_milli, r.live_bytes, r.alloc_objs_milli, r.alloc_bytes);
        o.str(" @");
        for &f in r.frames() {
            o.str(" ").hex(f);
        }
        o.str("\n");
    }
    o.str("\nMAPPED_LIBRARIES:\n");
    copy_maps(&mut o);
    o.flush();
    !o.failed
}

/// Appends `/proc/self/maps`.
fn copy_maps(o: &mut Out) {
    // SAFETY: a NUL-terminated path; open does not allocate.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            o.bytes(&buf[..n as usize]);
        } else if n < 0 && crate::diag::errno() == libc::EINTR {
            continue;
        } else {
            break;
        }
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
}
