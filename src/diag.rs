//! Diagnostics without allocation: a fixed stack buffer, `write(2)` to fd 2, then `abort`.
//!
//! Code that runs inside `malloc` cannot use `format!`, `eprintln!` with arguments, or a panic
//! (each may allocate, and a panic while the heap lock is held deadlocks). Every message is built
//! here from `&'static str` pieces and hexadecimal numbers.
//!
//! The statistics report at exit goes to [`report_fd`]: a duplicate of stderr taken when the
//! options are loaded, so that programs which close stderr before exiting (GNU coreutils'
//! `close_stdout`, daemons) still get it.

use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// A small line buffer on the stack. Text beyond its capacity is dropped, never overflowed.
///
/// # Invariants
/// - D1: `len <= buf.len()`.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self { buf: [0; 256], len: 0 }
    }

    /// Appends `s`, truncating at the capacity (D1).
    pub fn str(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    /// Appends `v` as `0x…` hexadecimal.
    pub fn hex(&mut self, v: usize) -> &mut Self {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..usize::BITS).step_by(4).rev() {
            let d = (v >> shift) & 0xf;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[n] = b"0123456789abcdef"[d];
                n += 1;
            }
        }
        // The digits are ASCII, so this is valid UTF-8; a failure would only drop the number.
        self.str(core::str::from_utf8(&digits[..n]).unwrap_or(""))
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, mut v: usize) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.str(core::str::from_utf8(&digits[n..]).unwrap_or(""))
    }

    /// Appends `v` in decimal, right-aligned in `width` columns.
    pub fn dec_w(&mut self, v: usize, width: usize) -> &mut Self {
        let mut digits = 1;
        let mut x = v;
        while x >= 10 {
            x /= 10;
            digits += 1;
        }
        for _ in digits..width {
            self.str(" ");
        }
        self.dec(v)
    }

    /// Appends a byte count for people: `123456789 B (117.7 MiB)`.
    pub fn bytes(&mut self, v: usize) -> &mut Self {
        self.dec(v).str(" B");
        let (unit, shift) = if v >= 1 << 30 {
            (" GiB)", 30)
        } else if v >= 1 << 20 {
            (" MiB)", 20)
        } else if v >= 1 << 10 {
            (" KiB)", 10)
        } else {
            return self;
        };
        let tenths = ((v as u128 * 10) >> shift) as usize;
        self.str(" (").dec(tenths / 10).str(".").dec(tenths % 10).str(unit)
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line to stderr (fd 2), retrying on `EINTR` and short writes.
    pub fn write_stderr(&self) {
        self.write_fd(2);
    }

    /// Writes the line to `fd`, retrying on `EINTR` and short writes; `false` if a write
    /// failed (a closed or broken descriptor).
    pub fn write_fd(&self, fd: i32) -> bool {
        let mut rest = self.as_bytes();
        while !rest.is_empty() {
            // SAFETY: `rest` is a valid initialised byte slice for the duration of the call.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n > 0 {
                rest = &rest[n as usize..];
            } else if n < 0 && errno() == libc::EINTR {
                continue;
            } else {
                return false;
            }
        }
        true
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

/// The duplicate of stderr for the statistics report; -1 until [`open_report_fd`] made one.
/// Published with `Release` after [`REPORT_DEV`] and [`REPORT_INO`] are stored.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// Device and inode of the open file behind [`REPORT_FD`] when it was made (Relaxed: written
/// before the `Release` store of [`REPORT_FD`], read after its `Acquire` load).
static REPORT_DEV: AtomicU64 = AtomicU64::new(0);
/// See [`REPORT_DEV`].
static REPORT_INO: AtomicU64 = AtomicU64::new(0);
/// The duplicate is placed at or above this number, out of the way of programs that expect
/// their first `open` to return 3.
const REPORT_FD_MIN: i32 = 200;

/// Device and inode of the file open on `fd`, or `None` if `fd` is not open.
fn file_id(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid out buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer; fstat reports a bad descriptor as an error.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// Duplicates stderr (close-on-exec, at fd 200 or above where the limit allows) for the
/// statistics report, once. Call from the one thread that loads the options (`config.rs`).
/// Does nothing when stderr is already closed: [`report_fd`] then falls back to fd 2.
pub fn open_report_fd() {
    if REPORT_FD.load(Ordering::Acquire) >= 0 {
        return;
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads its integer arguments.
    let mut fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, REPORT_FD_MIN) };
    if fd < 0 {
        // SAFETY: as above (a low RLIMIT_NOFILE rejects the high minimum).
        fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    }
    let Some((dev, ino)) = file_id(fd) else { return };
    REPORT_DEV.store(dev, Ordering::Relaxed);
    REPORT_INO.store(ino, Ordering::Relaxed);
    REPORT_FD.store(fd, Ordering::Release);
}

/// Where the statistics report goes: the duplicate of stderr while it still refers to the
/// same file (a program may have closed it and opened something else under its number), else
/// fd 2.
pub fn report_fd() -> i32 {
    let fd = REPORT_FD.load(Ordering::Acquire);
    let saved = (REPORT_DEV.load(Ordering::Relaxed), REPORT_INO.load(Ordering::Relaxed));
    if fd >= 0 && file_id(fd) == Some(saved) { fd } else { 2 }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the valid thread-local errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: `__errno_location` returns the valid thread-local errno slot.
    unsafe { *libc::__errno_location() = value };
}

/// Writes `brkmalloc: <func>(): <check>: <ptr>` to stderr and aborts the process.
///
/// Called with no allocator lock held, so a `SIGABRT` handler that allocates cannot deadlock.
#[cold]
#[inline(never)]
pub fn fatal(func: &str, check: &str, ptr: usize) -> ! {
    report(func, check, ptr);
    // SAFETY: `abort` has no preconditions; it does not return.
    unsafe { libc::abort() }
}

/// Writes `brkmalloc: <func>(): <check>: <ptr>` to stderr and returns (`abort_on_error:0`).
#[cold]
#[inline(never)]
pub fn report(func: &str, check: &str, ptr: usize) {
    let mut line = Line::new();
    line.str("brkmalloc: ").str(func).str("(): ").str(check).str(": ").hex(ptr).str("\n");
    line.write_stderr();
}

/// Writes `brkmalloc: <msg>` and a newline to stderr (warnings; the process goes on).
#[cold]
pub fn warn(msg: &str) {
    let mut line = Line::new();
    line.str("brkmalloc: ").str(msg).str("\n");
    line.write_stderr();
}

/// A misuse of the heap found while validating a pointer (by `central.rs`, `large.rs` or the
/// thread caches); the front end reports it with [`misuse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// The pointer is not inside any segment of this heap (it may be a large block).
    NotOurs,
    /// The pointer cannot be the start of a payload (misaligned, or at a segment edge).
    InvalidPointer,
    /// The header before the pointer fails its check word: a pointer we never handed out, an
    /// interior pointer, or a header overwritten by the program.
    BadHeader,
    /// The block is already free.
    DoubleFree,
    /// A neighbour's header or footer disagrees with this block (a buffer overflow or
    /// underflow damaged them).
    CorruptTags,
    /// Not a live block: never allocated here, or already freed (large blocks, checked
    /// against the registry of mappings).
    NotAllocated,
    /// A thread-cache link does not decode to a block (a write after free damaged it).
    CorruptLink,
    /// A block changed while it waited in the quarantine (`quarantine.rs`): written after it
    /// was freed.
    WriteAfterFree,
}

