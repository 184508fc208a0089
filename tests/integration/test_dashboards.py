"""The Grafana dashboards: the committed JSON is what the generator makes, the chart ships it
to Grafana's sidecar, and every query of every panel answers with data from real components.

The live part runs the real operator on the real control plane with a Pipeline whose SLO no
CPU can meet (2 ms) and ``maxReplicas: 1``, so the autoscaler engages the degradation ladder
and reports replicas short of capacity; its one worker (a real ``kubevision-worker`` run by the
PodRunner) detects, tracks and classifies the bottle video. A real Prometheus scrapes that
worker and the operator's metrics endpoint, with the target labels a PodMonitor adds
(``namespace``, ``pod``). Each dashboard's template variables are resolved as Grafana does
(``label_values`` through the label-values API), substituted with those real values, and then
every panel query must parse and return a non-empty result. Nothing needs kube-state-metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel
from kubernetes import client

from charts.grafana.dashboards import OUT_DIR, dashboards
from kubevision.operator.planner import group_name
from kubevision.operator.signals import parse_metrics
from kubevision.worker.metrics import DROP_REASONS, WorkerMetrics
from kubevision.worker.models import sha256_of
from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT, Toolchain
from tests.envtest.operator import OperatorProcess
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.prometheus import Prometheus, find_binaries
from tests.integration.helpers import Namespace, optimistic_cpu_detector

CHART = REPO_ROOT / "charts" / "kubevision"
PIPELINE, CAMERA = "dash", "belt"
GROUP = group_name(PIPELINE, "site-a", "cpu")
SLO_MS = 2
RATE_INTERVAL = "15s"
"""What ``$__rate_interval`` becomes here: Grafana makes it at least 4 scrape intervals (1 s)."""
DATA_DEADLINE = 180
"""Seconds for every query to have data: a worker start with two models, two autoscaling
steps (the first only sets a baseline) and a rate window, on a loaded 2-core machine."""


def _files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(OUT_DIR.glob("*.json"))}


# -- generator, models, chart (no cluster) -------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    assert _files() == dashboards(), "the dashboards drifted: run `make dashboards`"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboards_load_as_grafana_dashboard_models(name: str) -> None:
    """Grafana's own types (grafana-foundation-sdk) read every panel and query back."""
    register_default_plugins()
    raw = json.loads((OUT_DIR / name).read_text())
    model = DashboardModel.from_json(raw)
    assert model.uid == raw["uid"]
    assert model.panels is not None
    assert len(model.panels) == len(raw["panels"])
    ids = [p["id"] for p in raw["panels"]]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    assert all(t["expr"] for p in raw["panels"] for t in p.get("targets", []))


def _helm_template(*values: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(Toolchain.locate().helm), "template", "kubevision", str(CHART), *values],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_chart_ships_one_sidecar_configmap_per_dashboard() -> None:
    assert not [d for d in _helm_template() if "dashboard" in d["metadata"]["name"]]
    docs = _helm_template(
        "--set=dashboards.enabled=true",
        "--set=dashboards.namespace=monitoring",
        "--set=dashboards.annotations.grafana_folder=KubeVision",
    )
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    shipped = {}
    for cm in maps.values():
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "KubeVision"}
        shipped.update({k: json.loads(v) for k, v in cm["data"].items()})
    assert sorted(maps) == ["kubevision-dashboard-overview", "kubevision-dashboard-pipeline"]
    assert shipped == {name: json.loads(text) for name, text in _files().items()}


def test_the_autoscaler_sums_dropped_frames_of_every_reason() -> None:
    metrics = WorkerMetrics("p")
    cam = metrics.camera("c")
    for reason in DROP_REASONS:
        cam.dropped(reason)
    text = (
        "\n".join(
            f'kubevision_frames_dropped_total{{pipeline="p",camera="c",reason="{r}"}} 1'
            for r in DROP_REASONS
        )
        + "\n"
    )
    assert parse_metrics(text, 0.0).dropped == len(DROP_REASONS)
    assert metrics.frames_dropped_total("c") == len(DROP_REASONS)


