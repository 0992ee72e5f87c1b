#!/usr/bin/env bash
# A real one-host Ceph cluster for tests, benchmarks and trying Platter's RBD store: one monitor and three bluestore
# OSDs on sparse files in DIR, loopback only, cephx on, no manager (it costs ~300 MB and nothing here needs it).
#
#   scripts/ceph-cluster.sh start DIR      create (first time) or restart the cluster in DIR; prints `env` when up
#   scripts/ceph-cluster.sh stop DIR       stop every daemon started from DIR (SIGTERM, then SIGKILL after 10 s)
#   scripts/ceph-cluster.sh env DIR        print CEPH_CONF / PLATTER_CEPH_POOL / PLATTER_CEPH_ID as shell exports
#   scripts/ceph-cluster.sh kill-osd DIR N SIGKILL one OSD (node-loss tests)
#   scripts/ceph-cluster.sh start-osd DIR N start one OSD again
#   scripts/ceph-cluster.sh status DIR     `ceph status`
#
# The pool is `rbd`: replicated, size 3, min_size 2 (the shape of a three-storage-node rack). Each cluster gets its own
# block of 32 TCP ports (the monitor on the first, the OSDs' messengers in the rest), chosen at random among blocks
# with no listener and remembered in DIR/ports, so two clusters on one machine do not clash.
# What made this work, and the gotchas, are in ENVIRONMENT notes: daemons fork and keep the caller's stdout open (so
# they start with their output redirected), the monitor's free-disk thresholds are lowered for busy CI disks, and
# CEPH_CONF/CEPH_ARGS from the environment are cleared so they cannot leak into ceph-authtool.
set -euo pipefail
unset CEPH_CONF CEPH_ARGS

osd_count=3
pool=rbd
osd_size=10G # sparse: only what is written takes space

usage() { sed -n '2,11p' "$0" >&2; exit 2; }
(($# >= 2)) || usage
command=$1
dir=$(realpath -m "$2")
conf=$dir/ceph.conf

die() { echo "ceph-cluster: $*" >&2; exit 1; }

ceph_cli() { timeout 30 ceph -c "$conf" --connect-timeout 20 "$@"; }

pid_of() { # name (mon.a, osd.0): the pid when that daemon runs, else nothing
  local file=$dir/run/$1.pid
  [[ -s $file ]] || return 0
  local pid
  pid=$(<"$file")
  # A zombie (killed, not yet reaped: PID 1 in a container may never reap it) is not running.
  if kill -0 "$pid" 2>/dev/null && grep -q "ceph-" "/proc/$pid/comm" 2>/dev/null &&
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then echo "$pid"; fi
}

port_block_free() { # base: true when no TCP socket listens on base..base+31
  local base=$1
  ! ss -Htln | awk '{print $4}' | sed 's/.*://' | awk -v lo="$base" -v hi="$((base + 31))" '$1 >= lo && $1 <= hi {found=1} END {exit !found}'
}

choose_ports() {
  local attempt base
  for attempt in $(seq 1 50); do
    base=$((20000 + (RANDOM % 1250) * 32)) # 20000..59968
    if port_block_free "$base"; then echo "$base"; return; fi
  done
  die "no free block of 32 ports found in 20000-60000"
}

write_conf() {
  local fsid=$1 base=$2
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$base]
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind msgr2 = true
ms bind ipv6 = false
ms bind port min = $((base + 1))
ms bind port max = $((base + 31))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
run dir = $dir/run
crash dir = $dir/crash
osd crush chooseleaf type = 0
osd pool default size = 3
osd pool default min size = 2
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mon osd full ratio = 0.97
mon osd backfillfull ratio = 0.96
mon osd nearfull ratio = 0.95
paxos propose interval = 0.1
# One host: a dead OSD is marked down by its peers within seconds, and out only when a test wants it.
osd heartbeat grace = 6
osd heartbeat interval = 2
mon osd down out interval = 0

# Clients (the CLIs, Platter, qemu) run many at once: one log and admin socket each.
[client]
log file = $dir/log/\$name.\$pid.log
admin socket = $dir/run/\$name.\$pid.asok

[mon]
mon data = $dir/mon/\$cluster-\$id

[osd]
osd data = $dir/osd/\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $osd_size
bluestore fsck on mount = false
# Three OSDs share two cores and the RAM of a build machine.
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 67108864
osd op num shards = 1
osd op num threads per shard = 2
EOF
}

create() {
  mkdir -p "$dir"/{mon,osd,log,run,crash}
  local fsid base
  fsid=$(cat /proc/sys/kernel/random/uuid)
  base=$(choose_ports)
  echo "$base" >"$dir/ports"
  write_conf "$fsid" "$base"

  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
  local id
  for ((id = 0; id < osd_count; id++)); do
    mkdir -p "$dir/osd/$id"
    ceph-authtool --create-keyring "$dir/osd/$id/keyring" --gen-key -n "osd.$id" \
      --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
    ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/osd/$id/keyring" >/dev/null
  done
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$base]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" >"$dir/log/mkfs-mon.out" 2>&1 ||
    die "ceph-mon --mkfs failed: $(tail -3 "$dir/log/mkfs-mon.out")"
  start_mon
  # clone format 2 (snapshots need no protect step) needs clients of mimic or newer.
  ceph_cli osd set-require-min-compat-client mimic --yes-i-really-mean-it >/dev/null 2>&1 ||
    ceph_cli osd set-require-min-compat-client mimic >/dev/null
  for ((id = 0; id < osd_count; id++)); do
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    ceph_cli osd new "$uuid" "$id" >/dev/null
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" --keyring "$dir/osd/$id/keyring" \
      >"$dir/log/mkfs-osd.$id.out" 2>&1 || die "ceph-osd --mkfs $id failed: $(tail -3 "$dir/log/mkfs-osd.$id.out")"
  done
  for ((id = 0; id < osd_count; id++)); do start_osd "$id"; done
  ceph_cli osd pool create "$pool" 8 8 replicated >/dev/null 2>&1
  ceph_cli osd pool set "$pool" size 3 >/dev/null 2>&1
  ceph_cli osd pool set "$pool" min_size 2 >/dev/null 2>&1
  ceph_cli osd pool application enable "$pool" rbd >/dev/null 2>&1
  touch "$dir/created"
}

