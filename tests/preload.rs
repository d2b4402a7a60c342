//! The C ABI of `libbrkmalloc.so`, checked from outside under `LD_PRELOAD`.
//!
//! The first test to get here builds the cdylib once, in its own target
//! directory (`target/preload-test`, so the build does not wait on the lock
//! held by the running `cargo test`), and compiles the C programs in
//! `tests/c/` with gcc into `target/preload-test/cbin/`. Then:
//!
//! - `c_*` tests run a C program twice: first on plain glibc (no preload), as
//!   a control that the program itself is right, then under the preload. The
//!   programs print one line per check and exit non-zero on any failure. Where
//!   glibc 2.36 and brkmalloc's promises differ, the programs are strict only
//!   when `CTEST_EXPECT_BRKMALLOC=1` (set here together with `LD_PRELOAD`).
//! - `c_memory_returned` and the `misuse_*` tests run only under the preload
//!   (glibc keeps freed memory in the middle of its heap, and its misuse
//!   messages are its own).
//! - `real_*` tests run real programs (ls, sort, python3, gcc, git, sqlite3)
//!   with and without the preload and require the same stdout and exit codes.
//!
//! Scratch files go to `target/preload-test/tmp/<test>/`. Every child process
//! runs with a timeout, so an allocator deadlock fails a test instead of
//! hanging `cargo test`.

mod common;

use std::fmt::Write as _;
use std::fs;
#[cfg(feature = "hardening")]
use std::os::unix::process::ExitStatusExt;

use common::child::require;
#[cfg(feature = "hardening")]
use common::child::run;
use common::compare::{command, compare, program};
use common::preload::{Alloc, c_pass, c_test, data, scratch};
use common::rng::Rng;

// ---- C ABI semantics ------------------------------------------------------

#[test]
fn c_api_semantics() {
    c_test("api", &[]);
}

#[test]
fn c_threads_cross_thread_free() {
    c_test("threads", &[]);
}

#[test]
fn c_fork_while_threads_allocate() {
    c_test("fork", &[]);
}

#[test]
fn c_oom_rlimit_data() {
    c_test("oom", &["data"]);
}

#[test]
fn c_oom_rlimit_as() {
    c_test("oom", &["as"]);
}

/// Fault injection under the preload (issue 14): 8 threads allocate, reallocate and free with
/// contents checked while `RLIMIT_AS` is toggled every few milliseconds, so `sbrk`, `mmap` and
/// `mremap` fail in the middle of refills, merges, trims and moves. The program's stdout (only
/// what every allocator must share: ENOMEM on each failure, contents intact, allocation works
/// again) must equal glibc's, and the limit must have made allocations fail under brkmalloc.
#[test]
fn c_oom_threads_with_rlimit_as_toggled() {
    let glibc = c_pass("oom_threads", &[], Alloc::Glibc);
    let brk = c_pass("oom_threads", &[], Alloc::Brk(""));
    assert_eq!(glibc.stdout, brk.stdout, "stdout differs from glibc's run; {}", brk.report());
    let failures = |r: &common::child::Run| -> u64 {
        let line = r.stderr.lines().find_map(|l| l.strip_prefix("failures: "));
        let n = line.and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok());
        n.unwrap_or_else(|| panic!("no \"failures: N\" line; {}", r.report()))
    };
    eprintln!("failed allocations: glibc {}, brkmalloc {}", failures(&glibc), failures(&brk));
    assert!(failures(&brk) > 0, "the limit never made an allocation fail; {}", brk.report());
}

#[test]
fn c_sbrk_blocked_falls_back_to_mmap() {
    c_test("sbrk_blocked", &[]);
}

/// Only under the preload: glibc trims only the top of its heap, so after
/// freeing 1 GiB in random order its RSS stays high (about 750 MiB measured
/// with glibc 2.36) and this check fails there by design.
#[test]
fn c_memory_returned() {
    c_pass("trim", &[], Alloc::Brk(""));
}

/// What binutils' `tool` prints about the built library, run with `args`.
fn inspect(tool: &str, args: &[&str]) -> String {
    require(tool, "binutils");
    let r =
        common::child::run(std::process::Command::new(tool).args(args).arg(common::preload::so()));
    assert!(r.ok(), "{tool} {args:?}: {}", r.report());
    r.stdout
}

/// The library links nothing a malloc does not need: every library it loads is mapped and
/// partly resident in every process it is preloaded into (libm alone, pulled in by `f64::ln`
/// in the profiler, was +328 KiB of RSS at start).
#[test]
fn links_only_libc() {
    let text = inspect("readelf", &["-d"]);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(!needed.is_empty(), "readelf -d printed no NEEDED entries:\n{text}");
    let allowed = ["libc.so.6", "ld-linux-x86-64.so.2"];
    for lib in &needed {
        assert!(allowed.contains(lib), "libbrkmalloc.so needs {lib} (all: {needed:?})");
    }
}

