#!/usr/bin/env bash
# Measures Platter and its peers on the same workloads, on one machine, in one run.
#
# Targets (all NBD servers on unix sockets, all images in one directory on one disk):
#   raw-direct      the raw file through fio's io_uring engine, O_DIRECT: the disk itself
#   raw-cached      the raw file through io_uring, buffered: the page cache, no protocol (the physical limit here)
#   qemu-nbd-raw    qemu-nbd serving the raw file
#   qemu-nbd-qcow2  qemu-nbd serving a fully allocated qcow2 file
#   qcow2-snap      qemu-nbd serving a qcow2 file that has an internal snapshot (qemu-img snapshot -c):
#                   every first write to a cluster copies it, the baseline for Platter's snapshots
#   nbdkit-file     nbdkit's file plugin serving the raw file
#   platter         platter serve on a fresh store in --dir, volume created with `platter volume create`
#                   and prefilled like the others; the binary is $PLATTER_BIN, else a Release build of
#                   src/Platter.Cli run as its apphost (so the measured CPU is the server's own); skipped
#                   with a clear line when it cannot be built or started
#   platter-nometrics  the same with `--no-metrics` (not in the default list): run it beside platter to
#                   measure what per-volume metrics cost on the request path
#   platter-direct  the same with `--direct-writes` (not in the default list): large writes bypass the page cache
#   platter-base    the same with the executable $PLATTER_BASE_BIN, a build of another commit (not in the
#                   default list): run it beside platter to compare two versions in one interleaved run
#                   (bench/old-vs-new.sh builds both and does this)
# Workloads (fio's nbd engine for servers, io_uring for raw-*):
#   randwrite-4k-qd1-flush  4 KiB random writes, depth 1, a flush after every write (IOPS, p50/p99, flush p99)
#   randwrite-4k-qd32       4 KiB random writes, depth 32, no flushes (fsync=N at depth > 1 is not comparable)
#   randread-4k-qd32        4 KiB random reads, depth 32
#   seqwrite-1m-qd8         1 MiB sequential writes, depth 8
#   seqread-1m-qd8          1 MiB sequential reads, depth 8
#   copy-from-file          nbdcopy --connections=4 --flush of a data file into the volume
#   copy-to-null            nbdcopy --connections=4 of the whole volume into null:
# The machine is shared and noisy, so targets run interleaved (A B C A B C ...), the order rotated
# each round, for several rounds; bench/summarize.py reports medians, p99 latency, server CPU (from
# /proc/PID/stat utime+stime deltas) and the ratios Platter / best peer and Platter / qemu-nbd qcow2.
#
# Usage: bench/run-peers.sh [--rounds N] [--size 4G] [--runtime SECONDS] [--targets a,b,...]
#                           [--workloads a,b,...] [--dir IMAGE_DIR] [--out RESULT_DIR] [--keep] [--quick]
#   --quick = --rounds 2 --size 1G --runtime 3 (a smoke run of the harness, not a measurement)
# Output: bench/results/<UTC time>/{summary.md,runs.jsonl,env.txt,raw/}, and bench/results/latest.md.
# Disk space: about 6 x size (source data, two raw files, two qcow2, platter's store); page cache: 5 x size. The images are kept in
# --dir between runs only if --keep is given.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib.sh"

rounds=5
size=4G
runtime=20
targets=raw-direct,raw-cached,qemu-nbd-raw,qemu-nbd-qcow2,qcow2-snap,nbdkit-file,platter
workloads=randwrite-4k-qd1-flush,randwrite-4k-qd32,randread-4k-qd32,seqwrite-1m-qd8,seqread-1m-qd8,copy-from-file,copy-to-null
dir="$repo/.cache/bench"
out=""
keep=0

