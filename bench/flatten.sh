#!/usr/bin/env bash
# Flatten (issue 13, decision 0008): time of `platter volume flatten` against the size of the data a clone shares
# with its origin, on the embedded store and on an RBD store, each next to a same-run reference:
#   embedded: nbdcopy of the same clone into a new volume over NBD (the other way to get an independent copy);
#   rbd:      `rbd flatten` run directly on a twin clone (librbd with no Platter in between).
# The clone overwrites 1/8 of what it inherits before the flatten, so what is copied is 7/8 of the origin's data.
#
#   bench/flatten.sh [--sizes "128 512 1024"] [--rounds 2] [--backends "embedded rbd"] [--cluster DIR]
#
# Sizes are MiB of origin data (fully written, random bytes). Prints one line per measurement and a markdown table
# of medians. Needs qemu-utils, libnbd-bin, ceph (for rbd) and a Release build of src/Platter.Cli.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes="128 512 1024"
rounds=2
backends="embedded rbd"
cluster=""
while (($#)); do
  case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    *) echo "usage: $0 [--sizes \"MiB...\"] [--rounds N] [--backends \"embedded rbd\"] [--cluster DIR]" >&2; exit 2 ;;
  esac
done
dll=${PLATTER_DLL:-src/Platter.Cli/bin/Release/net10.0/platter.dll}
[[ -f $dll ]] || { echo "build first: dotnet build src/Platter.Cli -c Release" >&2; exit 1; }

work=$(mktemp -d /tmp/platter-flatten-bench.XXXXXX)
server_pid=""
own_cluster=0
cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if ((own_cluster)); then scripts/ceph-cluster.sh stop "$cluster" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

api=$work/api.sock
sock=$work/nbd.sock
platter() { dotnet "$dll" "$@" --api-socket "$api"; }
uri() { echo "nbd+unix:///$1?socket=$sock"; }
now() { date +%s.%N; }
results=$work/results

serve() { # ARGS...: platter serve on fresh sockets
  rm -f "$api" "$sock"
  PLATTER_STORE=$work/state dotnet "$dll" serve "$@" --socket "$sock" --api-socket "$api" --listen none >"$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do [[ -S $api && -S $sock ]] && return; sleep 0.1; done
  echo "platter serve did not start: $(tail -3 "$work/serve.log")" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

# ORIGIN MIB: a volume fully written with random data, snapshot s1, and clones NAME-a and NAME-b that each overwrite
# every 8th MiB (so 7/8 of the origin's data is still shared).
prepare() {
  local name=$1 mib=$2
  platter volume create "$name" --size "${mib}M" >/dev/null
  head -c $((mib << 20)) /dev/urandom >"$work/data.raw"
  qemu-img convert -n -f raw -O raw "$work/data.raw" "$(uri "$name")"
  rm -f "$work/data.raw"
  platter snapshot create "$name@s1" >/dev/null
  for c in a b; do
    platter clone "$name@s1" "$name-$c" >/dev/null
    local cmds=()
    for ((m = 0; m < mib; m += 8)); do cmds+=(-c "write -P 0x5a $((m << 20)) 1M"); done
    qemu-io -f raw "${cmds[@]}" -c flush "$(uri "$name-$c")" >/dev/null
  done
}

time_flatten() { # VOLUME -> seconds the server spent (the CLI's own start-up, ~1-3 s of .NET on a loaded machine, left out)
  platter volume flatten "$1" --json >"$work/flatten.json"
  python3 -c "import json;print(json.load(open('$work/flatten.json'))['seconds'])"
}

run_embedded() {
  serve --store "$work/store"
  local round mib
  for ((round = 1; round <= rounds; round++)); do
    for mib in $sizes; do
      local name=e$round-$mib
      prepare "$name" "$mib"
      local load; load=$(cut -d' ' -f1 /proc/loadavg)
      local flat; flat=$(time_flatten "$name-a")
      local copied; copied=$(python3 -c "import json;print(json.load(open('$work/flatten.json'))['copiedBytes'])")
      platter volume create "$name-copy" --size "${mib}M" >/dev/null
      local t0; t0=$(now)
      nbdcopy --flush "$(uri "$name-b")" "$(uri "$name-copy")"
      local copy; copy=$(echo "$(now) - $t0" | bc)
      echo "embedded $mib MiB: flatten ${flat}s (copied $copied bytes), nbdcopy ${copy}s, load $load"
      echo "embedded $mib $flat $copy $load" >>"$results"
      platter volume delete "$name-b" >/dev/null
      platter volume delete "$name" --recursive >/dev/null # possible only because -a is flattened
      platter volume delete "$name-a" >/dev/null
      platter volume delete "$name-copy" >/dev/null
    done
  done
  stop
}

run_rbd() {
  if [[ -z $cluster ]]; then
    cluster=$work/ceph
    own_cluster=1
    scripts/ceph-cluster.sh start "$cluster" >/dev/null
  fi
  export CEPH_CONF=$cluster/ceph.conf
  serve --store rbd:rbd --ceph-conf "$CEPH_CONF"
  local round mib
  for ((round = 1; round <= rounds; round++)); do
    for mib in $sizes; do
      local name=r$round-$mib-$$
      prepare "$name" "$mib"
      local load; load=$(cut -d' ' -f1 /proc/loadavg)
      local flat; flat=$(time_flatten "$name-a")
      local t0; t0=$(now)
      rbd flatten --no-progress "rbd/$name-b" >/dev/null
      local direct; direct=$(echo "$(now) - $t0" | bc)
      echo "rbd $mib MiB: platter flatten ${flat}s, rbd flatten ${direct}s, load $load"
      echo "rbd $mib $flat $direct $load" >>"$results"
      platter volume delete "$name" --recursive >/dev/null
      platter volume delete "$name-a" >/dev/null
      platter volume delete "$name-b" >/dev/null
    done
  done
  stop
}

for b in $backends; do "run_$b"; done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    backend, mib, flat, ref, load = line.split()
    rows.setdefault((backend, int(mib)), []).append((float(flat), float(ref), float(load)))
print()
print("| backend | origin data | shared (copied) | flatten | reference | flatten / reference | load avg |")
print("|---|---|---|---|---|---|---|")
for (backend, mib), rs in sorted(rows.items()):
    flat = statistics.median(r[0] for r in rs)
    ref = statistics.median(r[1] for r in rs)
    load = statistics.median(r[2] for r in rs)
    refname = "nbdcopy to a new volume" if backend == "embedded" else "rbd flatten (CLI)"
    print(f"| {backend} | {mib} MiB | {mib * 7 // 8} MiB | {flat:.2f} s ({mib * 7 / 8 / flat:.0f} MiB/s) | {refname}: {ref:.2f} s | {flat / ref:.2f} | {load:.0f} |")
PY
