"""The autoscaler's signals from real components: a real worker process on a real video, read
by ``operator.signals.scrape`` directly and through a real Prometheus server, and the failure
paths (worker gone, Prometheus gone or answering errors) ending in a held decision.

Everything here is real: ``kubevision-worker serve``, the Debian ``prometheus`` binary, HTTP
over loopback sockets. The worker and Prometheus are started once for the module (about 30 s
in all, most of it Prometheus' 5 s target discovery and a 10 s measurement window).
"""

from __future__ import annotations

import json
import math
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubevision.api.worker_config import WorkerConfig
from kubevision.operator.autoscaler import HOLD_NO_METRICS, Autoscaler, Policy
from kubevision.operator.signals import (
    LATENCY,
    PROCESSED,
    GroupSignals,
    PrometheusSource,
    Scrape,
    combine,
    quantile,
    scrape,
)
from kubevision.worker.health import Health, HealthServer
from kubevision.worker.metrics import WorkerMetrics
from tests.assets import require
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.prometheus import Prometheus, find_binaries
from tests.envtest.worker_process import WorkerProcess
from tests.integration.helpers import file_camera, yolox_worker_config

PIPELINE, CAMERA = "signals", "belt"
SOURCE_FPS = 29.97
"""bottle-detection.mp4 plays at 29.97 fps; a file camera is paced in real time."""
WINDOW_S = 10
"""Prometheus' window in (b), and the length of the direct-scrape window it is compared to."""

# (b) tolerances. Both sides count the same frames of a steady, real-time-paced source, but
# their windows differ by up to one scrape interval (1 s of 10 s) at each end and Prometheus
# extrapolates ``rate`` to the window's edges: fps within 20 %. The p99 of ~300 frames is
# decided by its ~3 slowest; a slow frame inside one window and not the other can move it to
# the neighbouring latency bucket, and neighbouring bounds of the worker's buckets differ by at
# most 2x: p99 within a factor of 2. Drop rates are fractions of the same frames: within 0.1.
# (Measured here, 4 runs: fps within 1 %, p99 within 7 %, drop rates within 0.3 points.)
FPS_REL_TOLERANCE = 0.2
P99_FACTOR = 2.0
DROP_RATE_TOLERANCE = 0.1


def _policy() -> Policy:
    """min_replicas=0: a hold must come from the missing signals, not from the bounds."""
    return Policy(target_p99_ms=100, min_replicas=0, max_replicas=10)


def _assert_holds(signals: GroupSignals | None) -> None:
    """Three replicas stay three, with the hold reason, whatever the scale-down window."""
    decision = Autoscaler(_policy()).decide(time.monotonic(), 3, (), signals)
    assert decision.replicas == 3
    assert decision.degradation == ()
    assert decision.held
    assert decision.reason.startswith(HOLD_NO_METRICS)


# --- the real worker -----------------------------------------------------------------------


def _worker_config(video: Path, model: Path) -> WorkerConfig:
    """One camera on the looping bottle video, through the API model the operator renders."""
    return WorkerConfig.model_validate(
        yolox_worker_config(PIPELINE, "g", [[file_camera(CAMERA, video)]], model)
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    config = _worker_config(
        require("videos/bottle-detection.mp4"), require("models/yolox_nano_416.onnx")
    )
    state_dir = tmp_path_factory.mktemp("worker")
    config_path = state_dir / "worker.json"
    config_path.write_text(json.dumps(config.wire()))
    proc = WorkerProcess(config_path, state_dir / "worker.log")
    try:
        wait_for(proc.ready_or_exited, timeout=60, what="worker /readyz")
        proc.check_alive()
        yield proc
    finally:
        proc.stop()


def _scrape_with_frames(url: str, more_than: float = 0.0) -> Scrape | None:
    """A scrape once the worker has processed more than ``more_than`` frames, else None."""
    s = scrape(url)
    return s if s is not None and s.processed > more_than else None


def _scrape_after(url: str, first: Scrape, seconds: float) -> Scrape | None:
    """A scrape taken at least ``seconds`` after ``first``, else None."""
    s = scrape(url)
    return s if s is not None and s.at - first.at >= seconds else None


# --- static histograms: the same buckets, read by quantile() and by Prometheus ------------

HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "spread": (0.004, 0.012, 0.012, 0.04, 0.09, 0.25),
    "first-bucket-empty": (0.04, 0.04, 0.04, 0.6),
    "on-bounds": (0.05,) * 10 + (0.1,) * 5,
    "beyond-last-bound": (7.0,) * 5,
    "no-observations": (),
    "many": tuple(0.002 + 0.0007 * ((i * 37) % 400) for i in range(1000)),
}


