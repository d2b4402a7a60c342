#!/usr/bin/env bash
# The installable forms, tested outside the source tree (README, "Install"):
#  1. the Debian package, built with cargo-deb (installed with `cargo install cargo-deb
#     --locked` when missing) from a release build in target/deb (BRKMALLOC_EMBED=0: the
#     packaged launcher finds the packaged library, it carries no copy);
#  2. its contents (dpkg -c), the library's soname and exported symbols;
#  3. the package unpacked into a scratch root (dpkg -x): a real program (sqlite3) run through
#     the unpacked launcher and through LD_PRELOAD of the unpacked library, from a directory
#     outside the checkout, each compared with a plain run and checked to have used brkmalloc;
#  4. the launcher's exit codes (127, 126) and --help / --version;
#  5. `cargo install --path` of a copy of the checkout, the copy deleted, and the installed
#     launcher run from /tmp with an empty cache (it unpacks its embedded library);
#  6. `cargo package` of the library crate (its verification build included);
#  7. with BRKMALLOC_PACKAGE_INSTALL=1 (as root): a real `apt-get install ./brkmalloc_*.deb`,
#     a run through /usr/bin/brkmalloc-run and LD_PRELOAD=libbrkmalloc.so.0, then
#     `apt-get remove` and a check that nothing is left. Off by default: it changes the system.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
step() { echo; echo "--- $* ($(($(date +%s) - start)) s)"; }
fail() { echo "ci/package.sh: FAIL: $*" >&2; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/brkmalloc-package.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v nm >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] ||
        fail "missing ${need[*]}; install them with: sudo apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo-deb >/dev/null; then
    step "cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

# A deterministic workload: 20,000 rows, an index, sorted and aggregated output.
cat >"$scratch/work.sql" <<'SQL'
create table t(a integer primary key, b text);
with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000)
insert into t select x, printf('%08d-%s', (x * 7919) % 20011,
                               substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26)) from c;
create index tb on t(b);
select count(*), sum(length(b)), min(b), max(b) from t;
select a, b from t order by b desc limit 5;
select substr(b, 10, 1) as k, count(*) from t group by k order by k;
SQL
work() { sqlite3 :memory: <"$scratch/work.sql"; }
(cd /tmp && work) >"$scratch/plain.out"
[ "$(wc -l <"$scratch/plain.out")" -gt 30 ] || fail "the plain sqlite3 run printed too little"

# Runs "$@" from /tmp; stdout must equal the plain run's, stderr must hold brkmalloc's
# statistics (proof that brkmalloc served the program, not glibc).
compare() {
    local name=$1
    shift
    (cd /tmp && "$@" <"$scratch/work.sql") >"$scratch/$name.out" 2>"$scratch/$name.err" ||
        fail "$name: exit status $? ($(head -c 500 "$scratch/$name.err"))"
    cmp -s "$scratch/plain.out" "$scratch/$name.out" || {
        diff "$scratch/plain.out" "$scratch/$name.out" | head -20
        fail "$name: output differs from the plain run"
    }
    grep -q '^brkmalloc statistics' "$scratch/$name.err" ||
        fail "$name: no brkmalloc statistics on stderr"
    echo "ok: $name: same $(wc -l <"$scratch/$name.out") lines as the plain run;" \
        "$(grep -m1 '^central heap' "$scratch/$name.err")"
}

step "build (target/deb, BRKMALLOC_EMBED=0) and cargo deb --no-build"
export CARGO_TARGET_DIR=$root/target/deb
BRKMALLOC_EMBED=0 cargo build --release --quiet
rm -rf target/deb/debian
cargo deb --no-build --quiet
deb=$(ls target/deb/debian/brkmalloc_*.deb)
unset CARGO_TARGET_DIR
echo "$deb ($(stat -c %s "$deb") bytes)"

step "dpkg -c"
dpkg -c "$deb" | tee "$scratch/contents"
for path in ./usr/bin/brkmalloc-run ./usr/lib/x86_64-linux-gnu/libbrkmalloc.so.0 \
    "./usr/lib/x86_64-linux-gnu/libbrkmalloc.so -> libbrkmalloc.so.0" \
    ./usr/share/doc/brkmalloc/README.md ./usr/share/doc/brkmalloc/copyright; do
    grep -qF " $path" "$scratch/contents" || fail "the package lacks $path"
done
dpkg-deb -f "$deb" Package Version Architecture Depends

step "dpkg -x into a scratch root"
dpkg -x "$deb" "$scratch/root"
lib=$scratch/root/usr/lib/x86_64-linux-gnu/libbrkmalloc.so.0
launcher=$scratch/root/usr/bin/brkmalloc-run
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = libbrkmalloc.so.0 ] || fail "soname is '$soname', not libbrkmalloc.so.0"
echo "ok: soname $soname"
c_family="aligned_alloc calloc cfree free free_aligned_sized free_sized mallinfo mallinfo2 malloc
malloc_info malloc_stats malloc_trim malloc_usable_size mallopt memalign posix_memalign pvalloc
realloc reallocarray valloc"
exports=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort)
for sym in $exports; do
    case " $(echo $c_family) " in *" $sym "*) continue ;; esac
    case $sym in brkmalloc_*) continue ;; esac
    fail "the library exports $sym, which is neither the C malloc family nor brkmalloc_*"
done
for sym in $c_family; do
    grep -qx "$sym" <<<"$exports" || fail "the library does not export $sym"
done
echo "ok: nm -D --defined-only: $(echo $exports)"

