#!/bin/sh
# RSS over time of benches/rss_trace/burst.c (a burst of large blocks, then
# idleness) for glibc, mimalloc and brkmalloc (defaults; background_purge:1;
# and with the mmap threshold fixed, so every block goes through the cache),
# as CSV and an SVG chart.
#   benches/rss_trace/run.sh [OUT_DIR]   (default target/rss_trace)
# Needs gcc, python3 and libmimalloc2.0 (apt-get install libmimalloc2.0).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/rss_trace}
mkdir -p "$out"
cargo build --release -p brkmalloc-preload --manifest-path "$root/Cargo.toml" >&2
so=${BRKMALLOC_SO:-$root/target/release/libbrkmalloc.so}
gcc -O2 -Wall -o "$out/burst" "$root/benches/rss_trace/burst.c"
mi=/lib/x86_64-linux-gnu/libmimalloc.so.2
csv="$out/rss_trace.csv"
echo "allocator,t_ms,rss_kib" >"$csv"
run() { # name, then env assignments for the program
    name=$1; shift
    env -u LD_PRELOAD -u BRKMALLOC_CONF "$@" "$out/burst" >"$out/raw-$name.txt"
    awk -v n="$name" '$1 != "#" { print n "," $1 "," $2 }' "$out/raw-$name.txt" >>"$csv"
}
run glibc
[ -e "$mi" ] && run mimalloc LD_PRELOAD="$mi"
run brkmalloc LD_PRELOAD="$so"
run brkmalloc-bg LD_PRELOAD="$so" BRKMALLOC_CONF=background_purge:1
run brkmalloc-fixed LD_PRELOAD="$so" BRKMALLOC_CONF=mmap_threshold:128k,background_purge:1
python3 "$root/benches/rss_trace/chart.py" "$csv" "$out/raw-glibc.txt" "$out/rss_trace.svg"
echo "wrote $csv and $out/rss_trace.svg" >&2
