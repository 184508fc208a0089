"""The Triton backend against a real ``tritonserver``, compared with ONNX Runtime.

One server per module (pytriton's CPU build, see ``tests/toolchain/triton.sh``) serves
YOLOX-nano through the Python backend running ONNX Runtime, twice: FP32 and FP16 tensors, both
with ``max_batch_size`` 4 and the dynamic batcher. The reference is :class:`OrtBackend` on the
original file. What is checked is visible from outside the client: outputs and detections,
the server's inference statistics (requests, executions, batched items) and its registry of
shared-memory regions.

A missing server skips the module with the command that fetches it; under ``CI=true`` it fails.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]

from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import TRITON_URL_ENV, create_backend
from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.backends.triton import TritonBackend, TritonError
from kubevision.worker.decoders import decoder_for
from kubevision.worker.detector import Detector
from kubevision.worker.preprocess import Frame, preprocess
from tests.assets import require
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.triton import ServedModel, TritonServer, TritonToolchain

FP32, FP16 = "yolox_nano", "yolox_nano_fp16"
MAX_BATCH = 4
SIZE = 416
FRAME_BYTES = 3 * SIZE * SIZE * 4
"""One preprocessed FP32 frame; a request of one frame is ~3.3 MB with its output."""
CONFIDENCE, NMS_IOU = 0.3, 0.45


@pytest.fixture(scope="module")
def yolox() -> Path:
    return require("models/yolox_nano_416.onnx")


@pytest.fixture(scope="module")
def toolchain() -> TritonToolchain:
    found = TritonToolchain.locate()
    if found is None:
        pytest.skip("tritonserver is not installed: run `bash tests/toolchain/triton.sh`")
    return found


@pytest.fixture(scope="module")
def server(
    yolox: Path,
    toolchain: TritonToolchain,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[TritonServer]:
    models = [
        ServedModel(FP32, yolox, max_batch_size=MAX_BATCH),
        ServedModel(FP16, yolox, data_type="TYPE_FP16", max_batch_size=MAX_BATCH),
    ]
    failed_before = request.session.testsfailed
    with TritonServer(models, tmp_path_factory.mktemp("triton"), toolchain) as triton:
        yield triton
        triton.check_alive()
    if request.session.testsfailed > failed_before:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\n--- end of {triton.log_path} ---\n{triton.log_tail()}")


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[Any]:
    """A plain tritonclient for the server's own view: statistics and shared-memory status."""
    with grpcclient.InferenceServerClient(server.grpc_url) as plain:
        yield plain


@pytest.fixture(scope="module")
def reference(yolox: Path) -> OrtBackend:
    return OrtBackend(yolox)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """Ten real frames: bottles on a belt (video) and COCO scenes (people, cars, animals)."""
    video = cv2.VideoCapture(str(require("videos/bottle-detection.mp4")))
    picked: list[Frame] = []
    try:
        for index in (0, 300, 600, 900, 1100):
            video.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = video.read()
            assert ok, f"cannot decode frame {index} of bottle-detection.mp4"
            picked.append(np.asarray(frame, np.uint8))
    finally:
        video.release()
    images = sorted(require("coco128/images/val2017").glob("*.jpg"))[:5]
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None, f"cannot decode {path}"
        picked.append(np.asarray(image, np.uint8))
    return picked


