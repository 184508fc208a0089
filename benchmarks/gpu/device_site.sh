#!/usr/bin/env bash
# The Python packages the GPU machine lacks, as one archive the device tool can carry (it has
# no network; its image has torch, numpy, opencv, onnx, onnxruntime, scipy, prometheus-client,
# rich, httpx, pyyaml, pytest). cp312 manylinux wheels at the versions the project's venv
# uses, unpacked into one site folder with PyNvVideoCodec's samples and sources left out, and
# packed with xz to stay under the 64 MiB a call carries.
#
#   bash benchmarks/gpu/device_site.sh [OUT]      (default .whl/site312.tar.xz)
set -euo pipefail
out=${1:-.whl/site312.tar.xz}
pip=${PIP:-.venv/bin/pip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$pip" download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$work/wheels" \
  av==18.1.0 pynvvideocodec==2.2.4 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  onnx2torch==1.5.15 filterpy==2.0.0 paho-mqtt==2.2.0 confluent-kafka==2.16.1 \
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 py-spy==0.4.3
mkdir -p "$work/site/bin"
for wheel in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$wheel" "$work/site"
done
# py-spy's wheel puts its binary under <name>.data/scripts
find "$work/site" -path '*.data/scripts/py-spy' -exec mv {} "$work/site/bin/py-spy" \;
chmod +x "$work/site/bin/py-spy"
# PyNvVideoCodec 2.2.4 also unpacks its samples and benchmarks at the top level (7 MB)
rm -rf "$work"/site/*.data "$work"/site/PyNvVideoCodec/Samples "$work"/site/PyNvVideoCodec/external \
  "$work"/site/samples "$work"/site/benchmarks
find "$work/site" -name '__pycache__' -prune -exec rm -rf {} +
mkdir -p "$(dirname "$out")"
tar -C "$work/site" -cf - . | xz -9 -T2 > "$out"
ls -l "$out"
