"""The operator on the real control plane, running as the chart's restricted ServiceAccount:
manifests applied with kubectl become worker workloads bound to the right simulated nodes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubevision.api.camera import CameraSpec
from kubevision.api.modelvariant import ModelVariantSpec
from kubevision.operator.hardware import node_info
from kubevision.operator.kube import PIPELINES, Kube
from kubevision.operator.pipelines import CameraRecord, Snapshot, reconcile_pipeline
from kubevision.operator.planner import group_name
from kubevision.operator.selection import Variant
from kubevision.operator.settings import OperatorSettings
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN, NodeSimulator, SimulatedNode
from tests.envtest.operator import OperatorProcess
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace

SAMPLES = REPO_ROOT / "crds" / "samples"
CATALOG = REPO_ROOT / "model_catalog" / "variants"
SAMPLE_PASSWORD = "change-me"  # the sample Secret's password: must never leak

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def ns(cluster: LocalCluster, namespace: str) -> Namespace:
    return Namespace(cluster, namespace)


def camera(name: str, fps: float = 10, site: str | None = "site-a", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"url": f"rtsp://{name}.cams.example/live"},
        "fps": fps,
        **spec,
    }
    if site:
        body["site"] = site
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": body,
    }


def pipeline(name: str = "p", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cameraSelector": {"matchLabels": {"app": "test"}},
        "stages": {"detector": {"family": "yolox-nano"}},
        **spec,
    }
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": body,
    }


def snapshot(ns: Namespace) -> Snapshot:
    """What the operator's indexes hold for this namespace, read straight from the API."""
    cameras = [
        CameraRecord.of(c["metadata"], CameraSpec.model_validate(c["spec"]), c.get("status") or {})
        for c in ns.items("cameras")
    ]
    variants = [
        Variant(v["metadata"]["name"], ModelVariantSpec.model_validate(v["spec"]))
        for v in ns.items("modelvariants")
    ]
    nodes = [
        node_info(n["metadata"]["name"], n["metadata"]["labels"], n["spec"], n["status"])
        for n in json.loads(ns.cluster.control_plane.kubectl("get", "nodes", "-o", "json").stdout)[
            "items"
        ]
    ]
    return Snapshot(cameras=cameras, variants=variants, nodes=nodes)


def scheduled_node(ns: Namespace, pod: str) -> str | None:
    obj = ns.get("pod", pod)
    return (obj or {}).get("spec", {}).get("nodeName")


# -- placement ---------------------------------------------------------------------------------


def test_samples_become_workers_on_the_gpu_server_and_the_jetson(ns: Namespace) -> None:
    ns.apply(
        SAMPLES / "camera.yaml",
        SAMPLES / "pipeline.yaml",
        CATALOG / "yolox-nano.yaml",
        CATALOG / "classifiers.yaml",
    )
    gpu = wait_for(
        lambda: ns.get("statefulset", group_name("people", "site-a", "nvidia-gpu")),
        timeout=60,
        what="the GPU group's StatefulSet",
    )
    jetson = wait_for(
        lambda: ns.get("statefulset", group_name("people", "site-b", "jetson")),
        timeout=60,
        what="the Jetson group's StatefulSet",
    )

    gpu_pod = gpu["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod[
        "tolerations"
    ]
    jetson_pod = jetson["spec"]["template"]["spec"]
    assert jetson_pod["runtimeClassName"] == "nvidia"
    assert jetson_pod["containers"][0]["image"].endswith("-l4t-r36")
    terms = jetson_pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]} in terms[
        "nodeSelectorTerms"
    ][0]["matchExpressions"]

    assert (
        wait_for(
            lambda: scheduled_node(ns, group_name("people", "site-a", "nvidia-gpu") + "-0"),
            timeout=60,
            what="the GPU worker pod to be bound",
        )
        == GPU_SERVER.name
    )
    assert (
        wait_for(
            lambda: scheduled_node(ns, group_name("people", "site-b", "jetson") + "-0"),
            timeout=60,
            what="the Jetson worker pod to be bound",
        )
        == JETSON_ORIN.name
    )

    # the most accurate variant meeting the SLO on each hardware, the fastest among equals
    for group in (
        group_name("people", "site-a", "nvidia-gpu"),
        group_name("people", "site-b", "jetson"),
    ):
        assert ns.worker_config(group).detector.model.variant == "yolox-nano-416-trt-fp16"
    wait_for(
        lambda: ns.get("pipeline", "people")["status"].get("cameras") == 3,
        timeout=30,
        what="the Pipeline status to count 3 cameras",
    )
    lobby = ns.get("camera", "lobby")["status"]
    assert lobby["sourceHost"] == "lobby-cam.site-a.example"
    assert lobby["assignments"] == [
        {"pipeline": "people", "workload": group_name("people", "site-a", "nvidia-gpu"), "shard": 0}
    ]


