//! brkmalloc: a multi-threaded `malloc` for Linux.
//!
//! A central heap of boundary-tag blocks (grown with `sbrk`, falling back to `mmap`) behind one
//! mutex; large blocks in their own mappings. Use it from Rust as a global allocator:
//!
//! ```
//! #[global_allocator]
//! static A: brkmalloc::BrkMalloc = brkmalloc::BrkMalloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
//!
//! or from any program through `LD_PRELOAD=target/release/libbrkmalloc.so` (the `preload`
//! crate). This crate exports no C symbols: linking it never replaces the process's `malloc`.
//!
//! Modules in dependency order, lowest first: `sync`, `diag` ← `os` ← `block` ← `central` ←
//! `size_class` ← `stats` ← `thread_cache` ← `config` ← `large_cache` ← `large` ← `global` ← `api`, `fork`,
//! `report`. A module never imports one to its right (except that `config` names defaults
//! defined by the modules they tune).
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(clippy::alloc_instead_of_core, clippy::std_instead_of_core)]

// Dependency order, lowest first (rustfmt keeps `mod` items in source order only when they are
// separated like this).
pub mod sync;

pub mod diag;

pub mod os;

pub mod block;

pub mod central;

pub mod size_class;

pub mod stats;

pub mod thread_cache;

#[cfg(not(loom))]
pub mod config;

#[cfg(not(loom))]
pub mod large_cache;

#[cfg(not(loom))]
pub mod large;

#[cfg(not(loom))]
pub mod global;

#[cfg(not(loom))]
pub mod api;

#[cfg(not(loom))]
pub mod fork;

#[cfg(not(loom))]
pub mod report;

#[cfg(not(loom))]
pub use global::{BrkMalloc, check_heap, flush_thread_cache, heap_stats};
#[cfg(not(loom))]
pub use report::{Stats, stats};
