"""ModelVariant status and the Pipeline's ModelsVerified condition from the workers' reports:
the INT8 accuracy gate, per-hardware-class available/verified/measured, and no status write
when nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prometheus_client import generate_latest

from kubevision.api.modelvariant import Artifact, ModelVariantStatus
from kubevision.api.worker_config import CONFIG_FILE, artifact_credential_env
from kubevision.operator import conditions as c
from kubevision.operator import modelvariants as mv
from kubevision.operator.builders import build_configmap, build_statefulset, build_worker_config
from kubevision.operator.selection import Variant, choose_variant
from kubevision.operator.settings import OperatorSettings
from kubevision.operator.signals import ModelHealth, parse_metrics
from kubevision.worker.metrics import WorkerMetrics
from tests.unit.factories import (
    catalog,
    group,
    manifests,
    pipeline_spec,
    sample_pipeline_body,
    simulated_nodes,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def body(name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = next(
        m for m in manifests("model_catalog/variants/*.yaml", "ModelVariant")
        if m["metadata"]["name"] == name
    )  # fmt: skip
    return {
        "metadata": {"name": name, "generation": 3},
        "spec": manifest["spec"],
        "status": status or {},
    }


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(x for x in status["conditions"] if x["type"] == type_)


@pytest.mark.parametrize(
    ("name", "accepted", "ready", "reason"),
    [
        pytest.param("yolox-nano-416-onnx-fp32", None, "True", c.ACCEPTED, id="fp32-no-gate"),
        pytest.param(
            "yolox-nano-416-trt-int8", False, "False", c.ACCURACY_NOT_MEASURED, id="int8-unmeasured"
        ),
        pytest.param(
            "yolox-nano-416-onnx-int8", False, "False", c.BUDGET_EXCEEDED, id="int8-over-budget"
        ),
        pytest.param("mobilenetv2-int8-onnx", None, "True", c.ACCEPTED, id="int8-classifier"),
    ],
)
def test_accuracy_gate_in_status(name: str, accepted: bool | None, ready: str, reason: str) -> None:
    status = mv.desired_status(body(name))
    assert status.get("accepted") == accepted
    assert condition(status, c.READY)["status"] == ready
    if accepted is not None:
        gate = condition(status, c.ACCEPTED_BY_GATE)
        assert (gate["status"], gate["reason"]) == ("False", reason)
        assert condition(status, c.READY)["message"].startswith("never selected")


def test_catalog_never_selects_a_rejected_int8_detector() -> None:
    variants = catalog()
    for hardware in ("cpu", "jetson", "nvidia-gpu"):
        for variant in variants:
            if variant.spec.accepted() is False:
                from kubevision.api.pipeline import ModelRef

                ref = ModelRef(variant=variant.name)
                assert choose_variant(ref, "detect", hardware, simulated_nodes(), variants) is None


def test_measured_per_hardware_class_and_no_write_loop() -> None:
    status = mv.desired_status(body("yolox-nano-416-onnx-fp16"))
    assert status["hardwareClasses"] == [{"accelerator": "nvidia-gpu", "measured": True}]
    estimated = mv.desired_status(body("yolox-nano-416-onnx-fp32"))
    assert {h["measured"] for h in estimated["hardwareClasses"]} == {False}
    # a Pipeline's writes (another field manager) sit beside ours: still nothing to write
    merged = {
        **status,
        "hardwareClasses": [
            {"accelerator": "nvidia-gpu", "measured": True, "available": True, "verified": True}
        ],
        "conditions": [
            *status["conditions"],
            {
                "type": c.ARTIFACT_VERIFIED,
                "status": "True",
                "reason": c.CHECKSUM_MATCHED,
                "message": "",
                "lastTransitionTime": "2026-12-04T12:00:00Z",
            },
        ],
    }
    again = body("yolox-nano-416-onnx-fp16", merged)
    assert mv.current_status(again) == mv.desired_status(again)


def scraped(metrics: WorkerMetrics) -> dict[str, ModelHealth]:
    return dict(parse_metrics(generate_latest(metrics.registry).decode(), 0.0).models)


def test_worker_metrics_parse_to_model_health() -> None:
    metrics = WorkerMetrics("p")
    metrics.models_loaded({"detector": "v1", "classifier": "cls"})
    assert scraped(metrics) == {
        "classifier": ModelHealth("classifier", "cls", "cls", True),
        "detector": ModelHealth("detector", "v1", "v1", True),
    }
    metrics.model_failed("detector", "v2", "ChecksumMismatch", "sha differs")
    health = scraped(metrics)["detector"]
    assert health == ModelHealth("detector", "v2", "v1", False, "ChecksumMismatch")
    entry = next(e for e in metrics.model_status() if e["role"] == "detector")
    assert entry["message"] == "sha differs"
    assert entry["running"] == "v1"


REFUSED = ModelHealth("detector", "v2", "v1", False, c.CHECKSUM_MISMATCH, "sha differs")
MISSING = ModelHealth("detector", "v2", "v1", False, "ArtifactMissing", "no such file")
RUNNING = ModelHealth("detector", "v2", "v2", True)


def test_pipeline_condition_says_which_pod_and_what_still_runs() -> None:
    reports = {"p-cpu-0": {"detector": RUNNING}, "p-cpu-1": {"detector": REFUSED}}
    cond = mv.models_condition(reports, 4, [])
    assert (cond.type, cond.status, cond.reason) == (c.MODELS_VERIFIED, "False", "ChecksumMismatch")
    assert "pod p-cpu-1: detector v2 not loaded (sha differs); still running v1" in cond.message
    ok = mv.models_condition({"p-cpu-0": {"detector": RUNNING}}, 4, [cond])
    assert (ok.status, ok.reason) == ("True", c.CHECKSUM_MATCHED)
    assert mv.models_condition(None, 5, [ok]) is ok, "no fresh scrape: the condition stays"


def test_variant_status_per_hardware_class_written_only_on_change() -> None:
    hardware_of = {"p-cpu": "cpu", "p-gpu": "nvidia-gpu"}
    reports = {
        "p-cpu-0": {"detector": REFUSED},
        "p-cpu-1": {"detector": RUNNING},
        "p-gpu-0": {"detector": RUNNING},
    }
    found = mv.observations(reports, hardware_of)  # type: ignore[arg-type]
    assert found["v2", "cpu"] == mv.Observation(
        True, False, c.CHECKSUM_MISMATCH, "pod p-cpu-0: sha differs"
    )
    assert found["v2", "nvidia-gpu"] == mv.Observation(True, True)
    writes = mv.artifact_writes(found, {"v2": ModelVariantStatus()}, NOW)
    entries = {e["accelerator"]: e for e in writes["v2"]["hardwareClasses"]}
    assert (entries["cpu"]["available"], entries["cpu"]["verified"]) == (True, False)
    assert entries["nvidia-gpu"]["verified"] is True
    artifact = writes["v2"]["conditions"][0]
    assert (artifact["type"], artifact["status"], artifact["reason"]) == (
        c.ARTIFACT_VERIFIED,
        "False",
        c.CHECKSUM_MISMATCH,
    )
    shown = ModelVariantStatus.model_validate(writes["v2"])
    assert mv.artifact_writes(found, {"v2": shown}, NOW) == {}, "unchanged: no second write"
    missing = mv.observations({"p-cpu-0": {"detector": MISSING}}, hardware_of)  # type: ignore[arg-type]
    assert missing["v2", "cpu"].available is False
    assert missing["v2", "cpu"].verified is None
    assert mv.artifact_writes(found, {}, NOW) == {}, "not a ModelVariant here: nothing"


def test_s3_credentials_reach_the_worker_by_reference_only() -> None:
    """An s3:// artifact's Secret becomes secretKeyRef env vars on the pod; the worker config
    names the variables, never the keys."""
    base = next(v for v in catalog() if v.name == "yolox-nano-416-onnx-fp32")
    artifact = {
        "uri": "s3://models/yolox_nano_416.onnx",
        "sha256": base.spec.artifact.sha256,
        "endpoint": "http://minio.storage:9000",
        "credentialsSecretRef": {
            "name": "model-store",
            "usernameKey": "accessKeyId",
            "passwordKey": "secretAccessKey",
        },
    }
    spec = base.spec.model_copy(update={"artifact": Artifact.model_validate(artifact)})
    g = group("cpu", detector=Variant("yolox-s3", spec))
    names = artifact_credential_env("yolox-s3")
    config = build_worker_config("people", "vision", pipeline_spec(), g)
    assert config.detector.model.credentials == names
    assert config.detector.model.artifact.endpoint == "http://minio.storage:9000"
    sts = build_statefulset(sample_pipeline_body(), pipeline_spec(), g, OperatorSettings())
    (worker,) = sts["spec"]["template"]["spec"]["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in worker["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        names.username_env: {"name": "model-store", "key": "accessKeyId"},
        names.password_env: {"name": "model-store", "key": "secretAccessKey"},
    }
    text = build_configmap(sample_pipeline_body(), config, g)["data"][CONFIG_FILE]
    assert names.username_env in text
    assert "accessKeyId" not in text  # the Secret's keys stay in the pod spec
