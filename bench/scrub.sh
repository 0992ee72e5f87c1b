#!/usr/bin/env bash
# The online scrub's cost and speed (issue 16), on one `platter serve` with one volume full of data:
#   1. scrub rate on an idle store with the budget off (--rate 0), against plain sequential reads of the same data
#      file from the disk: `dd iflag=direct bs=1M` (the disk, one 1 MiB request at a time) and a buffered `dd` after
#      dropping the file's pages (the kernel's read-ahead; `dd iflag=nocache` drops this file's cache only, never the
#      machine's). The scrub reads with O_DIRECT, so it is run twice per round: with the file's pages dropped and with
#      the whole file in the page cache; both must read the disk. That is checked, not assumed: the server's
#      read_bytes in /proc/PID/io (bytes it made the block layer read) over each scrub, and the file's pages in the
#      page cache (fincore) before and after it;
#   2. a client's 4 KiB random reads (fio's nbd engine, queue depth 32) with a scrub at the default budget running,
#      against the same without scrub, interleaved (the order alternates between rounds); IOPS and p99 latency.
# Prints a markdown table with the load average next to each measurement (the machine is shared: only same-round
# ratios mean anything).
#
#   [PLATTER_BIN=EXE] bench/scrub.sh [--size 2G] [--rounds 3] [--runtime 15]
set -euo pipefail
cd "$(dirname "$0")/.."

size=2G rounds=3 runtime=15
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in fio dd fincore python3 dotnet; do command -v "$tool" >/dev/null || { echo "bench/scrub.sh: $tool not found" >&2; exit 1; }; done

# PLATTER_BIN: an already built platter executable (e.g. another commit's, to compare in one session).
if [ -n "${PLATTER_BIN:-}" ]; then
  platter=("$PLATTER_BIN")
else
  dotnet build src/Platter.Cli -c Release -v q -nologo >/dev/null
  platter=("$PWD/src/Platter.Cli/bin/Release/net10.0/platter")
fi
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
read_bytes() { awk '/^read_bytes:/ { print $2 }' "/proc/$server/io"; }
cached_mb() { fincore --bytes --noheadings --output RES "$work/store/data" | awk '{ printf "%.0f", $1 / 1e6 }'; }
# Runs a scrub with the given rate to the end; prints "MB/s disk_MB checked_MB": its rate from its own start and
# finish times, what the server read from the disk meanwhile and what it checked.
scrub_rate() {
  local before io0 io1
  before=$(finished_lines)
  io0=$(read_bytes)
  cli scrub start --restart --rate "$1" >/dev/null
  while [ "$(finished_lines)" = "$before" ]; do sleep 0.2; done
  io1=$(read_bytes)
  cli scrub status --json | python3 -c '
import json, sys, datetime
s = json.load(sys.stdin)
t = lambda x: datetime.datetime.fromisoformat(x.replace("Z", "+00:00"))
print("%.0f %.0f %.0f" % (s["bytesChecked"] / (t(s["finishedUtc"]) - t(s["startedUtc"])).total_seconds() / 1e6, ('"$io1"' - '"$io0"') / 1e6, s["bytesChecked"] / 1e6))'
}
dd_rate() { dd if="$work/store/data" of=/dev/null bs=1M "$@" 2>&1 | python3 -c 'import sys,re; t=sys.stdin.read(); m=re.search(r"(\d+) bytes.*?, ([0-9.]+) s,", t); print("%.0f" % (int(m.group(1))/float(m.group(2))/1e6))'; }
drop() { dd if="$work/store/data" iflag=nocache count=0 status=none; }
ratio() { python3 -c "print('%.2f' % ($1 / max($2, $3)))"; }

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
  drop
  direct=$(dd_rate iflag=direct)
  echo "| $r | dd iflag=direct bs=1M (the disk) | $direct MB/s | $(load) |"
  drop
  cold=$(dd_rate)
  echo "| $r | dd bs=1M buffered, file's pages dropped first | $cold MB/s | $(load) |"
  drop
  c0=$(cached_mb)
  read -r rate disk checked <<< "$(scrub_rate 0)"
  echo "| $r | scrub --rate 0, file's pages dropped ($c0 → $(cached_mb) MB cached) | $rate MB/s ($(ratio "$rate" "$direct" "$cold")x the faster dd); read $disk MB from disk to check $checked MB | $(load) |"
  cat "$work/store/data" > /dev/null
  c0=$(cached_mb)
  read -r rate disk checked <<< "$(scrub_rate 0)"
  echo "| $r | scrub --rate 0, whole file cached ($c0 → $(cached_mb) MB cached) | $rate MB/s ($(ratio "$rate" "$direct" "$cold")x); read $disk MB from disk to check $checked MB | $(load) |"
  cat "$work/store/data" > /dev/null
  for order in $( ((r % 2)) && echo "none scrub" || echo "scrub none"); do
    if [ "$order" = none ]; then
      read -r iops p99 <<< "$(randread)"
      echo "| $r | 4K randread qd32, no scrub | $iops IOPS, p99 $p99 µs | $(load) |"
    else
      cli scrub start --restart >/dev/null   # the default budget
      read -r iops p99 <<< "$(randread)"
      state=$(cli scrub status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print("%s %.0f MB/s" % (s["state"], s["currentBytesPerSecond"]/1e6))')
      cli scrub stop >/dev/null
      echo "| $r | 4K randread qd32, scrub at the default budget ($state) | $iops IOPS, p99 $p99 µs | $(load) |"
    fi
  done
done