class StaticHistograms:
    """One worker metrics endpoint (the real HealthServer) per case, frozen after the start."""

    def __init__(self) -> None:
        self.servers: dict[str, HealthServer] = {}
        for case, observations in HISTOGRAMS.items():
            metrics = WorkerMetrics(f"q-{case}")
            latency = metrics.camera("c").latency  # creates the series even with no frames
            for value in observations:
                latency.observe(value)
            server = HealthServer(metrics.registry, Health(), 0, host="127.0.0.1")
            server.start()
            self.servers[case] = server

    def target(self, case: str) -> str:
        return f"127.0.0.1:{self.servers[case].port}"

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def histograms() -> Iterator[StaticHistograms]:
    static = StaticHistograms()
    yield static
    static.stop()


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    worker: WorkerProcess,
    histograms: StaticHistograms,
) -> Iterator[Prometheus]:
    """Real Prometheus scraping the worker and the static histograms every second."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("prometheus/promtool are not installed (make system-packages)")
    targets = [worker.target, *(histograms.target(case) for case in HISTOGRAMS)]
    with Prometheus(targets, tmp_path_factory.mktemp("prometheus"), binaries=binaries) as prom:
        # Prometheus hands new targets to its scrapers about 5 s after the start.
        wait_for(
            lambda: prom.targets_up() >= set(targets),
            timeout=30,
            what=f"prometheus scraping {targets}",
        )
        yield prom


# --- quantile() is Prometheus' histogram_quantile ------------------------------------------


def _prometheus_quantile(prom: Prometheus, q: float, case: str) -> float | None:
    """histogram_quantile over the case's raw buckets; None for Prometheus' NaN."""
    sel = f'{LATENCY}_bucket{{pipeline="q-{case}"}}'
    query = f"histogram_quantile({q}, sum by (le) ({sel}))"
    value: float = wait_for(
        lambda: [v] if (v := prom.instant(query)) is not None else None,
        timeout=15,
        what=f"buckets of q-{case} in prometheus",
        interval=0.25,
    )[0]
    return None if math.isnan(value) else value


def _compare_quantile(prom: Prometheus, histograms: StaticHistograms, q: float, case: str) -> None:
    s = scrape(f"http://{histograms.target(case)}/metrics")
    assert s is not None
    ours, theirs = quantile(q, s.buckets), _prometheus_quantile(prom, q, case)
    if theirs is None:
        assert ours is None, f"prometheus: NaN, quantile(): {ours}"
    else:
        assert ours is not None, f"prometheus: {theirs}, quantile(): None"
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", list(HISTOGRAMS))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_quantile_matches_prometheus_histogram_quantile(
    prometheus: Prometheus, histograms: StaticHistograms, q: float, case: str
) -> None:
    """The direct path must compute the p99 Prometheus would, from the same buckets."""
    _compare_quantile(prometheus, histograms, q, case)


@pytest.mark.parametrize(("q", "case"), [(0.0, "first-bucket-empty"), (-0.5, "spread")])
def test_quantile_edge_cases_match_prometheus(
    prometheus: Prometheus, histograms: StaticHistograms, q: float, case: str
) -> None:
    _compare_quantile(prometheus, histograms, q, case)


# --- (a) direct scrapes, (b) the same worker through Prometheus ----------------------------


def test_two_scrapes_of_a_real_worker_give_window_signals(worker: WorkerProcess) -> None:
    """(a) The default source: two scrapes a few seconds apart, differenced by combine()."""
    first = wait_for(
        lambda: _scrape_with_frames(worker.metrics_url), timeout=60, what="first frames"
    )
    second = wait_for(
        lambda: _scrape_with_frames(worker.metrics_url, first.processed + 60),
        timeout=30,
        what="60 more frames (about 2 s)",
        interval=0.25,
    )
    signals = combine({"worker-0": first}, {"worker-0": second})
    assert signals is not None
    assert signals.pods == 1
    assert 0 < signals.fps <= SOURCE_FPS * 1.2, "fps is frames per second of the real clock"
    assert signals.p99_ms is not None
    assert 0 < signals.p99_ms < 5000
    assert 0.0 <= signals.drop_rate <= 1.0
    assert signals.queue_depth >= 0


def test_prometheus_agrees_with_direct_scrapes(
    worker: WorkerProcess, prometheus: Prometheus
) -> None:
    """(b) Same worker, same ~10 s of frames: PrometheusSource and combine() must agree.

    Prometheus must already hold a full window, or ``rate`` sees only part of it (it divides
    the increase of the samples it has by the whole window: a new series reads low).
    """
    first = wait_for(
        lambda: _scrape_with_frames(worker.metrics_url), timeout=60, what="first frames"
    )
    samples = (
        f'count_over_time({PROCESSED}{{pipeline="{PIPELINE}",camera="{CAMERA}"}}[{WINDOW_S}s])'
    )
    wait_for(
        lambda: (prometheus.instant(samples) or 0) >= WINDOW_S,
        timeout=30,
        what=f"{WINDOW_S} s of worker samples in prometheus",
        interval=0.5,
    )
    second = wait_for(
        lambda: _scrape_after(worker.metrics_url, first, WINDOW_S),
        timeout=WINDOW_S + 20,
        what=f"a scrape {WINDOW_S} s after the first (the measurement window)",
        interval=0.25,
    )
    via_prometheus = PrometheusSource(prometheus.url, window=f"{WINDOW_S}s").signals(
        PIPELINE, [CAMERA]
    )
    direct = combine({"worker-0": first}, {"worker-0": second})
    assert direct is not None
    assert via_prometheus is not None
    assert via_prometheus.pods == 1
    assert via_prometheus.fps == pytest.approx(direct.fps, rel=FPS_REL_TOLERANCE)
    assert direct.p99_ms is not None
    assert via_prometheus.p99_ms is not None
    ratio = via_prometheus.p99_ms / direct.p99_ms
    assert 1 / P99_FACTOR <= ratio <= P99_FACTOR, (via_prometheus, direct)
    assert 0.0 <= via_prometheus.drop_rate <= 1.0
    assert abs(via_prometheus.drop_rate - direct.drop_rate) <= DROP_RATE_TOLERANCE


def test_prometheus_without_data_for_the_group_gives_no_signals(
    prometheus: Prometheus,
) -> None:
    """A camera Prometheus has never seen: no data is not zero load; the decision holds."""
    signals = PrometheusSource(prometheus.url, window=f"{WINDOW_S}s").signals(
        PIPELINE, ["no-such-camera"]
    )
    assert signals is None
    _assert_holds(signals)


# --- (c) a worker that does not answer -----------------------------------------------------


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port that accepts connections (kernel backlog) and never answers: a hung pod."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_worker_gives_none_and_the_autoscaler_holds(silent_listener: str) -> None:
    """(c) Nothing listening, or a listener that never answers: None within the timeout."""
    for url in (f"http://127.0.0.1:{free_port()}/metrics", f"http://{silent_listener}/metrics"):
        started = time.monotonic()
        assert scrape(url, timeout=2.0) is None
        assert time.monotonic() - started < 2.0 + 1.0, url
    signals = combine({}, {})  # what the operator has when no pod answered
    assert signals is None
    _assert_holds(signals)


# --- (d) Prometheus that cannot answer ---------------------------------------------------


class _Answer503(BaseHTTPRequestHandler):
    """Prometheus behind a proxy that lost its backend (or an overloaded one)."""

    def do_GET(self) -> None:
        body = b'{"status":"error","errorType":"unavailable","error":"backend down"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is about the client."""


