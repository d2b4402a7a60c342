//! Gives `libbrkmalloc.so` the soname `libbrkmalloc.so.0`, so that a service can pin the ABI
//! (`LD_PRELOAD=libbrkmalloc.so.0`) and a packaged copy is installed under that name with the
//! unversioned name as a development link (see `[package.metadata.deb]` in the root
//! `Cargo.toml`). The file cargo writes stays `target/release/libbrkmalloc.so`.
//!
//! It also links gcc's unwinder (`libgcc_eh.a`, shipped with gcc) into the library, so that
//! it needs nothing but libc and the loader. std's backtrace code refers to the unwinder
//! (`_Unwind_Backtrace`) even though panics abort; linked dynamically, that mapped
//! `libgcc_s.so.1` into every process the library was preloaded into, 100 KiB resident
//! (`/proc/<pid>/smaps`), for code that never runs. The static copy is not exported (the
//! cdylib exports only the C malloc family), and nothing unwinds across the C boundary
//! (`panic = "abort"`), so it never meets the program's own unwinder.
//!
//! And it hands the linker `hot.ld`, which gathers the code every process runs at the start
//! of the executable segment (why, and what: the script's own comment).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbrkmalloc.so.0");
    // Listed before std's `-lgcc_s`: the unwinder's symbols resolve here, and the linker's
    // `--as-needed` (rustc's default) then drops libgcc_s.
    println!("cargo:rustc-link-lib=static=gcc_eh");
    println!("cargo:rerun-if-changed=hot.ld");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/hot.ld");
}
