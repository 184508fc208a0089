#!/usr/bin/env bash
# Build the operator and CPU worker images without a container daemon, from the same
# Dockerfiles `make test` lints, and write them as OCI archives:
#   .kubevision/images/operator.oci.tar    ghcr.io/kubevision/operator:<version>
#   .kubevision/images/worker-cpu.oci.tar  ghcr.io/kubevision/worker:<version>
#
# No registry is reachable here, so the Dockerfiles' base (python:<x.y.z>-slim-bookworm) is
# stood in for by a minimal Debian bookworm root filesystem made by mmdebstrap from Debian's
# packages (python3.11 + venv, ca-certificates, netbase, tzdata: what the official slim image
# adds to debian:bookworm-slim), imported into buildah's storage under the FROM's exact name.
# buildah then builds the Dockerfiles with --pull=never (chroot isolation: no daemon, no
# runtime) and pushes each image to an oci-archive. Where a registry is reachable, the same
# Dockerfiles build against the real base with `buildah build` or `docker build`.
#
# Everything lives under $KUBEVISION_CACHE/images (default ~/.cache/kubevision/images): the
# base rootfs tarball, cached by a key over the suite and package list (REFRESH_BASE=1 makes a
# new one), and buildah's own storage (overlay driver, its layer cache makes a second build
# fast). Global container storage (/var/lib/containers) is never touched. Build times and
# sizes go to .kubevision/images/builds.tsv. Needs root (mmdebstrap's chroot mode, overlay
# mounts); installs mmdebstrap and buildah with apt-get when missing.
#
# `images.sh env` prints the CONTAINERS_STORAGE_CONF line that points buildah/podman at this
# storage (what the smoke test uses).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KUBEVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevision}
state="$cache/images"
out="$repo/.kubevision/images"
log() { echo "[images] $*" >&2; }

suite=bookworm
mirror=http://deb.debian.org/debian
base_packages=(python3 python3-venv ca-certificates netbase tzdata)
tools=(mmdebstrap buildah podman runc)  # podman + runc: what `make images-smoke` runs them with

# One storage configuration file, so buildah here and podman in the smoke test share images.
export CONTAINERS_STORAGE_CONF="$state/storage.conf"
if [ "${1:-}" = env ]; then
  echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "needs root (mmdebstrap chroot mode, overlay storage): run it as root or with sudo"
  exit 1
fi

ensure_tools() {
  local missing=() tool
  for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

write_storage_conf() {
  mkdir -p "$state/storage" "$state/run"
  cat >"$CONTAINERS_STORAGE_CONF" <<EOF
# written by tests/toolchain/images.sh: KubeVision's private image storage
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "$state/run"
EOF
}

# The one base every Dockerfile built here names (they must agree, or the stand-in is wrong).
base_ref() {
  local refs
  refs=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$repo/operator/Dockerfile" "$repo/worker/Dockerfile" | sort -u)
  if [ "$(wc -l <<<"$refs")" -ne 1 ]; then
    log "operator/Dockerfile and worker/Dockerfile must share one base, found: $refs"
    exit 1
  fi
  echo "$refs"
}

base_key() {
  printf '%s\n' "$suite" "$mirror" minbase "${base_packages[@]}" | sha256sum | cut -c1-16
}

# make_base TARBALL: a minimal bookworm rootfs with Debian's python3.11, docs and manuals left
# out (as in the slim images); its package manifest goes beside it.
make_base() {
  local tarball=$1
  log "mmdebstrap $suite: ${base_packages[*]}"
  # shellcheck disable=SC2016  # $1 is the hook's argument (the chroot), expanded by mmdebstrap
  mmdebstrap --variant=minbase --format=tar --include="$(IFS=,; echo "${base_packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='chroot "$1" dpkg-query -W -f="\${Package}\t\${Version}\n" >"'"$tarball.manifest"'"' \
    "$suite" "$tarball.partial" "$mirror" >&2
  mv "$tarball.partial" "$tarball"
}

# import_base REF KEY: the cached rootfs as image REF, unless storage already has this key.
import_base() {
  local ref=$1 key=$2
  local tarball="$state/base-$suite-$key.tar" have
  have=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "io.kubevision.base-key"}}' "$ref" 2>/dev/null || true)
  if [ "$have" = "$key" ] && [ "${REFRESH_BASE:-0}" != 1 ]; then
    log "base $ref (stand-in $key) already in storage"
    return
  fi
  if [ ! -f "$tarball" ] || [ "${REFRESH_BASE:-0}" = 1 ]; then make_base "$tarball"; fi
  log "importing $tarball as $ref"
  local ctr=kubevision-base-import mnt
  buildah rm "$ctr" >/dev/null 2>&1 || true  # left over by an interrupted run
  buildah from --name "$ctr" scratch >/dev/null
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" -xf "$tarball"
  buildah umount "$ctr" >/dev/null
  buildah config --env LANG=C.UTF-8 --cmd '["python3"]' \
    --label io.kubevision.base-key="$key" \
    --label org.opencontainers.image.description="stand-in for $ref: Debian $suite by mmdebstrap" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
}

