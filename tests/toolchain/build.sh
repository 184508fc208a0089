#!/usr/bin/env bash
# Build the pinned Kubernetes control-plane binaries and helm from their upstream Go modules.
#
# The versions live in the go.mod files beside this script (one source of truth). Binaries go
# to a cache keyed by version, outside the work tree, so a warm build costs nothing:
#   $KUBEVISION_CACHE/toolchain/kubernetes-<version>/{kube-apiserver,...,kubectl}
#   $KUBEVISION_CACHE/toolchain/helm-<version>/helm
#   $KUBEVISION_CACHE/toolchain/prometheus-operator-crds-<version>/*.yaml (copied, not built)
#   $KUBEVISION_CACHE/toolchain/kwok-<version>/{kwok,stages/*.yaml} (fleet-scale simulation)
# Prints the four directories on stdout (one per line) so callers can use them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevision}
log() { echo "[toolchain] $*" >&2; }

# pinned_version MODULE_DIR MODULE_PATH -> the version its go.mod requires
pinned_version() {
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# Go >= 1.27 enables encoding/json/v2 by default, which breaks the OpenAPI code vendored by
# Kubernetes 1.36 (/openapi/v2 serves garbage); opt out there.
go_env() {
  local minor
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  if [ "${minor:-0}" -ge 27 ]; then echo "GOEXPERIMENT=nojsonv2"; fi
}

# build MODULE_DIR OUT_DIR LDFLAGS PKG... : go build each package into OUT_DIR, atomically.
build() {
  local mod=$1 out=$2 ldflags=$3
  shift 3
  local tmp="$out.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  local pkg
  for pkg in "$@"; do
    log "go build $pkg"
    # shellcheck disable=SC2046  # go_env prints several VAR=value words, one argument each
    (cd "$mod" && env CGO_ENABLED=0 $(go_env) go build -buildvcs=false -trimpath \
      -ldflags "$ldflags" -o "$tmp/" "$pkg")
  done
  rm -rf "$out" && mv "$tmp" "$out"
}

k8s_version=$(pinned_version "$here/kubernetes" k8s.io/kubernetes)
k8s_dir="$cache/toolchain/kubernetes-$k8s_version"
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
if [ -x "$k8s_dir/kubectl" ] && [ "${FORCE:-0}" != 1 ]; then
  log "kubernetes $k8s_version cached in $k8s_dir"
else
  start=$SECONDS
  major_minor=${k8s_version#v}
  v=k8s.io/component-base/version
  cv=k8s.io/client-go/pkg/version
  flags="-s -w"
  for p in $v $cv; do
    flags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=${major_minor%%.*}"
    flags+=" -X $p.gitMinor=$(echo "$major_minor" | cut -d. -f2) -X $p.gitTreeState=clean"
    flags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  build "$here/kubernetes" "$k8s_dir" "$flags" "${k8s_bins[@]/#/k8s.io/kubernetes/cmd/}"
  log "kubernetes $k8s_version built in $((SECONDS - start)) s"
fi

helm_version=$(pinned_version "$here/helm" helm.sh/helm/v4)
helm_dir="$cache/toolchain/helm-$helm_version"
if [ -x "$helm_dir/helm" ] && [ "${FORCE:-0}" != 1 ]; then
  log "helm $helm_version cached in $helm_dir"
else
  start=$SECONDS
  build "$here/helm" "$helm_dir" "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
    helm.sh/helm/v4/cmd/helm
  log "helm $helm_version built in $((SECONDS - start)) s"
fi

# The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ...) of the
# pinned release, copied from its module: the chart tests validate monitoring objects with them.
promop=github.com/prometheus-operator/prometheus-operator
promop_version=$(pinned_version "$here/prometheus-operator" $promop)
promop_dir="$cache/toolchain/prometheus-operator-crds-$promop_version"
if [ -f "$promop_dir/monitoring.coreos.com_servicemonitors.yaml" ] && [ "${FORCE:-0}" != 1 ]; then
  log "prometheus-operator CRDs $promop_version cached in $promop_dir"
else
  log "go mod download $promop@$promop_version"
  src=$(cd "$here/prometheus-operator" && go mod download -json $promop >/dev/null &&
    go list -m -f '{{.Dir}}' $promop)
  rm -rf "$promop_dir.partial" && mkdir -p "$promop_dir.partial"
  install -m 0644 "$src"/example/prometheus-operator-crd/*.yaml "$promop_dir.partial/"
  rm -rf "$promop_dir" && mv "$promop_dir.partial" "$promop_dir"
fi

# kwok: the controller that plays kubelet for thousands of simulated nodes and their pods
# (tests/envtest/fleet.py), with the upstream stage definitions it needs (node heartbeat with
# leases, the node-not-ready chaos stage, pods to Ready and through deletion).
kwok_version=$(pinned_version "$here/kwok" sigs.k8s.io/kwok)
kwok_dir="$cache/toolchain/kwok-$kwok_version"
if [ -x "$kwok_dir/kwok" ] && [ -f "$kwok_dir/stages/pod-ready.yaml" ] && [ "${FORCE:-0}" != 1 ]; then
  log "kwok $kwok_version cached in $kwok_dir"
else
  start=$SECONDS
  build "$here/kwok" "$kwok_dir" "-s -w" sigs.k8s.io/kwok/cmd/kwok
  src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$kwok_dir/stages"
  install -m 0644 "$src"/kustomize/stage/node/fast/node-initialize.yaml \
    "$src"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$src"/kustomize/stage/node/chaos/node-not-ready.yaml \
    "$src"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "$kwok_dir/stages/"
  log "kwok $kwok_version built in $((SECONDS - start)) s"
fi

echo "$k8s_dir"
echo "$helm_dir"
echo "$promop_dir"
echo "$kwok_dir"
