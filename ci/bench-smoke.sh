#!/usr/bin/env bash
# Benchmark harness, quick mode, as a smoke test: it fails only when a run crashes, hangs
# past its limit with a crash, or fails its data checks, never because of a timing. The
# driver installs the peer allocators and server programs with apt-get when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench compare -- --quick
