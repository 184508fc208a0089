"""What ``kubevision-worker run`` shows a person: a live table per camera, a final summary, and
optionally an annotated video of the first camera."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.runtime import FrameResult

_WINDOW = 1000
"""Latencies kept per camera for the percentiles (bounded: the summary never grows)."""


@dataclass
class _CameraStats:
    frames: int = 0
    first: float = field(default_factory=time.monotonic)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    tracks: set[int] = field(default_factory=set)
    live_tracks: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    events: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else 0.0

    @property
    def fps(self) -> float:
        return self.frames / max(time.monotonic() - self.first, 1e-9)


class AnnotatedVideo:
    """Boxes, track ids and labels drawn on one camera's frames, written as MP4."""

    def __init__(self, path: Path, fps: float = 25.0) -> None:
        self._path = path
        self._fps = fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, result: FrameResult) -> None:
        image = result.frame.image.copy()
        if self._writer is None:
            height, width = image.shape[:2]
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._path), fourcc, self._fps, (width, height))
        for box, score, class_id, track_id in result.detections:
            x1, y1, x2, y2 = (int(v) for v in box)
            label = f"#{track_id} {result.class_names[class_id]} {score:.2f}"
            if track_id in result.labels:
                label += f" [{result.labels[track_id].label}]"
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 0), 2)
            cv2.putText(
                image,
                label,
                (x1, max(y1 - 4, 10)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (0, 255, 0),
                1,
                cv2.LINE_AA,
            )
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class LiveSummary:
    """Collects per-camera figures from the runtime's results (called on its loop thread)."""

    def __init__(
        self, metrics: WorkerMetrics, annotate: Path | None = None, max_frames: int | None = None
    ) -> None:
        self._metrics = metrics
        self._stats: dict[str, _CameraStats] = {}
        self._lock = threading.Lock()
        self._video = AnnotatedVideo(annotate) if annotate else None
        self._video_camera: str | None = None
        self._max_frames = max_frames
        self._total = 0
        self.done = threading.Event()
        self._console = Console(stderr=True)

    def on_result(self, result: FrameResult) -> None:
        camera = result.frame.camera
        with self._lock:
            stats = self._stats.setdefault(camera, _CameraStats())
            stats.frames += 1
            stats.latencies.append(result.latency_seconds)
            live = {t for t in result.detections.track_ids.tolist() if t >= 0}
            stats.tracks |= live
            stats.live_tracks = len(live)
            stats.events += len(result.events)
            for event in result.events:
                if event.kind == "track.started":
                    stats.classes[event.class_name] += 1
            self._total += 1
            if self._max_frames is not None and self._total >= self._max_frames:
                self.done.set()
        if self._video is not None:
            self._video_camera = self._video_camera or camera
            if camera == self._video_camera:
                self._video.write(result)

    def table(self) -> Table:
        table = Table(title="kubevision-worker", expand=False)
        for column in (
            "camera",
            "frames",
            "fps",
            "p50 ms",
            "p99 ms",
            "live tracks",
            "tracks",
            "events",
            "objects started",
        ):
            table.add_column(column, justify="left" if column == "camera" else "right")
        with self._lock:
            for camera, s in sorted(self._stats.items()):
                top = ", ".join(f"{k} {v}" for k, v in s.classes.most_common(4))
                table.add_row(
                    camera,
                    str(s.frames),
                    f"{s.fps:.1f}",
                    f"{s.percentile(50):.1f}",
                    f"{s.percentile(99):.1f}",
                    str(s.live_tracks),
                    str(len(s.tracks)),
                    str(s.events),
                    top,
                )
        return table

    @contextmanager
    def live(self) -> Iterator[None]:
        with Live(self.table(), console=self._console, refresh_per_second=2) as live:
            stop = threading.Event()

            def refresh() -> None:
                while not stop.wait(0.5):
                    live.update(self.table())

            thread = threading.Thread(target=refresh, daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
                live.update(self.table())

    def close(self) -> None:
        if self._video is not None:
            self._video.close()

    def print_final(self) -> None:
        self._console.print(self.table())
