"""The Argo CD health checks on statuses the real operator writes, on the real control plane.

The example site (charts/argocd/example-site/) is synced as Argo CD would sync it (server-side
apply, after a server-side dry run against our CRDs); with a real worker process behind its
Pipeline (the PodRunner) the Pipeline becomes Healthy, its camera Degraded once the worker
reports that it cannot reach the camera's host (which does not exist here), a camera on the
real RTSP server Healthy, a paused Camera Suspended (Healthy once unpaused and streaming) and a
Pipeline naming a ModelVariant that does not exist Degraded, all computed by the scripts of
argocd-cm.yaml as the API server returns them after the README's ``kubectl patch``.

``KUBEVISION_RECORD_ARGOCD_FIXTURES=1`` also writes those live objects to
tests/fixtures/argocd/live.yaml, which the unit tests replay.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.rtsp import RtspServer
from tests.integration.helpers import Namespace
from tests.unit.test_argocd_health import FIXTURES, run_health

ARGOCD = REPO_ROOT / "charts" / "argocd"
SITE = ARGOCD / "example-site"
ARGOCD_MANAGER = "argocd-controller"
"""The field manager Argo CD's server-side apply writes under."""
HEALTH_DEADLINE = 90
"""Operator reconcile, worker pod bound and started (model loaded), readiness reported, the
streams' state scraped."""
RECORD = os.environ.get("KUBEVISION_RECORD_ARGOCD_FIXTURES") == "1"

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def ns(cluster: LocalCluster, namespace: str) -> Namespace:
    return Namespace(cluster, namespace)


@pytest.fixture
def scripts(cluster: LocalCluster) -> Iterator[dict[str, str]]:
    """argocd-cm.yaml merged into an existing argocd-cm with the README's command; returns the
    scripts by kind as the API server stores them."""
    argocd = Namespace(cluster, "argocd")
    argocd.cluster.control_plane.kubectl("create", "namespace", "argocd")
    try:
        argocd.kubectl("create", "configmap", "argocd-cm", "--from-literal=url=https://cd.example")
        argocd.kubectl(
            "patch", "configmap", "argocd-cm", "--type", "merge",
            "--patch-file", str(ARGOCD / "argocd-cm.yaml"),
        )  # fmt: skip
        data = argocd.get("configmap", "argocd-cm")["data"]
        assert data.pop("url") == "https://cd.example", "the patch must keep Argo CD's own keys"
        yield {key.rsplit("_", 1)[1]: script for key, script in data.items()}
    finally:
        argocd.cluster.control_plane.kubectl("delete", "namespace", "argocd", "--wait=false")


def test_example_site_passes_server_side_dry_runs(ns: Namespace) -> None:
    """What Argo CD checks before a sync: the API server (our CRDs, CEL rules) accepts it."""
    out = ns.kubectl("apply", "--dry-run=server", "-f", str(SITE))
    assert out.count("(server dry run)") == 3, out
    out = ns.kubectl(
        "apply", "--server-side", f"--field-manager={ARGOCD_MANAGER}", "--dry-run=server",
        "-f", str(SITE),
    )  # fmt: skip
    assert out.count("serverside-applied (server dry run)") == 3, out
    assert ns.items("cameras") == [], "a dry run must not create anything"


def test_operator_app_renders_the_chart_without_crds(cluster: LocalCluster, tmp_path: Path) -> None:
    """The operator Application's Helm source renders with the real helm (what Argo CD runs)."""
    app = yaml.safe_load((ARGOCD / "apps" / "operator.yaml").read_text())
    helm = app["spec"]["source"]["helm"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(helm["valuesObject"]))
    args = [str(cluster.toolchain.helm), "template", helm["releaseName"]]
    args += [str(REPO_ROOT / app["spec"]["source"]["path"]), "-f", str(values)]
    args += ["--namespace", app["spec"]["destination"]["namespace"]]
    args += ["--skip-crds"] if helm["skipCrds"] else ["--include-crds"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "Deployment" in kinds
    assert "CustomResourceDefinition" not in kinds


def _camera(
    name: str, selector_value: str, paused: bool = False, url: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": name, "labels": {"kubevision.io/pipeline": selector_value}},
        "spec": {
            "source": {"url": url or f"rtsp://{name}-cam.site-a.example:554/stream1"},
            "fps": 15,
            "site": "site-a",
            "paused": paused,
        },
    }


def _broken_pipeline() -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "broken"},
        "spec": {
            "cameraSelector": {"matchLabels": {"kubevision.io/pipeline": "broken"}},
            "stages": {"detector": {"variant": "no-such-variant"}},
            "placement": {"hardwareClasses": ["cpu"]},
        },
    }