def test_cpu_only_pipeline_lands_on_the_cpu_node(ns: Namespace) -> None:
    ns.apply(
        CATALOG / "yolox-nano.yaml",
        docs=[camera("c1"), pipeline("cpu", placement={"hardwareClasses": ["cpu"]})],
    )
    assert (
        wait_for(
            lambda: scheduled_node(ns, group_name("cpu", "site-a", "cpu") + "-0"),
            timeout=60,
            what="the CPU worker pod to be bound",
        )
        == CPU_NODE.name
    )


def test_camera_credentials_reach_workers_only_through_secret_refs(
    ns: Namespace, operator: OperatorProcess
) -> None:
    ns.apply(
        SAMPLES / "camera.yaml",
        SAMPLES / "pipeline.yaml",
        CATALOG / "yolox-nano.yaml",
        CATALOG / "classifiers.yaml",
    )
    sts = wait_for(
        lambda: ns.get("statefulset", group_name("people", "site-a", "nvidia-gpu")),
        timeout=60,
        what="the GPU group's StatefulSet",
    )
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in env.values()
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert {"name": "lobby-camera-credentials", "key": "password"} in refs
    lobby = next(
        c
        for c in ns.worker_config(group_name("people", "site-a", "nvidia-gpu")).shards[0]
        if c.name == "lobby"
    )
    assert lobby.credentials is not None
    assert lobby.credentials.password_env in env

    everything = "".join(
        ns.kubectl("get", kind, "-o", "yaml")
        for kind in ("configmaps", "cameras", "pipelines", "events")
    )
    assert SAMPLE_PASSWORD not in everything
    assert SAMPLE_PASSWORD not in operator.log()


# -- sharding ----------------------------------------------------------------------------------

SMALL_VARIANT = {
    "apiVersion": "kubevision.io/v1alpha1",
    "kind": "ModelVariant",
    "metadata": {"name": "tiny-cpu"},
    "spec": {
        "family": "tiny",
        "task": "detect",
        "format": "onnx",
        "precision": "fp32",
        "decoder": "yolox",
        "inputSize": {"width": 320, "height": 320},
        "artifact": {"uri": "file:///models/tiny.onnx", "sha256": "0" * 64},
        "hardware": [{"accelerator": "cpu", "expectedFps": 40, "p99LatencyMs": 30}],
    },
}
# one replica plans for 40 fps x 0.8 = 32 fps: three 10-fps cameras


def shards(ns: Namespace, group: str) -> dict[str, int]:
    return ns.worker_config(group).assignments()


