"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz`` and
``/status``.

Liveness means the processing loop is still turning (its heartbeat is recent); readiness means
the model is loaded and the loop has started, so the Service only sends scrapes and the
autoscaler only counts replicas that really work. ``/status`` is each camera's stream health as
JSON (connected, reconnects, fps, last frame time and the redacted last error, which metrics
labels must not carry) and each model role's wanted and running variant with why an artifact
was refused; the operator reads it only where its scrape of ``/metrics`` shows a camera down
or an artifact failed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """Heartbeat and readiness shared between the processing loop and the HTTP endpoint."""

    def __init__(self, stall_seconds: float = 30.0) -> None:
        self._beat = time.monotonic()
        self._ready = False
        self._stall = stall_seconds

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self._stall

    @property
    def ready(self) -> bool:
        return self._ready and self.alive


CameraStatus = Callable[[], list[dict[str, Any]]]
"""What ``/status`` serves under ``cameras`` (see ``WorkerMetrics.camera_status``); the
same shape serves ``models`` (``WorkerMetrics.model_status``)."""


class HealthServer:
    """Serves metrics, probes and camera status on ``host:port`` from a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        port: int,
        host: str = "0.0.0.0",
        cameras: CameraStatus | None = None,
        models: CameraStatus | None = None,
    ) -> None:
        handler = _handler(registry, health, cameras or list, models or list)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, health: Health, cameras: CameraStatus, models: CameraStatus
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/status":
                body = json.dumps({"cameras": cameras(), "models": models()}).encode()
                self._send(200, body, "application/json")
            elif self.path == "/healthz":
                self._probe(health.alive, "loop stalled")
            elif self.path == "/readyz":
                self._probe(health.ready, "not ready")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _probe(self, ok: bool, failure: str) -> None:
            self._send(200 if ok else 503, b"ok\n" if ok else f"{failure}\n".encode(), "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log."""

    return Handler
