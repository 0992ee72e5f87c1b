#!/usr/bin/env bash
# Builds a tiny Linux guest (kernel + initramfs) from Debian packages for the NBD disk test.
#
# The kernel comes from the package linux-image-amd64 depends on, the shell and tools from
# busybox-static, and mke2fs/e2fsck from e2fsprogs with the shared libraries they need (taken from
# the Debian packages, not from the host, so the guest does not depend on what the host has
# installed). Nothing is committed: outputs are cached under the cache directory, keyed by the
# package versions and this script's own hash, so a rebuild happens only when one of them changes.
#
# Usage: build-guest.sh [--cache DIR]
#   Prints on stdout (and nothing else):
#     kernel=/abs/path/vmlinuz
#     initrd=/abs/path/initrd.img
#     key=<cache key>
#   Progress and errors go to stderr. Exit code 0 on success.
#
# The guest's /init reads platter.mode= from the kernel command line:
#   write   first boot: raw-disk pattern write/verify, mkfs.ext4, write files, sync, umount, e2fsck -fn
#   verify  later boot: mount, check every file against checksums fixed at build time, add a marker,
#           umount, e2fsck -fn
#   probe   no disk I/O: just report PASS (used to find out whether KVM can run this kernel)
# and prints "PLATTER-GUEST: PASS" or "PLATTER-GUEST: FAIL <reason>" on the console (ttyS0), then
# powers off.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$repo/.cache/guest"

while [ $# -gt 0 ]; do
  case "$1" in
    --cache) cache="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build-guest.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

# --- host tools --------------------------------------------------------------------------------
# cpio packs the initramfs, kmod's depmod resolves module dependencies, qemu-system-x86 boots the
# guest (the test needs it right after this script; installing it here keeps one place for setup).
need_pkgs=()
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need_pkgs+=(kmod)
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v readelf >/dev/null || need_pkgs+=(binutils)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing host packages (${need_pkgs[*]}) and not root to install them"
  log "installing host packages: ${need_pkgs[*]}"
  timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2 \
    || { timeout 300 apt-get update >&2 || true
         timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; } \
    || die "apt-get install ${need_pkgs[*]} failed"
fi
DEPMOD=$(command -v depmod || echo /sbin/depmod)

# --- resolve package versions ------------------------------------------------------------------
bb=$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$bb" ] || [ "$bb" = "(none)" ]; then
  log "apt lists do not know busybox-static; running apt-get update"
  timeout 300 apt-get update >&2 || die "apt-get update failed"
fi

