#!/usr/bin/env bash
# The engine benchmark (issue 2): Platter's storage engine in-process, no network, next to fio on a raw file on the
# same disk as the physical reference for sequential throughput. Usage: bench/engine.sh [DIR] [SIZE_GIB] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/var/tmp/platter-engine-bench}
size_gib=${2:-4}
seconds=${3:-10}
mkdir -p "$dir"
command -v fio >/dev/null || { echo "fio is missing: scripts/install-test-deps.sh"; exit 1; }

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, $(fio --version), disk of $dir: $(df -h "$dir" | awk 'NR==2{print $1}')"
raw="$dir/fio-raw.img"
rm -f "$raw"
# A fresh file, like the engine's copy-on-write writes into newly allocated space; fsync at the end like the engine's flush.
fio --name=seq-write --filename="$raw" --size="${size_gib}G" --rw=write --bs=1M --ioengine=psync --end_fsync=1 \
  --output-format=terse --terse-version=3 | awk -F';' '{printf "fio raw file seq-write 1M (new file, fsync at end) %10.1f MB/s\n", $48/1024}'
fio --name=seq-read --filename="$raw" --size="${size_gib}G" --rw=read --bs=1M --ioengine=psync --numjobs=4 --group_reporting \
  --time_based --runtime="$seconds" --output-format=terse --terse-version=3 | awk -F';' '{printf "fio raw file seq-read 1M (4 jobs, cached)       %10.1f MB/s\n", $7/1024}'
rm -f "$raw"

dotnet build -c Release bench/Platter.Bench -v q -nologo >/dev/null
dotnet bench/Platter.Bench/bin/Release/net10.0/Platter.Bench.dll --dir "$dir/store" --size-gib "$size_gib" --seconds "$seconds"
