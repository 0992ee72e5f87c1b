#!/usr/bin/env bash
# Builds platter_VERSION_amd64.deb: the platter command published as one self-contained single-file binary for
# linux-x64 (/usr/bin/platter), the systemd units (/lib/systemd/system), a sample /etc/platter/platter.conf and the
# --help text of every command (/usr/share/doc/platter/help.txt, also `man`-less `platter CMD --help`).
#
#   scripts/build-deb.sh [--out DIR] [--binary FILE]
#
#   --out DIR       where the .deb goes (default: artifacts/)
#   --binary FILE   package this already published binary instead of publishing (tests reuse one publish)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out="$repo/artifacts"
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-deb: $*" >&2; }
command -v dpkg-deb >/dev/null || { say "dpkg-deb not found (package dpkg)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$binary" ]; then
  # Self-contained single file, not Native AOT: the management API's handlers are described for OpenAPI through
  # Delegate-typed minimal-API mappings, which need reflection that AOT cannot keep (the publish fails with IL2026/
  # IL3050). The binary still needs no .NET installed; it starts slower than an AOT build (docs/PERFORMANCE.md).
  say "publishing src/Platter.Cli self-contained for linux-x64 (a minute or two on two cores)"
  dotnet publish src/Platter.Cli -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true -p:PublishAot=false \
    -p:IncludeNativeLibrariesForSelfExtract=true --artifacts-path "$work/artifacts" -nologo -v minimal -o "$work/publish" >&2
  binary="$work/publish/platter"
fi
[ -x "$binary" ] || { say "no executable at $binary"; exit 1; }

version=$("$binary" --version | head -n1 | sed 's/+.*//')
[ -n "$version" ] || { say "$binary --version printed nothing"; exit 1; }
root="$work/root"
say "laying out platter $version"
install -D -m 0755 "$binary" "$root/usr/bin/platter"
for unit in platter.service platter-nbd.socket platter-api.socket; do
  install -D -m 0644 "packaging/systemd/$unit" "$root/lib/systemd/system/$unit"
done
install -D -m 0644 packaging/systemd/platter.conf "$root/etc/platter/platter.conf"

# The man-page-like help: every command's --help, from the binary being packaged.
doc="$root/usr/share/doc/platter"
mkdir -p "$doc"
{
  for cmd in "" serve "volume create" "volume list" "volume info" "volume resize" "volume rename" "volume delete" \
             "snapshot create" "snapshot list" "snapshot delete" clone rollback diff du attach check; do
    echo "================================================================"
    echo "platter $cmd --help"
    echo "================================================================"
    # shellcheck disable=SC2086 # the command words split on purpose
    "$binary" $cmd --help
    echo
  done
} > "$doc/help.txt"
cp README.md "$doc/README.md"

mkdir -p "$root/DEBIAN"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: platter
Version: $version
Architecture: amd64
Maintainer: Platter developers <platter@localhost>
Installed-Size: $size
Depends: libc6, liblmdb0
Recommends: qemu-utils
Section: admin
Priority: optional
Description: storage server for virtual machine disks over NBD
 Platter keeps thin-provisioned, checksummed, copy-on-write volumes with instant
 snapshots and clones in an embedded store and serves them over NBD to QEMU,
 libvirt, qemu-img and the libnbd tools. One self-contained binary,
 systemd units with socket activation for restarts guests do not notice.
CONTROL
echo "/etc/platter/platter.conf" > "$root/DEBIAN/conffiles"

mkdir -p "$out"
deb="$out/platter_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
say "built $deb"
echo "$deb"
