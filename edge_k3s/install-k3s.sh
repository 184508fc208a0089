#!/usr/bin/env bash
# Install K3s on an edge node: the site's server, or an agent that joins it. On a Jetson the
# node registers with the labels KubeVision places workers by (jetson-labels.sh), and K3s's
# containerd gets the NVIDIA container runtime (K3s finds nvidia-container-runtime by itself
# and adds the `nvidia` runtime and RuntimeClass the Jetson workers name).
#
#   edge_k3s/install-k3s.sh server --site SITE [options]
#   edge_k3s/install-k3s.sh agent  --site SITE --server https://HOST:6443 --token-file FILE [options]
#
#   --site SITE        the node's kubevision.io/site (cameras and Pipelines of that site land here)
#   --server URL       agent: the K3s server to join
#   --token-file FILE  agent: a file holding the join token (the server's
#                      /var/lib/rancher/k3s/server/node-token); never put it on a command line
#   --airgap DIR       install offline from a bundle made by airgap-bundle.sh (checked first)
#   --version V        K3s release (default: $K3S_VERSION below; the bundle's when --airgap)
#   --node-name NAME   register under this name (default: the hostname)
#   --dry-run          print what would be done and change nothing
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=edge_k3s/lib.sh
source "$here/lib.sh"

K3S_VERSION=${K3S_VERSION:-v1.36.3+k3s1} # the Kubernetes minor the tests' control plane runs
K3S_CONFIG=/etc/rancher/k3s/config.yaml
K3S_TOKEN=/etc/rancher/k3s/join-token
IMAGES_DIR=/var/lib/rancher/k3s/agent/images
CONTAINERD_CONFIG=/var/lib/rancher/k3s/agent/etc/containerd/config.toml
NVIDIA_RUNTIMES=(/usr/bin/nvidia-container-runtime /usr/local/nvidia/toolkit/nvidia-container-runtime)

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" >&2
  exit "${1:-1}"
}

# node_labels SITE -> the labels this node registers with, one a line
node_labels() {
  local rc=0
  "$here/jetson-labels.sh" --site "$1" || rc=$?
  case $rc in
    0) ;;
    2) log "not a Jetson: registering with the site label only" && echo "kubevision.io/site=$1" ;;
    *) die "jetson-labels.sh failed ($rc)" ;;
  esac
}

# nvidia_runtime -> the NVIDIA container runtime K3s will find, if any
nvidia_runtime() {
  local path
  for path in "${NVIDIA_RUNTIMES[@]}"; do
    [[ -x $KV_ROOT$path ]] && echo "$path" && return
  done
  return 1
}

# ensure_nvidia_runtime AIRGAP : JetPack ships the NVIDIA container toolkit; install it if absent
ensure_nvidia_runtime() {
  local found
  if found=$(nvidia_runtime); then
    log "NVIDIA container runtime: $found (K3s adds it to containerd as 'nvidia')"
    return
  fi
  [[ -z $1 ]] || die "no NVIDIA container runtime and no network (--airgap): install JetPack's nvidia-container package first (apt-get install nvidia-container)"
  log "installing the NVIDIA container toolkit from JetPack's apt repository"
  run apt-get update
  run apt-get install -y nvidia-container-toolkit
}

# verify_bundle DIR : every file the bundle lists has its checksum; the install needs all three
verify_bundle() {
  local dir=$1
  for f in SHA256SUMS k3s install.sh; do
    [[ -f $dir/$f ]] || die "--airgap $dir has no $f: make it with edge_k3s/airgap-bundle.sh"
  done
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) >&2 ||
    die "--airgap $dir: checksums do not match SHA256SUMS (bundle damaged or altered)"
  log "bundle $dir verified ($(wc -l <"$dir/SHA256SUMS") files)"
}

# k3s_config ROLE LABELS SERVER NODE_NAME : /etc/rancher/k3s/config.yaml (read by k3s at start)
k3s_config() {
  local role=$1 labels=$2 server=$3 node_name=$4 label
  echo "# written by KubeVision's edge_k3s/install-k3s.sh"
  [[ -z $node_name ]] || echo "node-name: \"$node_name\""
  echo "node-label:"
  while read -r label; do echo "  - \"$label\""; done <<<"$labels"
  if [[ $role == agent ]]; then
    echo "server: \"$server\""
    echo "token-file: \"$K3S_TOKEN\""
  else
    echo 'write-kubeconfig-mode: "0600"'
  fi
}

