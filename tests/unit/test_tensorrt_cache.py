"""The TensorRT backend's pure parts: engine cache key and files, lock, profiles, precision.

None of this needs TensorRT or a GPU; the engine build and inference themselves are tested in
tests/integration/test_tensorrt_backend.py where TensorRT is installed.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from kubevision.api.modelvariant import BatchProfile
from kubevision.worker.backends.tensorrt import (
    CACHE_DIR_ENV,
    EngineKey,
    PrecisionPlan,
    ProfileShapes,
    calibration_shape,
    chunk_plan,
    cuda_device,
    default_cache_dir,
    engine_file_name,
    file_lock,
    fixed_batches,
    load_or_build,
    precision_plan,
    profile_shapes,
    write_atomic,
)
from tests.envtest.poll import wait_for

ENGINE = b"ENGINE:"
TIMEOUT = 30.0

KEY = EngineKey(
    model_sha256="ab" * 32,
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    tensorrt_version="10.13.3.9",
    precision="fp16",
    batch=(1, 32, 64),
    input_hw=(416, 416),
)


# -- cache key and file name -------------------------------------------------------------------


def test_engine_file_name_is_readable_and_stable() -> None:
    name = engine_file_name(KEY)
    assert name.startswith("fp16-sm90-trt10.13.3.9-b1_32_64-416x416-")
    assert name.endswith(".engine")
    assert name == engine_file_name(dataclasses.replace(KEY)), "same key, same file"


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"gpu_name": "NVIDIA H200"},  # same sm90, another GPU: not in the readable part
        {"compute_capability": (8, 9)},
        {"tensorrt_version": "11.4.0.106"},
        {"precision": "int8"},
        {"batch": (1, 16, 64)},
        {"input_hw": (640, 640)},
        {"calibration": "yolox.calib"},
    ],
)
def test_every_field_of_the_key_gives_another_engine_file(change: dict[str, object]) -> None:
    other = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert other.digest() != KEY.digest()
    assert engine_file_name(other) != engine_file_name(KEY)


def test_odd_version_strings_stay_one_file_name() -> None:
    name = engine_file_name(dataclasses.replace(KEY, tensorrt_version="10.7.0/post1 rc"))
    assert "/" not in name
    assert " " not in name


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({CACHE_DIR_ENV: "/var/cache/engines"}, Path("/var/cache/engines")),
        ({"XDG_CACHE_HOME": "/xdg"}, Path("/xdg/kubevision/engines")),
        ({"HOME": "/home/worker"}, Path("/home/worker/.cache/kubevision/engines")),
    ],
)
def test_default_cache_dir(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: Path
) -> None:
    for name in (CACHE_DIR_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cache_dir() == expected


@pytest.mark.parametrize("device", ["cpu", "gpu", "cuda:", "cuda:x", "cuda:-1"])
def test_tensorrt_runs_only_on_cuda_devices(device: str) -> None:
    with pytest.raises(ValueError, match="TensorRT needs device 'cuda' or 'cuda:N'"):
        cuda_device(device)


# -- profiles, calibration shapes, chunking ----------------------------------------------------


@pytest.mark.parametrize(
    ("network_shape", "expected"),
    [
        (
            (-1, 3, -1, -1),
            ProfileShapes((1, 3, 416, 416), (32, 3, 416, 416), (64, 3, 416, 416)),
        ),
        (
            (-1, 3, 416, 416),
            ProfileShapes((1, 3, 416, 416), (32, 3, 416, 416), (64, 3, 416, 416)),
        ),
        ((4, 3, -1, -1), ProfileShapes((4, 3, 416, 416), (4, 3, 416, 416), (4, 3, 416, 416))),
        ((1, 3, 416, 416), None),  # fully static: TensorRT takes no profile
    ],
)
def test_profile_shapes(network_shape: tuple[int, ...], expected: ProfileShapes | None) -> None:
    batch = BatchProfile(min=1, opt=32, max=64)
    assert profile_shapes(network_shape, batch, (416, 416)) == expected


@pytest.mark.parametrize(
    ("network_shape", "message"),
    [
        ((-1, 3, 416), "expected an NCHW image input"),
        ((-1, -1, 416, 416), "channel dimension must be fixed"),
        ((-1, 3, 320, -1), "input height is fixed at 320, not 416"),
        ((-1, 3, -1, 640), "input width is fixed at 640, not 416"),
    ],
)
def test_profile_shapes_rejects_inputs_the_worker_cannot_feed(
    network_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        profile_shapes(network_shape, BatchProfile(), (416, 416))


@pytest.mark.parametrize(
    ("network_shape", "expected"),
    [((-1, 3, -1, -1), (8, 3, 320, 416)), ((1, 3, 320, 416), (1, 3, 320, 416))],
)
def test_calibration_shape_keeps_a_fixed_batch(
    network_shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert calibration_shape(network_shape, 8, (320, 416)) == expected


@pytest.mark.parametrize(
    ("count", "min_batch", "max_batch", "expected"),
    [
        (1, 1, 64, [(0, 1, 1)]),
        (64, 1, 64, [(0, 64, 64)]),
        (130, 1, 64, [(0, 64, 64), (64, 64, 64), (128, 2, 2)]),
        (3, 1, 1, [(0, 1, 1), (1, 1, 1), (2, 1, 1)]),  # fixed batch of 1
        (5, 4, 4, [(0, 4, 4), (4, 1, 4)]),  # fixed batch of 4: the last call is padded
        (2, 4, 8, [(0, 2, 4)]),  # profile minimum above the batch
    ],
)
def test_chunk_plan(
    count: int, min_batch: int, max_batch: int, expected: list[tuple[int, int, int]]
) -> None:
    assert chunk_plan(count, min_batch, max_batch) == expected


@pytest.mark.parametrize(
    ("count", "min_batch", "max_batch", "message"),
    [(0, 1, 8, "at least one item"), (4, 0, 8, "min_batch"), (4, 8, 4, "min_batch")],
)
def test_chunk_plan_rejects(count: int, min_batch: int, max_batch: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_plan(count, min_batch, max_batch)


def test_fixed_batches_recuts_any_batch_sizes_and_drops_the_remainder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames = np.arange(11, dtype=np.float32).reshape(11, 1, 1, 1) * np.ones(
        (1, 3, 2, 2), np.float32
    )
    stream = [frames[:2], frames[2:7], frames[7:11]]  # sizes 2, 5, 4
    with caplog.at_level(logging.INFO):
        batches = list(fixed_batches(stream, (4, 3, 2, 2)))
    assert [b.shape for b in batches] == [(4, 3, 2, 2), (4, 3, 2, 2)]
    assert [b[:, 0, 0, 0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    assert "dropping the last 3 calibration frames" in caplog.text


def test_fixed_batches_rejects_frames_of_another_size() -> None:
    with pytest.raises(ValueError, match="calibration batches must be"):
        list(fixed_batches([np.zeros((2, 3, 8, 8), np.float32)], (2, 3, 4, 4)))


# -- precision per TensorRT generation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "weakly_typed", "quantized", "expected"),
    [
        ("fp32", True, False, PrecisionPlan()),
        ("fp32", False, False, PrecisionPlan()),
        ("fp16", True, False, PrecisionPlan(("FP16",))),
        ("fp16", False, False, PrecisionPlan(convert_to_fp16=True)),  # TensorRT 11
        ("int8", True, False, PrecisionPlan(("INT8", "FP16"), calibrate=True)),
        ("int8", True, True, PrecisionPlan(("INT8", "FP16"))),  # QDQ on TensorRT 10
        ("int8", False, True, PrecisionPlan()),  # QDQ on TensorRT 11: types from the graph
    ],
)
def test_precision_plan(
    precision: str, weakly_typed: bool, quantized: bool, expected: PrecisionPlan
) -> None:
    plan = precision_plan(
        precision,  # type: ignore[arg-type]
        weakly_typed=weakly_typed,
        quantized=quantized,
    )
    assert plan == expected


def test_int8_without_qdq_on_strongly_typed_tensorrt_says_how_to_quantize() -> None:
    with pytest.raises(ValueError, match=r"removed implicit INT8 calibration.*int8 calibrate"):
        precision_plan("int8", weakly_typed=False, quantized=False)


# -- atomic writes and the build lock ----------------------------------------------------------


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.engine"
    write_atomic(path, b"old")
    write_atomic(path, b"new engine")
    assert path.read_bytes() == b"new engine"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.engine"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.engine"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine"]


def test_file_lock_times_out_while_another_holder_has_it(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with (
        file_lock(lock, timeout=1),
        pytest.raises(TimeoutError, match="still locked"),
        file_lock(lock, timeout=0.3),
    ):
        pass
    with file_lock(lock, timeout=1):  # released on exit
        pass


def _load(data: bytes) -> bytes | None:
    """Stands in for deserialize_cuda_engine: None for anything that is not an engine."""
    return data if data.startswith(ENGINE) else None


class CountingBuild:
    def __init__(self, payload: bytes = b"v1") -> None:
        self.calls = 0
        self.payload = payload

    def __call__(self) -> bytes:
        self.calls += 1
        return ENGINE + self.payload


def test_load_or_build_builds_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.engine"
    build = CountingBuild()
    assert load_or_build(path, build, _load) == (ENGINE + b"v1", True)
    assert load_or_build(path, build, _load) == (ENGINE + b"v1", False)
    assert build.calls == 1


@pytest.mark.parametrize("cached", [b"", b"truncated garbage", b"\x00" * 100])
def test_a_cached_engine_that_does_not_load_is_rebuilt(tmp_path: Path, cached: bytes) -> None:
    path = tmp_path / "m.engine"
    path.write_bytes(cached)
    build = CountingBuild()
    assert load_or_build(path, build, _load) == (ENGINE + b"v1", True)
    assert path.read_bytes() == ENGINE + b"v1"
    assert build.calls == 1


def test_a_failed_build_leaves_no_file_and_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "m.engine"

    def broken() -> bytes:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        load_or_build(path, broken, _load)
    assert not path.exists()
    assert load_or_build(path, CountingBuild(), _load, lock_timeout=1)[1] is True


def test_a_build_that_does_not_load_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "m.engine"
    with pytest.raises(RuntimeError, match=r"freshly built m\.engine does not load"):
        load_or_build(path, lambda: b"not an engine", _load)
    assert not path.exists()


def test_a_waiting_worker_loads_what_the_lock_holder_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The second worker finds no engine, waits on the lock, then loads instead of building."""
    path = tmp_path / "m.engine"
    build = CountingBuild()
    result: list[tuple[bytes, bool]] = []
    with caplog.at_level(logging.INFO), file_lock(tmp_path / "m.engine.lock", timeout=1):
        waiter = threading.Thread(
            target=lambda: result.append(load_or_build(path, build, _load, lock_timeout=TIMEOUT))
        )
        waiter.start()
        wait_for(
            lambda: "another worker is building this engine" in caplog.text,
            timeout=TIMEOUT,
            what="the second worker to wait on the lock",
        )
        write_atomic(path, ENGINE + b"from the first worker")
    waiter.join(TIMEOUT)
    assert result == [(ENGINE + b"from the first worker", False)]
    assert build.calls == 0


