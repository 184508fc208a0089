"""The objects applied for each worker group: where its pods may run, what they get, and that
no Secret value ever leaves the Secret."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from kubevision.api.camera import CameraSpec
from kubevision.api.modelvariant import HardwareClass
from kubevision.api.pipeline import PipelineSpec
from kubevision.api.worker_config import (
    CONFIG_FILE,
    SpoolConfig,
    WorkerConfig,
    output_credential_env,
)
from kubevision.operator.builders import (
    GROUP_LABEL,
    PIPELINE_LABEL,
    SPOOL_DIR,
    build_configmap,
    build_service,
    build_statefulset,
    build_worker_config,
    credential_env,
    labels,
    owner_reference,
)
from kubevision.operator.hardware import hardware_class
from kubevision.operator.planner import Camera, GroupPlan
from kubevision.operator.settings import OperatorSettings
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN, SimulatedNode
from tests.unit.factories import (
    SAMPLE_SECRET_VALUES,
    group,
    pipeline_spec,
    sample_pipeline_body,
    sample_plan,
    variant,
)

SETTINGS = OperatorSettings()
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def sample_group(hardware: HardwareClass) -> GroupPlan:
    return next(g for g in sample_plan().groups if g.hardware == hardware)


def pod_spec(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec


def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    (worker,) = pod_spec(statefulset)["containers"]
    assert isinstance(worker, dict)
    return worker


def affinity_terms(statefulset: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod_spec(statefulset)["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms: list[dict[str, Any]] = term["matchExpressions"]
    return terms


def statefulset_for(
    hardware: HardwareClass, *, site: str | None = "site-a", spec: PipelineSpec | None = None
) -> dict[str, Any]:
    return build_statefulset(
        sample_pipeline_body(), spec or pipeline_spec(), group(hardware, site=site), SETTINGS
    )


def _expression_holds(expr: dict[str, Any], node_labels: dict[str, str]) -> bool:
    key, op = expr["key"], expr["operator"]
    if op == "In":
        return node_labels.get(key) in expr["values"]
    if op == "NotIn":
        return node_labels.get(key) not in expr["values"]
    if op == "Exists":
        return key in node_labels
    assert op == "DoesNotExist", op
    return key not in node_labels


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    return any(
        t.get("key") in (None, taint["key"])
        and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
        and t.get("effect") in (None, taint["effect"])
        for t in tolerations
    )


def schedulable_on(statefulset: dict[str, Any], node_labels: dict[str, str], taints: Any) -> bool:
    """Would the scheduler's node-affinity, nodeSelector and taint filters admit the pod?"""
    pod = pod_spec(statefulset)
    affinity = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    matches_affinity = any(
        all(_expression_holds(e, node_labels) for e in term["matchExpressions"])
        for term in affinity["nodeSelectorTerms"]
    )
    selector = pod.get("nodeSelector", {})
    matches_selector = all(node_labels.get(k) == v for k, v in selector.items())
    hard_taints = [t for t in taints if t["effect"] in ("NoSchedule", "NoExecute")]
    return (
        matches_affinity
        and matches_selector
        and all(_tolerated(t, pod.get("tolerations", [])) for t in hard_taints)
    )


@pytest.mark.parametrize(
    ("hardware", "gpu_limit", "runtime_class", "image_suffix", "expressions"),
    [
        pytest.param(
            "nvidia-gpu",
            "1",
            None,
            "-cuda",
            [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}],
            id="nvidia-gpu",
        ),
        pytest.param(
            "jetson",
            None,
            "nvidia",
            "-l4t-r36",
            [
                {"key": "kubevision.io/accelerator", "operator": "In", "values": ["jetson"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
            ],
            id="jetson",
        ),
        pytest.param(
            "cpu",
            None,
            None,
            SETTINGS.worker_images["cpu"].rpartition(":")[2],
            [
                {"key": "kubevision.io/accelerator", "operator": "NotIn", "values": ["jetson"]},
                {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]},
            ],
            id="cpu",
        ),
    ],
)
def test_hardware_class_shapes_the_pod(
    hardware: HardwareClass,
    gpu_limit: str | None,
    runtime_class: str | None,
    image_suffix: str,
    expressions: list[dict[str, Any]],
) -> None:
    sts = statefulset_for(hardware, site="site-a")
    pod, worker = pod_spec(sts), container(sts)
    assert worker["resources"]["limits"].get("nvidia.com/gpu") == gpu_limit
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert pod.get("runtimeClassName") == runtime_class
    assert worker["image"] == SETTINGS.worker_images[hardware]
    assert worker["image"].endswith(image_suffix)
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert (gpu_toleration in pod["tolerations"]) is (hardware == "nvidia-gpu")
    site_term = {"key": "kubevision.io/site", "operator": "In", "values": ["site-a"]}
    assert affinity_terms(sts) == [*expressions, site_term]


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
def test_group_without_site_may_run_at_any_site(hardware: HardwareClass) -> None:
    sts = statefulset_for(hardware, site=None)
    assert all(t["key"] != "kubevision.io/site" for t in affinity_terms(sts))