impl Misuse {
    /// The check's name as printed after `brkmalloc: free(): `.
    pub const fn message(self) -> &'static str {
        match self {
            Misuse::NotOurs | Misuse::InvalidPointer => "invalid pointer",
            Misuse::BadHeader => "invalid pointer or corrupted block header",
            Misuse::DoubleFree => "double free detected",
            Misuse::CorruptTags => "corrupted boundary tags (heap overflow?)",
            Misuse::NotAllocated => "invalid pointer or double free",
            Misuse::CorruptLink => "corrupted thread cache link (write after free?)",
            Misuse::WriteAfterFree => "write after free detected (quarantined block changed)",
        }
    }
}

/// Whether a detected misuse aborts (`abort_on_error`, default on; `config.rs` sets it).
/// Relaxed: a tuning flag, nothing is published through it.
#[cfg(not(loom))]
pub static ABORT_ON_ERROR: crate::sync::AtomicBool = crate::sync::AtomicBool::new(true);

/// Reports `what` for `ptr` in `func`, then aborts; with `abort_on_error:0` it returns, and
/// the caller leaks the block and carries on.
#[cold]
#[inline(never)]
pub fn misuse(func: &str, what: Misuse, ptr: usize) {
    #[cfg(not(loom))]
    if !ABORT_ON_ERROR.load(crate::sync::Ordering::Relaxed) {
        report(func, what.message(), ptr);
        return;
    }
    fatal(func, what.message(), ptr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_without_allocating() {
        let mut l = Line::new();
        l.str("a").hex(0).str(" ").hex(0xdead_beef).str(" ").dec(0).str(" ").dec(12345);
        assert_eq!(l.as_bytes(), b"a0x0 0xdeadbeef 0 12345");
        l.hex(usize::MAX);
        assert!(l.as_bytes().ends_with(b"0xffffffffffffffff"));
    }

    #[test]
    fn widths_and_byte_counts() {
        let mut l = Line::new();
        l.dec_w(42, 5).str("|").dec_w(123456, 3).str("|").bytes(512).str("|").bytes(3 << 20);
        assert_eq!(l.as_bytes(), b"   42|123456|512 B|3145728 B (3.0 MiB)");
    }

    #[test]
    fn truncates_at_capacity() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.str("0123456789");
        }
        assert_eq!(l.as_bytes().len(), 256);
    }
}
