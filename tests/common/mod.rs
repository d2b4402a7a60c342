//! Helpers shared by the integration tests (each file in `tests/` is its own crate and
//! includes this module with `mod common;`):
//!
//! - [`rng`]: the one deterministic random number generator of the tests.
//! - [`child`]: running a child process with a timeout, capturing its output.
//! - [`compare`]: a session of real programs on glibc and under the preload, compared.
//! - [`preload`]: building `libbrkmalloc.so`, compiling the C programs of `tests/c/`, and
//!   running them with or without `LD_PRELOAD` (the control run on glibc).
//!
//! Not every test crate uses every helper, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod child;
pub mod compare;
pub mod preload;
pub mod rng;
