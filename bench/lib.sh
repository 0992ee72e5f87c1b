# Shared by the bench/*.sh scripts: `. "$(dirname "$0")/lib.sh"` after `cd` to the repository root. Holds what every
# script did the same way: options, the build check, the Ceph cluster (the caller's or one of its own), and waiting for
# a server's socket.

# bench_options USAGE SPEC... -- "$@": parses "--NAME VALUE" options into shell variables the script has set to their
# defaults. A SPEC is NAME (sets the variable NAME with dashes as underscores: size-mib -> size_mib), NAME=VARIABLE
# (sets VARIABLE), or NAME! (a flag without a value: sets NAME to 1). -h/--help prints the script's header comment;
# anything else prints "usage: SCRIPT USAGE" and exits 2. (Its own variables start with _o_, so no option's variable
# is shadowed.)
bench_options() {
  local _o_usage=$1 _o_spec _o_arg _o_name _o_var _o_flag _o_found
  shift
  local -a _o_specs=()
  while (($#)) && [[ $1 != -- ]]; do _o_specs+=("$1"); shift; done
  (($#)) && shift
  while (($#)); do
    _o_arg=$1
    if [[ $_o_arg == -h || $_o_arg == --help ]]; then
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
    fi
    _o_found=0
    for _o_spec in "${_o_specs[@]}"; do
      _o_flag=0
      [[ $_o_spec == *! ]] && { _o_flag=1; _o_spec=${_o_spec%!}; }
      _o_name=${_o_spec%%=*}
      _o_var=${_o_spec#*=}
      [[ $_o_spec == *=* ]] || _o_var=${_o_name//-/_}
      [[ $_o_arg == "--$_o_name" ]] || continue
      _o_found=1
      if ((_o_flag)); then
        printf -v "$_o_var" '%s' 1
        shift
      else
        (($# >= 2)) || { echo "usage: $0 $_o_usage" >&2; exit 2; }
        printf -v "$_o_var" '%s' "$2"
        shift 2
      fi
      break
    done
    ((_o_found)) || { echo "usage: $0 $_o_usage" >&2; exit 2; }
  done
}

# The Release build of the CLI that the scripts run with dotnet; bench_require_build fails with how to build it.
platter_dll=src/Platter.Cli/bin/Release/net10.0/platter.dll
bench_require_build() {
  [[ -f $platter_dll ]] || { echo "build first: dotnet build src/Platter.Cli -c Release" >&2; exit 1; }
}

# bench_cluster WORK: uses the one-host Ceph cluster in $cluster (--cluster DIR) or starts one in WORK/ceph
# (scripts/ceph-cluster.sh) that bench_cluster_stop, from the script's cleanup, stops again; exports CEPH_CONF.
own_cluster=0
bench_cluster() {
  if [[ -z ${cluster:-} ]]; then
    cluster=$1/ceph
    own_cluster=1
    scripts/ceph-cluster.sh start "$cluster" >/dev/null
  fi
  export CEPH_CONF=$cluster/ceph.conf
}
bench_cluster_stop() {
  ((own_cluster)) && scripts/ceph-cluster.sh stop "$cluster" >/dev/null 2>&1
  return 0
}

# bench_wait_socket LOG SOCKET...: waits (up to a minute) until every unix socket exists; fails with the end of LOG
# (the server's output) if one does not.
bench_wait_socket() {
  local log=$1 s
  shift
  for _ in $(seq 1 600); do
    for s in "$@"; do [[ -S $s ]] || { sleep 0.1; continue 2; }; done
    return 0
  done
  echo "the server did not start: $(tail -3 "$log")" >&2
  exit 1
}

# bench_cache_status API_SOCKET VOLUME: prints "dirtyBytes lagRecords" of a cached volume (GET /v1/volumes/NAME through
# the API socket with curl and sed: no python3 start-up, so it can be sampled often).
bench_cache_status() {
  curl -s --unix-socket "$1" "http://platter/v1/volumes/$2" |
    sed -n 's/.*"dirtyBytes":\([0-9]*\).*"lagRecords":\([0-9]*\).*/\1 \2/p'
}

# bench_wait_drained API_SOCKET VOLUME: samples the cache every 20 ms from now until its log is empty; prints
# "dirty-bytes-at-start records-at-start seconds". The interval bounds the error of the time: an earlier version
# sampled every 0.5 s through python3, which added up to ~0.6 s to drains of 1-2 s (a third of their time).
bench_wait_drained() {
  local t0 d0 r0 d r t
  t0=$(date +%s.%N)
  read -r d0 r0 <<<"$(bench_cache_status "$1" "$2")"
  while true; do
    read -r d r <<<"$(bench_cache_status "$1" "$2")"
    t=$(date +%s.%N)
    [[ -n $d && -n $r ]] || { echo "bench_wait_drained: no cache status for volume $2" >&2; return 1; }
    ((d == 0 && r == 0)) && break
    sleep 0.02
  done
  echo "$d0 $r0 $(python3 -c "print(f'{$t-$t0:.3f}')")"
}
