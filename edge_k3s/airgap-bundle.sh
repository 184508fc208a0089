#!/usr/bin/env bash
# Make the offline bundle `install-k3s.sh --airgap DIR` installs from, on a machine with network:
# K3s's binary, its air-gap images and installer for the edge node's architecture (checked
# against the release's own sha256 list), plus KubeVision's images as OCI archives, which K3s
# imports at start from /var/lib/rancher/k3s/agent/images. Carry the folder to the site.
#
#   edge_k3s/airgap-bundle.sh --out DIR [--version V] [--arch arm64|amd64] [--image FILE.tar]... [--dry-run]
#
#   --image FILE  an image archive to take along (e.g. the Jetson worker image saved with
#                 `skopeo copy docker://ghcr.io/kubevision/worker:0.1.0-l4t-r36 oci-archive:worker.tar`,
#                 or `make images`' .kubevision/images/*.oci.tar for CPU nodes); repeatable
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=edge_k3s/lib.sh
source "$here/lib.sh"

K3S_VERSION=${K3S_VERSION:-v1.36.3+k3s1}
RELEASES=https://github.com/k3s-io/k3s/releases/download

# fetch URL FILE
fetch() { run curl -fL --retry 3 -o "$2" "$1"; }

main() {
  local out="" version=$K3S_VERSION arch=arm64 images=() image
  while (($#)); do
    case $1 in
      --out) out=${2:?}; shift 2 ;;
      --version) version=${2:?}; shift 2 ;;
      --arch) arch=${2:?}; shift 2 ;;
      --image) images+=("${2:?}"); shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ -n $out ]] || die "--out DIR is required"
  [[ $arch == arm64 || $arch == amd64 ]] || die "--arch must be arm64 (Jetson) or amd64"
  for image in "${images[@]}"; do [[ -r $image ]] || die "--image $image: no such file"; done
  local base="$RELEASES/${version//+/%2B}" binary=k3s
  [[ $arch == amd64 ]] || binary=k3s-$arch
  log "bundle of K3s $version ($arch) in $out"

  run install -d -m 0755 "$out/images"
  fetch "$base/$binary" "$out/k3s"
  fetch "$base/k3s-airgap-images-$arch.tar.zst" "$out/images/k3s-airgap-images-$arch.tar.zst"
  fetch "$base/sha256sum-$arch.txt" "$out/release-sha256sum.txt"
  fetch https://get.k3s.io "$out/install.sh"
  if [[ $DRY_RUN != 1 ]]; then
    # the release's list names the binary k3s-arm64: check it under the bundle's names
    (cd "$out" && sed -E "s# (\\*)?$binary\$# k3s#; s# (\\*)?(k3s-airgap-images-$arch.tar.zst)\$# images/\\2#" \
      release-sha256sum.txt | grep -E ' (k3s|images/k3s-airgap-images-.*)$' | sha256sum --strict -c) >&2 ||
      die "downloads do not match K3s's published checksums"
  fi
  for image in "${images[@]}"; do run install -m 0644 "$image" "$out/images/"; done
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ write %s/VERSION and %s/SHA256SUMS\n' "$out" "$out"
    return
  fi
  chmod 0755 "$out/k3s" "$out/install.sh"
  echo "$version" >"$out/VERSION"
  (cd "$out" && find . -type f ! -name 'SHA256SUMS*' ! -name release-sha256sum.txt -printf '%P\n' |
    sort | xargs sha256sum >SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS)
  log "done: $(du -sh "$out" | cut -f1) in $out; install with install-k3s.sh --airgap $out"
}

main "$@"
