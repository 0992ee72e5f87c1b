#!/usr/bin/env bash
# Measures what snapshots and clones cost in Platter (issue 4), next to qcow2 served by qemu-nbd where qcow2 has the
# same feature, on one machine, in one run. Four parts:
#   create  snapshot creation time of a full 1 GiB volume and of a 64 GiB volume (written full when the disk has room,
#           else 4 KiB in every 64 KiB: a map as large as possible in the space there is). In-process through
#           VolumeStore (bench/Platter.Bench --snapshots), then end to end with `platter snapshot create` against
#           `platter serve` on the same store; `platter snapshot list` timed alongside shows the CLI's own start-up,
#           and the API call itself (POST /v1/volumes/VOL/snapshots with curl) shows the server's part.
#   cow     4 KiB random write IOPS (fio nbd engine, depth 32) right after a snapshot versus before it: on Platter
#           (`platter snapshot create`) and on qemu-nbd serving a qcow2 with an internal snapshot (qemu-img snapshot -c
#           while no server has the file open, then served again: the run-peers.sh qcow2-snap target). Every round
#           takes a new snapshot and deletes it afterwards, so every "after" run starts right after a snapshot.
#   clone   4 KiB random read IOPS (depth 32) on a clone of depth 1 and of depth 16 (a clone of a snapshot of a clone
#           of ..., each level with 1/32 of the volume rewritten by 4 KiB random writes), and on the base volume
#           (depth 0); qemu-nbd on qcow2 backing chains of the same depths for comparison (served --read-only: a
#           backing file is opened by several servers, which qemu's image locking allows only read-only).
#   delete  p99 latency of 4 KiB random reads at depth 1 on a volume while its snapshot holding --reclaim-size of unique
#           data is deleted (written, snapshotted, overwritten; deleted through the management API with curl, or with
#           --delete-via cli by `platter snapshot delete`), against the same fio run in which the snapshots are listed
#           at the same moment instead (GET with curl, or `platter snapshot list`). The reclaim is followed through the management
#           API's /v1/usage (curl, 5 times a second, in both runs); latency is taken from fio's per-I/O log.
# Rounds interleave the targets of a part (order rotated every round) so a drift of the shared machine spreads over
# all of them; bench/summarize-snapshots.py reports medians and the ratios after/before, Platter/qcow2, depth 16/1
# and with/without deletion.
#
# Usage: bench/snapshots.sh [--parts create,cow,clone,delete] [--rounds N] [--size 4G] [--runtime SECONDS]
#                           [--create-runs N] [--big-gib 64] [--big-pattern auto|full|sparse] [--depth 16]
#                           [--reclaim-size 4G] [--delete-runtime SECONDS] [--delete-via api|cli] [--sides platter,qcow2]
#                           [--dir IMAGE_DIR] [--out RESULT_DIR] [--keep] [--quick]
#   --quick = --rounds 2 --size 1G --runtime 3 --create-runs 5 --big-gib 4 --reclaim-size 512M --delete-runtime 8
#             (a smoke run of the harness, not a measurement)
# Output: bench/results/snap-<UTC time>/{summary.md,runs.jsonl,env.txt,raw/}, and bench/results/snap-latest.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib.sh"

parts=create,cow,clone,delete
rounds=5
size=4G
runtime=20
create_runs=15
big_gib=64
big_pattern=auto
depth=16
reclaim_size=4G
delete_runtime=30
delete_via=api
sides=platter,qcow2
dir="$repo/.cache/bench-snap"
out=""
keep=0

# --quick (a short run to try the script) sets smaller defaults; options given explicitly still win, wherever they stand.
for arg in "$@"; do [[ $arg == --quick ]] && { rounds=2; size=1G; runtime=3; create_runs=5; big_gib=4; reclaim_size=512M; delete_runtime=8; }; done
quick=0
bench_options "[--parts LIST] [--rounds N] [--size 4G] [--runtime SECONDS] ... (see --help)" parts rounds size runtime create-runs big-gib big-pattern depth reclaim-size delete-runtime delete-via sides dir out keep! quick! -- "$@"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "snapshots.sh: ERROR: $*" >&2; exit 1; }
has() { [[ ",$2," == *",$1,"* ]]; } # word list
now_ms() { date +%s%3N; }