@pytest.fixture(scope="module")
def tensor(frames: list[Frame]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The frames as the detector feeds them to a backend."""
    batch, _ = preprocess(frames, SIZE, SIZE, decoder_for("yolox").input_format)
    return batch


def model_config(uri: str) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "variant": "yolox-nano-416-triton",
            "family": "yolox",
            "task": "detect",
            "format": "triton",
            "precision": "fp32",
            "input_size": InputSize(width=SIZE, height=SIZE),
            "decoder": "yolox",
            "batch_max": MAX_BATCH,
            "artifact": Artifact(uri=uri),
        }
    )


def statistics(client: Any, model: str) -> tuple[int, int, int]:
    """(requests, executions, items) the server has counted for ``model`` so far."""
    (stats,) = client.get_inference_statistics(model, client_timeout=10).model_stats
    return (
        int(stats.inference_stats.success.count),
        int(stats.execution_count),
        int(stats.inference_count),
    )


def statistics_since(
    client: Any, model: str, before: tuple[int, int, int], requests: int, items: int
) -> tuple[int, int, int]:
    """(requests, executions, items) since ``before``, once ``requests`` and ``items`` are
    counted: the server updates its statistics after sending a response, so they may lag.
    (Executions are counted together with items.)"""

    def counted() -> tuple[int, int, int] | None:
        now = statistics(client, model)
        delta = (now[0] - before[0], now[1] - before[1], now[2] - before[2])
        return delta if delta[0] >= requests and delta[2] >= items else None

    return wait_for(counted, timeout=10, what=f"{model} statistics to count {requests} requests")


def shm_regions(client: Any) -> dict[str, int]:
    """Name -> byte size of every system shared-memory region registered with the server."""
    status = client.get_system_shared_memory_status(client_timeout=10)
    return {name: int(region.byte_size) for name, region in status.regions.items()}


@pytest.mark.parametrize("shm_threshold", [0, None], ids=["shm", "grpc"])
@pytest.mark.parametrize(
    ("model", "rtol", "atol"),
    [
        pytest.param(FP32, 1e-5, 1e-3, id="fp32"),
        pytest.param(FP16, 2e-3, 5e-3, id="fp16"),  # FP16 outputs: an 11-bit mantissa
    ],
)
def test_raw_outputs_match_onnxruntime(
    server: TritonServer,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
    model: str,
    rtol: float,
    atol: float,
    shm_threshold: int | None,
) -> None:
    with TritonBackend(
        f"triton://{model}", server.grpc_url, shm_threshold_bytes=shm_threshold
    ) as backend:
        assert (backend.name, backend.max_batch) == ("triton", MAX_BATCH)
        assert list(backend.input_names) == list(reference.input_names)
        assert list(backend.output_names) == list(reference.output_names)
        got = backend.infer(tensor[:MAX_BATCH])
    want = reference.infer(tensor[:MAX_BATCH])
    assert [(g.dtype, g.flags.writeable) for g in got] == [(np.dtype(np.float32), True)] * len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("model", "box_atol", "score_atol"),
    [pytest.param(FP32, 0.05, 1e-4, id="fp32"), pytest.param(FP16, 1.5, 5e-3, id="fp16")],
)
def test_detections_match_onnxruntime(
    server: TritonServer,
    reference: OrtBackend,
    frames: list[Frame],
    model: str,
    box_atol: float,
    score_atol: float,
) -> None:
    uri = f"triton://{model}"
    config = model_config(uri)
    with TritonBackend.from_uri(uri, server.grpc_url) as backend:
        got = Detector(config, backend, CONFIDENCE, NMS_IOU)(frames)
    want = Detector(config, reference, CONFIDENCE, NMS_IOU)(frames)
    assert sum(len(d) for d in want) >= 10, "the frames should hold real detections"
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.class_ids.tolist() == w.class_ids.tolist(), f"frame {index}"
        np.testing.assert_allclose(g.xyxy, w.xyxy, atol=box_atol, err_msg=f"frame {index}")
        np.testing.assert_allclose(g.scores, w.scores, atol=score_atol, err_msg=f"frame {index}")


def test_worker_factory_builds_it_from_the_variant(
    server: TritonServer,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``format: triton`` needs no model file; the server address comes from the env."""
    monkeypatch.setenv(TRITON_URL_ENV, server.grpc_url)
    backend = create_backend(model_config(f"triton://{FP32}"), None)
    assert isinstance(backend, TritonBackend)
    with backend:
        (got,) = backend.infer(tensor[:2])
    (want,) = reference.infer(tensor[:2])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_batch_larger_than_max_batch_is_split(
    server: TritonServer,
    client: Any,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
) -> None:
    count = len(tensor)  # 10 frames: requests of 4, 4 and 2
    before = statistics(client, FP32)
    with TritonBackend(f"triton://{FP32}", server.grpc_url) as backend:
        (got,) = backend.infer(tensor)
    requests, executions, items = statistics_since(client, FP32, before, 3, count)
    assert (requests, items) == (3, count)
    assert executions == 3, "sequential requests are not merged"
    (want,) = reference.infer(tensor)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_shared_memory_only_for_large_requests(
    server: TritonServer,
    client: Any,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Between one frame's request (~3.3 MB) and two frames' (~6.6 MB)
    threshold = 5 * 1024 * 1024
    uri = f"triton://{FP32}"
    before = shm_regions(client)
    with (
        TritonBackend(uri, server.grpc_url, shm_threshold_bytes=threshold) as first,
        TritonBackend(uri, server.grpc_url, shm_threshold_bytes=threshold) as second,
    ):
        (small,) = first.infer(tensor[:1])
        assert shm_regions(client) == before, "one frame must go over plain gRPC"

        (large,) = first.infer(tensor[:MAX_BATCH])
        (again,) = first.infer(tensor[MAX_BATCH : 2 * MAX_BATCH])  # the same regions, reused
        (other,) = second.infer(tensor[: 2 * MAX_BATCH])  # two requests of 4
        registered = {n: s for n, s in shm_regions(client).items() if n not in before}

    fallbacks = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not fallbacks, fallbacks
    inputs = sorted(n for n in registered if n.endswith("-input"))
    outputs = sorted(n for n in registered if n.endswith("-output"))
    assert len(inputs) == len(outputs) == 2, f"one pair per backend, got {sorted(registered)}"
    assert {registered[n] for n in inputs} == {MAX_BATCH * FRAME_BYTES}
    assert {registered[n] for n in outputs} == {MAX_BATCH * 3549 * 85 * 4}
    assert shm_regions(client) == before, "close() unregisters the regions"
    assert not any(Path("/dev/shm", name).exists() for name in registered), (
        "close() unlinks the regions"
    )

    (want,) = reference.infer(tensor[: 2 * MAX_BATCH])
    np.testing.assert_allclose(small, want[:1], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(large, want[:MAX_BATCH], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(again, want[MAX_BATCH:], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(other, want, rtol=1e-5, atol=1e-3)


def test_regions_are_released_at_exit_without_close(server: TritonServer, client: Any) -> None:
    """A worker that never calls close() (killed by SIGTERM, say) still leaves no regions."""
    before = shm_regions(client)
    script = (
        "import os, sys, numpy as np\n"
        "from kubevision.worker.backends.triton import TritonBackend\n"
        f"backend = TritonBackend('triton://{FP32}', sys.argv[1])\n"
        f"backend.infer(np.zeros((1, 3, {SIZE}, {SIZE}), np.float32))\n"
        "print(os.getpid())\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, server.grpc_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "leaked" not in child.stderr, child.stderr  # multiprocessing's resource tracker
    assert shm_regions(client) == before, child.stderr
    assert not list(Path("/dev/shm").glob(f"kubevision-*-{child.stdout.strip()}-*"))


def test_shared_memory_off(
    server: TritonServer, client: Any, tensor: np.ndarray[Any, np.dtype[np.float32]]
) -> None:
    before = shm_regions(client)
    with TritonBackend(f"triton://{FP32}", server.grpc_url, shm_threshold_bytes=None) as backend:
        backend.infer(tensor[:MAX_BATCH])
        assert shm_regions(client) == before


def test_server_refusing_shared_memory_means_grpc_tensors(
    yolox: Path,
    toolchain: TritonToolchain,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that cannot take the regions (here: one restricting the shared-memory API to
    clients with a header) costs speed, not results: one warning, then plain gRPC."""
    header = {"triton-grpc-protocol-kubevision-test": "admin"}  # the prefix is Triton's
    restricted = TritonServer(
        [ServedModel(FP32, yolox, max_batch_size=MAX_BATCH)],
        tmp_path,
        toolchain,
        extra_args=["--grpc-restricted-protocol=shared-memory:kubevision-test=admin"],
    )
    with (
        restricted,
        grpcclient.InferenceServerClient(restricted.grpc_url) as admin,
        TritonBackend(f"triton://{FP32}", restricted.grpc_url, shm_threshold_bytes=0) as backend,
    ):
        with caplog.at_level(logging.WARNING, logger="kubevision.worker.backends.triton"):
            got = [backend.infer(tensor[:MAX_BATCH])[0] for _ in range(2)]
        status = admin.get_system_shared_memory_status(headers=header, client_timeout=10)
        assert not status.regions
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "shared memory unavailable" in warnings[0]
    assert "sending tensors over gRPC" in warnings[0]
    assert not list(Path("/dev/shm").glob(f"kubevision-*-{os.getpid()}-*")), "regions leaked"
    (want,) = reference.infer(tensor[:MAX_BATCH])
    for output in got:
        np.testing.assert_allclose(output, want, rtol=1e-5, atol=1e-3)


def test_concurrent_requests_are_batched_by_the_server(
    server: TritonServer,
    client: Any,
    reference: OrtBackend,
    tensor: np.ndarray[Any, np.dtype[np.float32]],
) -> None:
    threads, rounds = 4, 3
    barrier = threading.Barrier(threads)
    before = statistics(client, FP32)
    with (
        TritonBackend(f"triton://{FP32}", server.grpc_url, shm_threshold_bytes=None) as backend,
        ThreadPoolExecutor(threads) as pool,
    ):

        def send(index: int) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
            """``rounds`` one-frame requests, the first sent together with the other threads'."""
            barrier.wait(timeout=30)
            return [backend.infer(tensor[index : index + 1])[0] for _ in range(rounds)]

        futures = [pool.submit(send, index) for index in range(threads)]
        results = [future.result(timeout=120) for future in futures]
    requests, executions, items = statistics_since(
        client, FP32, before, threads * rounds, threads * rounds
    )
    assert (requests, items) == (threads * rounds, threads * rounds)
    assert executions < items, f"{items} requests ran in {executions} executions: not batched"
    (want,) = reference.infer(tensor[:threads])
    for index, outputs in enumerate(results):
        for got in outputs:
            np.testing.assert_allclose(got, want[index : index + 1], rtol=1e-5, atol=1e-3)


def test_uri_with_server_address_and_version(
    server: TritonServer, tensor: np.ndarray[Any, np.dtype[np.float32]]
) -> None:
    unused = f"127.0.0.1:{free_port()}"
    with TritonBackend(f"triton://{server.grpc_url}/{FP32}/1", unused) as backend:
        (out,) = backend.infer(tensor[:1])
    assert out.shape == (1, 3549, 85)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("triton://no_such_model", "model 'no_such_model': no such model", id="model"),
        pytest.param(
            f"triton://{{url}}/{FP32}/7", f"model '{FP32}' version 7: no such version", id="version"
        ),
    ],
)
def test_missing_model_fails_at_once_with_a_clear_error(
    server: TritonServer, uri: str, expected: str
) -> None:
    started = time.monotonic()
    with pytest.raises(TritonError, match=expected) as raised:
        TritonBackend(uri.format(url=server.grpc_url), server.grpc_url, ready_timeout_s=30)
    assert time.monotonic() - started < 5, "a missing model must not wait for the deadline"
    assert f"Triton server {server.grpc_url} " in str(raised.value)


def test_unreachable_server_fails_with_a_clear_error() -> None:
    url = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    expected = f"Triton server {url} model '{FP32}' not ready after 1.5 s: server unreachable"
    with pytest.raises(TritonError, match=re.escape(expected)):
        TritonBackend(f"triton://{FP32}", url, ready_timeout_s=1.5, timeout_s=1)
    assert time.monotonic() - started < 10


def test_wrong_input_shape_is_rejected(server: TritonServer) -> None:
    with TritonBackend(f"triton://{FP32}", server.grpc_url) as backend:
        with pytest.raises(ValueError, match=r"takes batches of \[3, 416, 416\]"):
            backend.infer(np.zeros((1, 3, 320, 320), np.float32))
        with pytest.raises(ValueError, match="at least one item"):
            backend.infer(np.zeros((0, 3, SIZE, SIZE), np.float32))
