"""Edge→cloud cascade (issue 17 part 4): what the uplink carries and what the cascade adds.

Real parts only: a mosquitto broker on loopback (the uplink), the edge worker as a
``kubevision-worker serve`` process (each shared video as a camera looping in real time, motion
sampling, YOLOX-nano, ByteTrack, an inline JPEG snapshot per ``track.started``, an MQTT output)
and the cloud worker as a ``kubevision-worker cascade`` process (MobileNetV2 INT8 on each
crop, an MQTT output of its own). Two subscribers record both topics.

Measured per camera over a window of the edge worker's own publish times (whole loops of each
video): the MQTT PUBLISH bytes upstream (fixed header, topic, packet id and payload: the JSON
event with its base64 crop; TCP/IP and TLS not counted), scaled to a camera-hour; beside it
the same camera streamed as video: the shared H.264 file's own bitrate, and the file
re-encoded with libx264 at a typical IP-camera bitrate (PyAV, measured output size). Latency:
edge publish (``publishedTime`` of the edge event) to the cloud's enriched event (its
``publishedTime``, and its arrival at the cloud topic's subscriber), p50/p99, beside the edge
pipeline's own capture-to-publish latency in the same run (track.started/updated events).

    python -m benchmarks.cascade_bandwidth            # make bench-cascade (~3 min)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.common import machine, write_results
from kubevision.worker.events import TrackEvent
from kubevision.worker.models import sha256_of
from tests.assets import assets_dir
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.sinks import Mosquitto, Subscriber, subscriber

RESULTS = Path(__file__).parent / "results"
WORKER = Path(sys.executable).parent / "kubevision-worker"
VIDEOS = {"parking": "videos/car-detection.mp4", "belt": "videos/bottle-detection.mp4"}
DETECTOR = "models/yolox_nano_416.onnx"
CLASSIFIER = "models/mobilenetv2_12_int8.onnx"
LABELS = "models/imagenet_classes.txt"
EDGE_TOPIC = "site-a/events"
CLOUD_TOPIC = "cloud/enriched"
CAMERA_BITRATE = 1_000_000
"""The re-encode's target: 1 Mbit/s, a common H.264 setting of IP cameras at these (360p to
480p) resolutions (1080p main streams are usually 2 to 4 Mbit/s)."""


@dataclass(frozen=True)
class Size:
    loops: int
    """Whole loops of each video inside the measured window."""


SMALL = Size(loops=1)
FULL = Size(loops=3)


def asset(relative: str) -> Path:
    path = assets_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (set KUBEVISION_ASSETS)")
    return path


def _model(path: Path, **fields: Any) -> dict[str, Any]:
    return {
        "variant": path.stem.replace("_", "-"),
        "family": path.stem.replace("_", "-"),
        "format": "onnx",
        "precision": "int8" if "int8" in path.name else "fp32",
        "artifact": {"uri": f"file://{path}", "sha256": sha256_of(path)},
        **fields,
    }


def edge_config(
    mqtt_url: str, videos: dict[str, Path], *, storage: str = "inline"
) -> dict[str, Any]:
    """The edge Pipeline as its worker runs it: motion-gated sampling, YOLOX-nano, ByteTrack,
    a snapshot per track.started, events to the uplink's MQTT topic."""
    cameras = [
        {
            "name": name,
            "url": f"file://{path}",
            "timeoutSeconds": 5,
            "fps": 30,
            "sampling": {"mode": "motion"},
            "priority": 100,
        }
        for name, path in videos.items()
    ]
    return {
        "pipeline": "edge",
        "namespace": "site-a",
        "group": "edge-jetson",
        "hardwareClass": "cpu",
        "detector": {
            "model": _model(
                asset(DETECTOR),
                task="detect",
                inputSize={"width": 416, "height": 416},
                decoder="yolox",
                batchMax=1,
            ),
            "confidence": 0.3,
            "nmsIou": 0.45,
        },
        "tracker": {"type": "bytetrack"},
        "slo": {"p99LatencyMs": 500, "minFps": 1},
        "outputs": [{"type": "mqtt", "url": mqtt_url, "topic": EDGE_TOPIC}],
        "snapshots": {
            "storage": storage,
            "events": ["track.started"],
            "jpegQuality": 85,
            "margin": 0.1,
            "maxFiles": 10_000,
            "maxBytes": 2**30,
        },
        "shards": [cameras],
    }


