#!/usr/bin/env bash
# Encode the 1080p H.264 clip the GPU decode benchmark reads (benchmarks/gpu/decode_throughput.py).
#
#   bash benchmarks/gpu/make_clip.sh OUTPUT.mp4 [FRAMES] [BFRAMES]
#
# Source: the 1920x1080 MOT17-04 frames of the shared assets (KUBEVISION_ASSETS, else
# ../shared/assets next to the repository). There are only 8 of them, so they are looped to
# FRAMES (default 300) with a slow pan and light temporal noise: without that, x264 would code
# the repeats as near-empty frames and the clip would be far cheaper to decode than a camera's.
# Output: H.264 High, yuv420p, BT.709 limited range (converted and tagged), 30 fps, a key frame
# every 30 frames, ~8 Mbit/s (a typical 1080p30 camera), MP4 with the index at the front.
# BFRAMES (default 2) B-frames between references; 0 gives the IPPP stream most cameras send
# (NVDEC then decodes in its low-latency mode, see worker/nvdec.py).
set -euo pipefail

out=${1:?usage: make_clip.sh OUTPUT.mp4 [FRAMES] [BFRAMES]}
frames=${2:-300}
bframes=${3:-2}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
assets=${KUBEVISION_ASSETS:-$root/../shared/assets}
images=$assets/mot/MOT17-mini/MOT17-04-FRCNN/img1
command -v ffmpeg >/dev/null || { echo "make_clip.sh: ffmpeg is not installed" >&2; exit 1; }
[ -f "$images/000001.jpg" ] || { echo "make_clip.sh: no frames in $images" >&2; exit 1; }

# Pan: scale up 10% and move the 1920x1080 window 1 px per frame (wrapping), then noise.
filters="scale=2112:1188,crop=1920:1080:'mod(n,192)':'mod(n,108)',noise=alls=6:allf=t"
filters+=",scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"

mkdir -p "$(dirname "$out")"
ffmpeg -hide_banner -loglevel error -y \
  -stream_loop -1 -framerate 30 -i "$images/%06d.jpg" \
  -vf "$filters" -frames:v "$frames" \
  -c:v libx264 -preset medium -profile:v high -pix_fmt yuv420p \
  -g 30 -keyint_min 30 -sc_threshold 0 -bf "$bframes" \
  -b:v 8M -maxrate 8M -bufsize 16M \
  -colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv \
  -movflags +faststart -an "$out"
echo "wrote $out"
