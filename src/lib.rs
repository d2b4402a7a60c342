//! brkmalloc: a multi-threaded `malloc` for Linux.
//!
//! A central heap of boundary-tag blocks (grown with `sbrk`, falling back to `mmap`) behind one
//! mutex, per-thread caches of size-classed blocks in front of it, and large blocks in their
//! own mappings. Use it from Rust as the global allocator:
//!
//! ```toml
//! [dependencies]
//! brkmalloc = { version = "0.1", default-features = false, features = ["hardening"] }
//! ```
//!
//! ```
//! #[global_allocator]
//! static A: brkmalloc::BrkMalloc = brkmalloc::BrkMalloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
//!
//! Features: `hardening` (on by default) keeps the misuse checks on the fast paths;
//! `launcher` (on by default, not needed by a Rust program) builds the `brkmalloc-run`
//! launcher and brings in its command-line parser, hence `default-features = false` above.
//!
//! This crate exports no C symbols: linking it never replaces the process's `malloc`. For
//! that, any program can run on brkmalloc through `LD_PRELOAD=libbrkmalloc.so.0` (the
//! `brkmalloc-preload` crate of the repository, also in its Debian package) or through the
//! launcher, `brkmalloc-run PROGRAM [ARGS]`; see the README.
//!
//! Modules in dependency order, lowest first: `sync` ← `diag` ← `os` ← `size_class` ← `block`
//! ← `stats` ← `central` ← `batch` ← `transfer` (the middle layer) ← `thread_cache` ← `heap`
//! (the front end) ← `config` ← `prof` ←
//! `large_cache` ← `large` ← `purge` ← `tls` ← `process` ← `fork` ← `report` ← `api` ← `global_alloc`. A module never
//! imports one to its right.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(clippy::alloc_instead_of_core, clippy::std_instead_of_core)]

// Dependency order, lowest first (rustfmt keeps `mod` items in source order only when they are
// separated like this). A module imports only modules above it in this list (DESIGN.md,
// "Layers", says what each owns and may call).
pub mod sync;

pub mod diag;

pub mod os;

pub mod faults;

pub mod size_class;

pub mod block;

pub mod stats;

pub mod central;

pub mod quarantine;

pub mod batch;

pub mod transfer;

pub mod thread_cache;

pub mod heap;

/// The modules of the process's allocator (statics, TLS, syscalls, options): not part of the
/// loom build, which runs the layers above over explicit heaps and caches.
macro_rules! process_modules {
    ($($name:ident)*) => {
        $(
            #[cfg(not(loom))]
            pub mod $name;
        )*
    };
}

process_modules! {
    config
    prof
    large_cache
    large
    purge
    tls
    process
    fork
    report
    api
    global_alloc
}

#[cfg(not(loom))]
pub use global_alloc::BrkMalloc;
#[cfg(not(loom))]
pub use process::{check_heap, flush_thread_cache, heap_stats};
#[cfg(not(loom))]
pub use report::{Stats, stats};
