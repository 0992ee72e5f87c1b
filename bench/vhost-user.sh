#!/usr/bin/env bash
# vhost-user-blk against NBD and against the peer, in one run, interleaved:
#   platter-vu   Platter's vhost-user-blk back-end (platter serve --vhost-user-dir), driven by bench/Platter.Bench's
#                vhost-user front-end (--vhost-user: memfd guest RAM, one split virtqueue, kick/call eventfds, as QEMU)
#   qsd-vu       qemu-storage-daemon's vhost-user-blk export of a raw file, same front-end, same settings
#   platter-nbd  the same Platter server and volume over NBD (unix socket), driven by fio's nbd engine
#   platter-vu-base (with --base-dll DLL): as platter-vu, served by another build's platter.dll (e.g. main's, copied
#                aside: cp -a src/Platter.Cli/bin/Release/net10.0 /tmp/base) from its own store, same data
#   platter-vu-inflight (only with --targets): as platter-vu, the front-end sharing an in-flight area
#                (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), as QEMU does whenever the back-end offers it (qemu-storage-daemon
#                7.2's vhost-user-blk export does not offer it)
# Workloads: 4 KiB random read and write at depth 32, 1 MiB sequential read and write at depth 4 (data in one
# descriptor), and 256 KiB sequential read and write at depth 4 laid out as a Linux guest does (each chain in an
# indirect table, its data in 64 scattered 4 KiB descriptors: "pages"; fio over NBD runs them as plain 256 KiB I/O).
# Each round runs every
# workload on every target before the next workload, the target order rotating per round, so load that comes and goes
# hits them alike. Reported per (workload, target), medians over rounds: IOPS, p99 latency, and server CPU per
# operation (utime+stime of the serving process from /proc, divided by the operations the client completed; the
# client's own CPU is not counted). The load average is printed before and after: this machine is shared.
#
#   bench/vhost-user.sh [--rounds N] [--seconds N] [--size-mib N] [--only REGEX] [--targets "T1 T2 ..."]
#                       [--base-dll DLL] [--serve-args "ARGS"] [--out FILE]
#
# --serve-args passes more options to every platter server (e.g. "--direct-writes").
#
# --only keeps the workloads whose "RW BS DEPTH LAYOUT" matches REGEX (e.g. --only '^(read|write) ' for the sequential
# ones on a volume no random write has scattered: Platter's copy-on-write engine places 4 KiB random writes anywhere,
# so after the random-write workload its sequential reads and writes run on an aged volume, the raw file does not).
#
# Build first: dotnet build src/Platter.Cli -c Release && dotnet build bench/Platter.Bench -c Release.
# Needs qemu-storage-daemon (qemu-system-common), fio, nbdcopy (libnbd-bin), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

rounds=3
seconds=8
size_mib=512
out=""
only=""
targets=""
base_dll=""
serve_args=""
bench_options "[--rounds N] [--seconds N] [--size-mib N] [--only REGEX] [--targets \"T1 T2 ...\"] [--base-dll DLL] [--serve-args \"ARGS\"] [--out FILE]" \
  rounds seconds size-mib only targets base-dll serve-args out -- "$@"
[[ -n $targets ]] || targets="platter-vu qsd-vu platter-nbd${base_dll:+ platter-vu-base}"
[[ -z $base_dll || -f $base_dll ]] || { echo "no such file: $base_dll" >&2; exit 1; }
[[ $targets != *platter-vu-base* || -n $base_dll ]] || { echo "platter-vu-base needs --base-dll" >&2; exit 1; }
bench_require_build
client=bench/Platter.Bench/bin/Release/net10.0/Platter.Bench
[[ -x $client ]] || { echo "build first: dotnet build bench/Platter.Bench -c Release" >&2; exit 1; }