def cascade_config(mqtt_url: str, group: str = "cloud-classifier") -> dict[str, Any]:
    """The cloud side: the edge topic in, MobileNetV2 on the crops, enriched events out."""
    return {
        "pipeline": "cloud",
        "source": {"url": mqtt_url, "topic": EDGE_TOPIC, "group": group},
        "classifier": _model(
            asset(CLASSIFIER),
            task="classify",
            inputSize={"width": 224, "height": 224},
            batchMax=16,
        ),
        "outputs": [{"type": "mqtt", "url": mqtt_url, "topic": CLOUD_TOPIC}],
    }


class Process:
    """A ``kubevision-worker`` subprocess with its log and metrics port."""

    def __init__(self, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "KUBEVISION_SHARD": "0", "OMP_NUM_THREADS": "1"}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(WORKER), *args, f"--port={self.port}", "--threads=1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Rig:
    """The broker, the two workers and a subscriber per topic."""

    workdir: Path
    broker: Mosquitto
    edge_seen: SizingSubscriber
    cloud_seen: Subscriber
    edge: Process
    cloud: Process

    def start_cloud(self) -> Process:
        self.cloud = Process(
            self.workdir / "cloud.log",
            "cascade",
            f"--config={self.workdir / 'cascade.json'}",
            f"--classifier-labels={asset(LABELS)}",
        )
        return self.cloud


@contextmanager
def rig(workdir: Path, videos: dict[str, Path], *, storage: str = "inline") -> Iterator[Rig]:
    """Everything running; the cloud worker's persistent session exists before the edge
    publishes (so nothing the edge sends is missed while it loads its model)."""
    broker = Mosquitto(workdir)
    broker.start()
    with ExitStack() as stack:
        stack.callback(broker.stop)
        edge_seen = stack.enter_context(sizing_subscriber(broker.port, EDGE_TOPIC))
        cloud_seen = stack.enter_context(subscriber(broker.port, CLOUD_TOPIC))
        (workdir / "edge.json").write_text(
            json.dumps(edge_config(broker.url, videos, storage=storage))
        )
        (workdir / "cascade.json").write_text(json.dumps(cascade_config(broker.url)))
        setup = Rig(workdir, broker, edge_seen, cloud_seen, None, None)  # type: ignore[arg-type]
        cloud = setup.start_cloud()
        stack.callback(lambda: setup.cloud.stop())
        wait_for(lambda: _answers(cloud.port), timeout=60, what="the cascade worker's metrics port")
        wait_for(lambda: _ready(setup.cloud.port), timeout=60, what="the cascade subscribed")
        setup.edge = Process(
            workdir / "edge.log",
            "serve",
            f"--config={workdir / 'edge.json'}",
            f"--snapshot-dir={workdir / 'snapshots'}",
        )
        stack.callback(setup.edge.stop)
        yield setup


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def key(event: TrackEvent) -> tuple[str, str, int, dt.datetime]:
    """What identifies an event on both sides of the cascade."""
    return (event.camera, event.kind, event.track_id, event.capture_time)


def publish_packet_bytes(topic: str, payload: int) -> int:
    """Bytes of an MQTT 3.1.1 QoS 1 PUBLISH: fixed header (1 + remaining-length varint),
    topic (2 + length), packet id (2), payload."""
    remaining = 2 + len(topic.encode()) + 2 + payload
    varint = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2**21 else 4
    return 1 + varint + remaining


# -- baselines: the camera streamed as video ----------------------------------------------------


