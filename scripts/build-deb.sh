#!/usr/bin/env bash
# Builds platter_VERSION_amd64.deb: the platter command published with Native AOT for linux-x64 (/usr/bin/platter,
# one native executable, no .NET runtime needed), the systemd units (/lib/systemd/system), a sample
# /etc/platter/platter.conf and the --help text of every command (/usr/share/doc/platter/help.txt, also `man`-less
# `platter CMD --help`), and maintainer scripts (packaging/debian/) that restart a running service on the new binary
# after an upgrade.
#
#   scripts/build-deb.sh [--out DIR] [--binary FILE] [--version VERSION] [--compression xz|gzip|none]
#   scripts/build-deb.sh --publish-only DIR
#
#   --out DIR            where the .deb goes (default: artifacts/)
#   --binary FILE        package this already published binary instead of publishing (tests reuse one publish)
#   --version VERSION    the package version (default: the binary's --version); the upgrade test packages one binary
#                        twice, the second time as a newer version
#   --compression TYPE   dpkg-deb's compression (default xz, the smallest; gzip builds in a seventh of the CPU time,
#                        for tests)
#   --publish-only DIR   publish the Native AOT binary to DIR/platter and stop (scripts/test.sh publishes once,
#                        packages that binary and runs tests against it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out="$repo/artifacts"
binary=""
version=""
compression=xz
publish_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --compression) compression="$2"; shift 2 ;;
    --publish-only) publish_only="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-deb: $*" >&2; }
command -v dpkg-deb >/dev/null || { say "dpkg-deb not found (package dpkg)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

publish() {
  # Native AOT: one native executable that starts a command in milliseconds (docs/PERFORMANCE.md). The trim and AOT
  # analyzers run as part of it with warnings as errors (Directory.Build.props), so a publish that succeeds has no
  # code AOT cannot keep. --artifacts-path keeps its intermediate files out of the tree's bin/ and obj/: tests building
  # beside a publish must never see their shared outputs rewritten.
  say "publishing src/Platter.Cli with Native AOT for linux-x64 (a few minutes on two cores)"
  dotnet publish src/Platter.Cli -c Release -r linux-x64 -p:PublishAot=true \
    --artifacts-path "$work/artifacts" -nologo -v minimal -o "$1" >&2
  [ -x "$1/platter" ] || { say "the publish left no executable at $1/platter"; exit 1; }
}

if [ -n "$publish_only" ]; then
  mkdir -p "$publish_only"
  publish "$work/publish"
  install -m 0755 "$work/publish/platter" "$publish_only/platter"
  say "published $publish_only/platter"
  echo "$publish_only/platter"
  exit 0
fi

if [ -z "$binary" ]; then
  publish "$work/publish"
  binary="$work/publish/platter"
fi
[ -x "$binary" ] || { say "no executable at $binary"; exit 1; }

[ -n "$version" ] || version=$("$binary" --version | head -n1 | sed 's/+.*//')
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
 libvirt, qemu-img and the libnbd tools. One native binary (no .NET runtime),
 systemd units with socket activation for restarts guests do not notice.
CONTROL
echo "/etc/platter/platter.conf" > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/platter_${version}_amd64.deb"
dpkg-deb --root-owner-group "-Z$compression" --build "$root" "$deb" >&2
say "built $deb"
echo "$deb"