# install_k3s ROLE VERSION AIRGAP : K3s's own installer, offline from the bundle or downloaded
install_k3s() {
  local role=$1 version=$2 airgap=$3 installer
  if [[ -n $airgap ]]; then
    run install -D -m 0755 "$airgap/k3s" "$KV_ROOT/usr/local/bin/k3s"
    run install -d -m 0755 "$KV_ROOT$IMAGES_DIR"
    local image
    for image in "$airgap"/images/*; do
      [[ -e $image ]] && run install -m 0644 "$image" "$KV_ROOT$IMAGES_DIR/"
    done
    installer=$airgap/install.sh
    run env INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_VERSION="$version" INSTALL_K3S_EXEC="$role" sh "$installer"
  else
    installer=${TMPDIR:-/tmp}/k3s-install.sh
    run curl -sfL https://get.k3s.io -o "$installer"
    run env INSTALL_K3S_VERSION="$version" INSTALL_K3S_EXEC="$role" sh "$installer"
  fi
}

# wait_for_nvidia_in_containerd : K3s writes its containerd config at start; poll for the runtime
wait_for_nvidia_in_containerd() {
  [[ $DRY_RUN == 1 ]] && return
  local deadline=$((SECONDS + 120))
  until grep -qs 'nvidia' "$KV_ROOT$CONTAINERD_CONFIG"; do
    ((SECONDS < deadline)) || die "K3s started without the nvidia runtime in $CONTAINERD_CONFIG: check 'nvidia-container-runtime' and restart k3s"
    sleep 2
  done
  log "containerd has the nvidia runtime"
}

main() {
  local role=${1:-} site="" server="" token_file="" airgap="" version=$K3S_VERSION node_name="" labels
  [[ $role == server || $role == agent ]] || usage
  shift
  while (($#)); do
    case $1 in
      --site) site=${2:?}; shift 2 ;;
      --server) server=${2:?}; shift 2 ;;
      --token-file) token_file=${2:?}; shift 2 ;;
      --airgap) airgap=${2:?}; shift 2 ;;
      --version) version=${2:?}; shift 2 ;;
      --node-name) node_name=${2:?}; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h | --help) usage 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  [[ -n $site ]] || die "--site is required: the kubevision.io/site label Pipelines place by"
  valid_label_value "$site" || die "--site '$site' is not a label value (63 characters at most: letters, digits, '-', '_', '.')"
  if [[ $role == agent ]]; then
    [[ $server =~ ^https://[^/[:space:]]+$ ]] || die "--server must be https://HOST:PORT (got '$server')"
    [[ -r $token_file && -s $token_file ]] || die "--token-file '$token_file' is not a readable, non-empty file"
  fi
  need_root
  if [[ -n $airgap ]]; then
    verify_bundle "$airgap"
    version=$(cat "$airgap/VERSION" 2>/dev/null || echo "$version")
  fi
  log "K3s $version as $role of site $site${airgap:+ (offline, from $airgap)}"

  if [[ -r $KV_ROOT/proc/device-tree/model ]]; then ensure_nvidia_runtime "$airgap"; fi
  labels=$(node_labels "$site")
  k3s_config "$role" "$labels" "$server" "$node_name" | write_file "$K3S_CONFIG" 0600
  if [[ $role == agent ]]; then
    run install -D -m 0600 "$token_file" "$KV_ROOT$K3S_TOKEN"
  fi
  install_k3s "$role" "$version" "$airgap"
  if [[ -r $KV_ROOT/proc/device-tree/model ]]; then wait_for_nvidia_in_containerd; fi

  if [[ $role == server ]]; then
    log "done. Agents join with --server https://$(hostname -f 2>/dev/null || hostname):6443 and --token-file holding /var/lib/rancher/k3s/server/node-token"
    log "then install the operator: helm install kubevision charts/kubevision (KUBECONFIG=/etc/rancher/k3s/k3s.yaml)"
  else
    log "done. The node registers with its labels; check: kubectl get node -L kubevision.io/jetson-model,kubevision.io/site"
  fi
}

main "$@"
