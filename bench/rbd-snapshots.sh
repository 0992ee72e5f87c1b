#!/usr/bin/env bash
# Snapshot creation time on an RBD store against the image's size: is it O(1)? Volumes of 1 GiB, 64 GiB
# and 1 TiB (thin: 4 KiB written at the start of every object of the 1 GiB one, of every 16th / 256th object of the
# others, so the small one holds 256 objects of data and the large ones 1024 each) on a one-host cluster.
# For each, --runs snapshots are taken through Platter's management API (POST /v1/volumes/VOL/snapshots with curl,
# so the CLI's start-up is not in the number) and as many with `rbd snap create` (librbd's own time, plus the rbd
# CLI's start-up); the API's description of each new snapshot (GET) is timed alone too. The table shows the median
# and the slowest per size.
#
#   bench/rbd-snapshots.sh [--runs N] [--cluster DIR]
#
# Without --cluster a one-host cluster is started in a temp directory (scripts/ceph-cluster.sh) and stopped at the end.
# Build first: dotnet build src/Platter.Cli -c Release.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

runs=10
cluster=""
bench_options "[--runs N] [--cluster DIR]" runs cluster -- "$@"
bench_require_build

work=$(mktemp -d /tmp/platter-rbd-snap.XXXXXX)
server_pid=""
images=()
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  for i in "${images[@]}"; do rbd snap purge "rbd/$i" >/dev/null 2>&1; rbd rm "rbd/$i" >/dev/null 2>&1; done
  bench_cluster_stop
  rm -rf "$work"
}
trap cleanup EXIT

bench_cluster "$work"

# name size fio-rw bs bytes (what is written: 4 KiB at the start of every 4 MiB object, or of every 16th or 256th
# object: 1024 writes, as fio's io_size counts bytes moved, not the span)
volumes=(
  "snap1g-$$ 1G write:4092k 4k 1M"
  "snap64g-$$ 64G write:65532k 4k 4M"
  "snap1t-$$ 1T write:1048572k 4k 4M"
)
for v in "${volumes[@]}"; do
  read -r name size rw bs bytes <<<"$v"
  rbd create --size "$size" "rbd/$name"
  images+=("$name")
  fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$name" --rw="$rw" --bs="$bs" --iodepth=8 \
    --size="$size" --io_size="$bytes" >/dev/null
done

dotnet "$platter_dll" serve --store rbd:rbd --ceph-conf "$CEPH_CONF" --socket "$work/platter.sock" \
  --api-socket "$work/api.sock" --listen none >"$work/platter.log" 2>&1 &
server_pid=$!
bench_wait_socket "$work/platter.log" "$work/api.sock"

# summary SECONDS...: "median max" in milliseconds
summary() { printf '%s\n' "$@" | python3 -c 'import statistics,sys; v=[float(x)*1000 for x in sys.stdin]; print(f"{statistics.median(v):.0f} {max(v):.0f}")'; }

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A result
for v in "${volumes[@]}"; do
  read -r name size _ <<<"$v"
  api=() info=() cli=()
  for ((i = 0; i < runs; i++)); do
    # alternate the two ways, so a drift of the shared machine touches both alike
    code_time=$(curl -s -o "$work/reply" -w '%{http_code} %{time_total}' --unix-socket "$work/api.sock" \
      -H 'Content-Type: application/json' -d "{\"name\":\"p$i\"}" "http://localhost/v1/volumes/$name/snapshots")
    [[ ${code_time%% *} == 20* ]] || { echo "snapshot of $name failed: $code_time $(cat "$work/reply")" >&2; exit 1; }
    api+=("${code_time#* }")
    # the same reply alone (the snapshot's description: an open at the snapshot and a walk of its object map for the
    # allocated bytes), to tell the snapshot's cost from the description's
    info+=("$(curl -s -o /dev/null -w '%{time_total}' --unix-socket "$work/api.sock" "http://localhost/v1/volumes/$name/snapshots/p$i")")
    start=$(date +%s.%N)
    rbd snap create --no-progress "rbd/$name@r$i" >/dev/null
    cli+=("$(python3 -c "print($(date +%s.%N) - $start)")")
  done
  result[$name]="$size $(summary "${api[@]}") $(summary "${info[@]}") $(summary "${cli[@]}")"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo "RBD snapshot creation vs image size, one-host cluster (3 bluestore OSDs), $runs snapshots each way per size, $(date -u '+%F %H:%M') UTC"
echo "load average: $load_start at the start, $load_end at the end"
printf "| %-6s | %-24s | %-9s | %-24s | %-9s | %-24s | %-9s |\n" size "Platter API create median" "max" "API describe median" "max" "rbd snap create median" "max"
printf "|%s|\n" "---|---|---|---|---|---|---"
for v in "${volumes[@]}"; do
  read -r name _ <<<"$v"
  read -r size a_med a_max i_med i_max c_med c_max <<<"${result[$name]}"
  printf "| %-6s | %-24s | %-9s | %-24s | %-9s | %-24s | %-9s |\n" "$size" "$a_med ms" "$a_max ms" "$i_med ms" "$i_max ms" "$c_med ms" "$c_max ms"
done