def video_baselines(path: Path, bitrate: int = CAMERA_BITRATE) -> dict[str, Any]:
    """The H.264 file's own bitrate, and the bytes of the same frames re-encoded by libx264
    at ``bitrate`` (what a camera streaming them at that setting would send)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or Fraction(25)
        width, height, fps = stream.width, stream.height, float(rate)
        frames = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    duration = len(frames) / fps
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reencoded.mp4"
        with av.open(str(out), "w") as container:
            enc = container.add_stream("libx264", rate=rate)
            enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
            enc.bit_rate = bitrate
            enc.options = {
                "maxrate": str(bitrate),
                "bufsize": str(2 * bitrate),
                "preset": "veryfast",
                "g": str(round(2 * fps)),
            }
            for array in frames:
                frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
                for packet in enc.encode(frame):
                    container.mux(packet)
            for packet in enc.encode():
                container.mux(packet)
        reencoded = out.stat().st_size
    size = path.stat().st_size
    return {
        "width": width,
        "height": height,
        "fps": round(fps, 2),
        "duration_s": round(duration, 2),
        "file_bytes": size,
        "file_bits_per_s": round(size * 8 / duration),
        "file_bytes_per_hour": round(size / duration * 3600),
        "reencode_target_bits_per_s": bitrate,
        "reencode_bytes": reencoded,
        "reencode_bits_per_s": round(reencoded * 8 / duration),
        "reencode_bytes_per_hour": round(reencoded / duration * 3600),
    }


# -- the measurement --------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    arr = np.array(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "n": len(values),
    }


def measure(size: Size, workdir: Path) -> dict[str, Any]:
    videos = {name: asset(rel) for name, rel in VIDEOS.items()}
    baselines = {name: video_baselines(path) for name, path in videos.items()}
    window = size.loops * max(b["duration_s"] for b in baselines.values())
    with rig(workdir, videos) as setup:
        first = wait_for(
            lambda: setup.edge_seen.received() or None, timeout=120, what="the first edge event"
        )
        start = first[0][1].published_time + dt.timedelta(seconds=2)  # both cameras running
        end = start + dt.timedelta(seconds=window)
        wait_for(
            lambda: any(e.published_time >= end for _, e in setup.edge_seen.received()),
            timeout=window + 120,
            what=f"{window:.0f} s of edge events",
        )
        inside = [
            (topic, e) for topic, e in setup.edge_seen.received() if start <= e.published_time < end
        ]
        wanted = {key(e) for _, e in inside}
        wait_for(
            lambda: wanted <= {key(e) for _, e in setup.cloud_seen.received()},
            timeout=120,
            what="every edge event of the window enriched by the cloud",
        )
        edge_payloads = dict(setup.edge_seen.sizes)
        cloud = {key(e): (t, e) for t, e in setup.cloud_seen.arrivals()}
        offset = time.time() - time.monotonic()
    return _figures(size, window, baselines, inside, edge_payloads, cloud, offset)


class SizingSubscriber(Subscriber):
    """A :class:`Subscriber` that also keeps each message's payload size, by event."""

    def __init__(self, port: int, topic: str) -> None:
        self.sizes: dict[tuple[str, str, int, dt.datetime], int] = {}
        super().__init__(port, topic)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        with self._lock:
            self.sizes.setdefault(
                key(TrackEvent.model_validate_json(msg.payload)), len(msg.payload)
            )


@contextmanager
def sizing_subscriber(port: int, topic: str) -> Iterator[SizingSubscriber]:
    sub = SizingSubscriber(port, topic)
    try:
        wait_for(sub.subscribed.is_set, timeout=10, what="the edge subscriber's SUBACK")
        yield sub
    finally:
        sub.close()