# The metapackage only depends on the real, versioned kernel package: resolve it.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
kver=${kpkg#linux-image-}

# e2fsprogs' own library dependencies (Pre-Depends/Depends on lib*), plus libc6 for the loader.
e2libs=$(apt-cache depends e2fsprogs 2>/dev/null | awk '/(Pre)?Depends: lib/ {print $2}' | sort -u)
pkgs=("$kpkg" busybox-static e2fsprogs libc6 $e2libs)
pkgs=($(printf '%s\n' "${pkgs[@]}" | sort -u))

# One apt-cache call for all candidates: each call costs a fraction of a second on a busy machine.
declare -A cand=()
while read -r p v; do cand[$p]=$v; done < <(apt-cache policy "${pkgs[@]}" 2>/dev/null |
  awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /Candidate:/ {print p, $2}')
versions=""
for p in "${pkgs[@]}"; do
  v=${cand[$p]:-}
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no installable version of $p"
  versions+="$p=$v "
done
key=$(printf '%s\n%s\n' "$versions" "$(cat "$0" "$here/guest-init.sh" | sha256sum | cut -d' ' -f1)" | sha256sum | cut -c1-16)
out="$cache/$key"

if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
  log "cached: $out"
  echo "kernel=$out/vmlinuz"; echo "initrd=$out/initrd.img"; echo "key=$key"
  exit 0
fi

log "building guest $key from: $versions"
mkdir -p "$cache/debs"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- download and unpack -----------------------------------------------------------------------
# apt-get download writes into the current directory; run as _apt it cannot write root-owned
# directories, which only produces a warning, so the directory is made world-writable.
chmod 0777 "$cache/debs"
# apt-get download names files <pkg>_<version with ':' as %3a>_<arch>.deb.
deb_of() { local v=${cand[$1]}; echo "$cache/debs/${1}_${v//:/%3a}_amd64.deb"; }
for p in "${pkgs[@]}"; do
  if [ ! -s "$(deb_of "$p")" ]; then
    (cd "$cache/debs" && timeout 600 apt-get download "$p=${cand[$p]}" >&2) || die "apt-get download $p failed"
  fi
  [ -s "$(deb_of "$p")" ] || die "apt-get download $p did not produce $(deb_of "$p")"
done
mkdir -p "$work/pkg"
for p in "${pkgs[@]}"; do dpkg-deb -x "$(deb_of "$p")" "$work/pkg"; done
pkg="$work/pkg"
[ -f "$pkg/boot/vmlinuz-$kver" ] || die "kernel image vmlinuz-$kver missing from $kpkg"

# --- initramfs tree ----------------------------------------------------------------------------
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,mnt,tmp,etc,data,e2fs,lib/x86_64-linux-gnu,lib64,lib/modules}
cp "$pkg/bin/busybox" "$ird/bin/busybox"

# e2fsprogs binaries live apart from busybox's applets on purpose: busybox's mke2fs is ext2-only,
# and the guest calls these by full path so an applet can never stand in for them.
cp "$pkg/sbin/mke2fs" "$pkg/sbin/e2fsck" "$ird/e2fs/"
[ -f "$pkg/etc/mke2fs.conf" ] && cp "$pkg/etc/mke2fs.conf" "$ird/etc/"

# Copy the shared libraries the binaries need, resolved recursively inside the unpacked packages.
find_lib() {
  local d
  for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
    [ -e "$pkg/$d/$1" ] && { echo "$pkg/$d/$1"; return 0; }
  done
  return 1
}
declare -A have=()
add_libs() {
  local lib path
  for lib in $(readelf -d "$1" | awk '/NEEDED/ {gsub(/[\[\]]/, "", $5); print $5}'); do
    [ -n "${have[$lib]:-}" ] && continue
    path=$(find_lib "$lib") || die "library $lib (needed by $(basename "$1")) is not in the unpacked packages"
    have[$lib]=1
    cp -L "$path" "$ird/lib/x86_64-linux-gnu/$lib"
    add_libs "$path"
  done
}
add_libs "$ird/e2fs/mke2fs"
add_libs "$ird/e2fs/e2fsck"
cp -L "$(find_lib ld-linux-x86-64.so.2)" "$ird/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ird/lib64/ld-linux-x86-64.so.2"

# Kernel modules: the Debian kernel builds virtio_pci, virtio_blk and ext4 as modules. depmod on
# the unpacked tree gives modules.dep; load order is a depth-first walk of it. ext4 and jbd2 also
# have a soft dependency on the crc32c crypto algorithm, satisfied by crc32c_generic (crc32c-intel
# needs SSE4.2, which TCG's default CPU does not have).
"$DEPMOD" -b "$pkg" "$kver" || die "depmod -b failed"
moddep="$pkg/lib/modules/$kver/modules.dep"
declare -A modpath=() loaded=()
while IFS=: read -r m deps; do
  name=$(basename "$m" .ko); name=${name//-/_}
  modpath[$name]="$m:$deps"
done < "$moddep"
order=()
add_mod() {
  local name=${1//-/_} entry m dep
  [ -n "${loaded[$name]:-}" ] && return 0
  entry=${modpath[$name]:-}
  [ -n "$entry" ] || die "module $1 not found in modules.dep"
  m=${entry%%:*}
  for dep in ${entry#*:}; do add_mod "$(basename "$dep" .ko)"; done
  loaded[$name]=1
  order+=("$m")
}
for want in virtio_pci virtio_blk crc32c_generic ext4; do add_mod "$want"; done
: > "$ird/etc/modules.order"
for m in "${order[@]}"; do
  mkdir -p "$ird/lib/modules/$(dirname "$m")"
  cp "$pkg/lib/modules/$kver/$m" "$ird/lib/modules/$m"
  echo "$m" >> "$ird/etc/modules.order"
done
log "modules: $(tr '\n' ' ' < "$ird/etc/modules.order")"

# Test data with checksums fixed at build time: the second boot compares what it reads from the
# disk against these, not against anything the first boot wrote.
head -c $((4 * 1024 * 1024)) /dev/urandom > "$ird/data/blob"
(
  cd "$work"
  cp "$ird/data/blob" blob.bin
  head -c 1048699 blob.bin > odd.bin            # not a multiple of the block size
  for i in 1 2 3 4 5 6 7 8; do cat blob.bin; done > big.bin
  sha256sum blob.bin odd.bin big.bin > "$ird/data/files.sha256"
  sha256sum blob.bin | cut -d' ' -f1 > "$ird/data/blob.sha256"
  rm -f blob.bin odd.bin big.bin
)

cp "$here/guest-init.sh" "$ird/init"
chmod 0755 "$ird/init"

mkdir -p "$out.tmp"
(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 > "$out.tmp/initrd.img"
cp "$pkg/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
printf '%s\n' $versions > "$out.tmp/packages"
rm -rf "$out"
mv "$out.tmp" "$out"
# Older builds (other package versions or script revisions) are dead weight: keep only this one.
for d in "$cache"/????????????????; do
  [ "$d" != "$out" ] && [ -f "$d/packages" ] && rm -rf "$d"
done
log "built $out ($(du -h "$out/initrd.img" | cut -f1) initramfs)"
echo "kernel=$out/vmlinuz"; echo "initrd=$out/initrd.img"; echo "key=$key"