# Build-time only mounts that let pip trust the CA this machine's PyPI traffic goes through
# (PIP_CERT / SSL_CERT_FILE, e.g. a proxy's): RUN steps see them, the image keeps nothing.
pip_trust() {
  local ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
  [ -n "$ca" ] && [ -f "$ca" ] || return 0
  printf '[global]\ncert = /run/kubevision-build-ca.crt\n' >"$state/pip.conf"
  echo "--volume=$ca:/run/kubevision-build-ca.crt:ro" "--volume=$state/pip.conf:/etc/pip.conf:ro"
}

# buildah build DOCKERFILE TAG [OPTION...], reusing cached layers; no container outlives it.
build_one() {
  local dockerfile=$1 tag=$2
  shift 2
  # shellcheck disable=SC2046  # pip_trust's words are separate options
  buildah build --quiet --isolation=chroot --pull=never --layers --force-rm $(pip_trust) \
    --build-arg VERSION="$version" -f "$repo/$dockerfile" -t "$tag" "$@" "$repo" >/dev/null
}

# build NAME DOCKERFILE TAG: build, then write the archive unless it already holds this image.
# The builder stage is tagged too, so pruning superseded images afterwards keeps the cached
# dependency layers (each stale final image would otherwise keep ~1 GB on disk).
build() {
  local dockerfile=$2 tag=$3 archive="$out/$1.oci.tar" start=$SECONDS id
  log "buildah build -f $dockerfile -t $tag"
  build_one "$dockerfile" "localhost/kubevision/build-cache:$1" --target=builder
  build_one "$dockerfile" "$tag"
  local built=$((SECONDS - start))
  id=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$tag")
  if [ "$(cat "$archive.id" 2>/dev/null)" != "$id" ]; then
    rm -f "$archive" "$archive.id"
    buildah push --quiet "$tag" "oci-archive:$archive:$tag"
    echo "$id" >"$archive.id"
  fi
  local total=$((SECONDS - start)) size
  size=$(buildah images --format '{{.Size}}' "$tag" | head -1)
  log "$tag: ${built}s build, ${total}s with archive; $size unpacked, $(du -h "$archive" | cut -f1) archive"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$tag" "$built" "$total" "$size" \
    "$(stat -c %s "$archive")" >>"$out/builds.tsv"
}

main() {
  ensure_tools
  mkdir -p "$state" "$out"
  write_storage_conf
  version=$(python3 -c 'import tomllib; print(tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["version"])')
  [ -f "$out/builds.tsv" ] || printf 'date\timage\tbuild_s\ttotal_s\tsize\tarchive_bytes\n' >"$out/builds.tsv"
  import_base "$(base_ref)" "$(base_key)"
  build operator operator/Dockerfile "ghcr.io/kubevision/operator:$version"
  build worker-cpu worker/Dockerfile "ghcr.io/kubevision/worker:$version"
  buildah rmi --prune >/dev/null  # superseded images; the tagged ones keep their layers
}

main
