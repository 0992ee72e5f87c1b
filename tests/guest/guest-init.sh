#!/bin/busybox sh
# /init of the Platter test guest (packed into the initramfs by build-guest.sh).
# Mode from the kernel command line: platter.mode=write|verify|probe|io (verify also takes
# platter.markers=N: how many earlier verify boots left their marker on the disk; io runs write/read-back rounds
# on the raw disk until the host writes 'S' bytes to the control block at 32 MiB, for at most platter.iosecs). Reports exactly
# one "PLATTER-GUEST: PASS" or "PLATTER-GUEST: FAIL <reason>" line on the console, then powers off.

/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node of its own (building it would need mknod), so the kernel
# may have started us without stdio: attach to the console now that devtmpfs provides it.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys

say() { echo "PLATTER-GUEST: $*"; }
finish() {
  sync
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
}
fail() { say "FAIL $*"; finish; }
pass() { say "uptime $(cut -d' ' -f1 /proc/uptime) s"; say "PASS"; finish; }

mode=
markers=
iosecs=
for w in $(cat /proc/cmdline); do
  case "$w" in
    platter.mode=*) mode=${w#platter.mode=} ;;
    platter.markers=*) markers=${w#platter.markers=} ;;
    platter.iosecs=*) iosecs=${w#platter.iosecs=} ;;
  esac
done
say "init mode=${mode:-none} uptime $(cut -d' ' -f1 /proc/uptime) s"

[ "$mode" = probe ] && pass
case "$mode" in write|verify|io) ;; *) fail "unknown mode '$mode'" ;; esac

while read -r m; do
  insmod "/lib/modules/$m" || fail "insmod $m"
done < /etc/modules.order

i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -gt 100 ] && fail "no /dev/vda after 10 s"
  sleep 0.1
done
size=$(blockdev --getsize64 /dev/vda) || fail "blockdev --getsize64"
say "disk /dev/vda size $size"
[ "$size" -ge $((64 * 1024 * 1024)) ] || fail "disk too small: $size"

MKE2FS=/e2fs/mke2fs
E2FSCK=/e2fs/e2fsck
MiB=$((1024 * 1024))
blob_sum=$(cat /data/blob.sha256)

# Read back from the disk, not from the page cache.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

fsck_clean() {
  $E2FSCK -fn /dev/vda > /tmp/fsck.log 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    cat /tmp/fsck.log
    fail "e2fsck -fn exit $rc"
  fi
  say "e2fsck -fn clean"
}

small_file_text() { echo "platter guest small file $1 $(seq -s ' ' $1 $(($1 + 20)))"; }

if [ "$mode" = io ]; then
  # Synchronous direct I/O in rounds while the host restarts the server underneath: every write is followed by
  # fsync and read back from the disk, so an I/O error or a lost write during a restart fails the round. The host
  # ends the loop by filling the control block (4 KiB at 32 MiB) with 'S'.
  slots=32
  base=64
  control=$((32 * 256))
  dd if=/dev/zero of=/dev/vda bs=4k seek=$control count=1 oflag=direct conv=notrunc,fsync status=none || fail "clear control block"
  for c in 0 1 2 3; do
    dd if=/data/blob of=/tmp/chunk.$c bs=1M skip=$c count=1 status=none || fail "chunk $c"
    sha256sum < /tmp/chunk.$c | cut -d' ' -f1 > /tmp/chunk.$c.sum
  done
  start=$(cut -d. -f1 /proc/uptime)
  r=0
  say "io loop started"
  while :; do
    dd if=/dev/vda of=/tmp/control bs=4k skip=$control count=1 iflag=direct status=none || fail "read error on control block in io round $r"
    [ "$(head -c 1 /tmp/control)" = S ] && break
    [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt ${iosecs:-300} ] || fail "no stop from the host within ${iosecs:-300} s"
    slot=$((r % slots))
    c=$((r % 4))
    dd if=/tmp/chunk.$c of=/dev/vda bs=1M seek=$((base + slot)) count=1 oflag=direct conv=notrunc,fsync status=none \
      || fail "write error in io round $r"
    dd if=/dev/vda of=/tmp/readback bs=1M skip=$((base + slot)) count=1 iflag=direct status=none || fail "read error in io round $r"
    [ "$(sha256sum < /tmp/readback | cut -d' ' -f1)" = "$(cat /tmp/chunk.$c.sum)" ] || fail "io round $r: read back differs"
    echo $c > /tmp/slot.$slot
    r=$((r + 1))
    say "io round $r"
  done
  drop_caches
  for slot in $(seq 0 $((slots - 1))); do
    [ -f /tmp/slot.$slot ] || continue
    c=$(cat /tmp/slot.$slot)
    dd if=/dev/vda of=/tmp/readback bs=1M skip=$((base + slot)) count=1 iflag=direct status=none || fail "final read of slot $slot"
    [ "$(sha256sum < /tmp/readback | cut -d' ' -f1)" = "$(cat /tmp/chunk.$c.sum)" ] || fail "slot $slot differs at the end"
  done
  dmesg | grep -iE "i/o error|blk_update_request" && fail "the kernel logged I/O errors"
  say "io rounds $r verified"
  pass
