"""Model artifacts fetched from real servers, verified and cached; a worker refusing a bad one.

The S3 store is a real S3-compatible HTTP server (moto's, ``tests/envtest/s3.py``) that the
test fills with the MinIO client; HTTP artifacts come from Python's HTTP server on a loopback
port. The worker is the real ``kubevision-worker serve`` process on the sample video.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from minio import Minio

from kubevision.api.modelvariant import Artifact
from kubevision.api.worker_config import artifact_credential_env
from kubevision.operator.planner import group_name
from kubevision.worker.backends import create_backend
from kubevision.worker.models import (
    FETCH_FAILED,
    MISMATCH,
    MISSING,
    ArtifactError,
    ArtifactStore,
    sha256_of,
)
from model_catalog.tools.coco_eval import local_model
from tests.assets import require
from tests.envtest import s3
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace, file_camera, yolox_worker_config
from tests.integration.test_worker import Worker

MODEL = "models/yolox_nano_416.onnx"
BUCKET = "models"
CATALOG = REPO_ROOT / "model_catalog" / "variants"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    binary = s3.locate()
    if binary is None:
        pytest.skip("the S3 test server is not installed: run `bash tests/toolchain/s3_server.sh`")
    with s3.S3Server(binary, tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch) -> Minio:
    """The workers' S3 settings (endpoint, credentials) and a client that fills the bucket."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", s3.REGION)
    client = Minio(
        s3_server.endpoint.removeprefix("http://"),
        access_key=s3.ACCESS_KEY,
        secret_key=s3.SECRET_KEY,
        secure=False,
        region=s3.REGION,
    )
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    return client


def upload(client: Minio, key: str, data: bytes) -> str:
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of a real HTTP file server on a free loopback port."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_s3_artifact_is_verified_cached_and_runs(s3_env: Minio, tmp_path: Path) -> None:
    model = require(MODEL)
    uri = upload(s3_env, "yolox/yolox_nano_416.onnx", model.read_bytes())
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    fetched = store.fetch(Artifact(uri=uri, sha256=sha256_of(model)))
    assert fetched.name == "yolox_nano_416.onnx"
    assert sha256_of(fetched) == sha256_of(model)
    config = local_model(fetched, "detect", 416, "yolox")
    outputs = create_backend(config, fetched).infer(np.zeros((1, 3, 416, 416), np.float32))
    assert outputs[0].shape == (1, 3549, 85)
    # the node's cache serves it once the object is gone from the store
    s3_env.remove_object(BUCKET, "yolox/yolox_nano_416.onnx")
    assert store.fetch(Artifact(uri=uri, sha256=sha256_of(model))) == fetched