step "the unpacked launcher and library, run from /tmp"
found=$(cd /tmp && "$launcher" --print-lib)
[ "$found" = "$lib" ] || fail "the unpacked launcher chose $found, not $lib"
echo "ok: $launcher --print-lib: $found"
compare launcher "$launcher" --stats sqlite3 :memory:
compare preload env LD_PRELOAD="$lib" BRKMALLOC_CONF=stats:1 sqlite3 :memory:
LD_PRELOAD=$lib cat /proc/self/maps >"$scratch/maps"
grep -q "$lib" "$scratch/maps" || fail "libbrkmalloc.so.0 not in /proc/PID/maps"
echo "ok: /proc/PID/maps of a preloaded cat lists $lib"

step "launcher: exit codes, --help, --version"
set +e
"$launcher" brkmalloc-no-such-program 2>"$scratch/e1"; rc1=$?
printf '#!/bin/sh\necho hi\n' >"$scratch/not-exec"; chmod 644 "$scratch/not-exec"
"$launcher" -- "$scratch/not-exec" 2>"$scratch/e2"; rc2=$?
"$launcher" --conf bad 2>/dev/null; rc3=$?
set -e
[ $rc1 = 127 ] && grep -q brkmalloc-no-such-program "$scratch/e1" ||
    fail "missing program: rc $rc1, $(cat "$scratch/e1")"
[ $rc2 = 126 ] || fail "non-executable program: rc $rc2, $(cat "$scratch/e2")"
[ $rc3 = 2 ] || fail "bad --conf: rc $rc3"
echo "ok: not found -> 127 ($(cat "$scratch/e1")); not executable -> 126 ($(cat "$scratch/e2")); bad --conf -> 2"
"$launcher" --version | grep -qx "brkmalloc-run $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ||
    fail "--version: $("$launcher" --version)"
"$launcher" --help | grep -q -- '--stats' || fail "--help does not mention --stats"
"$launcher" --conf junk:1 --stats=json -- sh -c 'echo "$BRKMALLOC_CONF"' | grep -qx 'junk:1,stats:json' ||
    fail "--conf/--stats do not reach BRKMALLOC_CONF"
echo "ok: --version, --help, --conf junk:1 --stats=json -> BRKMALLOC_CONF=junk:1,stats:json"

step "cargo install --path <copy of the checkout>, copy deleted, run from /tmp"
src=${TMPDIR:-/tmp}/brkmalloc-install-src.$(id -u)
rm -rf "$src" && mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src"
# A fixed copy path and target dir keep repeated runs incremental.
CARGO_TARGET_DIR=$root/target/install-test cargo install --locked --quiet --path "$src" --root "$scratch/inst"
rm -rf "$src"
# An empty cache: a HOME of its own.
installed=(env HOME="$scratch/home" XDG_CACHE_HOME= "$scratch/inst/bin/brkmalloc-run")
found=$(cd /tmp && "${installed[@]}" --print-lib)
echo "$scratch/inst/bin/brkmalloc-run --print-lib: $found"
if [ ! -e /usr/lib/x86_64-linux-gnu/libbrkmalloc.so.0 ] && [ ! -e /usr/local/lib/libbrkmalloc.so.0 ]; then
    case $found in "$scratch/home/.cache/brkmalloc/"*/libbrkmalloc.so.0) ;; *) fail "expected the unpacked embedded copy" ;; esac
    cmp -s "$found" "$root/target/install-test/embed/release/libbrkmalloc.so" || fail "the unpacked copy differs from the build"
fi
compare installed "${installed[@]}" --stats sqlite3 :memory:
[ "$(cd /tmp && "${installed[@]}" --print-lib)" = "$found" ] || fail "a second run chose another library"
echo "ok: the second run reuses $found"

if [ "${BRKMALLOC_PACKAGE_INSTALL:-0}" = 1 ]; then
    step "apt-get install ./$(basename "$deb"), run, apt-get remove"
    [ "$(id -u)" = 0 ] || fail "BRKMALLOC_PACKAGE_INSTALL=1 needs root"
    ! dpkg -s brkmalloc >/dev/null 2>&1 || fail "brkmalloc is installed already; remove it first"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$root/$deb" >/dev/null
    [ "$(cd /tmp && /usr/bin/brkmalloc-run --print-lib)" = /usr/lib/x86_64-linux-gnu/libbrkmalloc.so.0 ] ||
        fail "/usr/bin/brkmalloc-run does not choose the system library"
    compare system-launcher /usr/bin/brkmalloc-run --stats sqlite3 :memory:
    compare system-preload env LD_PRELOAD=libbrkmalloc.so.0 BRKMALLOC_CONF=stats:1 sqlite3 :memory:
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq brkmalloc >/dev/null
    for f in /usr/bin/brkmalloc-run /usr/lib/x86_64-linux-gnu/libbrkmalloc.so.0 \
        /usr/lib/x86_64-linux-gnu/libbrkmalloc.so /usr/share/doc/brkmalloc; do
        [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is left after apt-get remove"
    done
    echo "ok: installed, ran, removed; nothing left"
fi

step "cargo package -p brkmalloc (the library crate, as it would be published)"
rm -f target/package/brkmalloc-*.crate
# (It warns that tests/ and benches/ are left out of the package: on purpose, see Cargo.toml.)
cargo package -p brkmalloc --allow-dirty --quiet 2>"$scratch/package.err" || {
    cat "$scratch/package.err"
    fail "cargo package"
}
ls target/package/brkmalloc-*.crate

step "ci/package.sh passed"
