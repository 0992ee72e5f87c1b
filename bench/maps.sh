#!/usr/bin/env bash
# Map memory and open time (issue 15 targets 4 and 5; decision 0010). Builds synthetic stores (bench/Platter.Bench
# MapBench.cs: extent records written straight into the metadata store over a sparse data file) and opens each one in
# a fresh process ROUNDS times, printing open time (wall and CPU), time to the first read, RSS and managed heap, and
# RAM per TiB mapped. The stores are interleaved round by round, so load from other work on the machine spreads over
# all of them; the load average is printed on every line.
# Usage: bench/maps.sh [DIR] [ROUNDS] [LAYOUTS...]   layouts: sparse:N or sequential:N (N = extent records)
#   OLD=COMMIT bench/maps.sh ...  also opens every store with COMMIT's engine (built in a git worktree under DIR, or
#   OLD=DIR: a checkout already there),
#   interleaved with this tree's, store by store and round by round (remove the worktree after: git worktree remove).
#   NEWARGS="--map-cache BYTES --reads N" bench/maps.sh ...  passes options to this tree's opens only (decisions 0013,
#   0019: the map cache's budget, and a timed read benchmark after the open; see MapBench.cs),
#   BUDGETS="DEFAULT 16777216" bench/maps.sh ...  opens every store once per budget in each round, old and new alike
#   (DEFAULT: the engine's; BYTES is passed as --map-checksum-cache, the name old trees know too),
#   ARGS="..." passes options to both the old and this tree's opens (the old one must know them),
#   default: sparse:1000000 sparse:10000000 sequential:65536 sequential:1048576 (the last maps 1 TiB: ~1 GB of metadata)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/var/tmp/platter-maps-bench}
rounds=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
layouts=("$@")
[ ${#layouts[@]} -gt 0 ] || layouts=(sparse:1000000 sparse:10000000 sequential:65536 sequential:1048576)
mkdir -p "$dir"
echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, commit $(git rev-parse --short HEAD)"
dotnet build -c Release bench/Platter.Bench -v q -nologo >/dev/null
bench() { dotnet bench/Platter.Bench/bin/Release/net10.0/Platter.Bench.dll --maps "$@"; }
old=${OLD:-}
if [ -d "$old" ]; then
  oldwt=$old # a checkout already made
elif [ -n "$old" ]; then
  oldwt="$dir/old-$(git rev-parse --short "$old")"
  [ -d "$oldwt" ] || git worktree add --detach "$oldwt" "$old" >/dev/null
fi
if [ -n "$old" ]; then
  dotnet build -c Release "$oldwt/bench/Platter.Bench" -v q -nologo >/dev/null
  echo "# old: $(git -C "$oldwt" rev-parse --short HEAD) in $oldwt"
fi
for l in "${layouts[@]}"; do
  kind=${l%%:*}; n=${l##*:}
  [ -d "$dir/$kind-$n" ] || bench build --dir "$dir/$kind-$n" --extents "$n" --layout "$kind"
done
read -r -a budgets <<< "${BUDGETS:-DEFAULT}"
for r in $(seq 1 "$rounds"); do
  for l in "${layouts[@]}"; do
    kind=${l%%:*}; n=${l##*:}
    for b in "${budgets[@]}"; do
      bargs=""; [ "$b" = DEFAULT ] || bargs="--map-checksum-cache $b"
      # shellcheck disable=SC2086 # ARGS, NEWARGS and bargs are lists of options
      [ -z "$old" ] || echo "round $r $kind $n records, budget $b, old: $(dotnet "$oldwt/bench/Platter.Bench/bin/Release/net10.0/Platter.Bench.dll" --maps open --dir "$dir/$kind-$n" $bargs ${ARGS:-} | tr '\n' ' ')"
      # shellcheck disable=SC2086
      echo "round $r $kind $n records, budget $b: $(bench open --dir "$dir/$kind-$n" $bargs ${ARGS:-} ${NEWARGS:-} | tr '\n' ' ')"
    done
  done
done
echo "# stores kept in $dir (delete them when done: rm -rf $dir)"
