#!/usr/bin/env bash
# Old against new on an aged store in the same run (issue 15, target 3): bench/aged.sh one round at a time, alternating
# two built `platter` binaries, so both see the same machine load. Each round's results are in OUT/<name>-r<N>/.
#
# Usage: bench/aged-ab.sh OLD_PLATTER NEW_PLATTER [--rounds 2] [--out DIR] [-- aged.sh options, e.g. --size 512M --runtime 8]
# Build each binary first, e.g.: dotnet build src/Platter.Cli -c Release -o /tmp/old-bin (in a worktree of the old commit).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
old=$1 new=$2; shift 2
rounds=2
out="$here/results/aged-ab-$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "aged-ab.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for v in old new; do
    bin=$old; [ "$v" = new ] && bin=$new
    echo "[$(date -u +%H:%M:%S)] round $r $v load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log"
    PLATTER_BIN=$bin "$here/aged.sh" --rounds 1 --out "$out/$v-r$r" "$@" > "$out/$v-r$r.log" 2>&1 \
      || echo "round $r $v failed (see $out/$v-r$r.log)" | tee -a "$out/log"
  done
done
for f in "$out"/*/summary.md; do echo "== $f"; grep -E '^\| 1 \| (seqread|randwrite)' "$f" || true; done | tee -a "$out/log"
