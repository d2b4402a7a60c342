#!/usr/bin/env bash
# The ThreadSanitizer job: tests/tsan_stress.rs (many threads, cross-thread frees, thread churn,
# realloc, fork) with brkmalloc as the test binary's global allocator, built with
# `-Zsanitizer=thread` over a sanitized std (`-Zbuild-std`), then a planted race that TSan must
# report.
#
# - Nightly only (-Zsanitizer, -Zbuild-std); this script installs the toolchain and rust-src
#   if they are missing.
# - Dev profile: `panic = "abort"` with -Zbuild-std fails to build (duplicate lang items), and
#   the release profile sets it. CARGO_PROFILE_DEV_PANIC=unwind keeps that true if someone
#   sets it for dev too.
# - Without -Zbuild-std, std's own atomics are not instrumented and TSan reports false races.
# - brkmalloc exports no C symbols, so TSan keeps the process's `malloc`; never LD_PRELOAD here.
# - No suppressions: ci/tsan.supp does not exist, and any report fails the job.
# - The planted race (`--cfg brkmalloc_planted_race`) is passed to the test crate alone with
#   `cargo rustc`, so std and brkmalloc are not rebuilt for it.
#
# - With TSAN_SABOTAGE=1, a third step builds brkmalloc with its lock sabotaged
#   (`--cfg brkmalloc_sabotage`) and requires TSan reports inside brkmalloc::central: proof that
#   the job sees races in the allocator's own code, not only in the test's.
#
# Environment: TSAN_TARGET_DIR (default target/tsan), TSAN_SABOTAGE. Time on 2 cores: about
# 1.5 min cold (std built from source), 15 s warm; TSAN_SABOTAGE=1 adds about 1.5 min.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-gnu
target="${TSAN_TARGET_DIR:-target/tsan}"
export CARGO_TERM_COLOR=never
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
t0=$(date +%s)

echo "--- toolchain: nightly + rust-src"
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
rustup component add rust-src --toolchain nightly
rustc +nightly --version

export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
export CARGO_PROFILE_DEV_PANIC=unwind
# Exit code 66 on any report (TSan's default, made explicit); full stacks for both accesses.
export TSAN_OPTIONS="exitcode=66 halt_on_error=0 second_deadlock_stack=1"
# Short panic messages; TSan prints its own stacks.
export RUST_BACKTRACE=0
build=(cargo +nightly test -Zbuild-std --target "$triple" -p brkmalloc --target-dir "$target")

echo "--- tsan_stress under ThreadSanitizer"
set +e
"${build[@]}" --test tsan_stress >"$log/stress" 2>&1
rc=$?
set -e
reports=$(grep -c '^WARNING: ThreadSanitizer' "$log/stress" || true)
grep -E '^test |^test result' "$log/stress" || true
if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    cat "$log/stress"
    echo "ci/tsan.sh: tsan_stress failed (exit $rc, $reports ThreadSanitizer reports)" >&2
    exit 1
fi
t1=$(date +%s)
echo "--- clean: 0 reports ($((t1 - t0)) s)"

echo "--- planted race (--cfg brkmalloc_planted_race): TSan must report it"
RUSTFLAGS="$RUSTFLAGS" cargo +nightly rustc -Zbuild-std --target "$triple" -p brkmalloc \
    --test tsan_stress --target-dir "$target" --message-format=json \
    -- --cfg brkmalloc_planted_race >"$log/planted.json" 2>"$log/planted.err" || {
    cat "$log/planted.err"
    exit 1
}
exe=$(grep -o '"executable":"[^"]*tsan_stress[^"]*"' "$log/planted.json" | tail -1 | cut -d'"' -f4)
if [ -z "$exe" ]; then
    echo "ci/tsan.sh: no planted-race test executable" >&2
    exit 1
fi
rc=$("$exe" --exact planted_race_on_a_brkmalloc_block >"$log/planted" 2>&1 && echo 0 || echo $?)
if [ "$rc" -ne 66 ] || ! grep -q '^WARNING: ThreadSanitizer: data race' "$log/planted" ||
    ! grep -q 'planted_race_on_a_brkmalloc_block' "$log/planted"; then
    cat "$log/planted"
    echo "ci/tsan.sh: the planted race was not reported (exit $rc): TSan is not watching" >&2
    exit 1
fi
grep -m1 -A2 '^WARNING: ThreadSanitizer: data race' "$log/planted"
t2=$(date +%s)
echo "--- planted race reported (exit 66), as required ($((t2 - t1)) s)"

if [ "${TSAN_SABOTAGE:-0}" = 1 ]; then
    # Optional (a third build of std, ~1.5 min): the allocator's own lock broken
    # (`--cfg brkmalloc_sabotage`, src/sync.rs) must make TSan report races in the heap code.
    echo "--- sabotaged central lock (--cfg brkmalloc_sabotage): TSan must report brkmalloc::central"
    RUSTFLAGS="-Zsanitizer=thread --cfg brkmalloc_sabotage" cargo +nightly test -Zbuild-std \
        --target "$triple" -p brkmalloc --target-dir "$target-sabotage" --test tsan_stress \
        --no-run --message-format=json >"$log/sab.json" 2>"$log/sab.err" || {
        cat "$log/sab.err"
        exit 1
    }
    exe=$(grep -o '"executable":"[^"]*tsan_stress[^"]*"' "$log/sab.json" | tail -1 | cut -d'"' -f4)
    "$exe" --exact sabotaged_central_lock --ignored >"$log/sab" 2>&1 || true
    n=$(grep -c '^SUMMARY: ThreadSanitizer: data race .* in <brkmalloc::central::' "$log/sab" || true)
    if [ "$n" -eq 0 ]; then
        tail -40 "$log/sab"
        echo "ci/tsan.sh: the sabotaged lock went unreported" >&2
        exit 1
    fi
    echo "--- $n reports in brkmalloc::central, as required"
fi
t3=$(date +%s)
echo "--- TSan job done in $((t3 - t0)) s"
