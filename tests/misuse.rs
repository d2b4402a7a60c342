//! Heap misuse under `LD_PRELOAD=libbrkmalloc.so`: each mode of `tests/c/misuse2.c` misuses
//! the heap once and must die by `SIGABRT` with a `brkmalloc: <func>(): <check>` line on
//! stderr — never go on silently, and never crash with `SIGSEGV`.
//!
//! The cdylib and `misuse2.c` are built by `tests/common/preload.rs` (into
//! `target/preload-test`, shared with the other preload tests; `PRELOAD_TEST_DIR` overrides it).
//!
//! Tests marked `#[ignore = "FINDING: ..."]` state the behaviour brkmalloc should have and
//! does not have yet (each reproduces one reported finding: run them with `--ignored`).
//! `misuse_matrix` (ignored; run it with `--ignored --nocapture`) runs every mode and prints
//! the outcome of each as a Markdown table.

mod common;

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;

use common::child::Run;
use common::preload::{Alloc, c_run};

/// The messages `Misuse::message` can print (`src/central.rs`).
const MESSAGES: &[&str] = &[
    "double free detected",
    "invalid pointer or double free",
    "invalid pointer or corrupted block header",
    "invalid pointer",
    "corrupted boundary tags (heap overflow?)",
    "corrupted thread cache link (write after free?)",
    "write after free detected (quarantined block changed)",
];

/// Runs `misuse2 MODE` under the preload (the `quarantine-*` modes with `quarantine:64k`).
fn run_mode(mode: &str) -> Run {
    let conf = if mode.starts_with("quarantine-") { "quarantine:64k" } else { "" };
    c_run("misuse2", &[mode], Alloc::Brk(conf))
}

/// Runs `misuse2 MODE` and checks that it died by SIGABRT with the line
/// `brkmalloc: <func>(): <check>: 0x...` on stderr.
fn misuse(mode: &str, func: &str, check: &str) {
    let r = run_mode(mode);
    assert_eq!(
        r.status.signal(),
        Some(libc::SIGABRT),
        "misuse2 {mode}: expected death by SIGABRT; {}",
        r.report()
    );
    let want = format!("brkmalloc: {func}(): {check}: 0x");
    let line = r
        .message()
        .unwrap_or_else(|| panic!("misuse2 {mode}: no brkmalloc line on stderr; {}", r.report()));
    assert!(
        line.starts_with(&want),
        "misuse2 {mode}: expected {want:?}..., got {line:?}; {}",
        r.report()
    );
}

/// One `#[test]` per entry `name: mode, func, check;`, which runs `misuse(mode, func, check)`;
/// an entry's attributes (docs, `#[cfg]`, `#[ignore]`) stand before its name.
macro_rules! misuse_tests {
    ($($(#[$attr:meta])* $name:ident: $mode:literal, $func:literal, $check:literal;)*) => {
        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                misuse($mode, $func, $check);
            }
        )*
    };
}

// ---- double free ----------------------------------------------------------------------------

misuse_tests! {
    // Needs `hardening`: the cache key (else the second free goes unnoticed).
    #[cfg(feature = "hardening")]
    double_free_of_a_block_in_the_thread_cache:
        "double-free-cached", "free", "double free detected";
    double_free_after_the_cache_was_flushed: "double-free-flushed", "free", "double free detected";
    // Needs `hardening`: the cache key, which blocks keep in the middle layer's batches.
    #[cfg(feature = "hardening")]
    double_free_of_a_block_in_the_middle_layer:
        "double-free-in-layer", "free", "double free detected";
    double_free_of_a_central_block: "double-free-central", "free", "double free detected";
    // Needs `hardening`: the same-page test before the header read (else SIGSEGV).
    #[cfg(feature = "hardening")]
    double_free_of_a_large_block: "double-free-large", "free", "invalid pointer or double free";
    #[ignore = "FINDING: free() reads the header of a block whose pages were trimmed (SIGSEGV); left undetected for its fast-path cost, DESIGN.md \"Misuse matrix\""]
    double_free_of_a_block_whose_pages_were_trimmed:
        "double-free-trimmed", "free", "invalid pointer or double free";
}

