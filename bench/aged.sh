#!/usr/bin/env bash
# Measures an aged store against a fresh one in the same run (issue 15, target 3). Each round starts a new store and
# `platter serve` on it, creates one volume of --size and fills it sequentially with random data, then measures it
# fresh:
#   seqread   1 MiB sequential reads at depth 8 over the whole volume (one pass, at most --runtime seconds) with the
#             page cache dropped first (sync; echo 3 > /proc/sys/vm/drop_caches): the data file's layout on the disk
#   randwrite 4 KiB random writes at depth 32 for --runtime seconds (page cache warm; commits every second)
# then ages it: 4 KiB random overwrites totalling --overwrite-factor x the volume (fio, depth 32), while a loop takes a
# snapshot every --snapshot-every seconds through the management API and deletes the oldest beyond --snapshots-kept
# (so snapshots are taken and deleted under load, each holding the blocks overwritten since it); at the end the rest
# are deleted. The server then settles (its CPU and I/O idle for five seconds: checkpoints, reclaim and any background work the
# store does on its own budget finish; the time it took is recorded) and the same two measurements run on the aged
# volume. Ratios aged / fresh per round; medians over rounds in summary.md, with the load average at every step.
#
# Usage: bench/aged.sh [--rounds 3] [--size 1G] [--runtime 10] [--overwrite-factor 3] [--snapshot-every 1]
#                      [--snapshots-kept 4] [--dir DIR] [--out RESULT_DIR] [--settle-max 300]
# Needs root (drop_caches), fio, nbdcopy, curl, python3 and the .NET SDK (or PLATTER_BIN=path of a built `platter`).
# Output: bench/results/aged-<UTC time>/{summary.md,runs.jsonl,env.txt,raw/}, and bench/results/aged-latest.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib.sh"

rounds=3
size=1G
runtime=10
factor=3
snap_every=1
snaps_kept=4
dir="$repo/.cache/bench-aged"
out=""
settle_max=300

bench_options "[--rounds 3] [--size 1G] [--runtime 10] [--overwrite-factor 3] ... (see --help)" rounds size runtime overwrite-factor=factor snapshot-every=snap_every snapshots-kept=snaps_kept dir out settle-max -- "$@"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "aged.sh: ERROR: $*" >&2; exit 1; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }

for tool in fio nbdcopy nbdinfo curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: fio libnbd-bin curl python3)"
done
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches (run as root): the cold reads need it"

size_bytes=$(numfmt --from=iec "${size%B}") || die "bad --size $size"
[ -n "$out" ] || out="$here/results/aged-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out/raw" "$dir"
dir=$(cd "$dir" && pwd)
runs="$out/runs.jsonl"
: > "$runs"
clk_tck=$(getconf CLK_TCK)
store="$dir/store"
api="$dir/platter-api.sock"
nbd_sock="$dir/platter.sock"
uri="nbd+unix:///aged?socket=$nbd_sock"
server=""
snapper=""

cpu_ticks() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }; awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

io_bytes() { [ -n "$1" ] && [ -r "/proc/$1/io" ] || { echo 0; return; }; awk '/^(rchar|wchar):/ { n += $2 } END { printf "%d\n", n }' "/proc/$1/io"; }

# Waits until the server has used under 3% of a core and read or written under 1 MiB (file and socket I/O) in each of
# 5 seconds in a row: background work such as the relocator starts only after 2 s without client writes and polls
# every 0.5 s, and moving scattered blocks can cost little CPU while it reads a lot; prints the seconds it took.
settle() {
  local i a b ia ib quiet=0
  for i in $(seq 1 "$settle_max"); do
    a=$(cpu_ticks "$server"); ia=$(io_bytes "$server"); sleep 1; b=$(cpu_ticks "$server"); ib=$(io_bytes "$server")
    if [ $((b - a)) -le $((clk_tck * 3 / 100)) ] && [ $((ib - ia)) -lt 1048576 ]; then quiet=$((quiet + 1)); else quiet=0; fi
    [ "$quiet" -ge 5 ] && { echo "$i"; return 0; }
  done
  log "WARNING: server still busy after $settle_max s"
  echo "$settle_max"
}

