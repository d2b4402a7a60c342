//! Gives `libbrkmalloc.so` the soname `libbrkmalloc.so.0`, so that a service can pin the ABI
//! (`LD_PRELOAD=libbrkmalloc.so.0`) and a packaged copy is installed under that name with the
//! unversioned name as a development link (see `[package.metadata.deb]` in the root
//! `Cargo.toml`). The file cargo writes stays `target/release/libbrkmalloc.so`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbrkmalloc.so.0");
}
