#!/usr/bin/env bash
# Platter over NBD on an RBD store, side by side in one run with qemu-nbd serving the same image through qemu's rbd:
# driver, and fio's rbd engine (librbd directly, no server) as the limit. Prints one table: IOPS or MB/s per workload
# and target, and the server's CPU time per operation (small racks are short of CPU).
#
#   bench/rbd.sh [--seconds N] [--size-mib N] [--rounds N] [--cluster DIR] [--old DLL] [--only REGEX]
#
# --old DLL measures a second Platter build (its platter.dll) as target "old" in the same rounds (the two builds take
# turns going first), for old-against-new comparisons on a shared machine; --only runs the workloads whose name matches REGEX
# (e.g. 'randwrite|flush').
#
# The targets take turns: every round runs all workloads on fio rbd, then qemu-nbd, then Platter, and the table shows
# each target's median over the rounds (the machine is shared: only ratios from interleaved rounds mean something).
# The load average at the start and the end is printed with the table. Platter is measured with one extra client
# holding the volume open (as qemu-nbd holds its image from its start; the cost of that open is printed apart) and
# after 2 s of each workload unmeasured (the JIT compiles the hot paths under load; qemu-nbd is compiled ahead).
#
# Without --cluster a one-host cluster is started in a temp directory (scripts/ceph-cluster.sh) and stopped at the end.
# Build first: dotnet build src/Platter.Cli -c Release.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

seconds=8
size_mib=2048
rounds=2
cluster=""
old=""
only=""
bench_options "[--seconds N] [--size-mib N] [--rounds N] [--cluster DIR] [--old DLL] [--only REGEX]" seconds size-mib rounds cluster old only -- "$@"
[[ -z $old || -f $old ]] || { echo "--old: no such file: $old" >&2; exit 2; }
bench_require_build

work=$(mktemp -d /tmp/platter-rbd-bench.XXXXXX)
server_pid=""
holder_pid=""
open_cpu_ms=()
cleanup() {
  [[ -n $holder_pid ]] && kill "$holder_pid" 2>/dev/null
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  bench_cluster_stop
  rm -rf "$work"
}
trap cleanup EXIT

bench_cluster "$work"
image=bench-$$
rbd create --size "${size_mib}M" "rbd/$image"
# Fill the image once so reads hit data (a never-written RBD object reads as zeros without touching a disk).
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" --rw=write --bs=4M --iodepth=4 \
  --size="${size_mib}M" >/dev/null

# name rw bs depth extra
workloads=(
  "4k-randwrite-qd32 randwrite 4k 32"
  "4k-randread-qd32 randread 4k 32"
  "4k-write+flush-qd1 randwrite 4k 1 --fsync=1"
  "1M-seqread-qd8 read 1M 8"
  "1M-seqwrite-qd8 write 1M 8"
)
if [[ -n $only ]]; then
  kept=()
  for w in "${workloads[@]}"; do [[ ${w%% *} =~ $only ]] && kept+=("$w"); done
  workloads=("${kept[@]}")
fi
targets=(rbd qemu platter)
[[ -n $old ]] && targets+=(old)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run TARGET PID(or -) WORKLOAD...: prints "iops mbps cpu_us_per_op"
run_fio() {
  local target=$1 pid=$2 rw=$3 bs=$4 depth=$5
  shift 5
  local engine
  if [[ $target == rbd ]]; then
    engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image")
  else
    engine=(--ioengine=nbd --uri="$target")
  fi
  local before=0
  [[ $pid != - ]] && before=$(cpu_ticks "$pid")
  local json
  # fio's rbd engine with librbd's cache off, as Platter (rbd_cache = false) and qemu-nbd --cache=none run it: with
  # librbd's default (cache on, writethrough until the first flush) fio took 1.6-1.75x more 4 KiB random writes at
  # depth 32 than with it off (session 12), a librbd configuration neither server uses.
  json=$(CEPH_ARGS="${CEPH_ARGS:-} --rbd_cache=false" fio --name=b "${engine[@]}" --rw="$rw" --bs="$bs" --iodepth="$depth" --size="${size_mib}M" \
    --time_based --runtime="$seconds" --ramp_time=1 --output-format=json "$@")
  local after=0
  [[ $pid != - ]] && after=$(cpu_ticks "$pid")
  python3 - "$json" "$before" "$after" "$hz" "$seconds" <<'EOF'
import json, sys
text = sys.argv[1]
j = json.loads(text[text.index("{"):])["jobs"][0]  # fio's nbd engine prints "connected" before the JSON
before, after, hz, seconds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
iops = j["read"]["iops"] + j["write"]["iops"]
mbps = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6
ops = iops * (seconds + 1)  # the CPU window includes the 1 s ramp
cpu = (after - before) / hz * 1e6 / ops if after > before and ops > 0 else 0
print(f"{iops:.0f} {mbps:.1f} {cpu:.0f}")
EOF
}

