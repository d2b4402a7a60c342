#!/usr/bin/env bash
# Soak: real servers under brkmalloc for SECONDS (default 60), their data checked, their RSS
# sampled beside the same servers under glibc, all four running at the same time:
#   - redis-server: redis-benchmark load cycling through value sizes 16 B .. 64 KiB, a BGSAVE
#     (a fork with a full heap) every 5 s, and ci/soak_redis.py keeping 3000 keys of 8 B ..
#     1 MiB busy with every GET checked and every key read back at the end; then a last
#     BGSAVE, its dump checked with redis-check-rdb;
#   - memcached (4 threads, 64 MiB): benches/workloads/mcclient.c, 4 client
#     threads, every hit's value checked.
# It fails on a crash, a wrong value, a failed BGSAVE, or a brkmalloc server whose RSS keeps
# growing over the second half of the run (ci/soak_report.py says how that is decided).
# Debian's redis-server links libjemalloc, so the glibc runs preload libc.so.6 to get glibc's
# malloc. Installs redis-server, redis-tools and memcached with apt-get when missing (as root).
#
# usage: ci/soak.sh [SECONDS]      env: SOAK_CHART=path.svg (default: in the work directory)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-60}
[[ $secs =~ ^[0-9]+$ && $secs -ge 10 ]] || { echo "usage: ci/soak.sh [SECONDS >= 10]" >&2; exit 2; }

missing=()
need() { command -v "$1" >/dev/null || missing+=("${@:2}"); } # program, packages...
need redis-server redis-server
need redis-benchmark redis-tools
need memcached memcached
need gcc gcc libc6-dev
need python3 python3
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "soak: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "soak: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packages start their own servers where an init system runs; ours use other ports.

work=$(mktemp -d /tmp/brkmalloc-soak.XXXXXX)
chart=${SOAK_CHART:-$work/soak-rss.svg}
echo "soak: $secs s, work directory $work"
cargo build --release -q -p brkmalloc-preload
# A copy, so that a rebuild during a long run does not change the library under the servers.
cp target/release/libbrkmalloc.so "$work/"
gcc -O2 -pthread -o "$work/mcclient" benches/workloads/mcclient.c
libc=$(gcc -print-file-name=libc.so.6)
[ -f "$libc" ] || libc=/lib/x86_64-linux-gnu/libc.so.6
declare -A preload=([glibc]=$libc [brkmalloc]=$work/libbrkmalloc.so)
allocs=(glibc brkmalloc)
declare -A rport mport rpid mpid
# A free port below the kernel's ephemeral range (32768 and up here), so that no client socket
# of this or another run holds it; the caller adds it to $taken (this runs in a subshell).
taken=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ $taken == *" $p "* ]] && continue
        python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' \
            "$p" 2>/dev/null || continue
        echo "$p"
        return 0
    done
    echo "soak: no free port found" >&2
    return 1
}
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for a in "${allocs[@]}"; do
        [ -n "${rpid[$a]:-}" ] && kill "${rpid[$a]}" 2>/dev/null || true
        [ -n "${mpid[$a]:-}" ] && kill "${mpid[$a]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

fail() { echo "FAIL $*" | tee -a "$work/failures" >&2; }

for a in "${allocs[@]}"; do
    rport[$a]=$(free_port); taken+="${rport[$a]} "
    mport[$a]=$(free_port); taken+="${mport[$a]} "
    mkdir -p "$work/redis-$a"
    LD_PRELOAD=${preload[$a]} redis-server --port "${rport[$a]}" --bind 127.0.0.1 --save '' \
        --appendonly no --protected-mode no --dir "$work/redis-$a" \
        --logfile "$work/redis-$a.log" &
    rpid[$a]=$!
    LD_PRELOAD=${preload[$a]} memcached -u "$(id -un)" -l 127.0.0.1 -p "${mport[$a]}" -U 0 -t 4 \
        -m 64 >"$work/memcached-$a.log" 2>&1 &
    mpid[$a]=$!
done
for a in "${allocs[@]}"; do
    for _ in $(seq 100); do
        redis-cli -p "${rport[$a]}" ping 2>/dev/null | grep -q PONG \
            && (exec 3<>"/dev/tcp/127.0.0.1/${mport[$a]}") 2>/dev/null && break
        sleep 0.1
    done
done

start=$(date +%s)
deadline=$((start + secs))

# Runs "$@" again and again until the deadline, then adds "LABEL: N" (the rounds run) to the
# summary; stops at the first failed round (which reports itself through `fail`).
repeat() { # label, command...
    local label=$1 n=0
    shift
    while [ "$(date +%s)" -lt "$deadline" ]; do
        "$@" || return 0
        n=$((n + 1))
    done
    echo "$label: $n" >>"$work/summary"
}

bench_round() { # alloc
    # value size, key space, requests per test (LPUSH then LPOP: the list grows by the
    # requests times the size, then shrinks back)
    for spec in "16 50000 5000" "128 50000 5000" "1024 20000 2000" "8192 2000 1000" \
        "65536 200 200"; do
        read -r size space reqs <<<"$spec"
        [ "$(date +%s)" -lt "$deadline" ] || return 0
        redis-benchmark -p "${rport[$1]}" -c 20 -n "$reqs" -r "$space" -d "$size" --csv \
            -t set,get,incr,lpush,lpop,sadd,spop,hset,mset >>"$work/bench-$1.log" 2>&1 \
            || { fail "redis-benchmark against redis-$1 (size $size)"; return 1; }
    done
}