for tool in fio qemu-img qemu-nbd nbdcopy nbdinfo nbdsh curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: fio qemu-utils libnbd-bin python3-libnbd curl python3)"
done
for p in ${parts//,/ }; do case "$p" in create|cow|clone|delete) ;; *) die "unknown part $p" ;; esac; done
for s in ${sides//,/ }; do case "$s" in platter|qcow2) ;; *) die "unknown side $s" ;; esac; done
case "$big_pattern" in auto|full|sparse) ;; *) die "--big-pattern is auto, full or sparse" ;; esac
case "$delete_via" in api|cli) ;; *) die "--delete-via is api or cli" ;; esac
has platter "$sides" || ! has create "$parts" || die "the create part measures Platter only (--sides has no platter)"
has platter "$sides" || ! has delete "$parts" || die "the delete part measures Platter only (--sides has no platter)"

size_bytes=$(numfmt --from=iec "${size%B}") || die "bad --size $size"
reclaim_bytes=$(numfmt --from=iec "${reclaim_size%B}") || die "bad --reclaim-size $reclaim_size"
[ -n "$out" ] || out="$here/results/snap-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out/raw" "$dir"
dir=$(cd "$dir" && pwd)
runs="$out/runs.jsonl"
: > "$runs"
clk_tck=$(getconf CLK_TCK)
: > "$out/notes.txt"
note() { echo "$*" >> "$out/notes.txt"; log "NOTE: $*"; }

# --- processes --------------------------------------------------------------------------------------------------
declare -A pid=()