start_platter() {
  local dll=${1:-$platter_dll}
  dotnet "$dll" serve --store rbd:rbd --ceph-conf "$CEPH_CONF" --socket "$work/platter.sock" \
    --api-socket "$work/api.sock" --listen none >"$work/platter.log" 2>&1 &
  server_pid=$!
  bench_wait_socket "$work/platter.log" "$work/platter.sock" "$work/api.sock"
  # Platter opens a volume (its own RADOS connection, the exclusive lock) when the first client connects and closes
  # it when the last one leaves: 100-150 ms of CPU each time, where qemu-nbd opens its image once, before any run is
  # measured. A client holding a connection for the whole target keeps the volume open, so both servers' CPU per
  # operation is the steady state; the open's own cost is measured here and printed under the table.
  local before
  before=$(cpu_ticks "$server_pid")
  /usr/bin/python3 -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); print("up", flush=True); time.sleep(1e9)' \
    "nbd+unix:///$image?socket=$work/platter.sock" >"$work/holder.out" 2>&1 &
  holder_pid=$!
  for _ in $(seq 1 300); do grep -q up "$work/holder.out" && break; sleep 0.1; done
  grep -q up "$work/holder.out" || { echo "holder did not connect: $(cat "$work/holder.out")" >&2; exit 1; }
  open_cpu_ms+=("$(( ($(cpu_ticks "$server_pid") - before) * 1000 / hz ))")
}

start_qemu_nbd() {
  # --cache=none: qemu's rbd driver with librbd's cache off, like Platter; -e 32: as many connections as fio wants; --persistent: it would exit after the first fio run.
  qemu-nbd --persistent --format=raw --cache=none --aio=threads -e 32 --socket="$work/qemu.sock" \
    "rbd:rbd/$image:conf=$CEPH_CONF" >"$work/qemu.log" 2>&1 &
  server_pid=$!
  bench_wait_socket "$work/qemu.log" "$work/qemu.sock"
}

stop_server() {
  [[ -n $holder_pid ]] && { kill "$holder_pid"; wait "$holder_pid" 2>/dev/null || true; holder_pid=""; }
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

# median "IOPS MBPS CPU"...: each column's median over the rounds (the lower middle for an even count)
median() {
  python3 - "$@" <<'EOF'
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1:]]
print(" ".join(f"{statistics.median_low(col):.0f}" for col in zip(*rows)))
EOF
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A result
for ((round = 1; round <= rounds; round++)); do
  order=("${targets[@]}")
  # The two builds swap places every other round, so neither always runs on the warmer (or busier) machine.
  ((round % 2 == 0)) && [[ -n $old ]] && order=(rbd qemu old platter)
  for target in "${order[@]}"; do
    case $target in
      rbd) pid=- uri=rbd ;;
      qemu) start_qemu_nbd; pid=$server_pid uri="nbd+unix:///?socket=$work/qemu.sock" ;;
      platter) start_platter; pid=$server_pid uri="nbd+unix:///$image?socket=$work/platter.sock" ;;
      old) start_platter "$old"; pid=$server_pid uri="nbd+unix:///$image?socket=$work/platter.sock" ;;
    esac
    if [[ $target == platter || $target == old ]]; then
      # The JIT's second tier compiles the hot paths during the first seconds of load (about 0.4 s of CPU, 47 µs per
      # operation in an 8 s run): warm every path up unmeasured, as qemu-nbd (compiled ahead) needs no warm-up.
      for w in "${workloads[@]}"; do
        read -r name rw bs depth extra <<<"$w"
        # shellcheck disable=SC2086
        fio --name=warm --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$depth" --size="${size_mib}M" \
          --time_based --runtime=2 $extra >/dev/null 2>&1
      done
    fi
    for w in "${workloads[@]}"; do
      read -r name rw bs depth extra <<<"$w"
      # shellcheck disable=SC2086
      result[$target,$name,$round]=$(run_fio "$uri" "$pid" "$rw" "$bs" "$depth" $extra)
      echo "round $round $target $name: ${result[$target,$name,$round]}" >&2
    done
    [[ $target != rbd ]] && stop_server
  done