bgsave_round() { # alloc
    sleep 5
    redis-cli -p "${rport[$1]}" bgsave >/dev/null 2>&1
    ! redis-cli -p "${rport[$1]}" info persistence | grep -q 'rdb_last_bgsave_status:err' \
        || { fail "BGSAVE of redis-$1"; return 1; }
}

mc_round() { # alloc
    "$work/mcclient" "${mport[$1]}" 4 20000 20000 >>"$work/mcclient-$1.log" 2>&1 \
        || { fail "mcclient against memcached-$1: $(tail -n 1 "$work/mcclient-$1.log")"; return 1; }
}

checker() { # alloc
    local a=$1
    python3 ci/soak_redis.py "${rport[$a]}" "$secs" >"$work/check-$a.log" 2>&1 \
        || fail "soak_redis.py against redis-$a: $(tail -1 "$work/check-$a.log")"
}

sampler() {
    local every=$(((secs + 599) / 600))
    echo "t,redis-glibc,redis-brkmalloc,memcached-glibc,memcached-brkmalloc" >"$work/rss.csv"
    while [ "$(date +%s)" -lt "$deadline" ]; do
        local row=$(($(date +%s) - start))
        for p in "${rpid[glibc]}" "${rpid[brkmalloc]}" "${mpid[glibc]}" "${mpid[brkmalloc]}"; do
            row+=,$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        done
        echo "$row" >>"$work/rss.csv"
        sleep "$every"
    done
}

for a in "${allocs[@]}"; do
    repeat "redis-$a: redis-benchmark rounds (5 value sizes each)" bench_round "$a" & pids+=($!)
    repeat "redis-$a: BGSAVEs (every 5 s)" bgsave_round "$a" & pids+=($!)
    repeat "memcached-$a: mcclient runs (4 threads, 80000 requests, every hit checked)" \
        mc_round "$a" & pids+=($!)
    checker "$a" & pids+=($!)
done
sampler & pids+=($!)
wait "${pids[@]}" || true
pids=()

for a in "${allocs[@]}"; do
    kill -0 "${rpid[$a]}" 2>/dev/null || fail "redis-$a died: $(tail -3 "$work/redis-$a.log")"
    kill -0 "${mpid[$a]}" 2>/dev/null || fail "memcached-$a died: $(tail -3 "$work/memcached-$a.log")"
    cat "$work/check-$a.log" 2>/dev/null | sed "s/^/redis-$a: /" >>"$work/summary"
done

# A last BGSAVE per server, its dump checked by redis-check-rdb.
for a in "${allocs[@]}"; do
    p=${rport[$a]}
    for _ in $(seq 600); do
        redis-cli -p "$p" info persistence 2>/dev/null | grep -q 'rdb_bgsave_in_progress:0' && break
        sleep 0.1
    done
    redis-cli -p "$p" bgsave >/dev/null 2>&1 || true
    sleep 0.2
    for _ in $(seq 600); do
        redis-cli -p "$p" info persistence 2>/dev/null | grep -q 'rdb_bgsave_in_progress:0' && break
        sleep 0.1
    done
    redis-cli -p "$p" info persistence 2>/dev/null | grep -q 'rdb_last_bgsave_status:ok' \
        || fail "last BGSAVE of redis-$a"
    keys=$(redis-cli -p "$p" dbsize 2>/dev/null || echo 0)
    [ "${keys:-0}" -gt 0 ] || fail "redis-$a: DBSIZE ${keys:-?}"
    LD_PRELOAD=${preload[$a]} redis-check-rdb "$work/redis-$a/dump.rdb" >"$work/rdb-$a.log" 2>&1 \
        || fail "redis-check-rdb on redis-$a's dump: $(tail -2 "$work/rdb-$a.log")"
    echo "redis-$a: $keys keys at the end, last BGSAVE ok, dump checked by redis-check-rdb" >>"$work/summary"
    rm -f "$work/redis-$a/dump.rdb" "$work/redis-$a"/temp-*.rdb # only the logs are kept
done

for a in "${allocs[@]}"; do
    redis-cli -p "${rport[$a]}" shutdown nosave >/dev/null 2>&1 || true
    kill "${mpid[$a]}" 2>/dev/null || true
    st=0; wait "${rpid[$a]}" || st=$?
    [ "$st" -eq 0 ] || fail "redis-$a exited with status $st"
    st=0; wait "${mpid[$a]}" || st=$?
    [ "$st" -eq 0 ] || [ "$st" -eq 143 ] || fail "memcached-$a exited with status $st"
    rpid[$a]=; mpid[$a]=
done

echo
sort "$work/summary"
echo
rc=0
python3 ci/soak_report.py "$work/rss.csv" "$chart" || rc=1
cp "$work/rss.csv" "${chart%.svg}.csv"
if [ -s "$work/failures" ]; then
    echo; echo "soak: FAILED:"; cat "$work/failures"; exit 1
fi
[ "$rc" -eq 0 ] || { echo "soak: FAILED: a brkmalloc server's RSS keeps growing"; exit 1; }
echo "soak: passed ($secs s; logs in $work)"