// ---- invalid and interior pointers ----------------------------------------------------------

misuse_tests! {
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    invalid_free_of_a_static_array: "invalid-free-static", "free", "invalid pointer or double free";
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    invalid_free_of_a_stack_address: "invalid-free-stack", "free", "invalid pointer or double free";
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    invalid_free_into_a_foreign_mapping:
        "invalid-free-mmap", "free", "invalid pointer or double free";
    // Needs `hardening`: the same-page test before the header read (else SIGSEGV).
    #[cfg(feature = "hardening")]
    invalid_free_of_a_page_aligned_foreign_pointer:
        "invalid-free-mmap-page", "free", "invalid pointer or double free";
    // Needs `hardening`: the same-page test before the header read (else SIGSEGV).
    #[cfg(feature = "hardening")]
    invalid_free_just_past_a_page_boundary:
        "invalid-free-mmap-odd", "free", "invalid pointer or double free";
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    interior_free_of_a_small_block:
        "interior-free-small", "free", "invalid pointer or corrupted block header";
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    interior_free_of_a_large_block: "interior-free-large", "free", "invalid pointer or double free";
}

// ---- overflow into the next block's header --------------------------------------------------

misuse_tests! {
    // Needs `hardening`: the tag check on free (without it the fast path trusts the class code
    // of whatever word lies before the pointer).
    #[cfg(feature = "hardening")]
    overflow_then_free_of_the_neighbour:
        "overflow-free-neighbour", "free", "invalid pointer or corrupted block header";
    overflow_then_free_of_the_block:
        "overflow-free-self", "free", "corrupted boundary tags (heap overflow?)";
}

/// A small block whose successor's header was overwritten: caught by `free` when the block
/// is validated on the central path, or by the flush (`malloc_trim`) when it went to the
/// thread cache unchecked; either way the message names the damaged tags.
#[test]
fn overflow_of_a_small_block_is_caught_when_the_cache_is_flushed() {
    let r = run_mode("overflow-free-self-small");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&r.status),
        Some(libc::SIGABRT),
        "expected SIGABRT; {}",
        r.report()
    );
    assert!(
        r.stderr.contains("brkmalloc: free(): corrupted boundary tags (heap overflow?)")
            || r.stderr
                .contains("brkmalloc: malloc_trim(): corrupted boundary tags (heap overflow?)"),
        "{}",
        r.report()
    );
}

// ---- write after free -----------------------------------------------------------------------

misuse_tests! {
    // Needs `hardening`: the safe-linking check of cache links (else SIGSEGV).
    #[cfg(feature = "hardening")]
    write_after_free_breaks_the_cache_link:
        "write-after-free", "malloc", "corrupted thread cache link (write after free?)";
    #[ignore = "FINDING: a damaged link that decodes to an aligned address is followed (SIGSEGV); left undetected for its fast-path cost, DESIGN.md \"Misuse matrix\""]
    write_after_free_with_an_aligned_garbage_link:
        "write-after-free-aligned", "malloc", "corrupted thread cache link (write after free?)";
    #[ignore = "FINDING: a forged link makes malloc return a static address; left undetected for its fast-path cost, DESIGN.md \"Misuse matrix\""]
    write_after_free_with_a_forged_link:
        "write-after-free-forged", "malloc", "corrupted thread cache link (write after free?)";
}

// ---- the quarantine (`quarantine:64k`) ------------------------------------------------------

/// Found when the block leaves the quarantine (after 64 KiB of later frees), with the address
/// of the block that was written, not of the block being freed.
#[test]
fn write_after_free_is_caught_by_the_quarantine() {
    let check = "write after free detected (quarantined block changed)";
    misuse("quarantine-write-after-free", "free", check);
    let r = run_mode("quarantine-write-after-free");
    let freed = r.stdout.lines().find_map(|l| l.strip_prefix("step: freed "));
    let freed = freed.and_then(|l| l.split(',').next()).expect("the freed block's address");
    let want = format!("brkmalloc: free(): {check}: {freed}");
    assert_eq!(r.message(), Some(want.as_str()), "{}", r.report());
}