/// C8: the process's heap and middle layer (80 KiB) are all zero bytes, so the linker puts
/// them in `.bss`: only the pages written become resident. In `.data`, the first read of any
/// of it mapped the whole 64 KiB window of the file around it (fault-around), in every process.
#[test]
fn backend_is_in_bss() {
    let text = inspect("nm", &["-C", "--defined-only"]);
    let line = text
        .lines()
        .find(|l| l.ends_with(" brkmalloc::process::BACKEND"))
        .unwrap_or_else(|| panic!("nm lists no brkmalloc::process::BACKEND"));
    let kind = line.split_whitespace().nth(1);
    assert!(matches!(kind, Some("b" | "B")), "BACKEND is not in .bss: {line}");
}

/// Modules of the core that no malloc, free, start-up or exit path runs (misuse reports,
/// the heap profiler, the statistics reports): they stay out of `.text.hot`.
const COLD_MODULES: [&str; 3] = ["diag", "prof", "report"];

/// The code every process runs lies together in `.text.hot`, followed by the PLT
/// (`preload/hot.ld`, whose comment says why): every function of the modules the script
/// lists, the C entry points it lists, std's start-up hook and `pthread_atfork`, and nothing
/// of [`COLD_MODULES`]; a module of the core in neither list fails (classify it), and so
/// does a `.text.hot` larger than one 64 KiB window.
#[test]
fn hot_code_is_grouped() {
    let script = include_str!("../preload/hot.ld");
    // `_ZN9brkmalloc<len><module>` patterns, and the `.text.<name>` of the C entry points.
    let hot: Vec<&str> = script
        .split("_ZN9brkmalloc")
        .skip(1)
        .filter_map(|t| {
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            let len: usize = t[..digits].parse().ok()?;
            t.get(digits..digits + len)
        })
        .collect();
    assert!(hot.contains(&"heap"), "no module list parsed from hot.ld: {hot:?}");
    let exports: Vec<&str> = script
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches("*(").trim_end_matches(')').strip_prefix(".text."))
        .filter(|n| *n != "hot" && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    assert!(exports.contains(&"malloc"), "no entry points parsed from hot.ld: {exports:?}");

    let sections = inspect("readelf", &["-SW"]);
    let section = |name: &str| -> (u64, u64) {
        let line = sections
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no {name} section:\n{sections}"));
        let f: Vec<&str> =
            line.split(']').nth(1).expect("a section line").split_whitespace().collect();
        let hex = |s: &str| u64::from_str_radix(s, 16).expect("a hex field");
        (hex(f[2]), hex(f[4]))
    };
    let (hot_at, hot_len) = section(".text.hot");
    let (plt_at, _) = section(".plt");
    assert!(hot_len <= 64 << 10, ".text.hot is {hot_len} bytes, over one 64 KiB window");
    assert!(
        (hot_at + hot_len..hot_at + hot_len + 16).contains(&plt_at),
        "the PLT ({plt_at:#x}) does not follow .text.hot ({hot_at:#x} + {hot_len:#x})"
    );

    let symbols = inspect("nm", &["--defined-only"]);
    let mut checked = 0;
    let mut wrong = String::new();
    for line in symbols.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, "t" | "T", name] = f[..] else { continue };
        let inside = (hot_at..hot_at + hot_len).contains(&u64::from_str_radix(addr, 16).unwrap());
        let want = if let Some(rest) = name.strip_prefix("_ZN9brkmalloc") {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let len: usize = rest[..digits].parse().expect("a mangled length");
            let module = &rest[digits..digits + len];
            if hot.contains(&module) {
                true
            } else if COLD_MODULES.contains(&module) {
                false
            } else {
                panic!("module brkmalloc::{module} is in neither hot.ld nor COLD_MODULES");
            }
        } else if exports.contains(&name)
            || name == "pthread_atfork"
            || name.contains("ARGV_INIT_ARRAY")
        {
            true
        } else {
            continue;
        };
        checked += 1;
        if inside != want {
            let _ =
                writeln!(wrong, "{name} at {addr}: expected {}", if want { "in" } else { "out" });
        }
    }
    assert!(checked > 50, "only {checked} symbols classified:\n{symbols}");
    assert!(wrong.is_empty(), ".text.hot is {hot_at:#x} + {hot_len:#x}:\n{wrong}");
}

// ---- misuse: must abort with a brkmalloc message --------------------------

// Every misuse case below needs `hardening` (the cache key or the tag check).
#[cfg(feature = "hardening")]
const FREE_PREFIX: &str = "brkmalloc: free(): ";