def _labels(sim: SimulatedNode, **extra: str) -> dict[str, str]:
    out: dict[str, str] = sim.manifest()["metadata"]["labels"]
    return {**out, **extra}


@pytest.mark.parametrize(
    ("node_labels", "taints"),
    [
        pytest.param(_labels(GPU_SERVER), GPU_SERVER.taints, id="gpu-server"),
        pytest.param(_labels(JETSON_ORIN), JETSON_ORIN.taints, id="jetson-orin"),
        pytest.param(_labels(CPU_NODE), CPU_NODE.taints, id="cpu-node"),
        pytest.param(
            _labels(CPU_NODE, **{"nvidia.com/gpu.present": "false"}),
            [],
            id="gpu-present-false",
        ),
    ],
)
def test_a_node_admits_exactly_the_groups_of_its_own_class(
    node_labels: dict[str, str], taints: list[dict[str, str]]
) -> None:
    site = node_labels["kubevision.io/site"]
    own = hardware_class(node_labels)
    admitted = {
        hw
        for hw in ("nvidia-gpu", "jetson", "cpu")
        if schedulable_on(statefulset_for(hw, site=site), node_labels, taints)
    }
    assert admitted == {own}


def test_group_at_another_site_is_not_admitted() -> None:
    sts = statefulset_for("nvidia-gpu", site="site-b")
    assert not schedulable_on(sts, _labels(GPU_SERVER), GPU_SERVER.taints)


