#!/usr/bin/env bash
# The node cache on an RBD store, side by side in one run: one `platter serve --store rbd:rbd --cache-dir` serving three
# images whose cache modes are none, writethrough and writeback, and qemu-nbd serving a fourth through qemu's rbd:
# driver. Workloads run interleaved (each workload on every target before the next workload), so the machine's load
# hits them alike; the load average is printed with the table. IOPS or MB/s, p99 latency and CPU per operation (the
# serving process plus the Ceph daemons, from /proc: the cores are the bottleneck here) per workload and target.
# Then the drain: how fast write-back empties a log of random 4 KiB writes (records/s) and of sequential data (MB/s),
# against fio's rbd engine doing the same on the cluster (the backend's own rate, one operation at a time as
# write-back, and at depth 16).
#
#   bench/cache.sh [--seconds N] [--size-mib N] [--cluster DIR] [--cache-dir DIR] [--old-dll DLL]
#                  [--workloads NAME,...] [--rounds N] [--no-drain]
#
# --workloads runs only the named workloads (names as in the table: 4k-write+flush-qd1, 4k-randwrite-qd32,
# 4k-randread-qd1-warm, 4k-randread-qd32-warm), --rounds repeats them (a row per round), --no-drain skips the drain.
# (After 4k-randwrite-qd32 the reads wait until write-back has emptied the logs: tens of thousands of scattered
# records, minutes at the cluster's depth-1 rate.)
#
# --old-dll runs a second server of another build (its platter.dll) beside the first, serving one more write-back
# image (target writeback-old, its own cache directory next to the first), so the two builds' write-back caches are
# measured in the same run, interleaved with the other targets.
#
# --cache-dir puts the node cache there (default: a directory under /tmp, on the disk here). The cost of one 4 KiB
# write + fdatasync in that directory is measured and printed with the table: a write-back flush is one of them, so
# it bounds write+flush at depth 1 (on /dev/shm it is free: an upper bound only, nothing there survives a crash).
#
# Without --cluster a one-host cluster is started in a temp directory (scripts/ceph-cluster.sh) and stopped at the end.
# Build first: dotnet build src/Platter.Cli -c Release.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

seconds=8
size_mib=256
cluster=""
cache_parent=""
old_dll=""
only=""
rounds=1
no_drain=0
bench_options "[--seconds N] [--size-mib N] [--cluster DIR] [--cache-dir DIR] [--old-dll DLL] [--workloads NAME,...] [--rounds N] [--no-drain]" \
  seconds size-mib cluster cache-dir=cache_parent old-dll=old_dll workloads=only rounds no-drain! -- "$@"
[[ -n $old_dll ]] && old_dll=$(realpath "$old_dll")
bench_require_build

work=$(mktemp -d /tmp/platter-cache-bench.XXXXXX)
cache_dir=$work/cache
[[ -n $cache_parent ]] && cache_dir=$(mktemp -d "$cache_parent/platter-cache-bench.XXXXXX")
platter_pid=""
old_pid=""
qemu_pid=""
holder_pid=""
cleanup() {
  [[ -n $holder_pid ]] && { kill "$holder_pid" 2>/dev/null || true; wait "$holder_pid" 2>/dev/null || true; }
  # SIGKILL: a SIGTERM would first write back what the write-back log still holds (minutes of random writes).
  [[ -n $platter_pid ]] && { kill -9 "$platter_pid" 2>/dev/null; wait "$platter_pid" 2>/dev/null || true; }
  [[ -n $old_pid ]] && { kill -9 "$old_pid" 2>/dev/null; wait "$old_pid" 2>/dev/null || true; }
  [[ -n $qemu_pid ]] && { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null || true; }
  bench_cluster_stop
  rm -rf "$work"
  if [[ -n $cache_parent ]]; then rm -rf "$cache_dir"; fi
}
trap cleanup EXIT

