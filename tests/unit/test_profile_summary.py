"""The py-spy fold that says where a GPU worker process's host CPU goes (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.gpu.profile_summary import parse, role, summarise

RAW = (
    "thread (11): capture-cam-017;CameraStream._run (kubevision/worker/capture.py:400);"
    "decode (av/codec.py:10) 30\n"
    "thread (12): finish-0-cuda:0;WorkerRuntime._finish_loop (kubevision/worker/runtime.py:540);"
    "WorkerRuntime._classify (kubevision/worker/runtime.py:600) 60\n"
    "thread (13): MainThread 10\n"
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("capture-cam-017", "capture"), ("finish-0-cuda:0", "finish"), ("MainThread", "MainThread")],
)
def test_threads_are_grouped_by_role(name: str, expected: str) -> None:
    assert role(name) == expected


def test_samples_fold_into_cores_per_process(tmp_path: Path) -> None:
    for pid in (1, 2):  # two worker processes sampled alike
        (tmp_path / f"cpu.{pid}.txt").write_text(RAW)
    assert parse(tmp_path / "cpu.1.txt")[2] == ("MainThread", [], 10)
    folded = summarise(tmp_path, "cpu", rate=100, seconds=1)
    assert folded["role"] == pytest.approx({"capture": 0.3, "finish": 0.6, "MainThread": 0.1})
    classify = "WorkerRuntime._classify (kubevision/worker/runtime.py:600)"
    assert folded["ours"][classify] == pytest.approx(0.6)
    assert folded["leaf"]["decode (av/codec.py:10)"] == pytest.approx(0.3)