# --quick (a short run to try the script) sets smaller defaults; options given explicitly still win, wherever they stand.
for arg in "$@"; do [[ $arg == --quick ]] && { rounds=2; size=1G; runtime=3; }; done
quick=0
bench_options "[--rounds N] [--size 4G] [--runtime SECONDS] [--targets a,b,...] [--workloads a,b,...] [--dir DIR] [--out FILE] [--keep] [--quick]" rounds size runtime targets workloads dir out keep! quick! -- "$@"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "run-peers.sh: ERROR: $*" >&2; exit 1; }

for tool in fio qemu-img qemu-nbd nbdkit nbdcopy nbdinfo python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: fio qemu-utils nbdkit libnbd-bin python3)"
done

size_bytes=$(numfmt --from=iec "${size%B}") || die "bad --size $size"
[ -n "$out" ] || out="$here/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out/raw" "$dir"
dir=$(cd "$dir" && pwd)
runs="$out/runs.jsonl"
: > "$runs"
clk_tck=$(getconf CLK_TCK)

IFS=, read -r -a target_list <<< "$targets"
IFS=, read -r -a workload_list <<< "$workloads"
for w in "${workload_list[@]}"; do
  case "$w" in randwrite-4k-qd1-flush|randwrite-4k-qd32|randread-4k-qd32|seqwrite-1m-qd8|seqread-1m-qd8|copy-from-file|copy-to-null) ;;
    *) die "unknown workload $w" ;; esac
done

# --- servers ----------------------------------------------------------------------------------
declare -A pid=() sock=() uri=() skip=()
export_name=bench

wait_socket() { # name socket pid
  local i
  for i in $(seq 1 200); do
    if [ -S "$2" ] && timeout 5 nbdinfo --size "nbd+unix:///$export_name?socket=$2" >/dev/null 2>&1; then return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_bg() { # name socket logfile cmd...
  local name=$1 s=$2 logf=$3; shift 3
  rm -f "$s"
  "$@" > "$logf" 2>&1 &
  pid[$name]=$!
  sock[$name]=$s
  uri[$name]="nbd+unix:///$export_name?socket=$s"
  wait_socket "$name" "$s" "${pid[$name]}" || { cat "$logf" >&2; die "$name did not start: $*"; }
  log "$name: pid ${pid[$name]} on $s"
}

# Platter: the same `platter serve` command the guest test's PlatterTarget runs, on a fresh store in
# $dir, NBD and the management API on unix sockets, no TCP. The volume is created with the real CLI.
platter_bin=""
find_platter() {
  if [ -n "${PLATTER_BIN:-}" ]; then
    [ -x "$PLATTER_BIN" ] && { platter_bin=$PLATTER_BIN; return 0; }
    skip[platter]="PLATTER_BIN=$PLATTER_BIN is not executable"; return 1
  fi
  [ -f "$repo/src/Platter.Cli/Platter.Cli.csproj" ] || { skip[platter]="no src/Platter.Cli"; return 1; }
  command -v dotnet >/dev/null || { skip[platter]="dotnet not found (needed to build src/Platter.Cli)"; return 1; }
  # Build Release once and run the apphost directly: `dotnet run` would put a second process (the SDK)
  # between us and the server whose CPU we measure, and Debug code is not what users run.
  log "building src/Platter.Cli (Release) into $dir/platter-bin"
  if ! timeout 900 dotnet build "$repo/src/Platter.Cli" -c Release -o "$dir/platter-bin" > "$out/platter-build.log" 2>&1; then
    skip[platter]="dotnet build -c Release src/Platter.Cli failed (see $out/platter-build.log)"; return 1
  fi
  platter_bin="$dir/platter-bin/platter"
  [ -x "$platter_bin" ] || { skip[platter]="build produced no $platter_bin"; return 1; }
}

# True once something accepts connections on unix socket $1 (bash cannot connect to one by itself).
unix_socket_accepts() {
  [ -S "$1" ] && python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])' "$1" 2>/dev/null
}