bench_cluster "$work"
prefix=cbench-$$
targets=(none writethrough writeback qemu)
[[ -n $old_dll ]] && targets=(none writethrough writeback writeback-old qemu)
for mode in "${targets[@]}"; do
  rbd create --size "${size_mib}M" "rbd/$prefix-$mode"
  # Written once, so reads hit data (a never-written RBD object reads as zeros without touching a disk).
  fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$prefix-$mode" --rw=write --bs=4M --iodepth=4 \
    --size="${size_mib}M" >/dev/null
done

platter() { dotnet "$platter_dll" "$@" --api-socket "$work/api.sock"; }

# --cache-size: the write-back log (3/4) holds every run's writes and the read caches hold the whole image, so the
# numbers are the cache's own speed; the drain below measures write-back.
cache_mib=$((size_mib * 8))
dotnet "$platter_dll" serve --store rbd:rbd --ceph-conf "$CEPH_CONF" --socket "$work/platter.sock" --api-socket "$work/api.sock" \
  --listen none --cache-dir "$cache_dir" --cache-size "${cache_mib}M" >"$work/platter.log" 2>&1 &
platter_pid=$!
bench_wait_socket "$work/platter.log" "$work/platter.sock" "$work/api.sock"
platter volume set "$prefix-writethrough" --cache writethrough >/dev/null
platter volume set "$prefix-writeback" --cache writeback >/dev/null
if [[ -n $old_dll ]]; then
  mkdir -p "$cache_dir-old"
  dotnet "$old_dll" serve --store rbd:rbd --ceph-conf "$CEPH_CONF" --socket "$work/old.sock" --api-socket "$work/old-api.sock" \
    --listen none --cache-dir "$cache_dir-old" --cache-size "${cache_mib}M" >"$work/old.log" 2>&1 &
  old_pid=$!
  bench_wait_socket "$work/old.log" "$work/old.sock" "$work/old-api.sock"
  dotnet "$old_dll" volume set "$prefix-writeback-old" --cache writeback --api-socket "$work/old-api.sock" >/dev/null
fi

# --cache=none: qemu's rbd driver with librbd's cache off, like Platter; --persistent: it would exit after the first run.
qemu-nbd --persistent --format=raw --cache=none --aio=threads -e 32 --socket="$work/qemu.sock" \
  "rbd:rbd/$prefix-qemu:conf=$CEPH_CONF" >"$work/qemu.log" 2>&1 &
qemu_pid=$!
bench_wait_socket "$work/qemu.log" "$work/qemu.sock"

uri() {
  case $1 in
    qemu) echo "nbd+unix:///?socket=$work/qemu.sock" ;;
    writeback-old) echo "nbd+unix:///$prefix-$1?socket=$work/old.sock" ;;
    *) echo "nbd+unix:///$prefix-$1?socket=$work/platter.sock" ;;
  esac
}