fi

if [ "$mode" = write ]; then
  # 1. Raw pattern at the start, the middle and the last 4 MiB of the disk, written and read with
  #    O_DIRECT so both go through the NBD server.
  mid=$(( (size / 2) / MiB ))
  last=$(( size / MiB - 4 ))
  for off in 0 $mid $last; do
    dd if=/data/blob of=/dev/vda bs=1M seek=$off oflag=direct conv=notrunc,fsync status=none \
      || fail "raw write at ${off} MiB"
  done
  drop_caches
  for off in 0 $mid $last; do
    got=$(dd if=/dev/vda bs=1M skip=$off count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
    [ "$got" = "$blob_sum" ] || fail "raw pattern mismatch at ${off} MiB"
  done
  say "raw pattern ok at 0, $mid, $last MiB"

  # 2. File system.
  $MKE2FS -t ext4 -F -q /dev/vda > /tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; fail "mkfs.ext4"; }
  mount -t ext4 /dev/vda /mnt || fail "mount after mkfs"
  cp /data/blob /mnt/blob.bin || fail "write blob.bin"
  head -c 1048699 /data/blob > /mnt/odd.bin || fail "write odd.bin"
  for i in 1 2 3 4 5 6 7 8; do cat /data/blob; done > /mnt/big.bin || fail "write big.bin"
  mkdir /mnt/tree || fail "mkdir tree"
  for i in $(seq 1 200); do small_file_text $i > /mnt/tree/f$i || fail "write tree/f$i"; done
  sync
  umount /mnt || fail "umount"
  drop_caches
  mount -t ext4 -o ro /dev/vda /mnt || fail "remount ro"
  (cd /mnt && sha256sum -c -s /data/files.sha256) || fail "files differ after remount"
  umount /mnt || fail "umount ro"
  fsck_clean
  pass
fi

# verify: a later boot must find every file as the first boot left it.
mount -t ext4 /dev/vda /mnt || fail "mount existing file system"
(cd /mnt && sha256sum -c /data/files.sha256) || fail "file checksums differ"
for i in $(seq 1 200); do
  [ "$(cat /mnt/tree/f$i 2>/dev/null)" = "$(small_file_text $i)" ] || fail "tree/f$i differs"
done
say "all files intact"
# Each verify boot leaves a marker; the caller says how many earlier boots' markers must be there.
n=$(ls /mnt | grep -c '^boot-marker-' || true)
[ -z "$markers" ] || [ "$n" = "$markers" ] || fail "found $n boot markers, expected $markers"
echo "boot $n" > /mnt/boot-marker-$n || fail "write marker"
sync
umount /mnt || fail "umount"
fsck_clean
pass
