"""Event snapshots through the real worker process (issue 17 part 5): YOLOX-nano and ByteTrack
on the shared parking-lot video; each ``track.started`` event references a JPEG crop of its
object on the node (a bounded folder), in a real S3 server (moto, through the MinIO client)
or inline, and the bytes behind each reference are the ones the event's size and sha256 name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from minio import Minio

from kubevision.worker.events import TrackEvent
from tests.assets import require
from tests.envtest import s3
from tests.envtest.poll import wait_for
from tests.integration.helpers import file_camera, yolox_worker_config
from tests.integration.test_worker import Worker

VIDEO = "videos/car-detection.mp4"
BUCKET = "snapshots"


def snapshot_config(storage: str, **fields: Any) -> dict[str, Any]:
    return {
        "storage": storage,
        "events": ["track.started"],
        "jpegQuality": 85,
        "margin": 0.1,
        "maxFiles": 10_000,
        "maxBytes": 2**30,
        **fields,
    }


def start_worker(tmp_path: Path, snapshots: dict[str, Any], *args: str) -> tuple[Worker, Path]:
    events = tmp_path / "events.jsonl"
    config = yolox_worker_config(
        "lot",
        "g",
        [[file_camera("gate", require(VIDEO))]],
        require("models/yolox_nano_416.onnx"),
        outputs=[{"type": "file", "path": str(events)}],
    )
    config["snapshots"] = snapshots
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(config))
    return Worker(path, tmp_path / "worker.log", *args), events


def read_events(path: Path) -> list[TrackEvent]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [TrackEvent.model_validate_json(line) for line in lines if line.strip()]


def started_with_snapshot(path: Path, count: int) -> list[TrackEvent] | None:
    done = [e for e in read_events(path) if e.snapshot is not None]
    return done if len(done) >= count else None


def check_jpeg(event: TrackEvent, data: bytes) -> None:
    """The bytes are the event's (size, sha256) and a JPEG of the box's size plus margin."""
    snapshot = event.snapshot
    assert snapshot is not None
    assert len(data) == snapshot.size
    assert hashlib.sha256(data).hexdigest() == snapshot.sha256
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "a decodable JPEG"
    assert image.shape[:2] == (snapshot.height, snapshot.width)
    x1, y1, x2, y2 = event.box
    assert snapshot.width <= (x2 - x1) * 1.2 + 2
    assert snapshot.height <= (y2 - y1) * 1.2 + 2
    assert snapshot.width >= min(x2 - x1, 1)
    assert snapshot.height >= min(y2 - y1, 1)


def test_node_snapshots_are_referenced_from_events_and_bounded(tmp_path: Path) -> None:
    """A folder bounded to 2 files: every track.started event carries a file:// snapshot
    whose bytes match; only track.started gets one; the folder keeps 2, and the evictions are
    counted."""
    folder = tmp_path / "snapshots"
    worker, events = start_worker(
        tmp_path, snapshot_config("node", maxFiles=2), f"--snapshot-dir={folder}"
    )
    try:
        got = wait_for(
            lambda: started_with_snapshot(events, 4), timeout=90, what="4 events with snapshots"
        )
        evicted = wait_for(
            lambda: worker.metric("kubevision_snapshots_evicted_total", pipeline="lot") or None,
            timeout=30,
            what="evictions counted",
        )
        stored = worker.metric("kubevision_snapshots_stored_total", storage="node")
    finally:
        worker.stop()
    assert all(e.kind == "track.started" for e in got)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 2, "the bound holds"
    assert stored - 2 >= evicted >= 2
    latest = got[-1]
    assert latest.snapshot is not None
    path = Path(urlsplit(latest.snapshot.uri).path)
    assert path in files, "the newest snapshot is kept"
    check_jpeg(latest, path.read_bytes())
    assert path.relative_to(folder).parts[:2] == ("lot", "gate")


def test_inline_snapshots_carry_the_jpeg_in_a_data_uri(tmp_path: Path) -> None:
    worker, events = start_worker(tmp_path, snapshot_config("inline"))
    try:
        got = wait_for(lambda: started_with_snapshot(events, 3), timeout=90, what="3 snapshots")
    finally:
        worker.stop()
    for event in got:
        assert event.snapshot is not None
        prefix, _, payload = event.snapshot.uri.partition(",")
        assert prefix == "data:image/jpeg;base64"
        check_jpeg(event, base64.b64decode(payload))


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    binary = s3.locate()
    if binary is None:
        pytest.skip("the S3 test server is not installed: run `bash tests/toolchain/s3_server.sh`")
    with s3.S3Server(binary, tmp_path_factory.mktemp("s3")) as server:
        yield server


def test_s3_snapshots_are_uploaded_with_the_pipelines_credentials(
    tmp_path: Path, s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket's keys only in the env vars the config names (as the operator renders them
    from the Secret), no AWS_* env: the objects are there, under the prefix, byte for byte."""
    client = Minio(
        s3_server.endpoint.removeprefix("http://"),
        access_key=s3.ACCESS_KEY,
        secret_key=s3.SECRET_KEY,
        secure=False,
        region=s3.REGION,
    )
    client.make_bucket(BUCKET)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KUBEVISION_SNAPSHOTS_ACCESS_KEY_ID", s3.ACCESS_KEY)
    monkeypatch.setenv("KUBEVISION_SNAPSHOTS_SECRET_KEY", s3.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", s3.REGION)
    config = snapshot_config(
        "s3",
        url=f"s3://{BUCKET}/site-a",
        endpoint=s3_server.endpoint,
        credentials={
            "usernameEnv": "KUBEVISION_SNAPSHOTS_ACCESS_KEY_ID",
            "passwordEnv": "KUBEVISION_SNAPSHOTS_SECRET_KEY",
        },
    )
    worker, events = start_worker(tmp_path, config)
    try:
        got = wait_for(lambda: started_with_snapshot(events, 3), timeout=90, what="3 snapshots")
    finally:
        worker.stop()
    assert s3.SECRET_KEY not in (tmp_path / "worker.log").read_text()
    for event in got:
        assert event.snapshot is not None
        parts = urlsplit(event.snapshot.uri)
        assert parts.scheme == "s3"
        assert parts.netloc == BUCKET
        assert parts.path.startswith("/site-a/lot/gate/")
        response = client.get_object(BUCKET, parts.path.lstrip("/"))
        try:
            check_jpeg(event, response.read())
        finally:
            response.close()
            response.release_conn()
