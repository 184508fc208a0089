// Pins the Prometheus Operator release whose CRDs (ServiceMonitor, PodMonitor, PrometheusRule)
// validate the chart's monitoring objects in tests; ../build.sh copies them out of the module
// (nothing is built from it).
module kubevision.io/tests/toolchain/prometheus-operator

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