def test_placement_node_selector_tolerations_and_variant_node_selector_reach_the_pod() -> None:
    spec = pipeline_spec(
        placement={
            "nodeSelector": {"pool": "vision"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vision"}],
        }
    )
    h100 = variant(
        "h100-engine",
        family="yolox-nano",
        targets=[
            {
                "accelerator": "nvidia-gpu",
                "expectedFps": 5000,
                "p99LatencyMs": 10,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            }
        ],
    )
    sts = build_statefulset(
        sample_pipeline_body(), spec, group("nvidia-gpu", detector=h100), SETTINGS
    )
    pod = pod_spec(sts)
    assert pod["nodeSelector"] == {"pool": "vision"}
    assert {"key": "dedicated", "operator": "Equal", "value": "vision"} in pod["tolerations"]
    assert {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-H100-80GB-HBM3"],
    } in affinity_terms(sts)
    assert schedulable_on(sts, _labels(GPU_SERVER, pool="vision"), GPU_SERVER.taints)
    assert not schedulable_on(sts, _labels(GPU_SERVER), GPU_SERVER.taints)


def test_classifier_node_selector_reaches_the_affinity() -> None:
    needs_a100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    classifier = variant(
        "clf-a100-trt",
        family="clf",
        task="classify",
        targets=[
            {
                "accelerator": "nvidia-gpu",
                "expectedFps": 3000,
                "p99LatencyMs": 5,
                "nodeSelector": needs_a100,
            }
        ],
    )
    sts = build_statefulset(
        sample_pipeline_body(),
        pipeline_spec(),
        group("nvidia-gpu", classifier=classifier),
        SETTINGS,
    )
    assert not schedulable_on(sts, _labels(GPU_SERVER), GPU_SERVER.taints)


def test_worker_image_override_applies_to_the_group() -> None:
    spec = pipeline_spec(workerImage="registry.example/kubevision:dev")
    assert (
        container(statefulset_for("cpu", spec=spec))["image"] == "registry.example/kubevision:dev"
    )


def test_statefulset_runs_one_replica_per_shard_and_mounts_its_configmap() -> None:
    body, g = sample_pipeline_body(), sample_group("nvidia-gpu")
    sts = build_statefulset(body, pipeline_spec(), g, SETTINGS)
    assert sts["spec"]["replicas"] == g.shards.replicas
    assert sts["spec"]["serviceName"] == g.name
    assert sts["metadata"]["name"] == g.name
    assert sts["metadata"]["namespace"] == "vision"
    template_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert {"name": "config", "configMap": {"name": g.name}} in pod_spec(sts)["volumes"]
    assert container(sts)["args"] == [
        "serve",
        f"--config=/etc/kubevision/{CONFIG_FILE}",
        "--spool-dir=/var/spool/kubevision",  # the default disk spool
    ]
    shard_env = next(e for e in container(sts)["env"] if e["name"] == "KUBEVISION_SHARD")
    assert "apps.kubernetes.io/pod-index" in shard_env["valueFrom"]["fieldRef"]["fieldPath"]


def test_service_selects_the_group_pods_headlessly() -> None:
    body, g = sample_pipeline_body(), sample_group("jetson")
    svc = build_service(body, g, SETTINGS)
    sts = build_statefulset(body, pipeline_spec(), g, SETTINGS)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": SETTINGS.metrics_port, "targetPort": "metrics"}
    ]


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda b, g: build_service(b, g, SETTINGS), id="service"),
        pytest.param(lambda b, g: build_statefulset(b, pipeline_spec(), g, SETTINGS), id="sts"),
        pytest.param(
            lambda b, g: build_configmap(
                b, build_worker_config("people", "vision", pipeline_spec(), g), g
            ),
            id="configmap",
        ),
    ],
)
def test_every_object_is_labelled_and_owned_by_the_pipeline(build: Any) -> None:
    body, g = sample_pipeline_body(), sample_group("nvidia-gpu")
    meta = build(body, g)["metadata"]
    assert meta["labels"] == labels("people", g)
    assert meta["labels"][PIPELINE_LABEL] == "people"
    assert meta["labels"][GROUP_LABEL] == g.name
    assert meta["labels"]["kubevision.io/site"] == "site-a"
    assert meta["labels"]["kubevision.io/hardware-class"] == "nvidia-gpu"
    assert meta["ownerReferences"] == [owner_reference(body)]
    (ref,) = meta["ownerReferences"]
    assert ref["kind"] == "Pipeline"
    assert ref["uid"] == body["metadata"]["uid"]
    assert ref["controller"] is True