def test_a_restarted_camera_keeps_its_decoder_series() -> None:
    """A changed assignment starts the camera's new stream before the old one stops; the old
    stream's stop must not remove the series the decoder panel reads."""
    metrics = WorkerMetrics("p")
    old = metrics.camera("c")
    old.set_decoder("cpu")
    new = metrics.camera("c")
    new.set_decoder("cpu")
    old.set_decoder(None)
    labels = {"pipeline": "p", "camera": "c", "decoder": "cpu"}
    assert metrics.registry.get_sample_value("kubevision_camera_decoder", labels) == 1
    new.set_decoder(None)
    assert metrics.registry.get_sample_value("kubevision_camera_decoder", labels) is None


# -- live: real worker + real operator + real Prometheus -----------------------------------


class LabelledPrometheus(Prometheus):
    """The envtest Prometheus with a PodMonitor's target labels on the workers, and the
    operator as a second job."""

    def __init__(self, workers: dict[str, dict[str, str]], operator: str, state: Path) -> None:
        super().__init__([*workers, operator], state, binaries=find_binaries())
        self.workers = workers
        self.operator = operator

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["scrape_configs"] = [
            {
                "job_name": "kubevision-workers",
                "static_configs": [
                    {"targets": [target], "labels": labels}
                    for target, labels in self.workers.items()
                ],
            },
            {"job_name": "kubevision-operator", "static_configs": [{"targets": [self.operator]}]},
        ]
        return config

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query; raises with Prometheus' error if it fails."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr!r}: {json.loads(exc.read()).get('error')}") from exc
        return list(body["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's ``label_values(match, label)`` lists."""
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(
            f"{self.url}/api/v1/label/{label}/values?{query}", timeout=10
        ) as resp:
            return list(json.loads(resp.read())["data"])


def _docs() -> list[dict[str, Any]]:
    variant = optimistic_cpu_detector("yolox-nano-dash", require("models/yolox_nano_416.onnx"))
    weights = require("models/mobilenetv2_12_int8.onnx")
    classifier = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "ModelVariant",
        "metadata": {"name": "mobilenetv2-dash"},
        "spec": {
            "family": "mobilenetv2",
            "task": "classify",
            "format": "onnx",
            "precision": "int8",
            "inputSize": {"width": 224, "height": 224},
            "batch": {"min": 1, "opt": 1, "max": 1},
            "artifact": {
                "uri": "file:///models/mobilenetv2_12_int8.onnx",
                "sha256": sha256_of(weights),
            },
            # the worker names the classes it reports from the variant's labels
            "labels": require("models/imagenet_classes.txt").read_text().splitlines(),
            "hardware": [{"accelerator": "cpu", "expectedFps": 150, "p99LatencyMs": 15}],
        },
    }
    camera = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": CAMERA, "labels": {"app": "dash"}},
        "spec": {
            "source": {"url": f"file://{require('videos/bottle-detection.mp4')}"},
            "fps": 29.8,
            "site": "site-a",
        },
    }
    pipeline = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": PIPELINE},
        "spec": {
            "cameraSelector": {"matchLabels": {"app": "dash"}},
            "stages": {
                "detector": {"variant": "yolox-nano-dash", "confidence": 0.3},
                "classifier": {"variant": "mobilenetv2-dash", "refreshFrames": 30},
            },
            "slo": {"p99LatencyMs": SLO_MS, "minFps": 1},
            "placement": {"hardwareClasses": ["cpu"]},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1, "metricsIntervalSeconds": 1},
            "degradation": {"allowed": ["frameSkip"]},
        },
    }
    return [variant, classifier, camera, pipeline]


@dataclass
class Live:
    prometheus: LabelledPrometheus
    namespace: str


def _ready_pod(ns: Namespace) -> dict[str, Any] | None:
    for pod in ns.items("pods", f"kubevision.io/group={GROUP}"):
        status = pod.get("status") or {}
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        if ready and status.get("podIP"):
            return pod
    return None