platter_start() { # target [extra serve arguments...]
  local t=$1; shift
  local store="$dir/$t-store" s="$dir/$t.sock" api="$dir/$t-api.sock" i bin=$platter_bin
  [ "$t" != platter-base ] || bin=$PLATTER_BASE_BIN
  rm -rf "$store"
  rm -f "$s" "$api"
  # The developer's own PLATTER_API_SOCKET / PLATTER_STORE must not point the CLI or server elsewhere.
  env -u PLATTER_API_SOCKET -u PLATTER_STORE \
    "$bin" serve --store "$store" --socket "$s" --listen none --api-socket "$api" "$@" > "$out/$t.log" 2>&1 &
  pid[$t]=$!
  sock[$t]=$s
  uri[$t]="nbd+unix:///$export_name?socket=$s"
  for i in $(seq 1 600); do
    unix_socket_accepts "$api" && unix_socket_accepts "$s" && break
    kill -0 "${pid[$t]}" 2>/dev/null || break
    sleep 0.1
  done
  # Exact bytes: --size may be given as 4G or 4GiB, the CLI and numfmt agree on bytes.
  if ! timeout 60 env -u PLATTER_API_SOCKET "$bin" volume create "$export_name" --size "$size_bytes" \
         --api-socket "$api" >> "$out/$t.log" 2>&1 \
     || ! wait_socket "$t" "$s" "${pid[$t]}"; then
    skip[$t]="platter serve / volume create did not work (see $out/$t.log)"
    kill "${pid[$t]}" 2>/dev/null || true
    wait "${pid[$t]}" 2>/dev/null || true
    unset "pid[$t]"
    return 1
  fi
  local got
  got=$(timeout 10 nbdinfo --size "${uri[$t]}") || got=?
  [ "$got" = "$size_bytes" ] || { skip[$t]="volume $export_name has size $got, expected $size_bytes"; return 1; }
  # A new volume reads as zeros without touching storage; fill it so reads measure real reads.
  log "$t: prefilling $size from $src"
  timeout 3600 nbdcopy --flush "$src" "${uri[$t]}" || { skip[$t]="prefill failed"; return 1; }
  log "$t: pid ${pid[$t]} on $s ($bin $*)"
}

