#!/usr/bin/env bash
# Runs the Platter server on the default embedded store (created on first run). Extra arguments go to
# `platter serve`, e.g. scripts/serve.sh --store /srv/platter --listen 0.0.0.0:10809
set -euo pipefail
cd "$(dirname "$0")/.."

# liblmdb0: the embedded store's metadata; qemu-utils: qemu-img, which `platter import`/`export` run.
missing=()
for p in liblmdb0 qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

exec dotnet run --project src/Platter.Cli -c Release -- serve "$@"