def test_replicas_and_shards_follow_cameras_and_cameras_move_only_when_they_must(
    ns: Namespace,
) -> None:
    group = group_name("p", "site-a", "cpu")
    spec: dict[str, Any] = {
        "stages": {"detector": {"family": "tiny"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 20},
    }
    ns.apply(docs=[SMALL_VARIANT, pipeline(**spec), camera("cam-00")])
    wait_for(lambda: ns.get("statefulset", group), timeout=60, what="the worker StatefulSet")
    assert shards(ns, group) == {"cam-00": 0}

    ns.apply(docs=[camera(f"cam-{i:02d}") for i in range(1, 20)])
    wait_for(lambda: len(shards(ns, group)) == 20, timeout=60, what="20 cameras in the config")
    after_20 = shards(ns, group)
    replicas = ns.get("statefulset", group)["spec"]["replicas"]
    assert replicas == 7  # ceil(20 cameras / 3 per replica)
    assert after_20["cam-00"] == 0, "the first camera must not move when others are added"
    assert sorted(after_20.values()).count(0) == 3

    ns.kubectl("delete", "camera", *[f"cam-{i:02d}" for i in range(3, 20)])
    wait_for(lambda: len(shards(ns, group)) == 3, timeout=60, what="3 cameras in the config")
    after_3 = shards(ns, group)
    # make-before-break: retiring replicas serve out the (test's 5 s) handover window first
    wait_for(
        lambda: ns.get("statefulset", group)["spec"]["replicas"] == 1,
        timeout=30,
        what="the StatefulSet to shrink after the handover window",
    )
    for cam, shard in after_3.items():
        if after_20[cam] == 0:
            assert shard == 0, f"{cam} was on a shard that still exists and must stay"
    status = ns.get("pipeline", "p")["status"]
    assert status["desiredReplicas"] == 1
    assert status["lastScalingDecision"]["toReplicas"] == 1


# -- lifecycle ---------------------------------------------------------------------------------


def test_deleting_a_pipeline_garbage_collects_everything_it_created(ns: Namespace) -> None:
    ns.apply(
        docs=[
            SMALL_VARIANT,
            pipeline(stages={"detector": {"family": "tiny"}}),
            camera("a"),
            camera("b", site="site-b"),
            camera("c", site=None),
        ]
    )
    wait_for(
        lambda: ns.items("statefulsets", "kubevision.io/pipeline=p"),
        timeout=60,
        what="the worker StatefulSets",
    )
    ns.kubectl("delete", "pipeline", "p", "--wait=true", "--timeout=60s")

    def nothing_left() -> bool:
        return not any(
            ns.items(kind, "kubevision.io/pipeline=p")
            for kind in ("statefulsets", "configmaps", "services", "pods")
        )

    wait_for(nothing_left, timeout=90, what="garbage collection of the Pipeline's objects")
    wait_for(
        lambda: not ns.get("camera", "a")["status"].get("assignments"),
        timeout=30,
        what="the camera's assignment to be dropped",
    )


@pytest.mark.parametrize(
    ("docs", "reason", "message"),
    [
        pytest.param(
            [pipeline(slo={"p99LatencyMs": 1}), camera("x")],
            "NoMatchingVariant",
            "meets p99 <= 1 ms",
            id="slo-too-tight",
        ),
        pytest.param(
            [pipeline(), camera("x", site="site-z")],
            "NoSchedulableNodes",
            "at site site-z",
            id="site-without-nodes",
        ),
        pytest.param(
            [pipeline(placement={"hardwareClasses": ["jetson"]}), camera("x")],
            "NoSchedulableNodes",
            "class jetson at site site-a",
            id="class-not-at-site",
        ),
        pytest.param(
            [pipeline(stages={"detector": {"variant": "no-such-model"}}), camera("x")],
            "NoMatchingVariant",
            "ModelVariant no-such-model (spec.stages.detector.variant) does not exist",
            id="unknown-variant",
        ),
        pytest.param(
            [
                pipeline(
                    stages={
                        "detector": {"family": "yolox-nano"},
                        "classifier": {"family": "no-such"},
                    }
                ),
                camera("x"),
            ],
            "NoMatchingVariant",
            "no classifier variant",
            id="unknown-classifier",
        ),
    ],
)
def test_unsatisfiable_pipelines_say_why(
    ns: Namespace,
    operator: OperatorProcess,
    docs: list[dict[str, Any]],
    reason: str,
    message: str,
) -> None:
    ns.apply(CATALOG / "yolox-nano.yaml", CATALOG / "classifiers.yaml", docs=docs)
    # the first reconcile may run before the indexes hold the camera (Degraded=False,
    # NoCameras); the operator converges on the problem once it sees everything
    degraded = wait_for(
        lambda: (c := ns.condition("pipeline", "p", "Degraded")) and c["reason"] == reason and c,
        timeout=60,
        what=f"Degraded={reason}",
    )
    assert degraded["status"] == "True"
    assert message in degraded["message"]
    ready = ns.condition("pipeline", "p", "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    wait_for(
        lambda: any(
            e["reason"] == reason and e["involvedObject"]["name"] == "p" for e in ns.items("events")
        ),
        timeout=30,
        what=f"a {reason} event",
    )
    assert ns.items("statefulsets") == []
    assert operator.alive()


def test_too_many_cameras_for_max_replicas_is_degraded_no_capacity(ns: Namespace) -> None:
    spec: dict[str, Any] = {
        "stages": {"detector": {"family": "tiny"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    ns.apply(docs=[SMALL_VARIANT, pipeline(**spec), *[camera(f"c{i}") for i in range(8)]])
    degraded = wait_for(
        lambda: (
            (ns.condition("pipeline", "p", "Degraded") or {}).get("reason") == "NoCapacity"
            and ns.condition("pipeline", "p", "Degraded")
        ),
        timeout=60,
        what="Degraded=NoCapacity",
    )
    assert "maxReplicas=2" in degraded["message"]
    # every camera is still assigned: overloaded beats unwatched
    assert len(ns.worker_config(group_name("p", "site-a", "cpu")).assignments()) == 8
    assert ns.get("statefulset", group_name("p", "site-a", "cpu"))["spec"]["replicas"] == 2


def test_operator_killed_mid_reconcile_converges_without_duplicates_or_orphans(
    ns: Namespace, operator: OperatorProcess
) -> None:
    spec: dict[str, Any] = {
        "stages": {"detector": {"family": "tiny"}},
        "autoscaling": {"maxReplicas": 50},
    }
    cams = [camera(f"k{i:02d}", site=("site-a" if i % 2 else "site-b")) for i in range(30)]
    tiny_everywhere = json.loads(json.dumps(SMALL_VARIANT))
    tiny_everywhere["spec"]["hardware"].append(
        {"accelerator": "jetson", "expectedFps": 40, "p99LatencyMs": 30}
    )
    ns.apply(docs=[tiny_everywhere, pipeline(**spec), *cams])
    wait_for(
        lambda: ns.items("statefulsets", "kubevision.io/pipeline=p"),
        timeout=60,
        what="the first StatefulSet",
    )
    operator.kill()
    ns.kubectl("delete", "camera", *[f"k{i:02d}" for i in range(20, 30)])
    operator.start()

    def converged() -> bool:
        status = (ns.get("pipeline", "p") or {}).get("status") or {}
        groups = {g["name"]: g for g in status.get("groups", [])}
        return (
            set(groups) == {group_name("p", "site-a", "cpu"), group_name("p", "site-b", "jetson")}
            and status["cameras"] == 20
        )

    wait_for(converged, timeout=90, what="the Pipeline to converge after the restart")
    for kind in ("statefulsets", "configmaps", "services"):
        names = sorted(o["metadata"]["name"] for o in ns.items(kind, "kubevision.io/pipeline=p"))
        assert names == sorted(
            [group_name("p", "site-a", "cpu"), group_name("p", "site-b", "jetson")]
        ), kind
    assigned = {
        **ns.worker_config(group_name("p", "site-a", "cpu")).assignments(),
        **ns.worker_config(group_name("p", "site-b", "jetson")).assignments(),
    }
    assert sorted(assigned) == sorted(f"k{i:02d}" for i in range(20))


def test_a_second_reconcile_changes_nothing(ns: Namespace, cluster: LocalCluster) -> None:
    ns.apply(
        SAMPLES / "camera.yaml",
        SAMPLES / "pipeline.yaml",
        CATALOG / "yolox-nano.yaml",
        CATALOG / "classifiers.yaml",
    )
    wait_for(
        lambda: (
            (ns.condition("pipeline", "people", "Ready") or {}).get("reason") == "WorkersStarting"
        ),
        timeout=60,
        what="the operator's first reconcile",
    )

    def state() -> dict[str, Any]:
        owned = {
            f"{kind}/{o['metadata']['name']}": (
                o["metadata"]["resourceVersion"]
                if kind != "statefulsets"
                else o["metadata"]["generation"]
            )
            for kind in ("statefulsets", "configmaps", "services")
            for o in ns.items(kind, "kubevision.io/pipeline=people")
        }
        return {
            "owned": owned,
            # the Autoscaling condition reflects the daemon's in-memory measurements, which a
            # direct reconcile does not have; everything derived from the objects must match
            "pipeline": {
                k: v for k, v in ns.get("pipeline", "people")["status"].items() if k != "conditions"
            },
            "conditions": [
                c
                for c in ns.get("pipeline", "people")["status"]["conditions"]
                if c["type"] != "Autoscaling"
            ],
            "cameras": {
                c["metadata"]["name"]: c["metadata"]["resourceVersion"] for c in ns.items("cameras")
            },
        }

    before = state()
    kube = Kube(cluster.api_client(), OperatorSettings().field_manager)
    body = ns.get("pipeline", "people")
    reconcile_pipeline(kube, OperatorSettings(), body, snapshot(ns))
    assert state() == before


def test_a_stale_status_written_after_ours_is_corrected(
    ns: Namespace, cluster: LocalCluster
) -> None:
    """A shard's previous owner may finish a pass after the new owner wrote: its older status
    lands last. The owner's next pass must write its own again, not trust that it did."""
    ns.apply(docs=[SMALL_VARIANT, pipeline(stages={"detector": {"family": "tiny"}}), camera("c")])
    wait_for(
        lambda: (ns.get("pipeline", "p").get("status") or {}).get("cameras") == 1,
        timeout=60,
        what="the operator's status of the Pipeline",
    )
    stale = {**ns.get("pipeline", "p")["status"], "cameras": 0}
    kube = Kube(cluster.api_client(), OperatorSettings().field_manager)
    kube.apply_status(PIPELINES, ns.name, "p", stale)  # the operator's own field manager
    wait_for(
        lambda: ns.get("pipeline", "p")["status"]["cameras"] == 1,
        timeout=60,
        what="the operator to write its status over the stale one",
    )


# -- re-triggering ------------------------------------------------------------------------------


def test_a_new_faster_variant_unblocks_a_pipeline(ns: Namespace) -> None:
    slow = json.loads(json.dumps(SMALL_VARIANT))
    slow["spec"]["hardware"][0]["p99LatencyMs"] = 500
    ns.apply(docs=[slow, pipeline(stages={"detector": {"family": "tiny"}}), camera("c")])
    wait_for(
        lambda: (
            (ns.condition("pipeline", "p", "Degraded") or {}).get("reason") == "NoMatchingVariant"
        ),
        timeout=60,
        what="Degraded=NoMatchingVariant",
    )
    fast = json.loads(json.dumps(SMALL_VARIANT))
    fast["metadata"]["name"] = "tiny-cpu-fast"
    ns.apply(docs=[fast])
    wait_for(
        lambda: ns.get("statefulset", group_name("p", "site-a", "cpu")),
        timeout=60,
        what="the worker StatefulSet once a fitting variant exists",
    )
    assert (
        ns.worker_config(group_name("p", "site-a", "cpu")).detector.model.variant == "tiny-cpu-fast"
    )
    degraded = ns.condition("pipeline", "p", "Degraded")
    assert degraded is not None
    assert degraded["status"] == "False"


def test_a_node_joining_a_site_unblocks_its_cameras(ns: Namespace, cluster: LocalCluster) -> None:
    ns.apply(
        docs=[
            SMALL_VARIANT,
            pipeline(stages={"detector": {"family": "tiny"}}),
            camera("c", site="site-new"),
        ]
    )
    wait_for(
        lambda: (
            (ns.condition("pipeline", "p", "Degraded") or {}).get("reason") == "NoSchedulableNodes"
        ),
        timeout=60,
        what="Degraded=NoSchedulableNodes",
    )
    node = SimulatedNode(
        name="cpu-node-new",
        arch="amd64",
        labels={"kubevision.io/site": "site-new"},
        capacity=dict(CPU_NODE.capacity),
        address="127.0.10.9",
        os_image=CPU_NODE.os_image,
        kernel=CPU_NODE.kernel,
        runtime=CPU_NODE.runtime,
    )
    simulator = NodeSimulator(cluster.api_client(), (node,))
    simulator.start()
    try:
        sts = wait_for(
            lambda: ns.get("statefulset", group_name("p", "site-new", "cpu")),
            timeout=60,
            what="the worker StatefulSet once the site has a node",
        )
        terms = sts["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]
        assert {"key": "kubevision.io/site", "operator": "In", "values": ["site-new"]} in terms[
            "matchExpressions"
        ]
        assert (
            wait_for(
                lambda: scheduled_node(ns, group_name("p", "site-new", "cpu") + "-0"),
                timeout=60,
                what="the worker pod bound to the new node",
            )
            == node.name
        )
    finally:
        simulator.stop()
        cluster.control_plane.kubectl("delete", "node", node.name)