# CPU ticks (1/100 s) used so far by the processes that serve the I/O: platter or qemu-nbd, and the Ceph daemons.
cpu_ticks() {
  local pids
  pids="$1 $(pgrep -d' ' -f "ceph-(osd|mon) .*$cluster" || true)"
  local total=0 p
  for p in $pids; do
    [[ -r /proc/$p/stat ]] || continue
    # utime and stime are fields 14 and 15 (the command name in field 2 has no spaces here).
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# run URI RW BS DEPTH [fio args]: prints "iops mbps p99_us"
run_fio() {
  local target=$1 rw=$2 bs=$3 depth=$4
  shift 4
  local json
  json=$(fio --name=b --ioengine=nbd --uri="$target" --rw="$rw" --bs="$bs" --iodepth="$depth" --size="${size_mib}M" \
    --time_based --runtime="$seconds" --ramp_time=1 --output-format=json "$@")
  python3 - "$json" <<'EOF'
import json, sys
text = sys.argv[1]
j = json.loads(text[text.index("{"):])["jobs"][0]  # fio's nbd engine prints "connected" before the JSON
iops = j["read"]["iops"] + j["write"]["iops"]
mbps = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6
side = j["write"] if j["write"]["iops"] > j["read"]["iops"] else j["read"]
p99 = side.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
print(f"{iops:.0f} {mbps:.1f} {p99:.0f}")
EOF
}

# name rw bs depth extra
workloads=(
  "4k-write+flush-qd1 randwrite 4k 1 --fsync=1"
  "4k-randwrite-qd32 randwrite 4k 32"
  "4k-randread-qd1-warm randread 4k 1"
  "4k-randread-qd32-warm randread 4k 32"
)
if [[ -n $only ]]; then
  selected=()
  for w in "${workloads[@]}"; do [[ ,$only, == *,${w%% *},* ]] && selected+=("$w"); done
  ((${#selected[@]})) || { echo "no workload named in --workloads $only" >&2; exit 2; }
  workloads=("${selected[@]}")
fi
if ((rounds > 1)); then
  repeated=()
  for r in $(seq 1 "$rounds"); do for w in "${workloads[@]}"; do repeated+=("${w%% *}#$r ${w#* }"); done; done
  workloads=("${repeated[@]}")
fi

# A write-through cache closes with its last client (and starts empty at its next open): one idle client stays
# connected to that volume for the whole run, so its warm-up counts.
/usr/bin/python3 -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(86400)' "$(uri writethrough)" &
holder_pid=$!

# The write-back volume's log written back completely (no write-back traffic in the cluster during a measured run).
wait_written_back() {
  if [[ -n $old_dll ]]; then wait_written_back_of "$work/old-api.sock" "$prefix-writeback-old"; fi
  wait_written_back_of "$work/api.sock" "$prefix-writeback"
}
wait_written_back_of() {
  local lag
  for _ in $(seq 1 3600); do
    lag=$(curl -s --unix-socket "$1" "http://platter/v1/volumes/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["lagRecords"])')
    ((lag == 0)) && return
    sleep 0.5
  done
}

# Warm the read caches: one whole read of each image (not measured).
for t in "${targets[@]}"; do
  fio --name=warm --ioengine=nbd --uri="$(uri "$t")" --rw=read --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A result
for w in "${workloads[@]}"; do
  read -r name rw bs depth extra <<<"$w"
  # No write-back traffic from the last workload in the cluster while this one runs.
  wait_written_back
  # Reads after the writes: warm the caches again (the writes invalidated copies).
  if [[ $rw == randread ]]; then
    for t in "${targets[@]}"; do
      fio --name=warm --ioengine=nbd --uri="$(uri "$t")" --rw=read --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
    done
  fi
  for t in "${targets[@]}"; do
    server=$platter_pid
    [[ $t == qemu ]] && server=$qemu_pid
    [[ $t == writeback-old ]] && server=$old_pid
    c0=$(cpu_ticks "$server")
    # shellcheck disable=SC2086
    r=$(run_fio "$(uri "$t")" "$rw" "$bs" "$depth" $extra)
    c1=$(cpu_ticks "$server")
    read -r iops _ <<<"$r"
    # CPU-microseconds per operation over the run (ramp included: a slight overestimate for every target alike).
    result[$t,$name]="$r $(python3 -c "print(f'{($c1 - $c0) * 10000 / max(1, $iops * ($seconds + 1)):.0f}')")"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# 4 KiB pwrite + fdatasync in the cache directory, 200 times each, sequentially: into a hole of a sparse file (what a
# log that was never written costs per flush: the sync also writes the file's allocation metadata) and over blocks
# written before (a log whose ring was written once: the record and the device flush only). A write-back flush is one
# of these, so it bounds write+flush at depth 1.
sync_cost=$(python3 - "$cache_dir" <<'EOF'
import os, sys, time
def probe(prepare):
    path = os.path.join(sys.argv[1], "sync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if prepare == "written":
        os.pwrite(fd, bytes(200 * 4096), 0)
        os.fdatasync(fd)
    else:
        os.ftruncate(fd, 200 * 4096)
    block = os.urandom(4096)
    times = []
    for i in range(200):
        t = time.perf_counter()
        os.pwrite(fd, block, i * 4096)
        os.fdatasync(fd)
        times.append(time.perf_counter() - t)
    os.close(fd)
    os.unlink(path)
    times.sort()
    return f"{prepare}: median {times[100] * 1e3:.2f} ms, p99 {times[197] * 1e3:.2f} ms"
print("; ".join(probe(p) for p in ("hole", "written", "hole", "written")))
EOF
)

echo "Node cache on a one-host cluster (3 bluestore OSDs), ${size_mib} MiB images, ${seconds} s per run, $(date -u +%F)"
echo "load average before: $load_before, after: $load_after ($(nproc) cores)"
echo "cache dir $cache_dir ($(df --output=source "$cache_dir" | tail -1)): 4 KiB write + fdatasync there, two rounds: $sync_cost"
if [[ -n $old_dll ]]; then echo "writeback-old: $old_dll"; fi
echo "(each cell: IOPS, p99 latency, CPU-us per operation of the server process + Ceph daemons)"
header="| workload"
for t in "${targets[@]}"; do header+=" | $t"; done
header+=" | wb vs none | wt vs none |"
if [[ -n $old_dll ]]; then header+=" wb-old vs none | wb vs wb-old |"; fi
echo "$header"
echo "$header" | sed 's/[^|]//g; s/|/|---/g; s/---$//'
ratio() { python3 -c "print(f'{$1/$2:.2f}x' if $2 else '-')"; }
for w in "${workloads[@]}"; do
  read -r name _ <<<"$w"
  line="| $name"
  for t in "${targets[@]}"; do
    read -r iops _ p99 cpu <<<"${result[$t,$name]}"
    line+=" | $iops, p99 ${p99} us, ${cpu} us CPU"
  done
  read -r n _ <<<"${result[none,$name]}"
  read -r wt _ <<<"${result[writethrough,$name]}"
  read -r wb _ <<<"${result[writeback,$name]}"
  line+=" | $(ratio "$wb" "$n") | $(ratio "$wt" "$n") |"
  if [[ -n $old_dll ]]; then
    read -r wbo _ <<<"${result[writeback-old,$name]}"
    line+=" $(ratio "$wbo" "$n") | $(ratio "$wb" "$wbo") |"
  fi
  echo "$line"
done

# The read caches' own counters, to tell a cache that missed from one that hit but cost as much as the cluster.
for t in writethrough writeback; do
  platter volume info "$prefix-$t" --json | python3 -c "import json,sys; c=json.load(sys.stdin)['cache']; print(f\"$t read cache: {c['hits']} hits, {c['misses']} misses; dirty {c['dirtyBytes']} bytes, lag {c['lagRecords']} records\")"
done

if ((no_drain)); then
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi

# Drain: how fast write-back empties a backlog. A fresh write-back volume takes writes far faster than the cluster
# (random 4 KiB at depth 32, then sequential 1 MiB); when the writer stops, the log's dirty bytes and records are
# sampled until they reach zero, with no other I/O running: records/s and MB/s written back. Against fio's rbd engine
# on the same cluster, librbd's cache off: 4 KiB random writes at depth 1 (write-back issues one operation at a time,
# the price of the ordered prefix) and 32, and sequential 4 MiB writes at depth 1 and 16.
# drain_rate: samples the cache every 20 ms from now until it is empty; prints "MB/s records/s seconds MB records"
drain_rate() {
  local d0 r0 dt
  read -r d0 r0 dt <<<"$(bench_wait_drained "$work/api.sock" "$prefix-drain")"
  python3 -c "dt=max($dt, 0.001); print(f'{$d0/1e6/dt:.1f} {$r0/dt:.0f} {dt:.2f} {$d0/1e6:.1f} {$r0}')"
}
platter volume create "$prefix-drain" --size "${size_mib}M" --cache writeback >/dev/null
drain_uri="nbd+unix:///$prefix-drain?socket=$work/platter.sock"
# 16 MiB of random 4 KiB writes: 4096 records, a backlog of tens of seconds at the cluster's latency.
fio --name=rnd --ioengine=nbd --uri="$drain_uri" --rw=randwrite --bs=4k --iodepth=32 --size="${size_mib}M" --io_size=16M >/dev/null
read -r _ rnd_rps rnd_s _ rnd_records <<<"$(drain_rate)"
# Sequential: 1 MiB writes at depth 8 into the emptied log. They reach the log faster than write-back takes them, so
# a backlog is left when the writer stops: its dirty bytes over the time until the log is empty is write-back's rate of
# sequential data (the "drain alone" of bench/cache-drain.sh, which compares two builds). An earlier version queued
# the sequential data behind a second random backlog and took the total less the random drain's time: an estimate
# that read 1.40x fio's depth-1 rate when the direct measure read 0.4-0.5x.
t_seq0=$(date +%s.%N)
fio --name=seq --ioengine=nbd --uri="$drain_uri" --rw=write --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
t_seq_w=$(date +%s.%N) # the first sample comes at once: no python3 start-up before it
read -r seq_mbps _ seq_s seq_mb _ <<<"$(drain_rate)"
t_seq1=$(date +%s.%N)
seq_write_s=$(python3 -c "print(f'{$t_seq_w - $t_seq0:.1f}')")
seq_total_mbps=$(python3 -c "print(f'{$size_mib * 1.048576 / ($t_seq1 - $t_seq0):.1f}')")
# librbd's cache off, as in Platter and qemu-nbd --cache=none: with it on (librbd's default), fio's writes complete from
# client memory and are written back in any order, which is neither durable nor ordered (an earlier version of this
# bench compared the drain against that, 3-10x the cluster's real rate at depth 1).
rbd_fio() { CEPH_ARGS="--rbd_cache=false" fio --name=d --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$prefix-none" --output-format=json "$@" |
  python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.0f %.1f" % (w["iops"], w["bw_bytes"]/1e6))'; }
read -r fio_rnd_iops _ <<<"$(rbd_fio --rw=randwrite --bs=4k --iodepth=1 --size="${size_mib}M" --time_based --runtime="$seconds")"
# Depth 32: what unordered write-back could reach (dm-cache/bcache style), which guarantee 2 rules out (decision 0009).
read -r fio_rnd32_iops _ <<<"$(rbd_fio --rw=randwrite --bs=4k --iodepth=32 --size="${size_mib}M" --time_based --runtime="$seconds")"
read -r _ fio_seq1 <<<"$(rbd_fio --rw=write --bs=4M --iodepth=1 --size="${size_mib}M")"
read -r _ fio_seq16 <<<"$(rbd_fio --rw=write --bs=4M --iodepth=16 --size="${size_mib}M")"
echo "drain of random 4 KiB writes: $rnd_records records in $rnd_s s = $rnd_rps records/s; fio rbd 4k randwrite depth 1: $fio_rnd_iops IOPS" \
  "($(python3 -c "print(f'{$rnd_rps/$fio_rnd_iops:.2f}x')")); depth 32: $fio_rnd32_iops IOPS ($(python3 -c "print(f'{$rnd_rps/$fio_rnd32_iops:.2f}x')"))"
# No dirty bytes when the writer stopped: write-back kept up, no backlog to time.
if python3 -c "import sys; sys.exit(0 if $seq_mb > 0 else 1)"; then
  echo "drain of sequential writes: $seq_mb MB left when the writer stopped ($size_mib MiB written in $seq_write_s s), written back in $seq_s s = $seq_mbps MB/s;" \
    "fio rbd 4M sequential write depth 1: $fio_seq1 MB/s ($(python3 -c "print(f'{$seq_mbps/$fio_seq1:.2f}x')")), depth 16: $fio_seq16 MB/s ($(python3 -c "print(f'{$seq_mbps/$fio_seq16:.2f}x')"));" \
    "writing and draining end to end $seq_total_mbps MB/s"
else
  echo "drain of sequential writes: write-back kept up with the writer ($size_mib MiB written in $seq_write_s s): no backlog to time;" \
    "writing and draining end to end $seq_total_mbps MB/s; fio rbd 4M sequential write depth 1: $fio_seq1 MB/s, depth 16: $fio_seq16 MB/s"
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
platter volume release "$prefix-drain" >/dev/null
platter volume delete "$prefix-drain" >/dev/null 2>&1 || true
