#!/usr/bin/env bash
# The online scrub's cost and speed (issue 16), on one `platter serve` with one volume full of data:
#   1. scrub rate on an idle store with the budget off (--rate 0), against a plain sequential read of the same data
#      file (dd, 1 MiB reads), both from the page cache ("warm") and with the file's pages dropped first ("cold":
#      dd iflag=nocache drops this file's cache only, never the machine's);
#   2. a client's 4 KiB random reads (fio's nbd engine, queue depth 32) with a scrub at the default budget running,
#      against the same without scrub, interleaved over rounds; IOPS and p99 completion latency.
# Prints a markdown table with the load average next to each measurement (the machine is shared: only same-round
# ratios mean anything).
#
#   bench/scrub.sh [--size 2G] [--rounds 2] [--runtime 15]
set -euo pipefail
cd "$(dirname "$0")/.."

size=2G rounds=2 runtime=15
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in fio dd python3 dotnet; do command -v "$tool" >/dev/null || { echo "bench/scrub.sh: $tool not found" >&2; exit 1; }; done

dotnet build src/Platter.Cli -c Release -v q -nologo >/dev/null
platter=(dotnet "$PWD/src/Platter.Cli/bin/Release/net10.0/platter.dll")
work=$(mktemp -d /tmp/platter-scrub-bench.XXXXXX)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"${platter[@]}" serve --store "$work/store" --socket "$work/nbd.sock" --api-socket "$work/api.sock" --listen none > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do [ -S "$work/api.sock" ] && [ -S "$work/nbd.sock" ] && break; sleep 0.2; done
cli() { "${platter[@]}" "$@" --api-socket "$work/api.sock"; }
cli volume create vm --size "$size" >/dev/null
uri="nbd+unix:///vm?socket=$work/nbd.sock"
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --size="$size" --iodepth=8 --output=/dev/null
load() { cut -d' ' -f1 /proc/loadavg; }

# Runs a scrub with the given rate to the end; prints MB/s from its own start and finish times. It waits for the
# server's "finished" log line rather than polling the CLI: a CLI process every half second would take CPU from the
# scrub it measures.
finished_lines() { grep -c "Scrub of .* finished" "$work/server.log" || true; }
scrub_rate() {
  local before; before=$(finished_lines)
  cli scrub start --restart --rate "$1" >/dev/null
  while [ "$(finished_lines)" = "$before" ]; do sleep 0.2; done
  cli scrub status --json | python3 -c '
import json, sys, datetime
s = json.load(sys.stdin)
t = lambda x: datetime.datetime.fromisoformat(x.replace("Z", "+00:00"))
print("%.0f" % (s["bytesChecked"] / (t(s["finishedUtc"]) - t(s["startedUtc"])).total_seconds() / 1e6))'
}
dd_rate() { dd if="$work/store/data" of=/dev/null bs=1M 2>&1 | python3 -c 'import sys,re; t=sys.stdin.read(); m=re.search(r"(\d+) bytes.*?, ([0-9.]+) s,", t); print("%.0f" % (int(m.group(1))/float(m.group(2))/1e6))'; }
drop() { dd if="$work/store/data" iflag=nocache count=0 status=none; }

# fio 4K random read for $runtime s; prints "IOPS p99_us".
randread() {
  fio --name=rr --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=32 --size="$size" --time_based --runtime="$runtime" \
      --output-format=json --output="$work/rr.json" >/dev/null
  python3 -c '
import json
j = json.load(open("'"$work"'/rr.json"))["jobs"][0]["read"]
print("%.0f %.0f" % (j["iops"], j["clat_ns"]["percentile"]["99.000000"] / 1000))'
}

echo "| round | what | result | load avg |"
echo "|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  cat "$work/store/data" > /dev/null
  echo "| $r | dd sequential read, warm | $(dd_rate) MB/s | $(load) |"
  echo "| $r | scrub --rate 0, warm | $(scrub_rate 0) MB/s | $(load) |"
  drop
  echo "| $r | dd sequential read, cold | $(dd_rate) MB/s | $(load) |"
  drop
  echo "| $r | scrub --rate 0, cold | $(scrub_rate 0) MB/s | $(load) |"
  cat "$work/store/data" > /dev/null
  read -r iops p99 <<< "$(randread)"
  echo "| $r | 4K randread qd32, no scrub | $iops IOPS, p99 $p99 µs | $(load) |"
  cli scrub start --restart >/dev/null   # the default budget
  read -r iops p99 <<< "$(randread)"
  state=$(cli scrub status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print("%s %.0f MB/s" % (s["state"], s["currentBytesPerSecond"]/1e6))')
  cli scrub stop >/dev/null
  echo "| $r | 4K randread qd32, scrub at the default budget ($state) | $iops IOPS, p99 $p99 µs | $(load) |"
done
