//! Loom models of brkmalloc's locks and handoffs (run with `RUSTFLAGS="--cfg loom"`).
//!
//! The models arrive with the verification issue; today this crate only proves that the
//! allocator's code builds under `--cfg loom` (its `sync` module switches to loom's types).
#![deny(missing_docs)]
