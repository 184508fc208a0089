"""A cascade Pipeline (spec.source) end to end on the real control plane: the operator renders
it into a workload running ``kubevision-worker cascade`` (a real process, started by the
PodRunner in place of a kubelet), which subscribes to the edge topic of a real mosquitto,
classifies the crops of the edge events with the catalog's MobileNetV2 and publishes them
enriched. The edge side is the worker's own MQTT output publishing events with inline crops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubevision.api.pipeline import Output
from kubevision.api.worker_config import CASCADE_CONFIG_FILE, CascadeConfig
from kubevision.operator.planner import group_name
from kubevision.worker.sinks import build_sinks
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.sinks import MOSQUITTO, Mosquitto, subscriber
from tests.integration.helpers import Namespace, condition_of, edge_events

CATALOG = REPO_ROOT / "model_catalog" / "variants"
GROUP = group_name("cloud", None, "cpu")


@pytest.fixture
def ns(cluster: LocalCluster, namespace: str) -> Namespace:
    return Namespace(cluster, namespace)


def cloud_pipeline(broker: Mosquitto) -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "cloud"},
        "spec": {
            "source": {"url": broker.url, "topic": "edge"},
            "stages": {"classifier": {"family": "mobilenetv2"}},
            "placement": {"hardwareClasses": ["cpu"]},
            "outputs": [{"type": "mqtt", "url": broker.url, "topic": "cloud"}],
        },
    }


def ready(ns: Namespace) -> dict[str, Any] | None:
    """The Pipeline once Ready, its condition and groups read from one GET (two reads could
    pair a Ready condition with the groups of an earlier status)."""
    pipeline = ns.get("pipeline", "cloud")
    condition = condition_of(pipeline, "Ready") or {}
    return pipeline if condition.get("status") == "True" else None


def test_a_cascade_pipeline_classifies_the_crops_of_edge_events(
    ns: Namespace, runner: PodRunner, tmp_path: Path
) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    broker = Mosquitto(tmp_path)
    broker.start()
    edge = build_sinks(
        [Output(type="mqtt", url=broker.url, topic="edge")], "edge", CollectorRegistry()
    )
    try:
        with subscriber(broker.port, "cloud") as cloud:
            ns.apply(CATALOG / "classifiers.yaml", docs=[cloud_pipeline(broker)])
            # Ready only once the cascade's MQTT subscription is in place, so nothing
            # published from here on can be missed
            pipeline = wait_for(lambda: ready(ns), timeout=120, what="the cascade Pipeline Ready")
            (group,) = pipeline["status"]["groups"]
            assert (group["name"], group["hardwareClass"]) == (GROUP, "cpu")
            assert (group["variant"], group["cameras"], group["readyReplicas"]) == (
                "mobilenetv2-int8-onnx",
                0,
                1,
            )
            (container,) = ns.get("statefulset", GROUP)["spec"]["template"]["spec"]["containers"]
            assert container["args"][:1] == ["cascade"]
            config = CascadeConfig.model_validate(
                json.loads(ns.get("configmap", GROUP)["data"][CASCADE_CONFIG_FILE])
            )
            assert config.source.group == f"{ns.name}.cloud"

            sent = edge_events(0, 12)
            edge.publish(sent)
            wait_for(lambda: len(cloud.received()) >= len(sent), timeout=90, what="12 enriched")
            out = {(e.camera, e.track_id): (topic, e) for topic, e in cloud.received()}
    finally:
        edge.close()
        broker.stop()
    assert set(out) == {(e.camera, e.track_id) for e in sent}, "every edge event, once"
    for event in sent:
        topic, enriched = out[(event.camera, event.track_id)]
        assert topic == f"cloud/{event.camera}"
        assert enriched.pipeline == "edge", "the edge pipeline stays the event's origin"
        assert enriched.snapshot is None, "inline crops are not forwarded"
        if event.snapshot is None:
            assert enriched.classification is None
        else:
            assert enriched.classification is not None
            assert enriched.classification.label, "an ImageNet class name, from the catalog"