stop_all() {
  local n
  for n in "${!pid[@]}"; do
    kill "${pid[$n]}" 2>/dev/null || true
  done
  local rc
  for n in "${!pid[@]}"; do
    rc=0
    wait "${pid[$n]}" 2>/dev/null || rc=$?
    # SIGTERM is platter's clean shutdown (flush, close): anything but 0 is worth a look.
    [[ "$n" != platter* ]] || [ "$rc" = 0 ] || log "WARNING: $n exited with code $rc after SIGTERM (see $out/$n.log)"
  done
  pid=()
  if [ "$keep" = 0 ]; then
    rm -rf "$dir/src.img" "$dir/raw.img" "$dir/raw-direct.img" "$dir/q.qcow2" "$dir/qsnap.qcow2" "$dir"/platter*-store "$dir"/*.sock
  fi
}
trap stop_all EXIT

# --- images -----------------------------------------------------------------------------------
# src.img: incompressible, fully allocated data, the source of every prefill and of copy-from-file.
# raw.img is shared by raw-cached, qemu-nbd-raw and nbdkit-file (never two at once): neither server caches
# data itself, so they see the same bytes, and one copy less keeps all images in the page cache.
src="$dir/src.img"
has_target() { [[ ",$targets," == *",$1,"* ]]; }
if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" != "$size_bytes" ]; then
  log "writing $size of random data to $src"
  head -c "$size_bytes" /dev/urandom > "$src"
fi
if has_target raw-cached || has_target qemu-nbd-raw || has_target nbdkit-file; then
  cp --sparse=never "$src" "$dir/raw.img"
fi
# raw-direct has a file of its own: O_DIRECT writes invalidate cached pages of the range, which would
# turn the other targets' cached reads of a shared file into disk reads. Written with O_DIRECT too, so
# it takes no page cache from the others.
if has_target raw-direct; then
  dd if="$src" of="$dir/raw-direct.img" bs=4M oflag=direct conv=fsync status=none
fi
if has_target qemu-nbd-qcow2; then
  qemu-img convert -f raw -O qcow2 "$src" "$dir/q.qcow2"
fi
if has_target qcow2-snap; then
  qemu-img convert -f raw -O qcow2 "$src" "$dir/qsnap.qcow2"
  qemu-img snapshot -c base "$dir/qsnap.qcow2"
fi

# qemu-nbd: writeback cache honours flushes with fdatasync (the durability contract), --shared=0 allows
# nbdcopy's four connections (and makes qemu-nbd advertise multi-conn), default aio.
qemu_nbd() { # name image format
  start_bg "$1" "$dir/$1.sock" "$out/$1.log" \
    qemu-nbd --socket="$dir/$1.sock" --format="$3" --export-name="$export_name" --persistent --shared=0 \
      --cache=writeback "$2"
}
for t in "${target_list[@]}"; do
  case "$t" in
    raw-direct|raw-cached) ;;
    qemu-nbd-raw) qemu_nbd "$t" "$dir/raw.img" raw ;;
    qemu-nbd-qcow2) qemu_nbd "$t" "$dir/q.qcow2" qcow2 ;;
    qcow2-snap) qemu_nbd "$t" "$dir/qsnap.qcow2" qcow2 ;;
    nbdkit-file)
      start_bg "$t" "$dir/$t.sock" "$out/$t.log" \
        nbdkit --foreground --unix "$dir/$t.sock" --exportname "$export_name" file "$dir/raw.img" ;;
    platter) { [ -n "$platter_bin" ] || find_platter; } && platter_start "$t" || true ;;
    platter-nometrics) { [ -n "$platter_bin" ] || find_platter; } && platter_start "$t" --no-metrics || true ;;
    platter-direct) { [ -n "$platter_bin" ] || find_platter; } && platter_start "$t" --direct-writes || true ;;
    platter-base)
      if [ -x "${PLATTER_BASE_BIN:-}" ]; then { [ -n "$platter_bin" ] || find_platter; } && platter_start "$t" || true
      else skip[$t]="PLATTER_BASE_BIN (the other commit's platter executable) is not set or not executable"; fi ;;
    *) die "unknown target $t" ;;
  esac
done
for t in "${!skip[@]}"; do
  echo "SKIP $t: ${skip[$t]}" | tee -a "$out/skipped.txt" >&2
done

# --- jobs -------------------------------------------------------------------------------------
cpu_ticks() { # pid -> utime+stime in clock ticks (all threads); fields after the ")" of comm
  [ -n "$1" ] || { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

fio_args() { # target workload
  local t=$1 w=$2 common
  common=(--name="$w" --size="$size_bytes" --time_based --runtime="$runtime" --output-format=json
          --randrepeat=0 --norandommap --group_reporting)
  case "$t" in
    raw-direct) common+=(--ioengine=io_uring --filename="$dir/raw-direct.img" --direct=1) ;;
    raw-cached) common+=(--ioengine=io_uring --filename="$dir/raw.img" --direct=0) ;;
    *) common+=(--ioengine=nbd --uri="${uri[$t]}") ;;
  esac
  case "$w" in
    randwrite-4k-qd1-flush)
      # The nbd engine turns a sync into NBD_CMD_FLUSH; on the file, fdatasync is what a flush costs.
      case "$t" in raw-*) common+=(--fdatasync=1) ;; *) common+=(--fsync=1) ;; esac
      common+=(--rw=randwrite --bs=4k --iodepth=1) ;;
    randwrite-4k-qd32) common+=(--rw=randwrite --bs=4k --iodepth=32) ;;
    randread-4k-qd32) common+=(--rw=randread --bs=4k --iodepth=32) ;;
    seqwrite-1m-qd8) common+=(--rw=write --bs=1m --iodepth=8) ;;
    seqread-1m-qd8) common+=(--rw=read --bs=1m --iodepth=8) ;;
    *) return 1 ;;
  esac
  printf '%s\n' "${common[@]}"
}

run_job() { # round target workload
  local r=$1 t=$2 w=$3 raw="$out/raw/r$1-$3-$2" p=${pid[$2]:-} c0 c1 t0 t1 rc=0 kind
  if [[ "$w" == copy-* ]]; then
    kind=nbdcopy
    case "$t" in
      raw-direct) echo "{\"round\":$r,\"target\":\"$t\",\"workload\":\"$w\",\"kind\":\"na\"}" >> "$runs"; return ;;
      raw-cached) if [ "$w" = copy-to-null ]; then from="$dir/raw.img"; to="null:"
                  else echo "{\"round\":$r,\"target\":\"$t\",\"workload\":\"$w\",\"kind\":\"na\"}" >> "$runs"; return; fi ;;
      *) if [ "$w" = copy-to-null ]; then from="${uri[$t]}"; to="null:"; else from="$src"; to="${uri[$t]}"; fi ;;
    esac
  else
    kind=fio
    mapfile -t args < <(fio_args "$t" "$w")
  fi
  c0=$(cpu_ticks "$p"); t0=$(date +%s.%N)
  if [ "$kind" = fio ]; then
    timeout $((runtime * 3 + 120)) fio "${args[@]}" --output="$raw.json" > "$raw.out" 2>&1 || rc=$?
  else
    local flush=(); [ "$to" != "null:" ] && flush=(--flush)
    timeout 3600 nbdcopy --connections=4 "${flush[@]}" "$from" "$to" > "$raw.out" 2>&1 || rc=$?
  fi
  t1=$(date +%s.%N); c1=$(cpu_ticks "$p")
  printf '{"round":%d,"target":"%s","workload":"%s","kind":"%s","rc":%d,"wall_s":%s,"server_cpu_s":%s,"bytes":%d,"fio_json":"%s"}\n' \
    "$r" "$t" "$w" "$kind" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')" \
    "$(awk -v a="$c0" -v b="$c1" -v hz="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / hz }')" \
    "$size_bytes" "$([ "$kind" = fio ] && echo "$raw.json")" >> "$runs"
  [ "$rc" = 0 ] || log "FAILED ($rc): $t $w, see $raw.out"
}

active=()
for t in "${target_list[@]}"; do [ -z "${skip[$t]:-}" ] && active+=("$t"); done
[ ${#active[@]} -gt 0 ] || die "no target to run"

log "rounds=$rounds size=$size runtime=${runtime}s targets=${active[*]}"
for r in $(seq 1 "$rounds"); do
  for w in "${workload_list[@]}"; do
    n=${#active[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${active[$(( (i + r - 1) % n ))]}
      log "round $r/$rounds  $w  $t"
      run_job "$r" "$t" "$w"
    done
  done
done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 --rounds $rounds --size $size --runtime $runtime --targets $targets --workloads $workloads"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "image dir: $dir ($(df -h "$dir" | awk 'NR==2 {print $1}'))"
  echo "fio: $(fio --version)"
  echo "qemu-nbd: $(qemu-nbd --version | head -n1)"
  echo "nbdkit: $(nbdkit --version)"
  echo "nbdcopy: $(nbdcopy --version | head -n1)"
  [ -n "$platter_bin" ] && echo "platter: $("$platter_bin" --version 2>/dev/null | head -n1) ($platter_bin, Release, commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?))"
  [ -n "${PLATTER_BASE_BIN:-}" ] && has_target platter-base && echo "platter-base: $("$PLATTER_BASE_BIN" --version 2>/dev/null | head -n1) ($PLATTER_BASE_BIN)"
  for t in "${!skip[@]}"; do echo "skipped $t: ${skip[$t]}"; done
} > "$out/env.txt"

python3 "$here/summarize.py" "$out" > "$out/summary.md"
mkdir -p "$here/results" && cp "$out/summary.md" "$here/results/latest.md"
cat "$out/summary.md"
log "results in $out"