@pytest.fixture(scope="module")
def live(
    cluster: LocalCluster,
    operator: OperatorProcess,
    runner: PodRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    core = client.CoreV1Api(cluster.api_client())
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    try:
        ns = Namespace(cluster, name)
        ns.apply(docs=_docs())
        pod = wait_for(lambda: _ready_pod(ns), timeout=180, what="the worker pod to be Ready")
        target = f"{pod['status']['podIP']}:9090"
        labels = {"namespace": name, "pod": pod["metadata"]["name"]}
        prometheus = LabelledPrometheus(
            {target: labels},
            f"127.0.0.1:{operator.metrics_port}",
            tmp_path_factory.mktemp("prometheus"),
        )
        with prometheus:
            wait_for(
                lambda: prometheus.targets_up() >= set(prometheus.targets),
                timeout=60,
                what="prometheus scraping the worker and the operator",
            )
            yield Live(prometheus, name)
    finally:
        core.delete_namespace(name)


_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")


def _substitute(text: str, values: dict[str, str]) -> str:
    text = text.replace("$__rate_interval", RATE_INTERVAL)
    for var in sorted(values, key=len, reverse=True):
        text = text.replace(f"${{{var}}}", values[var]).replace(f"${var}", values[var])
    return text


def _resolve_variables(live: Live, board: dict[str, Any]) -> dict[str, str]:
    """Each query variable from its ``label_values`` in Prometheus, as Grafana lists it; the
    test's own namespace, Pipeline and camera must be offered, and are chosen."""
    wanted = {"namespace": live.namespace, "pipeline": PIPELINE, "camera": CAMERA}
    values: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "datasource":
            assert variable["query"] == "prometheus"
            continue
        name = variable["name"]
        parsed = _LABEL_VALUES.match(variable["query"])
        assert parsed, variable["query"]
        label, match = parsed["label"], _substitute(parsed["match"], values)
        wait_for(
            # called within this iteration only: the loop variables are the current ones
            lambda: wanted[name] in live.prometheus.label_values(label, match),  # noqa: B023
            timeout=60,
            what=f"${name} offering {wanted[name]}",
        )
        values[name] = wanted[name]
    return values


def _targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_query_returns_data(live: Live, name: str) -> None:
    board = json.loads((OUT_DIR / name).read_text())
    values = _resolve_variables(live, board)
    pending = {(title, _substitute(expr, values)) for title, expr in _targets(board)}
    assert len(pending) >= 20, "every panel and query is checked"

    def answered() -> bool:
        for title, expr in sorted(pending):
            if live.prometheus.query(expr):  # raises on a query Prometheus cannot parse
                pending.discard((title, expr))
        return not pending

    try:
        wait_for(answered, timeout=DATA_DEADLINE, what=f"data for every query of {name}")
    except AssertionError as exc:
        raise AssertionError(f"queries without data: {sorted(pending)}") from exc


def _value(live: Live, expr: str) -> float:
    result = live.prometheus.query(expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_the_panels_show_what_happened(live: Live) -> None:
    """Beyond "some data": the numbers the panels plot are this run's."""
    sel = f'namespace="{live.namespace}", pipeline="{PIPELINE}"'
    short = f'kubevision_operator_capacity_short_replicas{{pipeline="{PIPELINE}"}}'
    wait_for(
        lambda: live.prometheus.query(f"{short} > 0"),
        timeout=DATA_DEADLINE,
        what="the autoscaler to want more replicas than maxReplicas allows",
    )
    wait_for(
        lambda: live.prometheus.query(
            f'kubevision_operator_degradation_steps{{pipeline="{PIPELINE}"}} == 1'
        ),
        timeout=DATA_DEADLINE,
        what="frame skipping engaged instead",
    )
    assert _value(live, f'kubevision_operator_ready_replicas{{pipeline="{PIPELINE}"}}') == 1
    assert _value(live, f"kubevision_slo_p99_latency_seconds{{{sel}}}") == SLO_MS / 1000
    assert _value(live, f'sum(kubevision_detections_total{{{sel}, class="bottle"}})') > 0
    assert _value(live, f"sum(kubevision_tracks_started_total{{{sel}}})") > 0
    assert (
        _value(live, 'sum(kubevision_operator_reconciles_total{kind="pipeline", result="ok"})') > 0
    )
    reasons = live.prometheus.query(f"count by (reason) (kubevision_frames_dropped_total{{{sel}}})")
    assert {r["metric"]["reason"] for r in reasons} == set(DROP_REASONS)
    assert _value(live, f"sum(process_resident_memory_bytes{{{sel.split(',')[0]}}})") > 10e6
