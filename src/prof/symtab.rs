//! Function names from an object's ELF symbol table (`.symtab`), for the leak summary at
//! exit: `dladdr` knows only exported (dynamic) symbols, so a program's own functions would
//! go unnamed unless it was linked with `-rdynamic`. The file is mapped read-only for the
//! lookup and unmapped after it: no heap memory is used.

use core::ffi::CStr;

/// ELF64 header fields used here (offsets in `Elf64_Ehdr`).
const E_TYPE: usize = 16;
const E_SHOFF: usize = 40;
const E_SHENTSIZE: usize = 58;
const E_SHNUM: usize = 60;
/// `ET_EXEC`: symbol values are absolute addresses.
const ET_EXEC: u16 = 2;
/// `SHT_SYMTAB`.
const SHT_SYMTAB: u32 = 2;
/// `STT_FUNC`.
const STT_FUNC: u8 = 2;
/// Bytes of an `Elf64_Sym`.
const SYM_SIZE: usize = 24;

/// A read-only mapping of a whole file.
///
/// # Invariants
/// - M1: `ptr` maps `len` readable bytes until the value is dropped.
struct Mapped {
    ptr: *const u8,
    len: usize,
}

impl Mapped {
    fn open(path: &CStr) -> Option<Self> {
        // SAFETY: a NUL-terminated path; open/fstat/mmap do not allocate.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let mut st: libc::stat = core::mem::zeroed();
            let len = if libc::fstat(fd, &mut st) == 0 { st.st_size as usize } else { 0 };
            let p = if len >= 64 {
                libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0)
            } else {
                libc::MAP_FAILED
            };
            libc::close(fd);
            (p != libc::MAP_FAILED).then_some(Mapped { ptr: p.cast(), len })
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: M1.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: M1: our mapping, no longer referenced.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<usize> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?) as usize)
}

/// Calls `f` with the name of the function of `path` (loaded at `base`) that contains the
/// address `at`, and its start address; `false` when the file has no symbol table or no
/// function there.
pub fn with_function(path: &CStr, base: usize, at: usize, f: &mut dyn FnMut(&[u8], usize)) -> bool {
    let Some(m) = Mapped::open(path) else { return false };
    let b = m.bytes();
    if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) {
        return false; // Not a 64-bit ELF file.
    }
    find(b, base, at, f).is_some()
}

fn find(b: &[u8], base: usize, at: usize, f: &mut dyn FnMut(&[u8], usize)) -> Option<()> {
    let bias = if u16_at(b, E_TYPE)? == ET_EXEC { 0 } else { base };
    let probe = at.checked_sub(bias)?;
    let (shoff, shentsize, shnum) =
        (u64_at(b, E_SHOFF)?, u16_at(b, E_SHENTSIZE)? as usize, u16_at(b, E_SHNUM)? as usize);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(b, sh + 4)? != SHT_SYMTAB {
            continue;
        }
        let (symoff, symsize) = (u64_at(b, sh + 24)?, u64_at(b, sh + 32)?);
        let strtab = section(u32_at(b, sh + 40)? as usize)?;
        let stroff = u64_at(b, strtab + 24)?;
        for k in 0..symsize / SYM_SIZE {
            let s = symoff + k * SYM_SIZE;
            let (value, size) = (u64_at(b, s + 8)?, u64_at(b, s + 16)?);
            if b.get(s + 4)? & 0xf != STT_FUNC || probe < value || probe >= value + size {
                continue;
            }
            let name = stroff.checked_add(u32_at(b, s)? as usize)?;
            let tail = b.get(name..)?;
            let end = tail.iter().position(|&c| c == 0)?;
            f(&tail[..end], value + bias);
            return Some(());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function of this test binary, found by its address.
    #[inline(never)]
    fn marker_function_for_symtab() -> usize {
        core::hint::black_box(42)
    }

    #[test]
    fn finds_a_static_function_of_the_running_program() {
        assert_eq!(marker_function_for_symtab(), 42);
        let at = marker_function_for_symtab as fn() -> usize as usize + 1;
        // SAFETY: an all-zero Dl_info is a valid out slot.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: valid out slot.
        assert_ne!(unsafe { libc::dladdr(at as *const libc::c_void, &mut info) }, 0);
        let exe = c"/proc/self/exe";
        let mut found = None;
        let ok = with_function(exe, info.dli_fbase as usize, at, &mut |name, start| {
            found = Some((String::from_utf8_lossy(name).into_owned(), start));
        });
        assert!(ok);
        let (name, start) = found.unwrap();
        assert!(name.contains("marker_function_for_symtab"), "{name}");
        assert_eq!(start, at - 1);
        assert!(!with_function(exe, info.dli_fbase as usize, 16, &mut |_, _| {}));
    }
}