def test_credentials_come_from_the_secret_by_reference() -> None:
    g = sample_group("nvidia-gpu")
    assert set(g.cameras) == {"lobby", "parking"}  # only lobby has credentialsSecretRef
    sts = build_statefulset(sample_pipeline_body(), pipeline_spec(), g, SETTINGS)
    names = credential_env("lobby")
    secret_env = [e for e in container(sts)["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret_env == [
        {
            "name": names.username_env,
            "valueFrom": {"secretKeyRef": {"name": "lobby-camera-credentials", "key": "username"}},
        },
        {
            "name": names.password_env,
            "valueFrom": {"secretKeyRef": {"name": "lobby-camera-credentials", "key": "password"}},
        },
    ]


def test_custom_secret_keys_are_used() -> None:
    source = {
        "url": "rtsp://door.example/s",
        "credentialsSecretRef": {"name": "door-secret", "usernameKey": "u", "passwordKey": "p"},
    }
    door = Camera("door", {}, CameraSpec.model_validate({"source": source, "site": "site-a"}))
    g = group("cpu", cameras=[door])
    env = container(build_statefulset(sample_pipeline_body(), pipeline_spec(), g, SETTINGS))["env"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs == [{"name": "door-secret", "key": "u"}, {"name": "door-secret", "key": "p"}]


def test_configmap_names_credential_env_vars_but_holds_no_secret() -> None:
    body, g = sample_pipeline_body(), sample_group("nvidia-gpu")
    config = build_worker_config("people", "vision", pipeline_spec(), g)
    cm = build_configmap(body, config, g)
    text = cm["data"][CONFIG_FILE]
    for value in SAMPLE_SECRET_VALUES:
        assert value not in text
    cameras = {c["name"]: c for shard in json.loads(text)["shards"] for c in shard}
    names = credential_env("lobby")
    assert cameras["lobby"]["credentials"] == {
        "usernameEnv": names.username_env,
        "passwordEnv": names.password_env,
    }
    assert "credentials" not in cameras["parking"]
    assert "@" not in cameras["lobby"]["url"]


def test_configmap_round_trips_to_the_plan() -> None:
    """The operator reads shard assignments back from the ConfigMap to keep cameras in place."""
    body, g = sample_pipeline_body(), sample_group("nvidia-gpu")
    spec = pipeline_spec()
    cm = build_configmap(body, build_worker_config("people", "vision", spec, g), g)
    config = WorkerConfig.model_validate(json.loads(cm["data"][CONFIG_FILE]))
    assert config.assignments() == {
        cam: i for i, shard in enumerate(g.shards.shards) for cam in shard
    }
    assert config.group == g.name
    assert config.hardware_class == "nvidia-gpu"
    assert config.site == "site-a"
    assert config.detector.model.variant == "yolox-nano-416-trt-fp16"
    assert config.detector.confidence == 0.3
    assert config.detector.classes == ["person", "car", "truck", "bicycle"]
    assert config.classifier is not None
    assert config.classifier.model.variant == "mobilenetv2-int8-onnx"
    assert config.classifier.refresh_frames == 30
    assert config.slo == spec.slo
    assert [o.type for o in config.outputs] == ["stdout", "mqtt"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("a-b", "a.b", id="dash-vs-dot"),
        pytest.param("cam-1", "cam.1", id="digits"),
        pytest.param("lobby", "lobby2", id="prefix"),
    ],
)
def test_credential_env_names_are_valid_and_distinct(a: str, b: str) -> None:
    first, second = credential_env(a), credential_env(b)
    names = [first.username_env, first.password_env, second.username_env, second.password_env]
    assert all(ENV_NAME.match(n) for n in names)
    assert len(set(names)) == 4
    assert credential_env(a) == first


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson"])
def test_builders_are_idempotent(hardware: HardwareClass) -> None:
    def build_all() -> list[dict[str, Any]]:
        body, spec, g = sample_pipeline_body(), pipeline_spec(), sample_group(hardware)
        config = build_worker_config("people", "vision", spec, g)
        return [
            build_configmap(body, config, g),
            build_service(body, g, SETTINGS),
            build_statefulset(body, spec, g, SETTINGS),
        ]

    first, second = build_all(), build_all()
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_building_twice_from_one_group_does_not_share_or_mutate_state() -> None:
    body, spec, g = sample_pipeline_body(), pipeline_spec(), sample_group("nvidia-gpu")
    first = build_statefulset(body, spec, g, SETTINGS)
    pod_spec(first)["tolerations"].append({"key": "mutated"})
    container(first)["resources"]["limits"]["memory"] = "1Ti"
    second = build_statefulset(body, spec, g, SETTINGS)
    assert {"key": "mutated"} not in pod_spec(second)["tolerations"]
    assert container(second)["resources"]["limits"]["memory"] == "4Gi"


def test_output_credentials_come_from_their_secret_by_reference() -> None:
    outputs = [
        {"type": "stdout"},
        {
            "type": "mqtt",
            "url": "mqtts://broker.example:8883",
            "topic": "kv",
            "credentialsSecretRef": {"name": "broker-login"},
        },
    ]
    spec = pipeline_spec(outputs=outputs)
    sts = build_statefulset(sample_pipeline_body(), spec, sample_group("nvidia-gpu"), SETTINGS)
    env = {e["name"]: e["valueFrom"] for e in container(sts)["env"] if "valueFrom" in e}
    names = output_credential_env(1)  # the mqtt output is outputs[1]
    assert env[names.username_env] == {"secretKeyRef": {"name": "broker-login", "key": "username"}}
    assert env[names.password_env] == {"secretKeyRef": {"name": "broker-login", "key": "password"}}
    assert not any(k.startswith("KUBEVISION_OUTPUT_0_") for k in env), "stdout needs none"


@pytest.mark.parametrize(
    ("hardware", "device", "video"),
    [
        ("nvidia-gpu", "cuda", "compute,utility,video"),
        ("jetson", "cuda", None),
        ("cpu", None, None),
    ],
)
def test_accelerated_workers_use_their_gpus_nvdec_and_an_engine_cache(
    hardware: HardwareClass, device: str | None, video: str | None
) -> None:
    pod = statefulset_for(hardware)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("KUBEVISION_DEVICE") == device
    assert env.get("NVIDIA_DRIVER_CAPABILITIES") == video
    cache = [v for v in pod["volumes"] if v["name"] == "engines"]
    mounted = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "engines"]
    if device is None:
        assert not cache
        assert not mounted
    else:
        # a per-pod emptyDir by default: Pod Security "restricted" forbids hostPath volumes
        assert cache == [{"name": "engines", "emptyDir": {}}]
        assert mounted == [env["KUBEVISION_ENGINE_CACHE"]]


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson"])
def test_a_node_engine_cache_is_a_host_path_when_configured(hardware: HardwareClass) -> None:
    settings = OperatorSettings(engine_cache_host_path="/var/lib/kubevision/engines")
    sts = build_statefulset(
        sample_pipeline_body(), pipeline_spec(), group(hardware, site="site-a"), settings
    )
    (cache,) = [v for v in pod_spec(sts)["volumes"] if v["name"] == "engines"]
    assert cache["hostPath"] == {"path": "/var/lib/kubevision/engines", "type": "DirectoryOrCreate"}