cpu_ticks() { # pid -> utime+stime in clock ticks (all threads)
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Waits until the process has used under 3% of a core for a whole second (at most 300 s): the engine's checkpoints
# and a snapshot's background reclaim run after the command that caused them returns, and must not land in the next
# measurement.
settle() { # pid label
  local i a b
  for i in $(seq 1 300); do
    a=$(cpu_ticks "$1"); sleep 1; b=$(cpu_ticks "$1")
    [ $((b - a)) -le $((clk_tck * 3 / 100)) ] && { [ "$i" -le 2 ] || log "$2 settled after ${i} s"; return 0; }
  done
  log "WARNING: $2 still busy after 300 s"
}

stop_pid() { # name
  local p=${pid[$1]:-} rc=0
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || rc=$?
  unset "pid[$1]"
  # SIGTERM is platter's clean shutdown (flush, close): anything but 0 is worth a look.
  [[ "$1" != platter* ]] || [ "$rc" = 0 ] || log "WARNING: $1 exited with code $rc after SIGTERM (see $out/$1.log)"
}

cleanup() {
  local n
  for n in "${!pid[@]}"; do stop_pid "$n"; done
  if [ "$keep" = 0 ]; then
    rm -rf "$dir/src.img" "$dir"/*.qcow2 "$dir/snap-store" "$dir/create-store" "$dir"/*.sock
  fi
}
trap cleanup EXIT

wait_export() { # uri pid
  local i
  for i in $(seq 1 300); do
    timeout 5 nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# qemu-nbd exactly as run-peers.sh runs it (writeback cache honours flushes with fdatasync, --shared=0 allows
# several connections), plus any extra flags.
qemu_start() { # name image [extra flags...]
  local name=$1 img=$2 s="$dir/$1.sock"; shift 2
  rm -f "$s"
  qemu-nbd --socket="$s" --format=qcow2 --export-name=bench --persistent --shared=0 --cache=writeback "$@" "$img" \
    >> "$out/$name.log" 2>&1 &
  pid[$name]=$!
  wait_export "nbd+unix:///bench?socket=$s" "${pid[$name]}" || { cat "$out/$name.log" >&2; die "qemu-nbd $name did not start"; }
}
qemu_uri() { echo "nbd+unix:///bench?socket=$dir/$1.sock"; }

# Platter: the Release apphost, like run-peers.sh (so the CPU and the start-up measured are the server's and the CLI's own).
platter_bin=""
find_platter() {
  if [ -n "${PLATTER_BIN:-}" ]; then
    [ -x "$PLATTER_BIN" ] || die "PLATTER_BIN=$PLATTER_BIN is not executable"
    platter_bin=$PLATTER_BIN; return
  fi
  command -v dotnet >/dev/null || die "dotnet not found (needed to build src/Platter.Cli)"
  log "building src/Platter.Cli (Release) into $dir/platter-bin"
  timeout 900 dotnet build "$repo/src/Platter.Cli" -c Release -o "$dir/platter-bin" > "$out/platter-build.log" 2>&1 \
    || die "dotnet build -c Release src/Platter.Cli failed (see $out/platter-build.log)"
  platter_bin="$dir/platter-bin/platter"
}

unix_socket_accepts() {
  [ -S "$1" ] && python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])' "$1" 2>/dev/null
}

api="$dir/platter-api.sock"
nbd_sock="$dir/platter.sock"
platter_start() { # store
  local i
  rm -f "$nbd_sock" "$api"
  env -u PLATTER_API_SOCKET -u PLATTER_STORE \
    "$platter_bin" serve --store "$1" --socket "$nbd_sock" --listen none --api-socket "$api" >> "$out/platter.log" 2>&1 &
  pid[platter]=$!
  for i in $(seq 1 600); do
    unix_socket_accepts "$api" && unix_socket_accepts "$nbd_sock" && return 0
    kill -0 "${pid[platter]}" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$out/platter.log" >&2
  die "platter serve --store $1 did not start (see $out/platter.log)"
}
pcli() { # platter CLI against the running server; output to platter.log
  echo "+ platter $*" >> "$out/platter.log"
  timeout 600 env -u PLATTER_API_SOCKET "$platter_bin" "$@" --api-socket "$api" >> "$out/platter.log" 2>&1 \
    || die "platter $* failed (see $out/platter.log)"
}
puri() { echo "nbd+unix:///$1?socket=$nbd_sock"; }
usage_json() { # the store's usage from the management API, raw JSON on one line (curl: no .NET or python start-up
  # on the measured machine; the summary parses it)
  curl -s --max-time 2 --unix-socket "$api" http://platter/v1/usage || true
}

# --- jobs -------------------------------------------------------------------------------------------------------
# fio on an NBD URI; extra args after the fixed ones. Prints nothing; writes $raw.json and $raw.out.
fio_nbd() { # raw uri rw bs iodepth runtime [extra...]
  local raw=$1 u=$2 rw=$3 bs=$4 qd=$5 rt=$6; shift 6
  timeout $((rt * 3 + 120)) fio --name=snap --ioengine=nbd --uri="$u" --rw="$rw" --bs="$bs" --iodepth="$qd" \
    --time_based --runtime="$rt" --randrepeat=0 --norandommap --group_reporting --output-format=json \
    --output="$raw.json" "$@" > "$raw.out" 2>&1
}

record() { echo "$1" >> "$runs"; }

# Writes 1/32 of an export with 4 KiB random writes (depth 32, flushed at the end): a clone's "own writes".
own_writes() { # uri label
  timeout 900 fio --name=own --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 --randrepeat=0 \
    --io_size=$((size_bytes / 32)) --end_fsync=1 --output="$out/raw/own-$2.out" > /dev/null 2>&1 \
    || die "own writes on $2 failed (see $out/raw/own-$2.out)"
}

src="$dir/src.img"
make_src() {
  if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" != "$size_bytes" ]; then
    log "writing $size of random data to $src"
    head -c "$size_bytes" /dev/urandom > "$src"
  fi
}

# --- part: create -----------------------------------------------------------------------------------------------
part_create() {
  local avail need pattern store="$dir/create-store" i r v t t0 t1
  avail=$(df -B1 --output=avail "$dir" | tail -n1)
  need=$(( (big_gib + 1 + 20) << 30 )) # both volumes full, and 20 GiB left for the other parts and other users
  pattern=$big_pattern
  if [ "$pattern" = auto ]; then
    if [ "$avail" -ge "$need" ]; then pattern=full; else pattern=sparse; fi
  fi
  note "create: $big_gib GiB volume written '$pattern' ($(numfmt --to=iec "$avail") free in $dir; full needs $(numfmt --to=iec "$need") with a 20 GiB margin)"
  log "create: building bench/Platter.Bench (Release)"
  timeout 900 dotnet build "$here/Platter.Bench" -c Release -o "$dir/bench-bin" > "$out/bench-build.log" 2>&1 \
    || die "dotnet build bench/Platter.Bench failed (see $out/bench-build.log)"
  log "create: in-process, $create_runs snapshots of each volume"
  timeout 3600 dotnet "$dir/bench-bin/Platter.Bench.dll" --snapshots --dir "$store" --runs "$create_runs" \
    --small-gib 1 --big-gib "$big_gib" --big-pattern "$pattern" --json "$out/create-inproc.json" --keep \
    | tee "$out/create-inproc.txt" >&2 || die "Platter.Bench --snapshots failed"

  log "create: end to end, platter snapshot create against platter serve on the same store"
  platter_start "$store"
  settle "${pid[platter]}" platter
  for r in $(seq 1 "$create_runs"); do
    for v in $([ $((r % 2)) = 1 ] && echo snap-small snap-big || echo snap-big snap-small); do
      # A few writes and a flush first (untimed), so each snapshot freezes a map that changed since the last.
      # nbdsh runs `python3 -m nbd`: Debian's python3, which has the binding, not one earlier on PATH (pyenv).
      PATH=/usr/bin:$PATH timeout 60 nbdsh -u "$(puri "$v")" -c '
import random
n = h.get_size() // 4096
for i in range(16):
    h.pwrite(random.randbytes(4096), random.randrange(n) * 4096)
h.flush()' || die "nbdsh writes to $v failed"
      t0=$(date +%s%N); pcli snapshot create "$v@e2e$r"; t1=$(date +%s%N)
      record "{\"part\":\"create\",\"how\":\"cli-create\",\"volume\":\"$v\",\"round\":$r,\"us\":$(( (t1 - t0) / 1000 ))}"
      t0=$(date +%s%N); pcli snapshot list "$v"; t1=$(date +%s%N)
      record "{\"part\":\"create\",\"how\":\"cli-list\",\"volume\":\"$v\",\"round\":$r,\"us\":$(( (t1 - t0) / 1000 ))}"
      # The same API call without the CLI's process start: curl's own wall time of the request.
      t=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 60 --unix-socket "$api" \
            -H 'Content-Type: application/json' -d "{\"name\":\"api$r\"}" "http://platter/v1/volumes/$v/snapshots")
      [ "${t%% *}" = 201 ] || die "POST /v1/volumes/$v/snapshots answered ${t%% *}"
      record "{\"part\":\"create\",\"how\":\"api-create\",\"volume\":\"$v\",\"round\":$r,\"us\":$(awk -v s="${t#* }" 'BEGIN { printf "%d", s * 1e6 }')}"
    done
  done
  stop_pid platter
  rm -rf "$store"
  echo "$pattern" > "$out/create-pattern.txt"
}

# --- part: cow --------------------------------------------------------------------------------------------------
# One round of one target: before (no snapshot), snapshot, after, delete the snapshot. fio logs IOPS every 500 ms
# so the summary can show the first seconds after the snapshot, when every write is a first write since it.
cow_target() { # round target
  local r=$1 t=$2 raw
  case "$t" in
    platter)
      raw="$out/raw/r$r-cow-before-$t"
      fio_nbd "$raw" "$(puri cow)" randwrite 4k 32 "$runtime" --write_iops_log="$raw" --log_avg_msec=500 || log "FAILED: $raw.out"
      record "{\"part\":\"cow\",\"round\":$r,\"target\":\"$t\",\"phase\":\"before\",\"fio_json\":\"$raw.json\",\"iops_log\":\"${raw}_iops.1.log\"}"
      settle "${pid[platter]}" platter
      pcli snapshot create "cow@r$r"
      raw="$out/raw/r$r-cow-after-$t"
      fio_nbd "$raw" "$(puri cow)" randwrite 4k 32 "$runtime" --write_iops_log="$raw" --log_avg_msec=500 || log "FAILED: $raw.out"
      record "{\"part\":\"cow\",\"round\":$r,\"target\":\"$t\",\"phase\":\"after\",\"fio_json\":\"$raw.json\",\"iops_log\":\"${raw}_iops.1.log\"}"
      pcli snapshot delete "cow@r$r"
      settle "${pid[platter]}" platter
      ;;
    qcow2)
      # qemu-img cannot take an internal snapshot of an image a server has open: stop, snapshot, serve again. The
      # "before" run restarts the server too, so both start with the same cold qemu-nbd.
      stop_pid qcow2-cow; qemu_start qcow2-cow "$dir/cow.qcow2"
      raw="$out/raw/r$r-cow-before-$t"
      fio_nbd "$raw" "$(qemu_uri qcow2-cow)" randwrite 4k 32 "$runtime" --write_iops_log="$raw" --log_avg_msec=500 || log "FAILED: $raw.out"
      record "{\"part\":\"cow\",\"round\":$r,\"target\":\"$t\",\"phase\":\"before\",\"fio_json\":\"$raw.json\",\"iops_log\":\"${raw}_iops.1.log\"}"
      stop_pid qcow2-cow
      qemu-img snapshot -c "r$r" "$dir/cow.qcow2"
      qemu_start qcow2-cow "$dir/cow.qcow2"
      raw="$out/raw/r$r-cow-after-$t"
      fio_nbd "$raw" "$(qemu_uri qcow2-cow)" randwrite 4k 32 "$runtime" --write_iops_log="$raw" --log_avg_msec=500 || log "FAILED: $raw.out"
      record "{\"part\":\"cow\",\"round\":$r,\"target\":\"$t\",\"phase\":\"after\",\"fio_json\":\"$raw.json\",\"iops_log\":\"${raw}_iops.1.log\"}"
      stop_pid qcow2-cow
      # Deleting the snapshot drops every cluster's refcount back to 1: the next "before" overwrites in place again.
      qemu-img snapshot -d "r$r" "$dir/cow.qcow2"
      ;;
  esac
}

part_cow() {
  local targets=() r i n
  make_src
  if has platter "$sides"; then
    pcli volume create cow --size "$size_bytes"
    log "cow: prefilling platter volume cow"
    timeout 3600 nbdcopy --flush "$src" "$(puri cow)" || die "prefill of cow failed"
    settle "${pid[platter]}" platter
    targets+=(platter)
  fi
  if has qcow2 "$sides"; then
    qemu-img convert -f raw -O qcow2 "$src" "$dir/cow.qcow2"
    targets+=(qcow2)
  fi
  n=${#targets[@]}
  for r in $(seq 1 "$rounds"); do
    for i in $(seq 0 $((n - 1))); do
      t=${targets[$(( (i + r - 1) % n ))]}
      log "cow: round $r/$rounds $t"
      cow_target "$r" "$t"
    done
  done
  if has platter "$sides"; then pcli volume delete cow --recursive; settle "${pid[platter]}" platter; fi
  rm -f "$dir/cow.qcow2"
}

# --- part: clone ------------------------------------------------------------------------------------------------
part_clone() {
  local targets=() uris=() r i n k t u raw
  make_src
  if has platter "$sides"; then
    pcli volume create cbase --size "$size_bytes"
    log "clone: prefilling platter volume cbase, then $depth levels of clones"
    timeout 3600 nbdcopy --flush "$src" "$(puri cbase)" || die "prefill of cbase failed"
    local prev=cbase
    for k in $(seq 1 "$depth"); do
      pcli snapshot create "$prev@s"
      pcli clone "$prev@s" "c$k"
      wait_export "$(puri "c$k")" "${pid[platter]}" || die "clone c$k is not exported"
      own_writes "$(puri "c$k")" "platter-c$k"
      prev=c$k
    done
    settle "${pid[platter]}" platter
    targets+=(platter-d0 platter-d1 "platter-d$depth"); uris+=("$(puri cbase)" "$(puri c1)" "$(puri "c$depth")")
  fi
  if has qcow2 "$sides"; then
    log "clone: qcow2 backing chain of depth $depth"
    qemu-img convert -f raw -O qcow2 "$src" "$dir/base.qcow2"
    local prev="$dir/base.qcow2"
    for k in $(seq 1 "$depth"); do
      qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "$dir/l$k.qcow2"
      qemu_start qchain "$dir/l$k.qcow2"
      own_writes "$(qemu_uri qchain)" "qcow2-l$k"
      stop_pid qchain
      prev="$dir/l$k.qcow2"
    done
    # Depth 1 gets a copy of level 1 (same backing file): level 1 itself is a backing file of the depth-16 chain.
    cp "$dir/l1.qcow2" "$dir/d1.qcow2"
    qemu_start qcow2-d0 "$dir/base.qcow2" --read-only
    qemu_start qcow2-d1 "$dir/d1.qcow2" --read-only
    qemu_start "qcow2-d$depth" "$dir/l$depth.qcow2" --read-only
    targets+=(qcow2-d0 qcow2-d1 "qcow2-d$depth"); uris+=("$(qemu_uri qcow2-d0)" "$(qemu_uri qcow2-d1)" "$(qemu_uri "qcow2-d$depth")")
  fi
  n=${#targets[@]}
  for r in $(seq 1 "$rounds"); do
    for i in $(seq 0 $((n - 1))); do
      k=$(( (i + r - 1) % n )); t=${targets[$k]}; u=${uris[$k]}
      log "clone: round $r/$rounds $t"
      raw="$out/raw/r$r-clone-$t"
      # Read the whole export first: this machine's kernel pages out page cache left untouched for about a minute
      # (DAMON), so without it the first target after a pause would read the disk and the others the cache.
      timeout 900 nbdcopy --connections=4 "$u" null: || log "warm-up read of $t failed"
      # The serving process's CPU over the run (CPU per read is steadier than IOPS on a loaded machine).
      local spid=${pid[platter]:-}
      [[ "$t" == platter-* ]] || spid=${pid[$t]:-}
      local c0 c1 la
      la=$(cut -d' ' -f1 /proc/loadavg); c0=$(cpu_ticks "$spid")
      fio_nbd "$raw" "$u" randread 4k 32 "$runtime" || log "FAILED: $raw.out"
      c1=$(cpu_ticks "$spid")
      record "{\"part\":\"clone\",\"round\":$r,\"target\":\"$t\",\"depth\":${t##*-d},\"fio_json\":\"$raw.json\",\"cpu_s\":$(awk -v d=$((c1 - c0)) -v h="$clk_tck" 'BEGIN { printf "%.3f", d / h }'),\"load\":$la}"
    done
  done
  for t in qcow2-d0 qcow2-d1 "qcow2-d$depth"; do stop_pid "$t"; done
  rm -f "$dir/base.qcow2" "$dir"/l*.qcow2 "$dir/d1.qcow2"
  if has platter "$sides"; then
    for k in $(seq "$depth" -1 1); do pcli volume delete "c$k" --recursive; done
    pcli volume delete cbase --recursive
    settle "${pid[platter]}" platter
  fi
}

# --- part: delete -----------------------------------------------------------------------------------------------
# One fio run of 4 KiB random reads at depth 1 on volume del, with a per-I/O latency log in Unix-epoch milliseconds;
# 2 s in, the command runs (delete: DELETE /v1/volumes/del/snapshots/old; control: GET /v1/volumes/del/snapshots;
# both with curl, or with --delete-via cli `platter snapshot delete del@old` / `platter snapshot list del`), and
# the store's usage (free bytes rise as the reclaim hands blocks back) is sampled 5 times a second until fio ends.
delete_run() { # round kind
  local r=$1 kind=$2 raw="$out/raw/r$1-delete-$2" fpid t0 t1 rc=0 u0
  fio --name=snap --ioengine=nbd --uri="$(puri del)" --rw=randread --bs=4k --iodepth=1 --time_based \
    --runtime="$delete_runtime" --randrepeat=0 --norandommap --output-format=json --output="$raw.json" \
    --write_lat_log="$raw" --log_unix_epoch=1 > "$raw.out" 2>&1 &
  fpid=$!
  sleep 2
  u0=$(usage_json)
  t0=$(now_ms)
  # curl by default: the CLI is a .NET process whose start-up on this 2-core machine disturbs fio more than the
  # engine's work does, and an administrator's CLI need not run on the server at all.
  if [ "$delete_via" = cli ]; then
    if [ "$kind" = delete ]; then pcli snapshot delete del@old; else pcli snapshot list del; fi
  else
    local code
    if [ "$kind" = delete ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 600 --unix-socket "$api" -X DELETE http://platter/v1/volumes/del/snapshots/old)
      [ "$code" = 204 ] || die "DELETE /v1/volumes/del/snapshots/old answered $code"
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 600 --unix-socket "$api" http://platter/v1/volumes/del/snapshots)
      [ "$code" = 200 ] || die "GET /v1/volumes/del/snapshots answered $code"
    fi
  fi
  t1=$(now_ms)
  while kill -0 "$fpid" 2>/dev/null; do
    echo "$(now_ms) $(usage_json)" >> "$raw.usage"
    sleep 0.2
  done
  wait "$fpid" || rc=$?
  [ "$rc" = 0 ] || log "FAILED ($rc): $raw.out"
  rm -f "${raw}_lat.1.log" "${raw}_slat.1.log"
  record "{\"part\":\"delete\",\"round\":$r,\"kind\":\"$kind\",\"rc\":$rc,\"fio_json\":\"$raw.json\",\"clat_log\":\"${raw}_clat.1.log\",\"usage_log\":\"$raw.usage\",\"cmd_start_ms\":$t0,\"usage_before\":${u0:-null},\"cmd_end_ms\":$t1,\"reclaim_bytes\":$reclaim_bytes}"
}

part_delete() {
  local r
  [ "$reclaim_bytes" -le "$size_bytes" ] || die "--reclaim-size must not exceed --size (the data comes from src.img)"
  make_src
  pcli volume create del --size "$reclaim_bytes"
  log "delete: prefilling platter volume del ($reclaim_size)"
  head -c "$reclaim_bytes" "$src" | timeout 3600 nbdcopy --flush - "$(puri del)" || die "prefill of del failed"
  for r in $(seq 1 "$rounds"); do
    # The snapshot keeps the data as it is; the overwrite makes all of it the snapshot's alone.
    pcli snapshot create del@old
    log "delete: round $r/$rounds, overwriting $reclaim_size"
    head -c "$reclaim_bytes" "$src" | timeout 3600 nbdcopy --flush - "$(puri del)" || die "overwrite of del failed"
    settle "${pid[platter]}" platter
    # The control run first: the deletion consumes the snapshot, and building another costs a full overwrite.
    log "delete: round $r/$rounds control (list the snapshots)"
    delete_run "$r" control
    settle "${pid[platter]}" platter
    log "delete: round $r/$rounds delete"
    delete_run "$r" delete
    settle "${pid[platter]}" platter
  done
  pcli volume delete del --recursive
}

# --- main -------------------------------------------------------------------------------------------------------
has platter "$sides" && find_platter
log "parts=$parts sides=$sides rounds=$rounds size=$size runtime=${runtime}s out=$out"
# Every part gets a fresh store: what one part leaves in the data file (free space scattered by reclaimed
# snapshots, a larger file competing for the page cache) must not slow the next one down.
platter_fresh() {
  has platter "$sides" || return 0
  stop_pid platter
  rm -rf "$dir/snap-store"
  platter_start "$dir/snap-store"
}
has create "$parts" && part_create
has cow "$parts" && { platter_fresh; part_cow; }
has clone "$parts" && { platter_fresh; part_clone; }
has delete "$parts" && { platter_fresh; part_delete; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 --parts $parts --sides $sides --rounds $rounds --size $size --runtime $runtime --create-runs $create_runs --big-gib $big_gib --big-pattern $big_pattern --depth $depth --reclaim-size $reclaim_size --delete-runtime $delete_runtime --delete-via $delete_via"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "image dir: $dir ($(df -h "$dir" | awk 'NR==2 {print $1}'))"
  echo "fio: $(fio --version)"
  echo "qemu-nbd: $(qemu-nbd --version | head -n1)"
  echo "nbdcopy: $(nbdcopy --version | head -n1)"
  [ -n "$platter_bin" ] && echo "platter: $("$platter_bin" --version 2>/dev/null | head -n1) ($platter_bin, Release, commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?))"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/env.txt"

python3 "$here/summarize-snapshots.py" "$out" > "$out/summary.md"
mkdir -p "$here/results"
cp "$out/summary.md" "$here/results/snap-latest.md"
cat "$out/summary.md"
log "results in $out"
