#!/usr/bin/env bash
# Runs the Platter server on the default embedded store (created on first run). Extra arguments go to
# `platter serve`, e.g. scripts/serve.sh --store /srv/platter --listen 127.0.0.1:10809 (NBD on TCP is off by default)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "serve.sh: $*" >&2; }

if ! dpkg-query -W -f='${Status}' liblmdb0 2>/dev/null | grep -q "install ok installed"; then
  say "installing liblmdb0 (the metadata store's library)"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends liblmdb0
fi

# A first build restores packages and compiles six projects: about a minute and a half on two cores. Show it.
say "building src/Platter.Cli (Release; the first build takes a minute or two, later ones seconds)"
dotnet build src/Platter.Cli -c Release -nologo -v minimal -clp:NoSummary >&2
say "starting: platter serve $*"
exec src/Platter.Cli/bin/Release/net10.0/platter serve "$@"