start_mon() {
  [[ -n $(pid_of mon.a) ]] && return
  ceph-mon -c "$conf" -i a >>"$dir/log/daemons.out" 2>&1 3>&- </dev/null || die "ceph-mon did not start (see $dir/log)"
  local i
  for i in $(seq 1 100); do
    if ceph_cli mon stat >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  die "monitor not answering on port $(<"$dir/ports") (see $dir/log/mon.a.log)"
}

start_osd() {
  local id=$1
  [[ -n $(pid_of "osd.$id") ]] && return
  ceph-osd -c "$conf" -i "$id" --keyring "$dir/osd/$id/keyring" >>"$dir/log/daemons.out" 2>&1 3>&- </dev/null ||
    die "ceph-osd $id did not start (see $dir/log/osd.$id.log)"
}

wait_usable() {
  # Without a manager there are no pg stats: the pool is usable when a write through it completes.
  local deadline=$((SECONDS + 90))
  until timeout 20 rados -c "$conf" -p "$pool" --rados-osd-op-timeout 10 put platter-cluster-ready /etc/hostname \
    >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "pool $pool not writable after 90 s: $(ceph_cli osd stat 2>&1)"
    sleep 0.3
  done
  timeout 20 rados -c "$conf" -p "$pool" rm platter-cluster-ready >/dev/null 2>&1 || true
}

print_env() {
  echo "export CEPH_CONF=$conf"
  echo "export PLATTER_CEPH_POOL=$pool"
  echo "export PLATTER_CEPH_ID=admin"
}

stop() {
  local names=() name pid
  [[ -d $dir/run ]] || return 0
  for file in "$dir"/run/*.pid; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .pid)
    pid=$(pid_of "$name")
    if [[ -n $pid ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name")
    fi
  done
  local deadline=$((SECONDS + 10))
  for name in "${names[@]}"; do
    while [[ -n $(pid_of "$name") ]] && ((SECONDS < deadline)); do sleep 0.1; done
    pid=$(pid_of "$name")
    if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

case $command in
  start)
    command -v ceph-mon >/dev/null || die "ceph-mon not installed (scripts/install-test-deps.sh installs it)"
    if [[ -e $dir/created ]]; then
      start_mon
      for ((id = 0; id < osd_count; id++)); do start_osd "$id"; done
    else
      [[ ! -e $conf ]] || die "$dir holds a half-created cluster: stop it and remove the directory"
      create || { stop; exit 1; }
    fi
    wait_usable || { stop; exit 1; }
    print_env
    ;;
  stop) stop ;;
  env) [[ -e $conf ]] || die "no cluster in $dir"; print_env ;;
  kill-osd)
    (($# == 3)) || usage
    pid=$(pid_of "osd.$3")
    [[ -n $pid ]] || die "osd.$3 is not running"
    kill -KILL "$pid"
    # Wait until it is gone: a start-osd right after would otherwise still see it running and start nothing.
    for _ in $(seq 1 300); do
      [[ -z $(pid_of "osd.$3") ]] && exit 0
      sleep 0.1
    done
    die "osd.$3 (pid $pid) did not exit within 30 s of SIGKILL"
    ;;
  start-osd) (($# == 3)) || usage; start_osd "$3" ;;
  status) ceph_cli status ;;
  *) usage ;;
esac