def _figures(
    size: Size,
    window: float,
    baselines: dict[str, dict[str, Any]],
    inside: list[tuple[str, TrackEvent]],
    payloads: dict[tuple[str, str, int, dt.datetime], int],
    cloud: dict[tuple[str, str, int, dt.datetime], tuple[float, TrackEvent]],
    offset: float,
) -> dict[str, Any]:
    cameras: dict[str, Any] = {}
    for name, base in baselines.items():
        events = [(t, e) for t, e in inside if e.camera == name]
        packet = sum(publish_packet_bytes(t, payloads[key(e)]) for t, e in events)
        crops = sum(len(e.snapshot.uri) for _, e in events if e.snapshot is not None)
        jpeg = sum(e.snapshot.size for _, e in events if e.snapshot is not None)
        per_hour = packet / window * 3600
        cameras[name] = {
            "events": len(events),
            "events_with_snapshot": sum(e.snapshot is not None for _, e in events),
            "upstream_bytes": packet,
            "jpeg_bytes": jpeg,
            "base64_crop_bytes": crops,
            "cascade_bytes_per_hour": round(per_hour),
            "events_only_bytes_per_hour": round((packet - crops) / window * 3600),
            "video": base,
            "file_over_cascade": round(base["file_bytes_per_hour"] / per_hour, 1),
            "reencode_over_cascade": round(base["reencode_bytes_per_hour"] / per_hour, 1),
        }
    stamped, arrived, edge_own = [], [], []
    enriched = 0
    for _, event in inside:
        at, out = cloud[key(event)]
        if event.kind != "track.ended":  # an ended track's capture time is its last sighting
            edge_own.append((event.published_time - event.capture_time).total_seconds())
        if out.classification is None or event.snapshot is None:
            continue
        enriched += 1
        stamped.append((out.published_time - event.published_time).total_seconds())
        arrived.append(at + offset - event.published_time.timestamp())
    return {
        "benchmark": "cascade_bandwidth",
        "hardware": machine(),
        "size": {"loops": size.loops, "window_s": round(window, 1)},
        "models": {
            "edge": f"{Path(DETECTOR).name} (ONNX Runtime CPU, 1 thread), ByteTrack, motion "
            "sampling",
            "cloud": f"{Path(CLASSIFIER).name} (ONNX Runtime CPU, 1 thread) on each crop",
        },
        "snapshots": "inline JPEG (quality 85, box + 10 % margin) per track.started",
        "cameras": cameras,
        "enriched_events": enriched,
        "latency": {
            "edge_capture_to_edge_publish": _percentiles(edge_own),
            "edge_publish_to_cloud_publish": _percentiles(stamped),
            "edge_publish_to_cloud_subscriber": _percentiles(arrived),
        },
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Edge→cloud cascade: upstream bytes per camera-hour and added latency",
        "",
        f"Hardware: {result['hardware']} (edge worker, broker and cloud worker on one host).",
        f"Edge: {result['models']['edge']}; {result['snapshots']}; events to MQTT.",
        f"Cloud: {result['models']['cloud']}, enriched events to MQTT.",
        f"Window: {result['size']['window_s']} s of the edge worker's publish times per camera "
        f"({result['size']['loops']} whole loop(s) of the longer video, both cameras at once, "
        "real time), scaled to an hour. Upstream = MQTT PUBLISH packets (header, topic, "
        "packet id, JSON event with its base64 crop); TCP/IP/TLS not counted.",
        "",
        "| camera (video) | events | with crop | cascade / h | events only / h "
        "| H.264 file / h (bitrate) | re-encode 1 Mbit/s / h | file ÷ cascade "
        "| re-encode ÷ cascade |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cam in result["cameras"].items():
        video = cam["video"]
        lines.append(
            f"| {name} ({video['width']}x{video['height']} {video['fps']} fps) "
            f"| {cam['events']} | {cam['events_with_snapshot']} "
            f"| {_mib(cam['cascade_bytes_per_hour'])} | {_mib(cam['events_only_bytes_per_hour'])} "
            f"| {_mib(video['file_bytes_per_hour'])} ({video['file_bits_per_s'] / 1000:,.0f} "
            f"kbit/s) | {_mib(video['reencode_bytes_per_hour'])} "
            f"| {cam['file_over_cascade']}x | {cam['reencode_over_cascade']}x |"
        )
    lat = result["latency"]
    lines += [
        "",
        f"Latency ({result['enriched_events']} enriched events; the baseline is the edge "
        "pipeline's own latency over the window's track.started/updated events):",
        "",
        "| what is timed | p50 | p99 | n |",
        "|---|---:|---:|---:|",
    ]
    for label, name in (
        (
            "edge pipeline: frame capture → edge event published (baseline)",
            "edge_capture_to_edge_publish",
        ),
        (
            "cascade: edge event published → enriched event published (cloud stamp)",
            "edge_publish_to_cloud_publish",
        ),
        (
            "cascade: edge event published → enriched event at the cloud subscriber",
            "edge_publish_to_cloud_subscriber",
        ),
    ):
        row = lat[name]
        lines.append(f"| {label} | {row['p50_ms']} ms | {row['p99_ms']} ms | {row['n']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="one loop (the test's size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-cascade-") as tmp:
        result = measure(SMALL if args.small else FULL, Path(tmp))
    write_results(args.out, "cascade_bandwidth", result, markdown(result))


if __name__ == "__main__":
    main()
