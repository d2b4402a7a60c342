#!/usr/bin/env bash
# The test command: installs the programs the real-program tests run (where missing and
# possible), then runs the whole workspace's tests, then (without arguments) the tests of the
# non-hardened build (`--no-default-features`) whose subject the feature changes: the thread
# cache and its fast paths, the C ABI and real programs under the non-hardened preload, the
# heap profiler (its sampled blocks leave the free fast path by their class code, which this
# build reads without the tag check), and what misuse it still detects. Tests that need the
# hardening checks say so with `#[cfg(feature = "hardening")]`. BRKMALLOC_SKIP_NOHARD=1 skips
# that second run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v git >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
command -v g++ >/dev/null || missing+=(g++)
# tests/prof.rs reads the heap profiles with `go tool pprof`.
command -v go >/dev/null || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "ci/test.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "ci/test.sh: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

cargo test --workspace "$@"

if [ $# -eq 0 ] && [ "${BRKMALLOC_SKIP_NOHARD:-0}" != 1 ]; then
    echo "ci/test.sh: the non-hardened build (cargo test --no-default-features)"
    cargo test -p brkmalloc --no-default-features --lib --test api --test cache \
        --test global_alloc --test threads --test misuse --test preload --test prof
fi