def _race(path: Path, marks: Path, workers: int, barrier: object) -> None:
    """One worker process: announce, then load or build; the build waits until every worker
    has announced, so all of them are past their first cache check while it runs."""
    barrier.wait()  # type: ignore[attr-defined]
    (marks / f"attempt-{multiprocessing.current_process().pid}").touch()

    def build() -> bytes:
        (marks / f"build-{multiprocessing.current_process().pid}").touch()
        wait_for(
            lambda: len(list(marks.glob("attempt-*"))) == workers,
            timeout=TIMEOUT,
            what="every worker to try",
        )
        return ENGINE + b"built once"

    engine, _ = load_or_build(path, build, _load, lock_timeout=TIMEOUT)
    assert engine == ENGINE + b"built once"


def test_workers_in_separate_processes_build_an_engine_once(tmp_path: Path) -> None:
    workers = 3
    marks = tmp_path / "marks"
    marks.mkdir()
    context = multiprocessing.get_context("spawn")  # fork warns in a threaded pytest
    barrier = context.Barrier(workers)
    path = tmp_path / "cache" / "m.engine"
    processes = [
        context.Process(target=_race, args=(path, marks, workers, barrier)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(TIMEOUT * 2)
    assert [p.exitcode for p in processes] == [0] * workers
    assert len(list(marks.glob("build-*"))) == 1
    assert path.read_bytes() == ENGINE + b"built once"
