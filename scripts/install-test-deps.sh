#!/usr/bin/env bash
# Installs the Debian packages the tests use, only those that are missing (apt-get update only when installing).
#   liblmdb0        the metadata store's library (also needed to run the server)
#   qemu-utils      qemu-img, qemu-io, qemu-nbd: interop clients and the reference server in benchmarks
#   libnbd-bin      nbdinfo, nbdcopy          python3-libnbd  nbdsh
#   fio             the nbd engine for verification and benchmarks
#   nbdkit          a reference NBD server
#   qemu-system-x86, busybox-static, e2fsprogs: a Linux guest booted on a Platter volume (and attach's output opened by QEMU)
#   libvirt-clients, libxml2-utils: virt-xml-validate checks attach's libvirt XML against the installed libvirt's schema
#   prometheus      promtool, which checks /metrics as Prometheus parses it (the daemon is not started)
#   chromium        the headless browser the dashboard test drives through Playwright
#   ceph-mon, ceph-osd, ceph-common: the one-host Ceph cluster of scripts/ceph-cluster.sh (the `rbd` and `ceph` CLIs)
#   librbd1, librados2: the RBD store's libraries (also needed to run the server with --store rbd:POOL)
#   systemd         systemd-analyze, which checks the unit files in packaging/systemd (no daemon is started)
#   qemu-block-extra: the rbd: driver of qemu-img/qemu-io/qemu-nbd (interop tests and the benchmark's reference)
set -euo pipefail

packages=(liblmdb0 qemu-utils libnbd-bin python3-libnbd fio nbdkit qemu-system-x86 busybox-static e2fsprogs
  libvirt-clients libxml2-utils prometheus chromium systemd
  ceph-mon ceph-osd ceph-common librbd1 librados2 qemu-block-extra)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "installing: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
