#!/usr/bin/env bash
# Command start time: the wall time of `platter volume list` against a running server, for the Native AOT binary
# and the framework-dependent build, beside `qemu-img --version` (the peer issue 14 names), interleaved round by
# round so that the machine's load hits every candidate alike. Also the time from `platter serve` started to its
# first answered `volume list`, for both builds (what a client waits after a restart).
#
#   bench/command-start.sh --aot FILE [--jit FILE] [--rounds N] [--restarts N]
#
#   --aot FILE     the Native AOT platter (scripts/build-deb.sh --publish-only DIR gives DIR/platter)
#   --jit FILE     the framework-dependent apphost (default: src/Platter.Cli/bin/Release/net10.0/platter)
#   --rounds N     rounds of the three commands (default 20)
#   --restarts N   server starts per build for the restart measurement (default 3; 0 skips it)
# Prints one line per round and a table of medians (milliseconds) with the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

aot="" jit="src/Platter.Cli/bin/Release/net10.0/platter" rounds=20 restarts=3
while [ $# -gt 0 ]; do
  case "$1" in
    --aot) aot="$2"; shift 2 ;;
    --jit) jit="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --restarts) restarts="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "command-start.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$aot" ] || { echo "command-start.sh: --aot FILE is required (an executable)" >&2; exit 2; }
[ -x "$jit" ] || { echo "command-start.sh: no framework-dependent build at $jit (dotnet build src/Platter.Cli -c Release)" >&2; exit 2; }

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Starts `BINARY serve` on STORE with its API on SOCKET; prints the ms until `volume list` from the same binary answers.
start_server() {
  local binary=$1 store=$2 socket=$3 t0 t1
  rm -f "$socket"
  t0=$(now)
  "$binary" serve --store "$store" --listen none --socket none --api-socket "$socket" >"$work/serve.log" 2>&1 &
  server=$!
  until "$binary" volume list --api-socket "$socket" >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || { echo "platter serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(now)
  ms "$t0" "$t1"
}

stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "aot: $aot ($(du -h "$aot" | cut -f1)); jit: $jit"

start_server "$aot" "$work/store" "$work/api.sock" >/dev/null
"$aot" volume create bench1 --size 1G --api-socket "$work/api.sock" >/dev/null

: >"$work/aot" ; : >"$work/jit" ; : >"$work/qemu"
for ((i = 1; i <= rounds; i++)); do
  # Rotate the order each round so no candidate always runs right after another.
  for who in $(printf 'aot\njit\nqemu\n' | awk -v r="$i" '{ a[NR] = $0 } END { for (k = 0; k < 3; k++) print a[(k + r) % 3 + 1] }'); do
    t0=$(now)
    case $who in
      aot) "$aot" volume list --api-socket "$work/api.sock" >/dev/null ;;
      jit) "$jit" volume list --api-socket "$work/api.sock" >/dev/null ;;
      qemu) qemu-img --version >/dev/null ;;
    esac
    t1=$(now)
    ms "$t0" "$t1" >>"$work/$who"
  done
  echo "round $i: aot $(tail -n1 "$work/aot") ms, jit $(tail -n1 "$work/jit") ms, qemu-img $(tail -n1 "$work/qemu") ms"
done
stop_server

: >"$work/restart-aot" ; : >"$work/restart-jit"
for ((i = 1; i <= restarts; i++)); do
  for who in aot jit; do
    binary=$aot; [ $who = jit ] && binary=$jit
    start_server "$binary" "$work/store" "$work/api.sock" >>"$work/restart-$who"
    stop_server
  done
  echo "restart $i: aot $(tail -n1 "$work/restart-aot") ms, jit $(tail -n1 "$work/restart-jit") ms"
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| what | median ms | min | max | n |"
echo "|---|---|---|---|---|"
for f in aot jit qemu restart-aot restart-jit; do
  [ -s "$work/$f" ] || continue
  echo "| $f | $(median <"$work/$f") | $(sort -n "$work/$f" | head -n1) | $(sort -n "$work/$f" | tail -n1) | $(wc -l <"$work/$f") |"
done
