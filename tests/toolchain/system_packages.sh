#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real, when any is missing.
#
# Real components the tests start on loopback ports: GStreamer's RTSP server (through the
# system python3-gi) fed by ffmpeg, mosquitto (MQTT) and prometheus + promtool; Maven fetches
# the Kafka broker's jars (tests/toolchain/kafka.sh), which run on the machine's Java. The tests run
# each binary themselves; the packages' system services are never used.
#
# As root this runs apt-get; otherwise it uses `sudo -n` where that works without a password,
# else it prints the one command to run and fails (a half-installed suite would skip tests).
# DRY_RUN=1 prints what it would install and changes nothing.
set -euo pipefail

packages=(
  ffmpeg
  maven
  mosquitto
  prometheus
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
)
log() { echo "[system-packages] $*" >&2; }

if ! command -v dpkg-query >/dev/null; then
  log "this is not a Debian/Ubuntu machine; install the equivalents of: ${packages[*]}"
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "all ${#packages[@]} Debian packages present"
  exit 0
fi

install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then
  log "would run: apt-get update && ${install[*]}"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  log "missing Debian packages: ${missing[*]}"
  log "run this once, then try again:"
  log "  sudo apt-get update && sudo ${install[*]}"
  exit 1
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "${install[@]}"
