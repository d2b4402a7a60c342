#!/usr/bin/env bash
# The loom job: model checks of brkmalloc's locks and handoffs (loom-tests/), then every model's
# sabotage twins, which must fail.
#
# 1. Models: `RUSTFLAGS="--cfg loom"`, release (loom is ~10x slower in debug), one test thread
#    (the harness counts interleavings per model). Each model prints
#    `loom: <model>: <n> interleavings (preemption bound <b>)`; the summary collects them.
# 2. Twins: a second build with `--cfg brkmalloc_sabotage` compiles the deliberate defects of
#    src/sync.rs (`sync::sabotage`), and each (model, defect) pair below is run with
#    `BRKMALLOC_SABOTAGE=<defect>`. It must fail, with the message that defect should cause; a
#    twin that passes means its model cannot catch that defect, and fails this job.
#
# Bound: LOOM_MAX_PREEMPTIONS (default 3 here; the harness's own default is 2). At 3, the models
# take about 15 s and the whole job about 2 min warm and 4 min cold on 2 cores; at 4 the
# three-thread model alone explores ~840,000 interleavings (2.5 min). Bound 2 is the quick
# local setting.
#
# Environment: LOOM_MAX_PREEMPTIONS, LOOM_TARGET_DIR (default target/loom),
# LOOM_SABOTAGE_TARGET_DIR (default target/loom-sabotage). Two target dirs, because the two
# builds differ in RUSTFLAGS and would rebuild each other's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
target="${LOOM_TARGET_DIR:-target/loom}"
sabotage_target="${LOOM_SABOTAGE_TARGET_DIR:-target/loom-sabotage}"
# Panics are the expected outcome of the twins; backtraces would only bury the message.
export RUST_BACKTRACE=0
export CARGO_TERM_COLOR=never
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
t0=$(date +%s)

echo "--- loom models (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
if ! RUSTFLAGS="--cfg loom" cargo test --release -p loom-tests --target-dir "$target" \
    -- --test-threads=1 --nocapture >"$log/models" 2>&1; then
    cat "$log/models"
    echo "ci/loom.sh: a loom model failed" >&2
    exit 1
fi
# libtest prints "test <name> ... " before the harness's line, so cut from "loom: ".
grep -oE 'loom: [a-z_]+::.*' "$log/models" || true
models=$(grep -cE 'loom: [a-z_]+::' "$log/models" || true)
t1=$(date +%s)
echo "--- $models models passed in $((t1 - t0)) s (build included)"

echo "--- sabotage build (--cfg brkmalloc_sabotage)"
RUSTFLAGS="--cfg loom --cfg brkmalloc_sabotage" cargo test --release -p loom-tests \
    --target-dir "$sabotage_target" --no-run --message-format=json >"$log/build" 2>"$log/build.err" || {
    cat "$log/build.err"
    exit 1
}
# The test executables by test-file name, from cargo's artifact messages.
declare -A bin
while read -r name exe; do
    bin[$name]=$exe
done < <(grep '"executable":"' "$log/build" |
    sed -E 's/.*"target":\{[^}]*"name":"([^"]+)".*"executable":"([^"]+)".*/\1 \2/')

