#!/usr/bin/env bash
# The fuzz driver's sabotage twin: the driver runs the front end itself (brkmalloc::heap::Front
# over an explicit heap and caches), so a routing bug planted in the front end must fail it.
# Builds the test with `--cfg brkmalloc_sabotage` (its own target dir), arms the `routing`
# defect (a freed block is pushed into the neighbouring class's list) and runs the seed corpus:
# the run must fail with a broken cache or heap invariant. The loom models' routing twins are
# in ci/loom.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never RUST_BACKTRACE=0
target="${TWINS_TARGET_DIR:-target/twins}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
RUSTFLAGS="--cfg brkmalloc_sabotage" cargo test --test fuzz_model --target-dir "$target" \
    --no-run >/dev/null 2>&1
if BRKMALLOC_SABOTAGE=routing RUSTFLAGS="--cfg brkmalloc_sabotage" cargo test \
    --test fuzz_model --target-dir "$target" -- seed_corpus >"$out" 2>&1; then
    echo "ci/twins.sh: the fuzz driver passed with the routing defect armed" >&2
    exit 1
fi
if ! grep -qE "cache [0-9]+: T[0-9]|heap invariant broken|misuse reported" "$out"; then
    cat "$out"
    echo "ci/twins.sh: the fuzz driver failed, but not on a broken invariant" >&2
    exit 1
fi
echo "ok    fuzz_model::seed_corpus with routing: $(grep -m1 -oE "cache [0-9]+: T[0-9][^\"]*|heap invariant broken[^\"]*|misuse reported[^\"]*" "$out")"
# The control: the same build with no defect armed passes.
RUSTFLAGS="--cfg brkmalloc_sabotage" cargo test --test fuzz_model --target-dir "$target" \
    -- seed_corpus >"$out" 2>&1 || { cat "$out"; echo "ci/twins.sh: control failed" >&2; exit 1; }
echo "ok    control: the sabotage build without a defect passes"