/// Runs `misuse MODE` under the preload and checks that it died by SIGABRT
/// with a `brkmalloc: free(): ` line on stderr containing `check`.
#[cfg(feature = "hardening")]
fn misuse(mode: &str, check: &str) {
    let r = run(&mut Alloc::Brk("").c_command("misuse", &[mode]));
    assert_eq!(
        r.status.signal(),
        Some(libc::SIGABRT),
        "misuse {mode}: expected death by SIGABRT; {}",
        r.report()
    );
    let line = r.stderr.lines().find(|l| l.contains(FREE_PREFIX)).unwrap_or_else(|| {
        panic!("misuse {mode}: no {FREE_PREFIX:?} line on stderr; {}", r.report())
    });
    let rest = &line[line.find(FREE_PREFIX).expect("found above") + FREE_PREFIX.len()..];
    assert!(
        rest.contains(check),
        "misuse {mode}: the message should name the check {check:?}: {line:?}; {}",
        r.report()
    );
}

// Needs `hardening`: the cache key (else the second free goes unnoticed).
#[cfg(feature = "hardening")]
#[test]
fn misuse_double_free() {
    misuse("double-free", "double free");
}

// Needs `hardening`: the cache key. Without it both frees go into the cache, and the flush that
// follows hands the block, twice, to the middle layer, which does not validate blocks.
#[cfg(feature = "hardening")]
#[test]
fn misuse_double_free_4k_block() {
    misuse("double-free-medium", "double free");
}

// Needs `hardening`: the free fast path's tag check (without it the fast path trusts the
// class code of whatever word lies before the pointer).
#[cfg(feature = "hardening")]
#[test]
fn misuse_invalid_free_static() {
    misuse("invalid-free-static", "invalid pointer");
}

// Needs `hardening`: the free fast path's tag check (without it the fast path trusts the
// class code of whatever word lies before the pointer).
#[cfg(feature = "hardening")]
#[test]
fn misuse_invalid_free_stack() {
    misuse("invalid-free-stack", "invalid pointer");
}

// Needs `hardening`: the free fast path's tag check (without it the fast path trusts the
// class code of whatever word lies before the pointer).
#[cfg(feature = "hardening")]
#[test]
fn misuse_interior_free() {
    misuse("interior-free", "invalid pointer");
}

// ---- real programs: same output with and without the preload --------------

#[test]
fn real_ls() {
    require("ls", "coreutils");
    compare("ls", |t, dir| {
        t.step("ls -la /usr/lib", command("ls", dir, &["-la", "/usr/lib"]));
    });
}

#[test]
fn real_sort() {
    require("sort", "coreutils");
    let input = scratch("sort-input").join("lines.txt");
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let mut text = String::with_capacity(8 << 20);
    for i in 0..200_000u32 {
        let len = 3 + (rng.next() % 20) as usize;
        let _ =
            writeln!(text, "{} {} {}{}", rng.word(len), rng.next() % 100_000, rng.word(5), i % 977);
    }
    fs::write(&input, text).expect("write sort input");
    let input = input.to_str().expect("utf-8 path");
    compare("sort", |t, dir| {
        t.step("sort lines.txt", command("sort", dir, &[input]));
        let keys = ["-t", " ", "-k2,2n", "-k1,1r", input];
        t.step("sort -t' ' -k2,2n -k1,1r lines.txt", command("sort", dir, &keys));
        // A small buffer forces an external sort with temporary files and a
        // multi-threaded merge.
        let tmp = dir.to_str().expect("utf-8 path");
        let external = ["--parallel=4", "-S", "512K", "-T", tmp, "-u", input];
        t.step("sort --parallel=4 -S 512K -u lines.txt", command("sort", dir, &external));
    });
}

#[test]
fn real_python_threads() {
    require("python3", "python3");
    let script = &data("py_threads.py");
    compare("python", |t, dir| {
        let mut cmd = command("python3", dir, &[script]);
        cmd.env("PYTHONMALLOC", "malloc")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        t.step("PYTHONMALLOC=malloc python3 py_threads.py", cmd);
    });
}

#[test]
fn real_gcc() {
    require("gcc", "gcc");
    let src = &data("gcc_input.c");
    compare("gcc", |t, dir| {
        let build = ["-O2", "-Wall", "-o", "prog", src];
        t.step("gcc -O2 -Wall -o prog gcc_input.c", command("gcc", dir, &build));
        t.step("./prog", program(dir.join("prog").to_str().expect("utf-8"), dir));
        t.step("gcc -O2 -S -o - gcc_input.c", command("gcc", dir, &["-O2", "-S", "-o", "-", src]));
    });
}

