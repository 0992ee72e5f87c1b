#!/usr/bin/env bash
# Old versus new: the engine benchmark (bench/Platter.Bench, in-process) and the peer benchmark (bench/run-peers.sh,
# platter serve over NBD) for two commits of Platter in one interleaved run, so that both see the same machine load.
#
# Usage: bench/old-vs-new.sh OLD_REV [NEW_REV] [--rounds N] [--size-gib G] [--seconds S] [--peer-rounds N]
#                            [--peer-runtime S] [--work DIR] [--out DIR]
#   OLD_REV, NEW_REV  commits to compare (NEW_REV defaults to HEAD); each is checked out with `git worktree add
#                     --detach` under --work (default: a new directory under /tmp) and built there in Release, so the
#                     tree you work in is never touched. An existing --work directory is reused (incremental builds).
#   --rounds N        engine benchmark runs per commit (default 4), in the order old new new old old new ... so that
#                     neither commit always runs first
#   --size-gib G      engine benchmark volume size (default 1), --seconds S per engine workload (default 5)
#   --peer-rounds N   run-peers.sh rounds (default 4), --peer-runtime S per fio job (default 5); targets platter (new)
#                     and platter-base (old), 1 GiB volumes, the five fio workloads
# Output: DIR/engine-{old,new}-rN.txt, DIR/engine.md (per-round new/old ratios), DIR/peers/ (run-peers.sh results with
# the per-round platter / platter-base ratios), DIR/load.txt (the load average before and after every run).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

old_rev="" new_rev=HEAD rounds=4 size_gib=1 seconds=5 peer_rounds=4 peer_runtime=5 work="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --size-gib) size_gib=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --peer-rounds) peer_rounds=$2; shift 2 ;;
    --peer-runtime) peer_runtime=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "old-vs-new.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [ -z "$old_rev" ]; then old_rev=$1; else new_rev=$1; fi; shift ;;
  esac
done
[ -n "$old_rev" ] || { echo "old-vs-new.sh: which commit is old? (see --help)" >&2; exit 2; }

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
[ -n "$work" ] || work=$(mktemp -d /tmp/platter-old-vs-new.XXXXXX)
[ -n "$out" ] || out="$here/results/old-vs-new-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$work" "$out"
work=$(cd "$work" && pwd)
: > "$out/load.txt"
load() { echo "$(date -u +%H:%M:%S) $1: load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/load.txt"; }

declare -A sha=()
for v in old new; do
  rev=$old_rev; [ "$v" = new ] && rev=$new_rev
  sha[$v]=$(git -C "$repo" rev-parse --short "$rev^{commit}")
  if [ ! -d "$work/$v" ]; then
    git -C "$repo" worktree add --detach "$work/$v" "${sha[$v]}" >/dev/null 2>&1
  fi
  [ "$(git -C "$work/$v" rev-parse --short HEAD)" = "${sha[$v]}" ] || { echo "$work/$v is not at ${sha[$v]}" >&2; exit 1; }
  log "building $v (${sha[$v]}) in $work/$v"
  dotnet build "$work/$v/bench/Platter.Bench" -c Release -o "$work/$v-bench" -v q -nologo > "$out/build-$v.log" 2>&1
  dotnet build "$work/$v/src/Platter.Cli" -c Release -o "$work/$v-cli" -v q -nologo >> "$out/build-$v.log" 2>&1
done
{
  echo "old: ${sha[old]} $(git -C "$repo" log -1 --format=%s "${sha[old]}")"
  echo "new: ${sha[new]} $(git -C "$repo" log -1 --format=%s "${sha[new]}")"
  echo "dotnet: $(dotnet --version), kernel $(uname -r), $(nproc) cores"
} > "$out/versions.txt"

# Engine: old new new old old new ... (each pair swaps who goes first).
store="$work/engine-store"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for v in $order; do
    log "engine round $r/$rounds: $v"
    load "engine $v r$r start"
    dotnet "$work/$v-bench/Platter.Bench.dll" --dir "$store" --size-gib "$size_gib" --seconds "$seconds" > "$out/engine-$v-r$r.txt"
    load "engine $v r$r end"
  done
done
python3 - "$out" "$rounds" > "$out/engine.md" <<'EOF'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def parse(path):
    rows = {}
    for line in open(path):
        m = re.match(r"^(\S.*?)\s+([\d,]+) IOPS\s+([\d,.]+) MB/s", line)
        if m and not line.startswith("#"):
            rows[m.group(1).strip()] = float(m.group(2).replace(",", ""))
    return rows
runs = {v: [parse(f"{out}/engine-{v}-r{r}.txt") for r in range(1, rounds + 1)] for v in ("old", "new")}
print("| workload | old IOPS, median (range) | new IOPS, median (range) | new / old per round: median (range) |")
print("|---|---|---|---|")
for w in runs["old"][0]:
    o = [run[w] for run in runs["old"]]
    n = [run[w] for run in runs["new"]]
    ratios = [b / a for a, b in zip(o, n) if a]
    print(f"| {w} | {statistics.median(o):,.0f} ({min(o):,.0f}–{max(o):,.0f}) | {statistics.median(n):,.0f} "
          f"({min(n):,.0f}–{max(n):,.0f}) | {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
EOF
cat "$out/engine.md"

# Peers: run-peers.sh interleaves the two targets in every round and rotates who goes first.
log "peer benchmark: platter (${sha[new]}) and platter-base (${sha[old]})"
load "peers start"
PLATTER_BIN="$work/new-cli/platter" PLATTER_BASE_BIN="$work/old-cli/platter" "$here/run-peers.sh" \
  --targets platter,platter-base --workloads randwrite-4k-qd1-flush,randwrite-4k-qd32,randread-4k-qd32,seqwrite-1m-qd8,seqread-1m-qd8 \
  --rounds "$peer_rounds" --runtime "$peer_runtime" --size 1G --dir "$work/peers" --out "$out/peers" > /dev/null
load "peers end"
sed -n '/platter \/ platter-base/,$p' "$out/peers/summary.md"
cat "$out/load.txt"
log "results in $out; the worktrees stay in $work (git worktree remove them when done)"
