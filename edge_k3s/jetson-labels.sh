#!/usr/bin/env bash
# Print the node labels KubeVision's placement reads for this Jetson, one `key=value` a line:
#
#   kubevision.io/accelerator=jetson          the hardware class (operator/hardware.py)
#   kubevision.io/jetson-model=agx-orin-64gb  module family and memory, from the device tree
#   kubevision.io/l4t=36.4.3                  L4T release (/etc/nv_tegra_release)
#   kubevision.io/jetpack=6.2                 the JetPack release that L4T belongs to
#   kubevision.io/site=<site>                 with --site
#
#   edge_k3s/jetson-labels.sh [--site SITE]
#
# Reads $KV_ROOT/proc/device-tree/model, $KV_ROOT/proc/meminfo and $KV_ROOT/etc/nv_tegra_release
# (KV_ROOT is empty on a real Jetson). Exits 2 on a machine that is not a Jetson.
set -euo pipefail
# shellcheck source=edge_k3s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# family MODEL_STRING -> agx-orin, orin-nx, orin-nano, agx-thor, agx-xavier, xavier-nx, nano, tx2
family() {
  local model=${1,,}
  case $model in
    *thor*) echo agx-thor ;;
    *agx*orin* | *orin*agx*) echo agx-orin ;;
    *orin*nx*) echo orin-nx ;;
    *orin*nano*) echo orin-nano ;;
    *xavier*nx*) echo xavier-nx ;;
    *agx*xavier* | jetson-agx*) echo agx-xavier ;; # L4T 32 names the AGX Xavier "Jetson-AGX"
    *tx2* | quill*) echo tx2 ;;                      # "quill": the TX2 developer kit's board
    *jetson*nano*) echo nano ;;
    *) return 1 ;;
  esac
}

# memory_gb : the module's memory size: MemTotal rounded up to the sizes Jetsons ship with
memory_gb() {
  local kib size
  kib=$(awk '/^MemTotal:/ {print $2}' "$KV_ROOT/proc/meminfo" 2>/dev/null) || return 1
  [[ -n $kib ]] || return 1
  for size in 2 4 8 16 32 64 128; do
    if ((kib <= size * 1024 * 1024)); then
      echo "$size"
      return
    fi
  done
  return 1
}

# l4t_release : "36.4.3" from "# R36 (release), REVISION: 4.3, GCID: ..."
l4t_release() {
  local file=$KV_ROOT/etc/nv_tegra_release
  [[ -r $file ]] || return 1
  sed -nE '1s/^# R([0-9]+) \(release\), REVISION: ([0-9]+(\.[0-9]+)*).*/\1.\2/p' "$file"
}

# jetpack L4T -> the JetPack release NVIDIA ships that L4T in (empty when unknown)
jetpack() {
  case $1 in
    38.2*) echo 7.0 ;;
    36.4.4*) echo 6.2.1 ;;
    36.4.3*) echo 6.2 ;;
    36.4*) echo 6.1 ;;
    36.3*) echo 6.0 ;;
    36.2*) echo 6.0-dp ;;
    35.6.1*) echo 5.1.5 ;;
    35.6*) echo 5.1.4 ;;
    35.5*) echo 5.1.3 ;;
    35.4*) echo 5.1.2 ;;
    35.3*) echo 5.1.1 ;;
    35.2*) echo 5.1 ;;
    35.1*) echo 5.0.2 ;;
    32.7.[1-6]*) echo "4.6.${1#32.7.}" | cut -d. -f1-3 ;;
    32.6*) echo 4.6 ;;
    *) ;;
  esac
}

main() {
  local site="" model_file=$KV_ROOT/proc/device-tree/model model fam mem l4t jp
  while (($#)); do
    case $1 in
      --site) site=${2:?--site needs a value}; shift 2 ;;
      -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ -z $site ]] || valid_label_value "$site" || die "--site '$site' is not a label value (63 characters at most: letters, digits, '-', '_', '.')"
  [[ -r $model_file ]] || { log "no $model_file: not a Jetson"; exit 2; }
  model=$(tr -d '\0' <"$model_file")
  fam=$(family "$model") || { log "not a Jetson model: '$model'"; exit 2; }
  mem=$(memory_gb) && fam="$fam-${mem}gb"
  echo "kubevision.io/accelerator=jetson"
  echo "kubevision.io/jetson-model=$fam"
  if l4t=$(l4t_release) && [[ -n $l4t ]]; then
    echo "kubevision.io/l4t=$l4t"
    jp=$(jetpack "$l4t")
    if [[ -n $jp ]]; then echo "kubevision.io/jetpack=$jp"; else log "unknown L4T $l4t: no jetpack label"; fi
    [[ ${l4t%%.*} == 36 ]] ||
      log "warning: KubeVision's Jetson worker image is built on L4T R36 (JetPack 6); this node runs R${l4t%%.*}"
  else
    log "warning: no readable $KV_ROOT/etc/nv_tegra_release: no l4t/jetpack labels"
  fi
  [[ -z $site ]] || echo "kubevision.io/site=$site"
}

main "$@"
