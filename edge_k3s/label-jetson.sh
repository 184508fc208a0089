#!/usr/bin/env bash
# Label a Jetson that already runs K3s (install-k3s.sh labels nodes when they join) so that
# KubeVision places Jetson workers on it: the labels jetson-labels.sh derives from the Jetson's
# device tree and L4T release, plus its site.
#
#   edge_k3s/label-jetson.sh NODE --site SITE [--from FILE] [--dry-run]
#
# Run it on the Jetson (with kubectl and a kubeconfig), or anywhere with --from a file holding
# the labels the Jetson printed: `ssh jetson edge_k3s/jetson-labels.sh > labels.txt`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=edge_k3s/lib.sh
source "$here/lib.sh"

main() {
  local node=${1:-} site="" from="" labels=()
  [[ -n $node && $node != -* ]] || die "usage: $0 NODE --site SITE [--from FILE] [--dry-run]"
  shift
  while (($#)); do
    case $1 in
      --site) site=${2:?}; shift 2 ;;
      --from) from=${2:?}; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ -n $site ]] || die "--site is required"
  valid_label_value "$site" || die "--site '$site' is not a label value"
  if [[ -n $from ]]; then
    mapfile -t labels < <(grep -E '^kubevision\.io/[a-z0-9-]+=' "$from" | grep -v '^kubevision.io/site=')
    labels+=("kubevision.io/site=$site")
  else
    mapfile -t labels < <("$here/jetson-labels.sh" --site "$site")
  fi
  [[ " ${labels[*]} " == *" kubevision.io/accelerator=jetson "* ]] ||
    die "no Jetson labels (not a Jetson, or --from holds none)"
  run kubectl label node "$node" --overwrite "${labels[@]}"
}

main "$@"