misuse_tests! {
    double_free_of_a_quarantined_block:
        "quarantine-double-free", "free", "double free detected";
}

// ---- realloc of a freed pointer -------------------------------------------------------------

misuse_tests! {
    // Needs `hardening`: the cache key (else silent reuse).
    #[cfg(feature = "hardening")]
    realloc_of_a_freed_cached_block_same_class:
        "realloc-after-free", "realloc", "double free detected";
    /// Detected before the move: the block still sits in the thread cache.
    // Needs `hardening`: the cache key (else silent reuse).
    #[cfg(feature = "hardening")]
    realloc_of_a_freed_cached_block_that_moves:
        "realloc-after-free-grow", "realloc", "double free detected";
    // Needs `hardening`: the cache key (else silent reuse).
    #[cfg(feature = "hardening")]
    realloc_of_a_freed_cached_block_in_place:
        "realloc-after-free-inplace", "realloc", "double free detected";
    realloc_of_a_freed_block_after_a_flush:
        "realloc-after-free-flushed", "realloc", "double free detected";
    realloc_of_a_freed_large_block:
        "realloc-after-free-large", "realloc", "invalid pointer or double free";
    /// A small shrink, which realloc keeps in place, of a freed block is still detected.
    realloc_of_a_freed_merged_block_kept_in_place:
        "realloc-after-free-merged", "realloc", "corrupted boundary tags (heap overflow?)";
}

// ---- malloc_usable_size of a foreign pointer ------------------------------------------------

misuse_tests! {
    usable_size_of_a_static_array:
        "usable-size-static", "malloc_usable_size", "invalid pointer or double free";
    usable_size_of_a_stack_address:
        "usable-size-stack", "malloc_usable_size", "invalid pointer or double free";
    usable_size_of_a_page_aligned_foreign_pointer:
        "usable-size-mmap-page", "malloc_usable_size", "invalid pointer or double free";
}

// ---- the matrix -----------------------------------------------------------------------------

/// Every mode of `misuse2.c`, in the order of its usage comment.
const MODES: &[&str] = &[
    "double-free-cached",
    "double-free-flushed",
    "double-free-in-layer",
    "double-free-central",
    "double-free-large",
    "double-free-trimmed",
    "invalid-free-static",
    "invalid-free-stack",
    "invalid-free-mmap",
    "invalid-free-mmap-page",
    "invalid-free-mmap-odd",
    "interior-free-small",
    "interior-free-large",
    "overflow-free-neighbour",
    "overflow-free-self",
    "overflow-free-self-small",
    "write-after-free",
    "write-after-free-aligned",
    "write-after-free-forged",
    "realloc-after-free",
    "realloc-after-free-grow",
    "realloc-after-free-inplace",
    "realloc-after-free-flushed",
    "realloc-after-free-large",
    "realloc-after-free-merged",
    "usable-size-static",
    "usable-size-stack",
    "usable-size-mmap-page",
    "quarantine-write-after-free",
    "quarantine-double-free",
];

/// Prints the outcome of every mode as a Markdown table (case, message, how it ended).
#[test]
#[ignore = "a report, not a check: run with --ignored --nocapture"]
fn misuse_matrix() {
    let mut table = String::from("| case | message on stderr | ended with |\n|---|---|---|\n");
    for mode in MODES {
        let r = run_mode(mode);
        let msg = match r.message() {
            // Drop the address: it changes from run to run.
            Some(line) => line.rsplit_once(": 0x").map_or(line, |(m, _)| m).to_string(),
            None if r.stdout.contains("misuse was not detected") => {
                "(none: not detected, exit 3)".to_string()
            }
            None => "(none)".to_string(),
        };
        let known = r.message().is_none_or(|l| MESSAGES.iter().any(|m| l.contains(m)));
        let _ = writeln!(
            table,
            "| `{mode}` | {}{} | {} |",
            if msg.starts_with('(') { msg.clone() } else { format!("`{msg}`") },
            if known { "" } else { " (unknown message)" },
            r.how()
        );
    }
    println!("{table}");
}
