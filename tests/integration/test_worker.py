"""The worker as a process, as a pod runs it: real model, real video, its HTTP endpoint, and a
config that changes under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.assets import require
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.integration.helpers import file_camera, yolox_worker_config

WORKER = Path(sys.executable).parent / "kubevision-worker"


def camera(name: str, path: Path) -> dict[str, Any]:
    return file_camera(name, path)


def worker_config(cameras: list[dict[str, Any]], events: Path) -> dict[str, Any]:
    return yolox_worker_config(
        "p",
        "g",
        [cameras, []],
        require("models/yolox_nano_416.onnx"),
        outputs=[{"type": "file", "path": str(events)}],
    )


class Worker:
    """``kubevision-worker serve`` in a subprocess, read through its metrics endpoint."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "KUBEVISION_SHARD": "0",
            "KUBEVISION_MODEL_DIR": str(require("models/yolox_nano_416.onnx").parent),
        }
        with log.open("ab") as out:  # a restarted worker appends
            self.proc = subprocess.Popen(
                [
                    str(WORKER),
                    "serve",
                    f"--config={config}",
                    f"--port={self.port}",
                    "--threads=1",
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.log = log

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def processed(self, cam: str) -> float:
        return self.metric("kubevision_frames_processed_total", camera=cam)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Worker, Path, Path]]:
    video = require("videos/bottle-detection.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(video.read_bytes()[:4096])  # a header and nothing decodable after it
    config_path, events = tmp_path / "worker.json", tmp_path / "events.jsonl"
    config = worker_config([camera("bottles", video), camera("broken", corrupt)], events)
    config_path.write_text(json.dumps(config))
    worker = Worker(config_path, tmp_path / "worker.log")
    try:
        wait_for(lambda: worker.get("/readyz")[0] == 200, timeout=60, what="worker ready")
        yield worker, config_path, events
    finally:
        worker.stop()


def test_worker_processes_a_camera_while_a_broken_one_fails_alone(
    serve: tuple[Worker, Path, Path],
) -> None:
    worker, _, events = serve
    wait_for(
        lambda: worker.processed("bottles") >= 30, timeout=60, what="30 frames of the good camera"
    )
    assert worker.metric("kubevision_camera_up", camera="bottles") == 1
    assert worker.metric("kubevision_camera_up", camera="broken") == 0
    assert worker.proc.poll() is None
    assert worker.get("/healthz")[0] == 200
    wait_for(
        lambda: events.exists() and '"className":"bottle"' in events.read_text(),
        timeout=30,
        what="a bottle track event in the events file",
    )
    assert worker.metric("kubevision_frame_latency_seconds_count", camera="bottles") > 0
    assert worker.metric("kubevision_stage_latency_seconds_count", stage="infer") > 0


def test_cameras_added_and_removed_without_a_restart(
    serve: tuple[Worker, Path, Path],
    tmp_path: Path,
) -> None:
    worker, config_path, _ = serve
    pid = worker.proc.pid
    wait_for(lambda: worker.processed("bottles") > 0, timeout=60, what="the first camera")
    config = json.loads(config_path.read_text())
    config["shards"][0] = [camera("cars", require("videos/car-detection.mp4"))]
    tmp = tmp_path / "new.json"
    tmp.write_text(json.dumps(config))
    tmp.replace(config_path)  # atomic, like the kubelet's ConfigMap update

    wait_for(lambda: worker.processed("cars") > 10, timeout=60, what="the added camera")
    wait_for(
        lambda: 'camera="bottles"' not in worker.get("/metrics")[1],
        timeout=60,
        what="the removed camera's series to go",
    )
    wait_for(lambda: worker.processed("cars") > 40, timeout=60, what="more frames")
    assert 'camera="bottles"' not in worker.get("/metrics")[1], "the removed camera came back"
    assert worker.proc.pid == pid
    assert worker.proc.poll() is None


def test_run_command_writes_events_and_an_annotated_video(tmp_path: Path) -> None:
    events, video = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    out = subprocess.run(
        [
            str(WORKER),
            "run",
            f"--source={require('videos/bottle-detection.mp4')}",
            f"--detector={require('models/yolox_nano_416.onnx')}",
            "--max-frames=90",
            f"--events={events}",
            f"--annotate={video}",
            "--threads=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert "track.started" in kinds
    assert kinds.count("track.ended") == kinds.count("track.started"), "every track ends on exit"
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 80
    assert "cam0" in out.stderr  # the summary table


def test_missing_model_file_fails_with_a_clear_message(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            str(WORKER),
            "run",
            f"--source={require('videos/bottle-detection.mp4')}",
            f"--detector={tmp_path / 'nope.onnx'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "nope.onnx: no such model file" in out.stderr
