#!/usr/bin/env bash
# Write-back drain rate, two builds side by side in one run, against the cluster's own write rate. Per round and
# build (the order alternates between rounds): a `platter serve --store rbd:rbd --cache-dir` of that build, a fresh
# write-back volume, then
#   - random: 16 MiB of 4 KiB random writes at depth 32 over NBD (4,096 records, far faster than the cluster takes
#     them); the log's lag is sampled every 0.5 s from the end of the writes until it is empty: records/s written back;
#   - sequential: --size-mib of 1 MiB writes at depth 8; MB/s from the first write until the log is empty (writing and
#     draining: a lower bound of the drain rate, which is what a guest writing a large file sees end to end), and the
#     drain alone: the dirty bytes left when the writer stops over the time until the log is empty (the log's own
#     write-back rate of sequential data, when the writer outran it);
# the Ceph daemons' CPU (monitor and OSDs, from /proc) over the sequential phase, and over 5 s after it (the OSDs
# trim snapshots in the background: branch epochs, decision 0017 there);
# and once per round fio's rbd engine on the same cluster with librbd's cache off (as Platter's): 4 KiB random writes
# at depth 1 and 32, 4 MiB sequential writes at depth 1 and 16 (the backend's own rates).
#
#   bench/cache-drain.sh OLD_DLL NEW_DLL [--rounds N] [--size-mib N] [--cluster DIR] [--cache-dir DIR]
#
# OLD_DLL / NEW_DLL: platter.dll of each build (e.g. src/Platter.Cli/bin/Release/net10.0/platter.dll of two trees).
# Without --cluster a one-host cluster is started in a temp directory (scripts/ceph-cluster.sh) and stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

