#!/usr/bin/env bash
# The node cache on an RBD store, side by side in one run: one `platter serve --store rbd:rbd --cache-dir` serving three
# images whose cache modes are none, writethrough and writeback, and qemu-nbd serving a fourth through qemu's rbd:
# driver. Workloads run interleaved (each workload on every target before the next workload), so the machine's load
# hits them alike; the load average is printed with the table. IOPS or MB/s and p99 latency per workload and target.
# Then the drain: how fast a write-back log of sequential data goes back to the cluster, against fio's rbd engine
# writing the same sequentially (the backend's own rate).
#
#   bench/cache.sh [--seconds N] [--size-mib N] [--cluster DIR]
#
# Without --cluster a one-host cluster is started in a temp directory (scripts/ceph-cluster.sh) and stopped at the end.
# Build first: dotnet build src/Platter.Cli -c Release.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=8
size_mib=256
cluster=""
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--size-mib N] [--cluster DIR]" >&2; exit 2 ;;
  esac
done

platter_dll=src/Platter.Cli/bin/Release/net10.0/platter.dll
[[ -f $platter_dll ]] || { echo "build first: dotnet build src/Platter.Cli -c Release" >&2; exit 1; }

work=$(mktemp -d /tmp/platter-cache-bench.XXXXXX)
own_cluster=0
platter_pid=""
qemu_pid=""
cleanup() {
  # SIGKILL: a SIGTERM would first write back what the write-back log still holds (minutes of random writes).
  [[ -n $platter_pid ]] && { kill -9 "$platter_pid" 2>/dev/null; wait "$platter_pid" 2>/dev/null || true; }
  [[ -n $qemu_pid ]] && { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null || true; }
  ((own_cluster)) && scripts/ceph-cluster.sh stop "$cluster" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z $cluster ]]; then
  cluster=$work/ceph
  own_cluster=1
  scripts/ceph-cluster.sh start "$cluster" >/dev/null
fi
export CEPH_CONF=$cluster/ceph.conf
prefix=cbench-$$
for mode in none writethrough writeback qemu; do
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
  --listen none --cache-dir "$work/cache" --cache-size "${cache_mib}M" >"$work/platter.log" 2>&1 &
platter_pid=$!
for _ in $(seq 1 600); do [[ -S $work/platter.sock && -S $work/api.sock ]] && break; sleep 0.1; done
[[ -S $work/api.sock ]] || { echo "platter did not start: $(tail -3 "$work/platter.log")" >&2; exit 1; }
platter volume set "$prefix-writethrough" --cache writethrough >/dev/null
platter volume set "$prefix-writeback" --cache writeback >/dev/null

# --cache=none: qemu's rbd driver with librbd's cache off, like Platter; --persistent: it would exit after the first run.
qemu-nbd --persistent --format=raw --cache=none --aio=threads -e 32 --socket="$work/qemu.sock" \
  "rbd:rbd/$prefix-qemu:conf=$CEPH_CONF" >"$work/qemu.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 1 200); do [[ -S $work/qemu.sock ]] && break; sleep 0.1; done

uri() {
  case $1 in
    qemu) echo "nbd+unix:///?socket=$work/qemu.sock" ;;
    *) echo "nbd+unix:///$prefix-$1?socket=$work/platter.sock" ;;
  esac
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

targets=(none writethrough writeback qemu)
# name rw bs depth extra
workloads=(
  "4k-write+flush-qd1 randwrite 4k 1 --fsync=1"
  "4k-randwrite-qd32 randwrite 4k 32"
  "4k-randread-qd1-warm randread 4k 1"
  "4k-randread-qd32-warm randread 4k 32"
)

# Warm the read caches: one whole read of each image (not measured).
for t in "${targets[@]}"; do
  fio --name=warm --ioengine=nbd --uri="$(uri "$t")" --rw=read --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A result
for w in "${workloads[@]}"; do
  read -r name rw bs depth extra <<<"$w"
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2086
    result[$t,$name]=$(run_fio "$(uri "$t")" "$rw" "$bs" "$depth" $extra)
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "Node cache on a one-host cluster (3 bluestore OSDs), ${size_mib} MiB images, ${seconds} s per run, $(date -u +%F)"
echo "load average before: $load_before, after: $load_after ($(nproc) cores)"
printf "| %-22s | %-16s | %-16s | %-16s | %-16s | %-11s | %-11s |\n" workload "none" "writethrough" "writeback" "qemu-nbd rbd:" "wb vs none" "wt vs none"
printf "|%s|\n" "---|---|---|---|---|---|---"
for w in "${workloads[@]}"; do
  read -r name _ <<<"$w"
  row=()
  for t in "${targets[@]}"; do
    read -r iops _ p99 <<<"${result[$t,$name]}"
    row+=("$iops IOPS, p99 ${p99} us")
  done
  read -r n _ <<<"${result[none,$name]}"
  read -r wt _ <<<"${result[writethrough,$name]}"
  read -r wb _ <<<"${result[writeback,$name]}"
  printf "| %-22s | %-16s | %-16s | %-16s | %-16s | %-11s | %-11s |\n" "$name" "${row[0]}" "${row[1]}" "${row[2]}" "${row[3]}" \
    "$(python3 -c "print(f'{$wb/$n:.2f}x' if $n else '-')")" "$(python3 -c "print(f'{$wt/$n:.2f}x' if $n else '-')")"
done

# The read caches' own counters, to tell a cache that missed from one that hit but cost as much as the cluster.
for t in writethrough writeback; do
  platter volume info "$prefix-$t" --json | python3 -c "import json,sys; c=json.load(sys.stdin)['cache']; print(f\"$t read cache: {c['hits']} hits, {c['misses']} misses; dirty {c['dirtyBytes']} bytes, lag {c['lagRecords']} records\")"
done

# Drain: write sequential data into a fresh write-back volume's log (the cluster keeps up only partly), then time the
# release, which returns when the log is written back; against fio's rbd engine writing sequentially to the cluster.
# (The random writes above are still being written back meanwhile, as they would be in use.)
platter volume create "$prefix-drain" --size "${size_mib}M" --cache writeback >/dev/null
fio --name=seq --ioengine=nbd --uri="nbd+unix:///$prefix-drain?socket=$work/platter.sock" --rw=write --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
dirty=$(platter volume info "$prefix-drain" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["dirtyBytes"])')
start=$(date +%s.%N)
platter volume release "$prefix-drain" >/dev/null
end=$(date +%s.%N)
direct=$(fio --name=seq --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$prefix-none" --rw=write --bs=4M --iodepth=1 \
  --size="${size_mib}M" --output-format=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6)')
python3 - "$dirty" "$start" "$end" "$direct" <<'EOF'
import sys
dirty, start, end, direct = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rate = dirty / 1e6 / (end - start) if end > start else 0
print(f"drain: {dirty / 1e6:.0f} MB dirty written back in {end - start:.1f} s = {rate:.1f} MB/s; "
      f"fio rbd sequential 4M writes at depth 1 (one at a time, like write-back): {direct:.1f} MB/s ({rate / direct:.2f}x)")
EOF
platter volume delete "$prefix-drain" >/dev/null 2>&1 || true
