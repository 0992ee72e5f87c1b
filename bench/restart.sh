#!/usr/bin/env bash
# Restart to first read (issue 15 target 5): the wall time from `platter serve` started on an existing store to the
# first 4 KiB NBD read answered on one of its volumes — what a guest waits when its server restarts. The server is
# stopped with SIGTERM and SIGKILL in turn (a killed server replays its journal on the next open). Use a store made by
# bench/maps.sh (e.g. /var/tmp/platter-maps-bench/sparse-10000000, volume "maps") to measure a big metadata store.
#
#   bench/restart.sh --bin FILE --store DIR [--volume NAME] [--rounds N] [--cold]
#
#   --bin FILE     the platter binary to start (Native AOT: scripts/build-deb.sh --publish-only DIR gives DIR/platter)
#   --store DIR    the store directory to serve (not modified except by the server's own open and journal)
#   --volume NAME  the volume to read (default: maps, the volume bench/maps.sh builds)
#   --rounds N     server starts (default 6, alternating SIGTERM and SIGKILL to stop the previous one)
#   --cold         drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, root) before the first start, so
#                  that one reads the metadata from the disk: a node's reboot (issue 15 target 5)
# Prints one line per start (ms to first read, and the engine's own open log line) and the median per stop signal.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="" store="" volume=maps rounds=6 cold=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --store) store="$2"; shift 2 ;;
    --volume) volume="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --cold) cold=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "restart.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "restart.sh: --bin FILE is required (an executable platter)" >&2; exit 2; }
[ -d "$store" ] || { echo "restart.sh: --store DIR is required (an existing store directory)" >&2; exit 2; }
command -v nbdsh >/dev/null || { echo "restart.sh: needs nbdsh (Debian package python3-libnbd)" >&2; exit 2; }
[ "$cold" -eq 0 ] || [ -w /proc/sys/vm/drop_caches ] || { echo "restart.sh: --cold needs root (it writes /proc/sys/vm/drop_caches)" >&2; exit 2; }

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $bin, store $store ($(du -sh "$store/" | cut -f1) on disk)"
: >"$work/TERM"; : >"$work/KILL"
stop=none
for ((i = 1; i <= rounds; i++)); do
  rm -f "$work/nbd.sock" "$work/api.sock"
  if [ "$i" -eq 1 ] && [ "$cold" -eq 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  t0=$(now)
  "$bin" serve --store "$store" --listen none --socket "$work/nbd.sock" --api-socket "$work/api.sock" >"$work/serve.log" 2>&1 &
  server=$!
  # nbdsh runs `python3 -m nbd`: Debian's python3 has the binding, not one earlier on PATH (pyenv).
  until PATH=/usr/bin:$PATH nbdsh -u "nbd+unix:///$volume?socket=$work/nbd.sock" -c 'h.pread(4096, 0)' >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || { echo "platter serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(now)
  ms=$(( (t1 - t0) / 1000000 ))
  # The start that follows a stop by SIGKILL is the one that replays the journal: attribute it to that signal.
  [ "$i" -gt 1 ] && echo "$ms" >>"$work/$stop"
  echo "start $i $([ "$i" -eq 1 ] && { [ "$cold" -eq 1 ] && echo "(first, cold, not in the medians)" || echo "(first, not counted)"; } || echo "(after SIG$stop)"): ${ms} ms to first read, load $(cut -d' ' -f1 /proc/loadavg); $(grep -m1 -o 'Rebuilt the maps.*' "$work/serve.log" || true)"
  stop=$([ $((i % 2)) -eq 1 ] && echo KILL || echo TERM)
  kill -"$stop" "$server"; wait "$server" 2>/dev/null || true; server=""
done
echo
echo "| previous stop | median ms to first read | min | max | n |"
echo "|---|---|---|---|---|"
for s in TERM KILL; do
  [ -s "$work/$s" ] || continue
  echo "| SIG$s | $(median <"$work/$s") | $(sort -n "$work/$s" | head -n1) | $(sort -n "$work/$s" | tail -n1) | $(wc -l <"$work/$s") |"
done