def mounted(
    sts: dict[str, Any], volume: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the pod volume named ``volume``, the container's mount of it)."""
    volumes = [v for v in pod_spec(sts)["volumes"] if v["name"] == volume]
    mounts = [m for m in container(sts)["volumeMounts"] if m["name"] == volume]
    assert len(volumes) <= 1
    assert len(mounts) == len(volumes)
    return (volumes[0], mounts[0]) if volumes else (None, None)


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
@pytest.mark.parametrize(
    ("settings", "source"),
    [
        (OperatorSettings(), None),
        (
            OperatorSettings(models_claim_name="models"),
            {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        ),
        (
            OperatorSettings(models_host_path="/srv/models"),
            {"hostPath": {"path": "/srv/models", "type": "Directory"}},
        ),
    ],
    ids=["none", "claim", "node-folder"],
)
def test_the_models_volume_is_mounted_read_only_at_models_in_every_worker(
    hardware: HardwareClass, settings: OperatorSettings, source: dict[str, Any] | None
) -> None:
    sts = build_statefulset(sample_pipeline_body(), pipeline_spec(), group(hardware), settings)
    volume, mount = mounted(sts, "models")
    if source is None:
        assert volume is None
        return
    assert volume == {"name": "models", **source}
    # where the catalog's file:///models/... URIs point; the worker only reads it
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_models_come_from_a_claim_or_a_node_folder_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        OperatorSettings(models_claim_name="models", models_host_path="/srv/models")


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
def test_a_node_artifact_cache_is_a_host_path_for_every_class_when_configured(
    hardware: HardwareClass,
) -> None:
    default = statefulset_for(hardware)
    assert mounted(default, "artifacts") == (None, None)
    assert "KUBEVISION_ARTIFACT_CACHE" not in {e["name"] for e in container(default)["env"]}
    settings = OperatorSettings(artifact_cache_host_path="/var/lib/kubevision/artifacts")
    sts = build_statefulset(sample_pipeline_body(), pipeline_spec(), group(hardware), settings)
    volume, mount = mounted(sts, "artifacts")
    # the folder must exist (owned by the worker's UID): one the kubelet created is root's
    assert volume == {
        "name": "artifacts",
        "hostPath": {"path": "/var/lib/kubevision/artifacts", "type": "Directory"},
    }
    assert mount is not None
    assert "readOnly" not in mount
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    assert env["KUBEVISION_ARTIFACT_CACHE"] == mount["mountPath"]


def test_the_chart_settings_of_models_and_artifact_cache_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEVISION_MODELS_CLAIM", "models")
    monkeypatch.setenv("KUBEVISION_ARTIFACT_CACHE_HOST_PATH", "/var/lib/kubevision/artifacts")
    settings = OperatorSettings.from_env()
    assert settings.models_claim_name == "models"
    assert settings.models_host_path is None
    assert settings.artifact_cache_host_path == "/var/lib/kubevision/artifacts"


RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
"""The volume types Pod Security "restricted" admits."""


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
@pytest.mark.parametrize(
    "settings", [OperatorSettings(), OperatorSettings(models_claim_name="models")]
)
def test_worker_pods_meet_pod_security_restricted(
    hardware: HardwareClass, settings: OperatorSettings
) -> None:
    # the admission itself is exercised on the real API server in tests/integration/test_chart.py
    pod = pod_spec(
        build_statefulset(sample_pipeline_body(), pipeline_spec(), group(hardware), settings)
    )
    (worker,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = worker["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert "privileged" not in context
    assert "hostNetwork" not in pod
    for volume in pod["volumes"]:
        (kind,) = set(volume) - {"name"}
        assert kind in RESTRICTED_VOLUME_TYPES, volume
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
def test_a_read_only_worker_still_has_a_writable_home_and_tmp(hardware: HardwareClass) -> None:
    pod = pod_spec(statefulset_for(hardware))
    (worker,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["HOME"] == "/tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["securityContext"]["fsGroup"] == 65532, "emptyDirs writable by the worker"


# -- the spool of the webhook and MQTT outputs ------------------------------------------------


def spool_mount(sts: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(the --spool-dir argument, the volume mounted there) of a worker StatefulSet."""
    args = [a for a in container(sts)["args"] if a.startswith("--spool-dir=")]
    mounts = [m for m in container(sts)["volumeMounts"] if m["mountPath"] == SPOOL_DIR]
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    if not args:
        assert not mounts
        return None, None
    (mount,) = mounts
    assert args[0].startswith(f"--spool-dir={SPOOL_DIR}"), "the folder is on the spool volume"
    return args[0].removeprefix("--spool-dir="), volumes.get(mount["name"])


def test_a_disk_spool_gets_an_emptydir_by_default_and_its_bounds_reach_the_worker() -> None:
    spec = pipeline_spec(spool={"maxEvents": 500, "maxBytes": 2**21})
    sts = statefulset_for("cpu", spec=spec)
    assert spool_mount(sts) == (SPOOL_DIR, {"name": "spool", "emptyDir": {}})
    assert "volumeClaimTemplates" not in sts["spec"]
    config = build_worker_config("people", "vision", spec, group("cpu", site="site-a"))
    assert config.spool == SpoolConfig(storage="disk", max_events=500, max_bytes=2**21)


def test_a_memory_spool_mounts_nothing() -> None:
    spec = pipeline_spec(spool={"storage": "memory"})
    assert spool_mount(statefulset_for("jetson", spec=spec)) == (None, None)
    config = build_worker_config("people", "vision", spec, group("jetson", site="site-a"))
    assert config.spool.storage == "memory"


def test_a_spool_claim_is_a_volume_claim_template_per_replica_deleted_with_the_pipeline() -> None:
    claim = {"size": "2Gi", "storageClassName": "local-path"}
    sts = statefulset_for("jetson", spec=pipeline_spec(spool={"persistentVolumeClaim": claim}))
    directory, volume = spool_mount(sts)
    assert directory == SPOOL_DIR
    assert volume is None, "the StatefulSet controller adds the claim of each replica"
    assert sts["spec"]["volumeClaimTemplates"] == [
        {
            "metadata": {"name": "spool"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "2Gi"}},
                "storageClassName": "local-path",
            },
        }
    ]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",  # no orphaned claims once the Pipeline is gone
        "whenScaled": "Retain",  # a replica scaled back up gets its undelivered events back
    }


def test_a_node_spool_folder_is_a_host_path_with_a_folder_per_pod() -> None:
    settings = OperatorSettings(spool_host_path="/var/lib/kubevision/spool")
    sts = build_statefulset(
        sample_pipeline_body(), pipeline_spec(), group("jetson", site="site-a"), settings
    )
    directory, volume = spool_mount(sts)
    assert directory == f"{SPOOL_DIR}/vision/$(KUBEVISION_POD_NAME)"
    # the folder must exist (owned by the worker's UID): one the kubelet created is root's
    assert volume == {
        "name": "spool",
        "hostPath": {"path": "/var/lib/kubevision/spool", "type": "Directory"},
    }
    env = {e["name"] for e in container(sts)["env"]}
    assert "KUBEVISION_POD_NAME" in env, "the kubelet expands $(KUBEVISION_POD_NAME) from it"
    claimed = pipeline_spec(spool={"persistentVolumeClaim": {}})
    sts = build_statefulset(sample_pipeline_body(), claimed, group("jetson"), settings)
    assert spool_mount(sts) == (SPOOL_DIR, None), "a Pipeline's claim wins over the node folder"