#[test]
fn real_git() {
    require("git", "git");
    compare("git", |t, dir| {
        let repo = dir.join("repo");
        let git = |args: &[&str]| {
            let mut cmd = program("git", dir);
            cmd.current_dir(if args[0] == "init" { dir } else { &repo })
                .args(["-c", "gc.autoDetach=false", "-c", "init.defaultBranch=main"])
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_AUTHOR_NAME", "Preload Test")
                .env("GIT_AUTHOR_EMAIL", "preload@example.com")
                .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
                .env("GIT_COMMITTER_NAME", "Preload Test")
                .env("GIT_COMMITTER_EMAIL", "preload@example.com")
                .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z");
            cmd
        };
        t.step("git init repo", git(&["init", "-q", "repo"]));
        let mut rng = Rng::new(42);
        let src = repo.join("src");
        fs::create_dir_all(&src).expect("mkdir src");
        for i in 0..120 {
            let mut body = String::new();
            for line in 0..(20 + rng.next() % 200) {
                let _ = writeln!(body, "file {i} line {line}: {}", rng.word(30));
            }
            fs::write(src.join(format!("f{i:03}.txt")), body).expect("write file");
        }
        t.step("git add -A", git(&["add", "-A"]));
        t.step("git commit", git(&["commit", "-q", "-m", "initial import"]));
        for i in (0..120).step_by(7) {
            let p = src.join(format!("f{i:03}.txt"));
            let mut body = fs::read_to_string(&p).expect("read file");
            let _ = writeln!(body, "appended {}", rng.word(40));
            fs::write(&p, body).expect("write file");
        }
        for i in (3..120).step_by(29) {
            fs::remove_file(src.join(format!("f{i:03}.txt"))).expect("remove file");
        }
        fs::write(repo.join("README"), "second commit\n").expect("write README");
        t.step("git add -A (2)", git(&["add", "-A"]));
        t.step("git commit (2)", git(&["commit", "-q", "-m", "edit, delete, add"]));
        t.step("git log --stat", git(&["log", "--stat"]));
        t.step("git gc", git(&["gc", "-q", "--aggressive"]));
        t.step("git fsck", git(&["fsck", "--full", "--no-progress"]));
        t.step("git log --stat (after gc)", git(&["log", "--stat"]));
        t.step("git diff --stat HEAD~1", git(&["diff", "--stat", "HEAD~1", "HEAD"]));
        t.step("git show", git(&["show", "HEAD:src/f007.txt"]));
    });
}

#[test]
fn real_sqlite3() {
    require("sqlite3", "sqlite3");
    let script = scratch("sqlite-input").join("script.sql");
    let mut rng = Rng::new(7);
    let mut sql = String::from(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, grp INTEGER, val REAL, \
         pad BLOB);\nBEGIN;\n",
    );
    for i in 0..50_000u64 {
        let len = 3 + (rng.next() % 12) as usize;
        let _ = writeln!(
            sql,
            "INSERT INTO t(name, grp, val, pad) VALUES('{}-{}', {}, {}, zeroblob({}));",
            rng.word(len),
            i % 1000,
            rng.next() % 97,
            (rng.next() % 100_000) as f64 * 0.25,
            rng.next() % 200
        );
    }
    sql.push_str(
        "COMMIT;\n\
         CREATE INDEX t_grp ON t(grp, name);\n\
         CREATE INDEX t_val ON t(val);\n\
         SELECT count(*), sum(val), min(name), max(name), sum(length(pad)) FROM t;\n\
         SELECT grp, count(*), sum(val), min(name), max(name), avg(length(name)) FROM t \
         GROUP BY grp ORDER BY grp;\n\
         SELECT count(DISTINCT name) FROM t;\n\
         SELECT name, val FROM t WHERE grp = 7 ORDER BY name LIMIT 20;\n\
         SELECT a.grp, count(*) FROM t a JOIN t b ON b.id = a.id + 1 AND b.grp = a.grp \
         GROUP BY a.grp ORDER BY 2 DESC, 1 LIMIT 10;\n\
         SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY val DESC, id LIMIT 200);\n\
         UPDATE t SET name = upper(name) WHERE grp % 3 = 0;\n\
         DELETE FROM t WHERE val < 1000;\n\
         SELECT count(*), sum(val) FROM t;\n\
         VACUUM;\n\
         PRAGMA integrity_check;\n",
    );
    fs::write(&script, sql).expect("write sqlite script");
    compare("sqlite3", |t, dir| {
        let mut cmd = command("sqlite3", dir, &["-batch", "-bail", "test.db"]);
        cmd.stdin(
            fs::File::open(&script).unwrap_or_else(|e| panic!("open {}: {e}", script.display())),
        );
        t.step("sqlite3 test.db < script.sql", cmd);
    });
}