work=$(mktemp -d /tmp/platter-vu-bench.XXXXXX)
platter_pid=""
base_pid=""
qsd_pid=""
cleanup() {
  [[ -n $platter_pid ]] && { kill "$platter_pid" 2>/dev/null; wait "$platter_pid" 2>/dev/null || true; }
  [[ -n $base_pid ]] && { kill "$base_pid" 2>/dev/null; wait "$base_pid" 2>/dev/null || true; }
  [[ -n $qsd_pid ]] && { kill "$qsd_pid" 2>/dev/null; wait "$qsd_pid" 2>/dev/null || true; }
  [[ -n ${KEEP_WORK:-} ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
results=${out:-$work/results.tsv}
size=$((size_mib * 1024 * 1024))

# The same incompressible data on both: reads read real data (an unwritten volume answers reads from nothing).
head -c "$size" /dev/urandom > "$work/src.img"
cp "$work/src.img" "$work/raw.img"

# serve DLL DIR PIDVAR: starts a platter server of the build DLL in DIR (its pid into PIDVAR, for cleanup) with the
# volume "bench" holding src.img.
serve() {
  local dll=$1 dir=$2
  # shellcheck disable=SC2086 # --serve-args is a list of options
  dotnet "$dll" serve --store "$dir/store" --socket "$dir/nbd.sock" --api-socket "$dir/api.sock" \
    --vhost-user-dir "$dir/vu" $serve_args >"$dir/platter.log" 2>&1 &
  printf -v "$3" '%s' $!
  bench_wait_socket "$dir/platter.log" "$dir/api.sock"
  dotnet "$dll" volume create bench --size "${size_mib}M" --api-socket "$dir/api.sock" >/dev/null
  nbdcopy --flush "$work/src.img" "nbd+unix:///bench?socket=$dir/nbd.sock"
  bench_wait_socket "$dir/platter.log" "$dir/vu/bench.sock"
}
serve "$platter_dll" "$work" platter_pid
if [[ -n $base_dll ]]; then
  mkdir -p "$work/base"
  serve "$base_dll" "$work/base" base_pid
fi

# Buffered I/O on the raw file, as Platter's data file is: both serve from the page cache.
qemu-storage-daemon --blockdev "driver=file,node-name=file,filename=$work/raw.img,cache.direct=off,aio=threads" \
  --blockdev driver=raw,node-name=disk,file=file \
  --export "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=$work/qsd.sock,writable=on,num-queues=1" \
  >"$work/qsd.log" 2>&1 &
qsd_pid=$!
bench_wait_socket "$work/qsd.log" "$work/qsd.sock"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run TARGET RW BS DEPTH LAYOUT -> "ops iops p99us"
run() {
  local target=$1 rw=$2 bs=$3 depth=$4 layout=$5
  local shape=()
  [[ $layout == pages ]] && shape=(--indirect --segment-bytes 4096)
  [[ $target == *-inflight ]] && shape+=(--inflight)
  case $target in
    platter-vu-base) "$client" --vhost-user --socket "$work/base/vu/bench.sock" --size "$size" --rw "$rw" --bs "$bs" --depth "$depth" --seconds "$seconds" "${shape[@]}" |
        sed -E 's/.*ops=([0-9]+).*iops=([0-9]+).*p99us=([0-9]+).*errors=0.*/\1 \2 \3/' ;;
    platter-vu|platter-vu-inflight) "$client" --vhost-user --socket "$work/vu/bench.sock" --size "$size" --rw "$rw" --bs "$bs" --depth "$depth" --seconds "$seconds" "${shape[@]}" |
        sed -E 's/.*ops=([0-9]+).*iops=([0-9]+).*p99us=([0-9]+).*errors=0.*/\1 \2 \3/' ;;
    qsd-vu) "$client" --vhost-user --socket "$work/qsd.sock" --size "$size" --rw "$rw" --bs "$bs" --depth "$depth" --seconds "$seconds" "${shape[@]}" |
        sed -E 's/.*ops=([0-9]+).*iops=([0-9]+).*p99us=([0-9]+).*errors=0.*/\1 \2 \3/' ;;
    platter-nbd) fio --name=j --ioengine=nbd --uri="nbd+unix:///bench?socket=$work/nbd.sock" --rw="$rw" --bs="$bs" \
        --iodepth="$depth" --time_based --runtime="$seconds" --size="$size" --output-format=json 2>"$work/fio.err" |
        python3 -c '
import json, sys
text = sys.stdin.read()  # fio prints "fio: connected to NBD server" on stdout before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
s = j["read"] if j["read"]["total_ios"] else j["write"]
p99 = s["clat_ns"]["percentile"]["99.000000"] / 1000
print(s["total_ios"], round(s["iops"]), round(p99))' ;;
  esac
}

pid_of() { case $1 in qsd-vu) echo "$qsd_pid" ;; platter-vu-base) echo "$base_pid" ;; *) echo "$platter_pid" ;; esac; }

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; ${size_mib} MiB; ${seconds} s per run; $rounds rounds${serve_args:+; serve $serve_args}${base_dll:+; base $base_dll}" | tee "$results.meta"
printf 'round\tworkload\ttarget\tops\tiops\tp99us\tcpu_us_per_op\n' > "$results"
read -r -a targets <<<"$targets"
workloads=("randread 4096 32 one" "randwrite 4096 32 one" "read 1048576 4 one" "write 1048576 4 one" "read 262144 4 pages" "write 262144 4 pages")
for ((r = 1; r <= rounds; r++)); do
  for w in "${workloads[@]}"; do
    [[ -n $only && ! $w =~ $only ]] && continue
    read -r rw bs depth layout <<<"$w"
    n=${#targets[@]}
    for ((k = 0; k < n; k++)); do
      t=${targets[$(((k + r) % n))]}
      pid=$(pid_of "$t")
      before=$(cpu_ticks "$pid")
      read -r ops iops p99 < <(run "$t" "$rw" "$bs" "$depth" "$layout")
      after=$(cpu_ticks "$pid")
      cpu=$(python3 -c "print(round(($after - $before) / $hz * 1e6 / max(1, $ops), 1))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$rw-$bs-qd$depth$([[ $layout == pages ]] && echo -pages)" "$t" "$ops" "$iops" "$p99" "$cpu" | tee -a "$results"
    done
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results.meta"

python3 bench/summarize-vhost-user.py "$results"