EXPECTED = {
    ("ModelVariant", "yolox-nano-416-onnx-fp32"): "Healthy",
    ("Camera", "entrance"): "Degraded",
    ("Camera", "side-gate"): "Healthy",
    ("Pipeline", "people"): "Healthy",
    ("Camera", "loading-dock"): "Suspended",
    ("Pipeline", "broken"): "Degraded",
    ("Camera", "back-door"): "Progressing",
}
"""What Argo CD must show for each object once the operator has settled. The example site's
camera names a host that does not exist here: its worker cannot read it (Connected=False);
side-gate streams from the real RTSP server (Connected=True)."""
STREAM_REPORTED = {"entrance": "False", "side-gate": "True"}
"""Connected, once the worker's report is in (Healthy or Degraded before it would be luck)."""
Observed = dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]
"""(kind, name) -> (the live object, its Argo CD health)."""


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspServer]:
    """The real RTSP server with one stream, for the cameras that must connect."""
    with RtspServer(tmp_path) as server:
        server.publish("gate", require("videos/car-detection.mp4"))
        yield server


def _connected(obj: dict[str, Any]) -> str | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Connected"), None)


def _observed(seen: tuple[dict[str, Any], dict[str, Any]]) -> bool:
    """The operator has written this generation's status (a health computed without it, e.g.
    Suspended from spec.paused alone, is not yet what the operator says)."""
    obj = seen[0]
    status = obj.get("status") or {}
    return status.get("observedGeneration") == obj["metadata"]["generation"]


def test_live_statuses_get_the_right_health(
    ns: Namespace, runner: PodRunner, scripts: dict[str, str], rtsp: RtspServer
) -> None:
    ns.kubectl("apply", "--server-side", f"--field-manager={ARGOCD_MANAGER}", "-f", str(SITE))
    ns.apply(
        docs=[
            _camera("side-gate", "people", url=rtsp.url("gate")),
            _camera("loading-dock", "people", paused=True, url=rtsp.url("gate")),
            _broken_pipeline(),
            _camera("back-door", "broken"),
        ]
    )

    def healths() -> Observed:
        out = {}
        for kind, name in EXPECTED:
            obj = ns.get(kind.lower(), name)
            out[kind, name] = (obj, run_health(scripts[kind], obj, "lua51"))
        return out

    def settled() -> Observed | None:
        now = healths()
        reported = all(
            _connected(now["Camera", name][0]) == want for name, want in STREAM_REPORTED.items()
        )
        healthy = all(now[k][1]["status"] == v for k, v in EXPECTED.items())
        return now if reported and healthy and all(map(_observed, now.values())) else None

    try:
        final = wait_for(settled, timeout=HEALTH_DEADLINE, what="every object's Argo CD health")
    except AssertionError as exc:
        seen = {f"{k[0]}/{k[1]}": h for k, (_, h) in healths().items()}
        raise AssertionError(f"{exc}; health now: {seen}") from exc

    for (kind, _), (obj, hs) in final.items():
        messages = [c.get("message") for c in obj["status"].get("conditions", [])]
        if kind == "Camera" and obj["spec"].get("paused"):
            assert hs["message"] == "spec.paused is true: no worker processes this camera"
        else:
            assert any(hs["message"].startswith(m) for m in messages if m), (hs, messages)
    people, people_health = final["Pipeline", "people"]
    replicas = f"{people['status']['readyReplicas']}/{people['status']['desiredReplicas']}"
    assert people_health["message"].startswith(f"{replicas} worker replicas ready")
    if RECORD:
        _record(final)

    ns.kubectl("patch", "camera", "loading-dock", "--type=merge", "-p", '{"spec":{"paused":false}}')

    def unpaused_streams() -> bool:
        obj = ns.get("camera", "loading-dock")
        healthy = run_health(scripts["Camera"], obj, "lua51")["status"] == "Healthy"
        return healthy and _connected(obj) == "True"

    wait_for(
        unpaused_streams, timeout=HEALTH_DEADLINE, what="the unpaused camera to stream, Healthy"
    )


def _record(final: Observed) -> None:
    """Writes the live objects (server-made metadata dropped) with their health as fixtures."""
    cases = []
    for (kind, name), (obj, hs) in final.items():
        meta = obj["metadata"]
        kept = {"name": meta["name"], "namespace": "kubevision-site-a"}
        kept |= {"generation": meta["generation"], "labels": meta.get("labels", {})}
        cases.append(
            {
                "case": f"live {kind} {name}",
                "health": hs["status"],
                "message": hs["message"],
                "object": {"apiVersion": obj["apiVersion"], "kind": kind, "metadata": kept}
                | {"spec": obj["spec"], "status": obj["status"]},
            }
        )
    header = (
        "# Statuses the real operator wrote, recorded by tests/integration/\n"
        "# test_argocd_health_live.py::test_live_statuses_get_the_right_health with\n"
        "# KUBEVISION_RECORD_ARGOCD_FIXTURES=1 (the example site plus a Camera on the real\n"
        "# RTSP server, a paused Camera and a Pipeline naming a missing ModelVariant);\n"
        "# tests/unit/test_argocd_health.py replays them. Each case: name, the expected health\n"
        "# and message, the object.\n"
    )
    text = yaml.safe_dump(cases, sort_keys=False, width=100)
    (FIXTURES / "live.yaml").write_text(header + text)