(($# >= 2)) || { echo "usage: $0 OLD_DLL NEW_DLL [--rounds N] [--size-mib N] [--cluster DIR] [--cache-dir DIR]" >&2; exit 2; }
old_dll=$(realpath "$1")
new_dll=$(realpath "$2")
shift 2
rounds=2
size_mib=256
cluster=""
cache_parent=""
bench_options "OLD_DLL NEW_DLL [--rounds N] [--size-mib N] [--cluster DIR] [--cache-dir DIR]" rounds size-mib cluster cache-dir=cache_parent -- "$@"

work=$(mktemp -d /tmp/platter-drain-bench.XXXXXX)
cache_root=$work/cache
[[ -n $cache_parent ]] && cache_root=$(mktemp -d "$cache_parent/platter-drain-bench.XXXXXX")
platter_pid=""
cleanup() {
  # SIGKILL: a SIGTERM would first write back what a log still holds.
  [[ -n $platter_pid ]] && { kill -9 "$platter_pid" 2>/dev/null; wait "$platter_pid" 2>/dev/null || true; }
  bench_cluster_stop
  rm -rf "$work"
  if [[ -n $cache_parent ]]; then rm -rf "$cache_root"; fi
}
trap cleanup EXIT

bench_cluster "$work"
prefix=dbench-$$
rbd create --size "${size_mib}M" "rbd/$prefix-fio"

# The cache's status through the API socket (bench/lib.sh): the CLI's start-up would cost more CPU than the drain.
status() { bench_cache_status "$work/api.sock" "$1"; }
# wait_drained VOLUME: samples every 20 ms until the log is empty; prints "records-at-start seconds"
wait_drained() {
  local r0 s
  read -r _ r0 s <<<"$(bench_wait_drained "$work/api.sock" "$1")"
  echo "$r0 $s"
}

# ceph_cpu: CPU seconds the cluster's daemons (the pids in DIR/run) have used so far
ceph_cpu() {
  local ticks=0 pid f
  for f in "$cluster"/run/*.pid; do
    pid=$(<"$f")
    [[ -r /proc/$pid/stat ]] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  python3 -c "print(f'{$ticks / $(getconf CLK_TCK):.2f}')"
}

# measure LABEL DLL ROUND: one server of that build, one fresh volume; appends a result line to $work/results
measure() {
  local label=$1 dll=$2 round=$3 vol=$prefix-$1-$3 uri t0 tw t1 records rnd_s seq_s write_s dirty_w c0 c1 c2
  rm -f "$work/platter.sock" "$work/api.sock"
  mkdir -p "$cache_root/$label-$round"
  dotnet "$dll" serve --store rbd:rbd --ceph-conf "$CEPH_CONF" --socket "$work/platter.sock" --api-socket "$work/api.sock" \
    --listen none --cache-dir "$cache_root/$label-$round" --cache-size "$((size_mib * 4))M" >"$work/platter-$label-$round.log" 2>&1 &
  platter_pid=$!
  bench_wait_socket "$work/platter-$label-$round.log" "$work/platter.sock" "$work/api.sock"
  dotnet "$dll" volume create "$vol" --size "${size_mib}M" --cache writeback --api-socket "$work/api.sock" >/dev/null
  uri="nbd+unix:///$vol?socket=$work/platter.sock"
  local load0
  load0=$(cut -d' ' -f1 /proc/loadavg)
  fio --name=rnd --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size="${size_mib}M" --io_size=16M >/dev/null
  read -r records rnd_s <<<"$(wait_drained "$vol")"
  c0=$(ceph_cpu)
  t0=$(date +%s.%N)
  fio --name=seq --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="${size_mib}M" >/dev/null
  tw=$(date +%s.%N)
  read -r dirty_w _ <<<"$(status "$vol")"
  wait_drained "$vol" >/dev/null
  t1=$(date +%s.%N)
  c1=$(ceph_cpu)
  sleep 5
  c2=$(ceph_cpu)
  seq_s=$(python3 -c "print(f'{$t1-$t0:.2f}')")
  write_s=$(python3 -c "print(f'{$tw-$t0:.2f}')")
  dotnet "$dll" volume release "$vol" --api-socket "$work/api.sock" >/dev/null
  kill -9 "$platter_pid" 2>/dev/null; wait "$platter_pid" 2>/dev/null || true
  platter_pid=""
  rbd rm "rbd/$vol" >/dev/null 2>&1 || true
  echo "$round $label $records $rnd_s $seq_s $write_s $load0 $(cut -d' ' -f1 /proc/loadavg) $dirty_w $c0 $c1 $c2" >>"$work/results"
}

rbd_fio() { CEPH_ARGS="--rbd_cache=false" fio --name=d --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$prefix-fio" --output-format=json "$@" |
  python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.0f %.1f" % (w["iops"], w["bw_bytes"]/1e6))'; }

echo "old: $old_dll"
echo "new: $new_dll"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(ceph --version | cut -d' ' -f1-3); $(fio --version)"
for round in $(seq 1 "$rounds"); do
  if ((round % 2)); then order="old new"; else order="new old"; fi
  for b in $order; do
    if [[ $b == old ]]; then measure old "$old_dll" "$round"; else measure new "$new_dll" "$round"; fi
  done
  read -r r1 _ <<<"$(rbd_fio --rw=randwrite --bs=4k --iodepth=1 --size="${size_mib}M" --time_based --runtime=8)"
  read -r r32 _ <<<"$(rbd_fio --rw=randwrite --bs=4k --iodepth=32 --size="${size_mib}M" --time_based --runtime=8)"
  read -r _ s1 <<<"$(rbd_fio --rw=write --bs=4M --iodepth=1 --size="${size_mib}M")"
  read -r _ s16 <<<"$(rbd_fio --rw=write --bs=4M --iodepth=16 --size="${size_mib}M")"
  echo "$round fio $r1 $r32 $s1 $s16" >>"$work/results"
done

python3 - "$work/results" "$size_mib" <<'PY'
import sys
size = int(sys.argv[2]) * 1048576 / 1e6
rows, fio = [], {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[1] == "fio":
        fio[f[0]] = [float(x) for x in f[2:]]
    else:
        rows.append(f)
print("| round | build | random drain, records/s | / fio 4k depth 1 | / fio 4k depth 32 | sequential write + drain, MB/s (of it the client's writes) | / fio 4M depth 1 | / fio 4M depth 16 | sequential drain alone, MB/s (MB left when the writer stopped) | / fio 4M depth 1 | / fio 4M depth 16 | Ceph CPU s: sequential phase + 5 s after | load before → after |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r, label, records, rnd_s, seq_s, write_s, l0, l1, dirty_w, c0, c1, c2 in rows:
    r1, r32, s1, s16 = fio[r]
    rps = float(records) / max(float(rnd_s), 0.01)
    mbps = size / max(float(seq_s), 0.01)
    tail_s = float(seq_s) - float(write_s)
    tail = float(dirty_w) / 1e6 / tail_s if tail_s > 0.5 and float(dirty_w) > 0 else None
    tail_text = f"{tail:.1f} ({float(dirty_w)/1e6:.0f} MB in {tail_s:.1f} s)" if tail else f"no backlog ({float(dirty_w)/1e6:.0f} MB, {tail_s:.1f} s)"
    tail_ratio1 = f"{tail/s1:.2f}" if tail else "-"
    tail_ratio = f"{tail/s16:.2f}" if tail else "-"
    cpu = f"{float(c1)-float(c0):.1f} + {float(c2)-float(c1):.1f}"
    print(f"| {r} | {label} | {rps:.0f} ({records} in {rnd_s} s) | {rps/r1:.2f} | {rps/r32:.2f} | {mbps:.1f} ({seq_s} s; {write_s} s) | {mbps/s1:.2f} | {mbps/s16:.2f} | {tail_text} | {tail_ratio1} | {tail_ratio} | {cpu} | {l0} → {l1} |")
for r in sorted(fio):
    r1, r32, s1, s16 = fio[r]
    print(f"round {r} fio rbd (librbd cache off): 4k randwrite depth 1 {r1:.0f} IOPS, depth 32 {r32:.0f} IOPS; 4M write depth 1 {s1:.1f} MB/s, depth 16 {s16:.1f} MB/s")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
