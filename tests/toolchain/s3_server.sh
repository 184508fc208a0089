#!/usr/bin/env bash
# An S3-compatible HTTP server for the artifact tests: moto's server (Flask), run as its own
# process on a loopback port by tests/envtest/s3.py.
#
# moto needs boto3/botocore, whose python-dateutil<3 cannot live beside the kubernetes 37
# client (python-dateutil>=3) in the project's venv, so the server gets a virtualenv of its own,
# cached by version; a warm run costs nothing:
#   $KUBEVISION_CACHE/toolchain/moto-server-<version>/bin/moto_server
# Prints that directory on stdout; with --where it only prints it, installing nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KUBEVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevision}
log() { echo "[toolchain] $*" >&2; }

version=5.2.5
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
dir="$cache/toolchain/moto-server-$version"

if [ "${1:-}" = --where ]; then
  echo "$dir"
  exit 0
fi

# A virtualenv cannot be moved once made, so a stamp written last marks a complete one.
if [ -f "$dir/.complete" ] && [ "${FORCE:-0}" != 1 ]; then
  log "moto server $version cached in $dir"
else
  start=$SECONDS
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$version"
  [ -x "$dir/bin/moto_server" ] || { log "moto_server missing after installing moto $version"; exit 1; }
  touch "$dir/.complete"
  log "moto server $version installed in $dir in $((SECONDS - start)) s"
fi
echo "$dir"