# test file, model, defect, what the failure must say
twins=(
    "central two_threads_malloc_realloc_free lock Causality violation"
    "central two_threads_malloc_realloc_free lock-ordering Causality violation"
    "central two_threads_malloc_realloc_free wake deadlock; threads"
    "central three_threads_malloc_free lock Causality violation"
    "central three_threads_malloc_free lock-ordering Causality violation"
    "central three_threads_malloc_free wake deadlock; threads"
    "thread_cache cross_thread_free lock Causality violation"
    "thread_cache cross_thread_free lock-ordering Causality violation"
    "thread_cache cross_thread_free wake deadlock; threads"
    "thread_cache flush_races_refill lock Causality violation"
    "thread_cache flush_races_refill lock-ordering Causality violation"
    "thread_cache flush_races_refill wake deadlock; threads"
    "thread_cache thread_exit_while_others_allocate lock Causality violation"
    "thread_cache thread_exit_while_others_allocate lock-ordering Causality violation"
    "thread_cache thread_exit_while_others_allocate wake deadlock; threads"
    "thread_cache cross_thread_free routing cache invariant broken"
    "thread_cache flush_races_refill routing cache invariant broken"
    "thread_cache thread_exit_while_others_allocate routing cache invariant broken"
    "transfer flushes_race_a_refill lock Causality violation"
    "transfer flushes_race_a_refill lock-ordering Causality violation"
    "transfer flushes_race_a_refill wake deadlock; threads"
    "transfer flushes_race_a_refill transfer CorruptLink"
    "transfer idle_return_races_refill lock Causality violation"
    "transfer idle_return_races_refill lock-ordering Causality violation"
    "transfer idle_return_races_refill wake deadlock; threads"
    "transfer idle_return_races_refill transfer CorruptLink"
    "transfer refill_takes_room_from_the_layer_as_a_flush_races lock Causality violation"
    "transfer refill_takes_room_from_the_layer_as_a_flush_races lock-ordering Causality violation"
    "transfer refill_takes_room_from_the_layer_as_a_flush_races wake deadlock; threads"
    "transfer refill_takes_room_from_the_layer_as_a_flush_races transfer CorruptLink"
    "once first_mallocs_race_for_the_key once-ordering Causality violation"
    "once first_mallocs_when_the_key_cannot_be_created lock Causality violation"
    "once claim_has_one_winner claim handlers registered twice"
    "fork fork_handlers_against_malloc lock Causality violation"
    "fork fork_handlers_against_malloc lock-ordering Causality violation"
    "fork fork_handlers_against_malloc wake deadlock; threads"
    "atomics counters counter an update was lost"
    "atomics lock_counts_every_acquisition lock Causality violation"
    "atomics lock_counts_every_acquisition lock-ordering Causality violation"
    "atomics lock_counts_every_acquisition wake deadlock; threads"
)

echo "--- control: the sabotage build with no defect armed passes (bound 2)"
for file in "${!bin[@]}"; do
    LOOM_MAX_PREEMPTIONS=2 "${bin[$file]}" --test-threads=1 >"$log/control" 2>&1 || {
        cat "$log/control"
        echo "ci/loom.sh: loom-tests/tests/$file.rs fails in the sabotage build without a defect" >&2
        exit 1
    }
done

echo "--- sabotage twins: each must fail"
bad=0
for twin in "${twins[@]}"; do
    read -r file model defect expect <<<"$twin"
    out="$log/twin"
    if [ -z "${bin[$file]:-}" ]; then
        echo "ci/loom.sh: no test executable for loom-tests/tests/$file.rs" >&2
        exit 1
    fi
    # In a command substitution, so that bash does not announce the wake twin's abort (loom's
    # deadlock report panics inside a destructor).
    rc=$(BRKMALLOC_SABOTAGE="$defect" timeout 300 "${bin[$file]}" --exact "$model" \
        --test-threads=1 --nocapture >"$out" 2>&1 && echo 0 || echo $?)
    if [ "$rc" -eq 0 ]; then
        echo "FAIL  $file::$model with $defect: passed, so this model cannot catch the defect"
        bad=1
    elif [ "$rc" -eq 124 ]; then
        echo "FAIL  $file::$model with $defect: timed out"
        bad=1
    elif ! grep -qF "$expect" "$out"; then
        echo "FAIL  $file::$model with $defect: failed, but without \"$expect\":"
        grep -E 'panicked|error' "$out" | head -5
        bad=1
    else
        msg=$(grep -A1 -E "^thread '.*' .*panicked at" "$out" | grep -vE 'panicked at|^--' | head -1)
        echo "ok    $file::$model with $defect: $msg"
    fi
done
t2=$(date +%s)
if [ "$bad" -ne 0 ]; then
    echo "ci/loom.sh: a sabotage twin did not fail as expected" >&2
    exit 1
fi
echo "--- ${#twins[@]} twins failed as expected; loom job done in $((t2 - t0)) s"
