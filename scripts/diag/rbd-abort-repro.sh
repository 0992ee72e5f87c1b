#!/bin/bash
# Reproduces the librbd abort of issue 10 ("terminate called after throwing an instance of 'std::system_error'
# what(): Invalid argument") against a cluster from scripts/ceph-cluster.sh, with the thrower's stack.
#
#   scripts/diag/rbd-abort-repro.sh PLATTER_DLL CEPH_DIR [ITERATIONS] [WORKERS] [BUSY]
#
# Runs `platter serve --store rbd:rbd` with glibc's MALLOC_PERTURB_ (freed memory is overwritten, so a mutex locked
# after its object was freed fails at once with EINVAL instead of working by luck) and throwtrap.so preloaded (aborts
# at the throw, printing the stack). WORKERS loops each do, ITERATIONS times: qemu-io write + flush over NBD, then
# `platter snapshot create` (the CI failure's sequence), then three `nbdinfo` probes (a served volume opened, locked
# and closed again within a moment: session 12's CI failure). BUSY (default 0) spins that many busy loops beside them,
# so librbd's threads wait for a CPU and the race's window widens. Prints whether the server survived and any trap
# output.
# A diagnostic, not a test: it needs gcc, qemu-io, rbd and a running cluster.
set -u
DLL=$(realpath "$1"); CEPH_DIR=$(realpath "$2"); N=${3:-50}; W=${4:-2}; BUSY=${5:-0}
export CEPH_CONF=$CEPH_DIR/ceph.conf
WORK=$(mktemp -d /tmp/rbd-abort.XXXXXX)
gcc -shared -fPIC -O1 -o "$WORK/throwtrap.so" "$(dirname "$0")/throwtrap.c" || exit 2
ulimit -c unlimited
LD_PRELOAD=$WORK/throwtrap.so MALLOC_PERTURB_=165 dotnet "$DLL" serve --store rbd:rbd \
    --socket "$WORK/nbd.sock" --api-socket "$WORK/api.sock" > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 300); do [ -S "$WORK/api.sock" ] && [ -S "$WORK/nbd.sock" ] && break; kill -0 $SERVER 2>/dev/null || break; sleep 0.2; done
worker() {
    local name=abort$$w$1
    rbd create --size 64M "rbd/$name"
    for i in $(seq "$N"); do
        kill -0 $SERVER 2>/dev/null || return 1
        qemu-io -f raw -c "write -P 0x22 8M 64k" -c flush "nbd+unix:///$name?socket=$WORK/nbd.sock" > /dev/null 2>> "$WORK/qemu.err"
        dotnet "$DLL" snapshot create "$name@s$i" --api-socket "$WORK/api.sock" >> "$WORK/cli.log" 2>&1
        for _ in 1 2 3; do nbdinfo --size "nbd+unix:///$name?socket=$WORK/nbd.sock" > /dev/null 2>> "$WORK/qemu.err"; done
    done
    rbd snap purge "rbd/$name" > /dev/null 2>&1; rbd rm "rbd/$name" > /dev/null 2>&1
}
busy=()
for _ in $(seq "$BUSY"); do (while :; do :; done) & busy+=($!); done
pids=()
for w in $(seq "$W"); do worker "$w" & pids+=($!); done
wait "${pids[@]}"
[ ${#busy[@]} -gt 0 ] && kill "${busy[@]}"
if kill -0 $SERVER 2>/dev/null; then
    echo "server survived $W x $N iterations"; kill $SERVER; wait $SERVER
else
    wait $SERVER; echo "server DIED (exit $?)"
fi
grep -A20 '^throwtrap:' "$WORK/server.log" || true
grep -m1 -B1 'terminate called' "$WORK/server.log" || true
echo "logs: $WORK"