def test_s3_endpoint_and_keys_from_the_variant_not_the_environment(
    s3_env: Minio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod the store's address is the artifact's ``endpoint`` and its keys come from the
    env vars the operator fills from ``credentialsSecretRef``: no AWS_* variable is needed."""
    data = b"model bytes behind credentials"
    uri = upload(s3_env, "keyed.onnx", data)
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    names = artifact_credential_env("keyed")
    artifact = Artifact(uri=uri, sha256=hashlib.sha256(data).hexdigest(), endpoint=endpoint)
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    with pytest.raises(ArtifactError, match="credentials are not in the environment") as unset:
        store.fetch(artifact, names)
    assert unset.value.reason == FETCH_FAILED
    monkeypatch.setenv(names.username_env, s3.ACCESS_KEY)
    monkeypatch.setenv(names.password_env, s3.SECRET_KEY)
    assert store.fetch(artifact, names).read_bytes() == data


def test_s3_mismatch_and_missing_are_refused_and_leave_no_file(
    s3_env: Minio, tmp_path: Path
) -> None:
    uri = upload(s3_env, "tampered.onnx", b"not the model the variant names")
    cache = tmp_path / "cache"
    store = ArtifactStore(cache_dir=cache)
    with pytest.raises(ArtifactError, match="SHA-256 does not match") as mismatch:
        store.fetch(Artifact(uri=uri, sha256=hashlib.sha256(b"the real model").hexdigest()))
    assert mismatch.value.reason == MISMATCH
    assert cache_files(cache) == [], "a refused download must not stay in the cache"
    with pytest.raises(ArtifactError, match="NoSuchKey") as missing:
        store.fetch(Artifact(uri=f"s3://{BUCKET}/absent.onnx", sha256="0" * 64))
    assert missing.value.reason == MISSING


def test_s3_store_unreachable_fails_without_leaking_credentials(
    s3_env: Minio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that refuses connections: FetchFailed, and the secret key is in no message."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(ArtifactError) as failed:
        ArtifactStore(cache_dir=tmp_path).fetch(Artifact(uri="s3://models/x.onnx", sha256="0" * 64))
    assert failed.value.reason == FETCH_FAILED
    assert s3.SECRET_KEY not in str(failed.value)


def test_http_artifact_fetch_404_and_a_corrupt_cache_entry(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = http_root
    data = b"model bytes served over http"
    (root / "m.onnx").write_bytes(data)
    artifact = Artifact(uri=f"{base}/m.onnx?token=secret", sha256=hashlib.sha256(data).hexdigest())
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    cached = store.fetch(artifact)
    assert cached.read_bytes() == data
    cached.write_bytes(b"bit rot on the node")  # verified again before every load
    assert store.fetch(artifact).read_bytes() == data
    with pytest.raises(ArtifactError, match="404") as missing:
        store.fetch(Artifact(uri=f"{base}/gone.onnx?token=secret", sha256="0" * 64))
    assert missing.value.reason == MISSING
    assert "secret" not in str(missing.value), "query strings (signatures) stay out of errors"


# -- the worker keeps its model ------------------------------------------------------------------


def model_entry(worker: Worker, role: str = "detector") -> dict[str, Any] | None:
    """The role's entry of the worker's ``/status`` (None until it answers)."""
    status, body = worker.get("/status")
    if status != 200:
        return None
    return next((m for m in json.loads(body)["models"] if m["role"] == role), None)


def test_worker_keeps_the_running_model_when_a_new_artifact_is_refused(
    s3_env: Minio, tmp_path: Path
) -> None:
    """A config naming a new variant whose artifact fails its checksum: the worker says so
    (/status, metrics) and keeps detecting with the model it had; a good artifact is then
    taken without a restart."""
    model = require(MODEL)
    config_path = tmp_path / "worker.json"
    config = yolox_worker_config(
        "p", "g", [[file_camera("bottles", require("videos/bottle-detection.mp4"))]], model
    )
    config_path.write_text(json.dumps(config))
    os.environ["KUBEVISION_ARTIFACT_CACHE"] = str(tmp_path / "cache")  # inherited by the worker
    try:
        worker = Worker(config_path, tmp_path / "worker.log", "--model-retry-seconds=2")
    finally:
        del os.environ["KUBEVISION_ARTIFACT_CACHE"]
    try:
        wait_for(lambda: worker.processed("bottles") > 5, timeout=60, what="first frames")
        assert model_entry(worker) == {
            "role": "detector",
            "variant": "yolox-nano-416-onnx-fp32",
            "running": "yolox-nano-416-onnx-fp32",
            "verified": True,
        }

        tampered = upload(s3_env, "v2/yolox_nano_416.onnx", model.read_bytes()[:-16])
        detector = config["detector"]["model"]
        detector["variant"] = "yolox-nano-v2"
        detector["artifact"] = {"uri": tampered, "sha256": sha256_of(model)}
        (tmp_path / "new.json").write_text(json.dumps(config))
        (tmp_path / "new.json").replace(config_path)

        def refusal() -> dict[str, Any] | None:
            entry = model_entry(worker)
            return entry if entry is not None and not entry["verified"] else None

        refused = wait_for(
            refusal,
            timeout=60,
            what="the worker to report the refused artifact",
        )
        assert refused["reason"] == MISMATCH
        assert refused["running"] == "yolox-nano-416-onnx-fp32"
        assert "SHA-256 does not match" in refused["message"]
        assert (
            worker.metric(
                "kubevision_model_artifact_failed",
                role="detector",
                variant="yolox-nano-v2",
                reason=MISMATCH,
            )
            == 1
        )
        assert worker.metric("kubevision_model_running", variant="yolox-nano-416-onnx-fp32") == 1
        before = worker.processed("bottles")
        wait_for(
            lambda: worker.processed("bottles") > before + 10,
            timeout=60,
            what="frames still processed with the previous model",
        )

        upload(s3_env, "v2/yolox_nano_416.onnx", model.read_bytes())  # fixed in place
        wait_for(
            lambda: (e := model_entry(worker)) and e["running"] == "yolox-nano-v2",
            timeout=60,
            what="the fixed artifact to be loaded on the next retry",
        )
        assert worker.metric("kubevision_model_artifact_failed", variant="yolox-nano-v2") == 0
        assert worker.proc.poll() is None
    finally:
        worker.stop()


# -- through the real operator: the Pipeline and the ModelVariant say so ---------------------


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def _hardware_class(ns: Namespace, variant: str, accelerator: str) -> dict[str, Any]:
    status = (ns.get("modelvariant", variant) or {}).get("status") or {}
    entries = status.get("hardwareClasses") or []
    return next((dict(e) for e in entries if e["accelerator"] == accelerator), {})


def _pipeline_condition(ns: Namespace, status: str) -> dict[str, Any] | None:
    """The Pipeline's ModelsVerified once it has ``status``."""
    cond = _condition(ns.get("pipeline", "p"), "ModelsVerified")
    return cond if cond.get("status") == status else None


def _cpu_entry(ns: Namespace, verified: bool) -> dict[str, Any] | None:
    """The ModelVariant's cpu entry once its ``verified`` is ``verified``."""
    entry = _hardware_class(ns, "yolox-nano-416-onnx-fp32", "cpu")
    return entry if entry.get("verified") is verified else None


def test_a_refused_artifact_shows_on_the_pipeline_and_the_model_variant(
    cluster: LocalCluster, namespace: str, runner: PodRunner
) -> None:
    """A ModelVariant whose sha256 no longer matches its file (a bad catalog edit, a tampered
    file): the running worker keeps its model, the Pipeline's ModelsVerified and the
    ModelVariant's ArtifactVerified and hardwareClasses[cpu] say which pod refused what; fixing
    the ModelVariant clears both."""
    ns = Namespace(cluster, namespace)
    video = require("videos/bottle-detection.mp4")
    camera = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": "shelf", "labels": {"app": "bottles"}},
        "spec": {"source": {"url": f"file://{video}"}, "fps": 30, "site": "site-a",
                 "sampling": {"mode": "everyN", "everyN": 6}},
    }  # fmt: skip
    pipeline = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "p"},
        "spec": {
            "cameraSelector": {"matchLabels": {"app": "bottles"}},
            "stages": {"detector": {"variant": "yolox-nano-416-onnx-fp32"}},
            "placement": {"hardwareClasses": ["cpu"]},
            "autoscaling": {"metricsIntervalSeconds": 2},
        },
    }
    ns.apply(CATALOG / "yolox-nano.yaml", docs=[camera, pipeline])
    verified = wait_for(
        lambda: _pipeline_condition(ns, "True"),
        timeout=90,
        what="the Pipeline's ModelsVerified=True once its worker reports",
    )
    assert verified["reason"] == "ChecksumMatched"
    wait_for(
        lambda: _hardware_class(ns, "yolox-nano-416-onnx-fp32", "cpu").get("verified") is True,
        timeout=30,
        what="the ModelVariant verified on cpu",
    )

    good = sha256_of(require(MODEL))
    wrong = hashlib.sha256(b"another build").hexdigest()
    patch = {"spec": {"artifact": {"sha256": wrong}}}
    ns.kubectl("patch", "modelvariant", "yolox-nano-416-onnx-fp32", "--type=merge",
               "-p", json.dumps(patch))  # fmt: skip
    refused = wait_for(
        lambda: _pipeline_condition(ns, "False"),
        timeout=90,
        what="the Pipeline's ModelsVerified=False",
    )
    assert refused["reason"] == MISMATCH
    assert "SHA-256 does not match" in refused["message"]
    assert "still running yolox-nano-416-onnx-fp32" in refused["message"]
    entry = wait_for(
        lambda: _cpu_entry(ns, verified=False),
        timeout=30,
        what="the ModelVariant's cpu entry to say verified=false",
    )
    assert (entry["available"], entry["reason"]) == (True, MISMATCH)
    assert entry["measured"] is False  # the catalog's CPU figures are estimates
    artifact = _condition(ns.get("modelvariant", "yolox-nano-416-onnx-fp32"), "ArtifactVerified")
    assert (artifact["status"], artifact["reason"]) == ("False", MISMATCH)
    events = ns.kubectl("get", "events", "--field-selector=involvedObject.name=p", "-o", "json")
    assert any(e["reason"] == MISMATCH for e in json.loads(events)["items"])
    pod = f"{group_name('p', 'site-a', 'cpu')}-0"
    ip = ns.get("pod", pod)["status"]["podIP"]
    assert runner.running(ns.name)[pod]  # the same process, still analysing the camera
    with DIRECT.open(f"http://{ip}:9090/metrics", timeout=2) as page:
        assert 'kubevision_model_running{pipeline="p",role="detector"' in page.read().decode()

    patch = {"spec": {"artifact": {"sha256": good}}}
    ns.kubectl("patch", "modelvariant", "yolox-nano-416-onnx-fp32", "--type=merge",
               "-p", json.dumps(patch))  # fmt: skip
    wait_for(
        lambda: _condition(ns.get("pipeline", "p"), "ModelsVerified").get("status") == "True",
        timeout=90,
        what="ModelsVerified=True again after the fix",
    )
    wait_for(
        lambda: _hardware_class(ns, "yolox-nano-416-onnx-fp32", "cpu").get("verified") is True,
        timeout=30,
        what="the ModelVariant verified again",
    )
