#!/usr/bin/env bash
# Moving volumes (issue 13): import of a qcow2 that is half data, half holes, against qemu-img convert of the same
# file to a raw file and to Platter over NBD; a full send | receive between two Platter servers against nbdcopy
# between the same two servers; an incremental stream of 1% changed data against the full stream.
#
#   bench/moving.sh [--size 4G] [--rounds 3] [--dir DIR] [--import-only]
#
# Prints one line per measurement (seconds, bytes) and a markdown table of medians at the end. Needs qemu-utils,
# libnbd-bin and a Release build of src/Platter.Cli (built here unless PLATTER_DLL points at platter.dll), or
# PLATTER_BIN=the Native AOT binary (what the .deb ships). PLATTER_SERVE_ARGS adds arguments to both servers'
# `platter serve` (e.g. --direct-writes). --import-only stops each round after the import (raw-file convert, qemu-img
# into Platter over NBD, platter import and the server's CPU time during the import).
set -euo pipefail
cd "$(dirname "$0")/.."

size=4G
rounds=3
dir=""
import_only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size) size="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --import-only) import_only=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -n "$dir" ]] || dir=$(mktemp -d /tmp/platter-moving-XXXXXX)
mkdir -p "$dir"
# The command line that runs platter: PLATTER_BIN (an executable: the Native AOT binary the .deb ships,
# scripts/build-deb.sh --publish-only DIR), else `dotnet platter.dll` (PLATTER_DLL, or built here).
if [[ -n ${PLATTER_BIN:-} ]]; then
  cli=$PLATTER_BIN
else
  dll=${PLATTER_DLL:-}
  if [[ -z "$dll" ]]; then
    dotnet build src/Platter.Cli -c Release -v q >/dev/null
    dll=src/Platter.Cli/bin/Release/net10.0/platter.dll
  fi
  cli="dotnet $dll"
fi
platter() { $cli "$@"; }
bytes=$(numfmt --from=iec "$size")
mib=$((bytes / 1048576))

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
}
trap cleanup EXIT

serve() { # NAME: a fresh store and sockets under $dir/NAME
  rm -rf "$dir/$1"; mkdir -p "$dir/$1"
  # dotnet itself in the background (not the platter function, whose subshell's pid a kill would not pass on).
  # shellcheck disable=SC2086 # PLATTER_SERVE_ARGS is a list of arguments
  $cli serve --store "$dir/$1/store" --socket "$dir/$1/nbd.sock" --listen none --api-socket "$dir/$1/api.sock" \
    ${PLATTER_SERVE_ARGS:-} >"$dir/$1/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [[ -S "$dir/$1/api.sock" && -S "$dir/$1/nbd.sock" ]] && return; sleep 0.1; done
  echo "server $1 did not start" >&2; cat "$dir/$1/log" >&2; exit 1
}
stop_all() { cleanup; pids=(); }
seconds() { local t0=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $t0" | bc; }
# Time until the copy is on disk: what the page cache still held from before is written out first, and the copy's
# own dirty pages are counted. qemu-img convert to a file does not sync, platter import flushes once at its end:
# without this the raw-file baseline ran 1.4-11 s in one run, depending on the writeback it inherited.
durable_seconds() { sync; local t0=$(date +%s.%N); "$@" >/dev/null; sync; echo "$(date +%s.%N) - $t0" | bc; }
# utime + stime of a process, in seconds (USER_HZ ticks from /proc/PID/stat).
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
uri() { echo "nbd+unix:///$2?socket=$dir/$1/nbd.sock"; }

# Half data, half holes: 1 MiB of data every 2 MiB (random bytes, so nothing compresses or reads as zeros).
src="$dir/src.qcow2"
if [[ ! -f "$src" ]]; then
  head -c $((1024 * 1024)) /dev/urandom > "$dir/chunk"
  qemu-img create -q -f raw "$dir/src.raw" "$size"
  for ((i = 0; i < mib; i += 2)); do dd if="$dir/chunk" of="$dir/src.raw" bs=1M seek=$i conv=notrunc status=none; done
  qemu-img convert -q -f raw -O qcow2 "$dir/src.raw" "$src"
  rm -f "$dir/src.raw"
fi

declare -A results
record() { results["$1"]+="$2 "; echo "$1 round $round: $2"; }

for ((round = 1; round <= rounds; round++)); do
  cat "$src" >/dev/null # warm the page cache: every variant reads the same cached file
  rm -f "$dir/out.raw"; sync
  record "qemu-img convert qcow2 -> raw file, to disk (s)" "$(durable_seconds qemu-img convert -f qcow2 -O raw "$src" "$dir/out.raw")"
  rm -f "$dir/out.raw"

  serve a
  platter volume create direct --size "$size" --api-socket "$dir/a/api.sock" >/dev/null
  record "qemu-img convert qcow2 -> Platter over NBD, to disk (s)" \
    "$(durable_seconds qemu-img convert -n --target-is-zero -W -f qcow2 -O raw "$src" "$(uri a direct)")"
  cpu0=$(cpu_seconds "${pids[-1]}")
  record "platter import, to disk (s)" "$(durable_seconds platter import "$src" vol --api-socket "$dir/a/api.sock")"
  record "server CPU during platter import (s)" "$(echo "$(cpu_seconds "${pids[-1]}") - $cpu0" | bc)"
  if [[ -n $import_only ]]; then stop_all; continue; fi
  platter snapshot create vol@s1 --api-socket "$dir/a/api.sock" >/dev/null

  serve b
  platter volume create copy --size "$size" --api-socket "$dir/b/api.sock" >/dev/null
  record "nbdcopy Platter -> Platter (s)" "$(seconds nbdcopy "$(uri a vol@s1)" "$(uri b copy)")"
  record "send | receive full (s)" \
    "$(seconds bash -c "set -o pipefail; $cli send vol@s1 --api-socket '$dir/a/api.sock' | $cli receive recv --api-socket '$dir/b/api.sock'")"
  platter send vol@s1 --api-socket "$dir/a/api.sock" -o "$dir/full.stream"
  record "full stream (bytes)" "$(stat -c %s "$dir/full.stream")"
  rm -f "$dir/full.stream"

  # 1% of the volume changed: 4 KiB random writes spread over the whole volume (the worst case for the diff).
  changes=$((bytes / 100 / 65536))
  cmds=()
  for ((i = 0; i < changes; i++)); do cmds+=(-c "write -P $((i % 250 + 1)) $(( (RANDOM * 32768 + RANDOM) % (bytes / 65536) * 65536 )) 64k"); done
  qemu-io -f raw "${cmds[@]}" -c flush "$(uri a vol)" >/dev/null
  platter snapshot create vol@s2 --api-socket "$dir/a/api.sock" >/dev/null
  record "send | receive incremental 1% (s)" \
    "$(seconds bash -c "set -o pipefail; $cli send vol@s2 --from s1 --api-socket '$dir/a/api.sock' | $cli receive recv --api-socket '$dir/b/api.sock'")"
  platter send vol@s2 --from s1 --api-socket "$dir/a/api.sock" -o "$dir/inc.stream"
  record "incremental stream (bytes)" "$(stat -c %s "$dir/inc.stream")"
  rm -f "$dir/inc.stream"
  # The CLI's own start (the dotnet host: ~0.1-0.3 s; the AOT binary: milliseconds) is in every platter number.
  record "platter --help start-up (s)" "$(seconds platter --help)"
  stop_all
done

echo
echo "| measurement ($size, $rounds rounds) | median |"
echo "|---|---|"
for k in "${!results[@]}"; do
  median=$(echo "${results[$k]}" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| $k | $median |"
done | sort