@pytest.fixture
def http_503() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_unreachable_gives_none_and_the_autoscaler_holds(
    http_503: str, silent_listener: str
) -> None:
    """(d) Nothing listening, a 503, or a hung server: None, never an exception."""
    nothing = f"http://127.0.0.1:{free_port()}"
    for url in (nothing, http_503, f"http://{silent_listener}"):
        started = time.monotonic()
        signals = PrometheusSource(url, window="10s", timeout=1.0).signals(PIPELINE, [CAMERA])
        assert signals is None, url
        assert time.monotonic() - started < 1.0 + 1.0, url
        _assert_holds(signals)


def test_prometheus_query_error_gives_none_and_the_autoscaler_holds(
    prometheus: Prometheus,
) -> None:
    """(d) A real Prometheus answering ``status: error`` (bad window): None, then hold."""
    query = urllib.parse.urlencode({"query": f"rate({PROCESSED}[10x])"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=5)
    assert answer.value.code == 400
    assert json.loads(answer.value.read())["status"] == "error", "prometheus really rejects it"
    signals = PrometheusSource(prometheus.url, window="10x").signals(PIPELINE, [CAMERA])
    assert signals is None
    _assert_holds(signals)


# --- answers that are not a worker's or Prometheus': None, and the decision holds ------------


class RawServer:
    """Answers every connection with fixed bytes and closes it."""

    def __init__(self, payload: bytes) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # the request's line and headers
                self.wfile.write(payload)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


PAYLOADS = {
    # a worker killed (scale-down, rollout) while it sends /metrics
    "cut-mid-body": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    b"# HELP kubevision_queue_depth x\n",
    # another process on a reused pod IP:port
    "not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
}
NOT_A_WORKER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>"
)


@pytest.fixture(params=[*PAYLOADS, "html-200"])
def raw_server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    payload = NOT_A_WORKER if request.param == "html-200" else PAYLOADS[request.param]
    server = RawServer(payload)
    yield server
    server.stop()


def test_scrape_of_a_broken_answer_gives_none(raw_server: RawServer) -> None:
    assert scrape(f"{raw_server.url}/metrics", timeout=2.0) is None


@pytest.mark.parametrize(
    "payload",
    [name for name in PAYLOADS],
)
def test_prometheus_broken_answer_gives_none(payload: str) -> None:
    server = RawServer(PAYLOADS[payload])
    try:
        assert PrometheusSource(server.url, window="10s").signals(PIPELINE, [CAMERA]) is None
    finally:
        server.stop()


def test_prometheus_html_answer_gives_none() -> None:
    """A 200 that is not JSON (a login page of a proxy): None, then hold."""
    server = RawServer(NOT_A_WORKER)
    try:
        signals = PrometheusSource(server.url, window="10s").signals(PIPELINE, [CAMERA])
    finally:
        server.stop()
    assert signals is None
    _assert_holds(signals)
