#!/usr/bin/env bash
# A short cargo-fuzz session of the `heap_ops` target (fuzz/fuzz_targets/heap_ops.rs, driver
# fuzz/driver.rs): operation sequences against the central heap and several thread caches,
# checked against a shadow model after every step. Optional in CI: without a nightly toolchain
# or cargo-fuzz it says so and exits 0 (install: `rustup toolchain install nightly` and
# `cargo install cargo-fuzz --locked`, about 1 min).
#
# The committed seed corpus fuzz/corpus/heap_ops/ is only read; the inputs the fuzzer finds
# go to a scratch directory (FUZZ_CORPUS, default a temporary one), so the committed corpus
# stays small. A crash leaves its input in fuzz/artifacts/heap_ops/ and fails the job; replay
# it with `cargo +nightly fuzz run heap_ops <file>`, or with the stable test driver:
# `DRIVER_TRACE=1 cargo test --test fuzz_model` after copying it into the seed corpus.
#
# Environment: FUZZ_SECONDS (default 60), FUZZ_CORPUS, FUZZ_TARGET_DIR (default
# target/fuzz), FUZZ_MAX_LEN (default 1024 bytes per input, about 250 operations: the
# exec rate falls with the input length, since every operation runs the heap walker; the
# stable test tests/fuzz_model.rs runs 2–8 KiB inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
target="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
max_len="${FUZZ_MAX_LEN:-1024}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "ci/fuzz.sh: no nightly toolchain; skipping the fuzz session" \
        "(rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "ci/fuzz.sh: cargo-fuzz is not installed; skipping the fuzz session" \
        "(cargo install cargo-fuzz --locked)"
    exit 0
fi

corpus="${FUZZ_CORPUS:-}"
if [ -z "$corpus" ]; then
    corpus="$(mktemp -d)"
    trap 'rm -rf "$corpus"' EXIT
fi
mkdir -p "$corpus"

# --no-trace-compares: tracing every comparison (cargo-fuzz's default) makes each execution
# about 4 times slower here (the heap walker after every operation is all comparisons), and
# the input format has no magic values for comparison-guided mutation to find.
flags=(--no-trace-compares --target-dir "$target")
cd fuzz
echo "--- cargo +nightly fuzz build heap_ops"
cargo +nightly fuzz build heap_ops "${flags[@]}"
echo "--- cargo +nightly fuzz run heap_ops for ${seconds}s (new inputs: $corpus)"
# The first corpus directory receives new inputs; the seed corpus is only read.
cargo +nightly fuzz run heap_ops "${flags[@]}" "$corpus" corpus/heap_ops -- \
    -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 2>&1 |
    grep -vE '^#[0-9]+ +(NEW|REDUCE|pulse) ' || {
    echo "ci/fuzz.sh: the fuzzer found a crash (input in fuzz/artifacts/heap_ops/)" >&2
    exit 1
}
echo "--- corpus: $(find "$corpus" -type f | wc -l) inputs found this session," \
    "$(find corpus/heap_ops -type f | wc -l) seeds"