done
for target in "${targets[@]}"; do
  for w in "${workloads[@]}"; do
    read -r name _ <<<"$w"
    runs=()
    for ((round = 1; round <= rounds; round++)); do runs+=("${result[$target,$name,$round]}"); done
    result[$target,$name]=$(median "${runs[@]}")
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo "RBD on a one-host cluster (3 bluestore OSDs), ${size_mib} MiB image, ${seconds} s per run, median of $rounds interleaved rounds, $(date -u '+%F %H:%M') UTC"
echo "load average: $load_start at the start, $load_end at the end"
printf "| %-20s | %-12s | %-12s | %-12s | %-9s | %-9s | %-12s | %-14s |\n" workload "fio rbd" "qemu-nbd rbd:" platter "vs qemu" "vs fio" "cpu/op qemu" "cpu/op platter"
printf "|%s|\n" "---|---|---|---|---|---|---|---"
for w in "${workloads[@]}"; do
  read -r name _ <<<"$w"
  read -r r_iops r_mbps _ <<<"${result[rbd,$name]}"
  read -r q_iops q_mbps q_cpu <<<"${result[qemu,$name]}"
  read -r p_iops p_mbps p_cpu <<<"${result[platter,$name]}"
  if [[ $name == 1M* ]]; then unit=MB/s; r=$r_mbps; q=$q_mbps; p=$p_mbps; else unit=IOPS; r=$r_iops; q=$q_iops; p=$p_iops; fi
  printf "| %-20s | %-12s | %-12s | %-12s | %-9s | %-9s | %-12s | %-14s |\n" "$name" "$r $unit" "$q" "$p" \
    "$(python3 -c "print(f'{$p/$q:.2f}x' if $q else '-')")" "$(python3 -c "print(f'{$p/$r:.2f}x' if $r else '-')")" \
    "${q_cpu} us" "${p_cpu} us"
done
if [[ -n $old ]]; then
  echo "old build ($old), same rounds:"
  printf "| %-20s | %-12s | %-9s | %-9s | %-14s | %-14s |\n" workload old "vs qemu" "new / old" "cpu/op old" "cpu/op new"
  printf "|%s|\n" "---|---|---|---|---|---"
  for w in "${workloads[@]}"; do
    read -r name _ <<<"$w"
    read -r q_iops q_mbps _ <<<"${result[qemu,$name]}"
    read -r p_iops p_mbps p_cpu <<<"${result[platter,$name]}"
    read -r o_iops o_mbps o_cpu <<<"${result[old,$name]}"
    if [[ $name == 1M* ]]; then q=$q_mbps; p=$p_mbps; o=$o_mbps; else q=$q_iops; p=$p_iops; o=$o_iops; fi
    printf "| %-20s | %-12s | %-9s | %-9s | %-14s | %-14s |\n" "$name" "$o" \
      "$(python3 -c "print(f'{$o/$q:.2f}x' if $q else '-')")" "$(python3 -c "print(f'{$p/$o:.2f}x' if $o else '-')")" \
      "${o_cpu} us" "${p_cpu} us"
  done
fi
echo "Platter's volume open on the first client (not in the table: a client held the volume open): ${open_cpu_ms[*]} ms of CPU"
rbd rm "rbd/$image" >/dev/null 2>&1 || true
