#!/usr/bin/env bash
# Fetch a real tritonserver (with its Python backend) for the Triton backend's tests.
#
# NVIDIA ships no standalone CPU build, but the nvidia-pytriton wheel carries one: the binary,
# its bundled libraries, the Python backend and a backend stub per Python version. The wheel is
# only downloaded (hash pinned) and unpacked, never pip-installed into the project's venv.
# The backend stub embeds Python through a pybind11 that predates NumPy 2 (tensors handed to it
# by a NumPy 2 model come back empty), so the models it serves run in a virtualenv of their
# own with NumPy 1.x and ONNX Runtime. Both go to a cache keyed by version; a warm run costs
# nothing:
#   $KUBEVISION_CACHE/toolchain/tritonserver-pytriton-<version>/pytriton/tritonserver/bin/tritonserver
#   $KUBEVISION_CACHE/toolchain/triton-python-py<X.Y>-onnxruntime-<v>-numpy-<v>/bin/python
# Prints the two directories on stdout (one per line); with --where it only prints them,
# fetching nothing (tests use that to find them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KUBEVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevision}
log() { echo "[toolchain] $*" >&2; }

version=0.7.0
# nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl (the only Linux x86-64 build)
sha256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
onnxruntime_version=1.31.1
numpy_version=1.26.4
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
dir="$cache/toolchain/tritonserver-pytriton-$version"
env_dir="$cache/toolchain/triton-python-py$python_version-onnxruntime-$onnxruntime_version-numpy-$numpy_version"

if [ "${1:-}" = --where ]; then
  echo "$dir"
  echo "$env_dir"
  exit 0
fi

# unpack WHEEL DIR: extract, keeping the executable bits the wheel records (zipfile drops them).
unpack() {
  "$python" - "$1" "$2" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for info in archive.infolist():
        path = Path(archive.extract(info, out))
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            path.chmod(mode & 0o755)  # the wheel records 0777
EOF
}

fetch_server() {
  local wheels="$cache/wheels" requirement wheel tmp="$dir.partial" binary
  if [ "$(uname -m)" != x86_64 ]; then
    log "pytriton's tritonserver is built for x86-64 only, not $(uname -m)"
    exit 1
  fi
  mkdir -p "$wheels"
  requirement=$(mktemp)
  echo "nvidia-pytriton==$version --hash=sha256:$sha256" >"$requirement"
  log "pip download nvidia-pytriton==$version"
  "$python" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
    -d "$wheels" -r "$requirement"
  rm -f "$requirement"
  wheel=$(ls "$wheels"/nvidia_pytriton-"$version"-*.whl)
  rm -rf "$tmp" && mkdir -p "$tmp"
  unpack "$wheel" "$tmp"
  for binary in "$tmp"/pytriton/tritonserver/bin/tritonserver \
    "$tmp"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub; do
    [ -x "$binary" ] || { log "$binary is not executable after unpacking $wheel"; exit 1; }
  done
  rm -rf "$dir" && mv "$tmp" "$dir"
}

# A virtualenv cannot be moved once made, so a stamp written last marks a complete one.
make_python_env() {
  rm -rf "$env_dir"
  log "python $python_version env: onnxruntime $onnxruntime_version, numpy $numpy_version"
  "$python" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --disable-pip-version-check \
    "onnxruntime==$onnxruntime_version" "numpy==$numpy_version"
  touch "$env_dir/.complete"
}

if [ -x "$dir/pytriton/tritonserver/bin/tritonserver" ] && [ "${FORCE:-0}" != 1 ]; then
  log "tritonserver (pytriton $version) cached in $dir"
else
  start=$SECONDS
  fetch_server
  log "tritonserver (pytriton $version) unpacked to $dir in $((SECONDS - start)) s"
fi
if [ -f "$env_dir/.complete" ] && [ "${FORCE:-0}" != 1 ]; then
  log "python backend env cached in $env_dir"
else
  start=$SECONDS
  make_python_env
  log "python backend env made in $((SECONDS - start)) s"
fi
echo "$dir"
echo "$env_dir"
