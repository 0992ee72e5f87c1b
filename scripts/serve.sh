#!/usr/bin/env bash
# Runs the Platter server on the default embedded store (created on first run). Extra arguments go to
# `platter serve`, e.g. scripts/serve.sh --store /srv/platter --listen 127.0.0.1:10809 (NBD on TCP is off by default)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' liblmdb0 2>/dev/null | grep -q "install ok installed"; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends liblmdb0
fi

exec dotnet run --project src/Platter.Cli -c Release -- serve "$@"