stop_server() {
  [ -n "$server" ] || return 0
  local rc=0
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || rc=$?
  [ "$rc" = 0 ] || log "WARNING: platter exited with code $rc after SIGTERM (see $out/platter.log)"
  server=""
}

cleanup() {
  [ -z "$snapper" ] || { kill "$snapper" 2>/dev/null || true; wait "$snapper" 2>/dev/null || true; }
  stop_server
  rm -rf "$store" "$dir/src.img" "$dir"/*.sock
}
trap cleanup EXIT

platter_bin=${PLATTER_BIN:-}
if [ -z "$platter_bin" ]; then
  log "building src/Platter.Cli (Release) into $dir/platter-bin"
  timeout 900 dotnet build "$repo/src/Platter.Cli" -c Release -o "$dir/platter-bin" > "$out/platter-build.log" 2>&1 \
    || die "dotnet build -c Release src/Platter.Cli failed (see $out/platter-build.log)"
  platter_bin="$dir/platter-bin/platter"
fi
[ -x "$platter_bin" ] || die "$platter_bin is not executable"

unix_socket_accepts() {
  [ -S "$1" ] && python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])' "$1" 2>/dev/null
}

start_server() {
  local i
  rm -rf "$store"; rm -f "$nbd_sock" "$api"
  env -u PLATTER_API_SOCKET -u PLATTER_STORE \
    "$platter_bin" serve --store "$store" --socket "$nbd_sock" --listen none --api-socket "$api" >> "$out/platter.log" 2>&1 &
  server=$!
  for i in $(seq 1 600); do
    unix_socket_accepts "$api" && unix_socket_accepts "$nbd_sock" && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  die "platter serve did not start (see $out/platter.log)"
}

api_call() { # method path [json body] -> http code
  if [ $# -ge 3 ]; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 120 --unix-socket "$api" -X "$1" -H 'Content-Type: application/json' -d "$3" "http://platter$2"
  else
    curl -s -o /dev/null -w '%{http_code}' --max-time 120 --unix-socket "$api" -X "$1" "http://platter$2"
  fi
}

record() { echo "$1" >> "$runs"; }

data_file_json() { # allocated and apparent bytes of the store's data file(s)
  local f a=0 p=0
  for f in "$store"/data*; do
    [ -f "$f" ] || continue
    a=$((a + $(stat -c '%b * %B' "$f"))); p=$((p + $(stat -c %s "$f")))
  done
  echo "{\"allocated\":$a,\"apparent\":$p}"
}

# One measurement: fio on the volume. Cold reads drop the page cache right before.
measure() { # round state workload
  local r=$1 st=$2 w=$3 raw="$out/raw/r$1-$2-$3" la rc=0
  case "$w" in
    seqread)
      sync; echo 3 > /proc/sys/vm/drop_caches
      la=$(loadavg)
      timeout $((runtime * 3 + 120)) fio --name=aged --ioengine=nbd --uri="$uri" --rw=read --bs=1m --iodepth=8 \
        --size="$size_bytes" --runtime="$runtime" --output-format=json --output="$raw.json" > "$raw.out" 2>&1 || rc=$?
      ;;
    randwrite)
      la=$(loadavg)
      timeout $((runtime * 3 + 120)) fio --name=aged --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
        --time_based --runtime="$runtime" --randrepeat=0 --norandommap --output-format=json --output="$raw.json" \
        > "$raw.out" 2>&1 || rc=$?
      ;;
  esac
  [ "$rc" = 0 ] || log "FAILED ($rc): $raw.out"
  record "{\"round\":$r,\"state\":\"$st\",\"workload\":\"$w\",\"rc\":$rc,\"fio_json\":\"$raw.json\",\"load\":$la,\"data_file\":$(data_file_json)}"
}

# Snapshots under load: take one every $snap_every s, delete the oldest beyond $snaps_kept.
snapshot_loop() {
  local n=0 oldest=1 code
  while :; do
    sleep "$snap_every"
    n=$((n + 1))
    code=$(api_call POST /v1/volumes/aged/snapshots "{\"name\":\"a$n\"}") || true
    [ "$code" = 201 ] || { log "snapshot a$n: HTTP $code"; continue; }
    echo "a$n" >> "$out/raw/snapshots-taken"
    while [ $((n - oldest + 1)) -gt "$snaps_kept" ]; do
      code=$(api_call DELETE "/v1/volumes/aged/snapshots/a$oldest") || true
      [ "$code" = 204 ] || log "delete a$oldest: HTTP $code"
      oldest=$((oldest + 1))
    done
  done
}

log "rounds=$rounds size=$size runtime=${runtime}s overwrite=${factor}x snapshot every ${snap_every}s (keep $snaps_kept) out=$out"
log "writing $size of random data to $dir/src.img"
head -c "$size_bytes" /dev/urandom > "$dir/src.img"

for r in $(seq 1 "$rounds"); do
  log "round $r/$rounds: fresh store, fill"
  start_server
  [ "$(api_call POST /v1/volumes "{\"name\":\"aged\",\"sizeBytes\":$size_bytes}")" = 201 ] || die "volume create failed"
  timeout 3600 nbdcopy --flush "$dir/src.img" "$uri" || die "fill failed"
  s=$(settle)
  for w in seqread randwrite; do log "round $r: fresh $w"; measure "$r" fresh "$w"; s=$(settle); done

  log "round $r: ageing (${factor}x random 4 KiB overwrites, snapshots taken and deleted meanwhile)"
  : > "$out/raw/snapshots-taken"
  snapshot_loop & snapper=$!
  t0=$(date +%s)
  la=$(loadavg)
  timeout 7200 fio --name=age --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --randrepeat=0 \
    --norandommap --io_size=$((size_bytes * factor)) --end_fsync=1 --output-format=json --output="$out/raw/r$r-age.json" \
    > "$out/raw/r$r-age.out" 2>&1 || die "ageing fio failed (see $out/raw/r$r-age.out)"
  kill "$snapper"; wait "$snapper" 2>/dev/null || true; snapper=""
  taken=$(wc -l < "$out/raw/snapshots-taken")
  left=$(curl -s --unix-socket "$api" http://platter/v1/volumes/aged/snapshots | python3 -c 'import json, sys
d = json.load(sys.stdin)
for s in (d if isinstance(d, list) else next(v for v in d.values() if isinstance(v, list))): print(s["name"])') \
    || die "cannot list the snapshots left"
  for snap in $left; do
    [ "$(api_call DELETE "/v1/volumes/aged/snapshots/$snap")" = 204 ] || die "delete $snap failed"
  done
  t1=$(date +%s)
  s=$(settle)
  log "round $r: aged after $((t1 - t0)) s, $taken snapshots; settled in $s s"
  record "{\"round\":$r,\"state\":\"ageing\",\"seconds\":$((t1 - t0)),\"snapshots\":$taken,\"settle_s\":$s,\"load\":$la,\"fio_json\":\"$out/raw/r$r-age.json\",\"data_file\":$(data_file_json)}"
  for w in seqread randwrite; do log "round $r: aged $w"; measure "$r" aged "$w"; s=$(settle); done
  stop_server
done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 --rounds $rounds --size $size --runtime $runtime --overwrite-factor $factor --snapshot-every $snap_every --snapshots-kept $snaps_kept"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "disk: $(df -h "$dir" | awk 'NR==2 {print $1}')"
  echo "fio: $(fio --version)"
  echo "platter: $platter_bin (commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?))"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/env.txt"

python3 "$here/summarize-aged.py" "$out" > "$out/summary.md"
cp "$out/summary.md" "$here/results/aged-latest.md"
cat "$out/summary.md"
log "results in $out"
