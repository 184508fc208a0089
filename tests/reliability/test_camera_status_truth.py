"""Camera status and Events tell the truth at each moment, on the real components: the real
operator, a real worker pod (the PodRunner), GStreamer's RTSP server with a camera password.

Cameras stream: Connected=True. The RTSP server is SIGKILLed: within the camera timeout plus a
metrics interval (and a margin for a loaded machine) Connected=False with the worker's error,
and exactly one ``Disconnected`` Event per camera, however long it stays down. The server comes
back: Connected=True, more reconnects, exactly one ``Reconnected`` Event. Twice; then no Event
while idle, and the camera password is nowhere: not in the errors, Events or logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubevision.operator.planner import group_name
from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.operator import OperatorProcess
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.rtsp import Credentials, RtspServer
from tests.integration.helpers import Namespace, optimistic_cpu_detector

USER, PASSWORD = "kv-truth", "Tru7h-s3cret!pw"
CAMERAS = ("gate", "yard")
PIPELINE = "truth"
POD = f"{group_name(PIPELINE, 'site-a', 'cpu')}-0"
CYCLES = 2
CAMERA_TIMEOUT_SECONDS = 3
METRICS_INTERVAL_SECONDS = 1
LOADED_MACHINE_MARGIN = 20
DOWN_DEADLINE = CAMERA_TIMEOUT_SECONDS + 2 * METRICS_INTERVAL_SECONDS + LOADED_MACHINE_MARGIN
"""A killed server: the worker's read fails (at the latest after the camera timeout), the next
operator tick scrapes it and writes the status."""
BACKOFF_CAP_SECONDS = 36
"""The capture's longest wait between attempts (30 s cap plus 20 % jitter)."""
BACK_DEADLINE = BACKOFF_CAP_SECONDS + 2 * METRICS_INTERVAL_SECONDS + LOADED_MACHINE_MARGIN
STARTUP_DEADLINE = 120
"""The worker pod scheduled, started and its model loaded, on a loaded machine."""
IDLE_TICKS = 3
"""Operator ticks watched for Events that should not come."""

Entry = dict[str, Any]
Entries = dict[str, Entry]
"""camera -> its status.assignments entry of the Pipeline."""


def site(server: RtspServer) -> list[dict[str, Any]]:
    def camera(name: str) -> dict[str, Any]:
        source = {
            "url": server.url("cam"),
            "credentialsSecretRef": {"name": "cam-creds"},
            "timeoutSeconds": CAMERA_TIMEOUT_SECONDS,
        }
        return {
            "apiVersion": "kubevision.io/v1alpha1",
            "kind": "Camera",
            "metadata": {"name": name, "labels": {"app": PIPELINE}},
            "spec": {
                "source": source,
                "fps": 25,
                "site": "site-a",
                "sampling": {"mode": "everyN", "everyN": 10},
            },
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cam-creds"},
            "stringData": {"username": USER, "password": PASSWORD},
        },
        optimistic_cpu_detector("yolox-nano-truth", require("models/yolox_nano_416.onnx")),
        *(camera(name) for name in CAMERAS),
        {
            "apiVersion": "kubevision.io/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": PIPELINE},
            "spec": {
                "cameraSelector": {"matchLabels": {"app": PIPELINE}},
                "stages": {"detector": {"variant": "yolox-nano-truth"}},
                "placement": {"hardwareClasses": ["cpu"]},
                "autoscaling": {"metricsIntervalSeconds": METRICS_INTERVAL_SECONDS},
            },
        },
    ]


class Look:
    """Reads what a user sees: each camera's Connected condition, its assignment entry and
    the Events about it."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def cameras(self) -> dict[str, dict[str, Any]]:
        return {c["metadata"]["name"]: c for c in self.ns.items("cameras")}

    def entries(self) -> Entries:
        out = {}
        for name, cam in self.cameras().items():
            for entry in (cam.get("status") or {}).get("assignments", []):
                if entry["pipeline"] == PIPELINE:
                    out[name] = entry
        return out

    def connected(self, name: str) -> dict[str, Any]:
        conditions = (self.cameras()[name].get("status") or {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Connected"), {})

    def consistent(self, name: str) -> tuple[Entry, dict[str, Any]] | None:
        """The camera's entry and Connected condition from one read, when the condition
        quotes the entry's error; None otherwise."""
        status = self.cameras()[name].get("status") or {}
        entries: list[Entry] = status.get("assignments", [])
        conditions: list[dict[str, Any]] = status.get("conditions", [])
        entry = next((e for e in entries if e["pipeline"] == PIPELINE), {})
        condition = next((c for c in conditions if c["type"] == "Connected"), {})
        error = entry.get("lastError")
        return (entry, condition) if error and error in condition.get("message", "") else None

    def until_consistent(self, name: str) -> tuple[Entry, dict[str, Any]]:
        return wait_for(
            lambda: self.consistent(name),
            timeout=LOADED_MACHINE_MARGIN,
            what=f"{name}: Connected condition quoting the entry's error",
        )

    def events(self) -> Counter[tuple[str, str]]:
        """(camera, reason) -> how many times the Event was posted."""
        counts: Counter[tuple[str, str]] = Counter()
        for event in self.ns.items("events"):
            about = event["involvedObject"]
            if about.get("kind") == "Camera":
                counts[about["name"], event["reason"]] += int(event.get("count") or 1)
        return counts

    def until(self, check: Callable[[Entries], bool], what: str, timeout: float) -> Entries:
        """The entries of every camera, once ``check`` holds for them."""

        def now() -> Entries | None:
            entries = self.entries()
            return entries if len(entries) == len(CAMERAS) and check(entries) else None

        return wait_for(now, timeout=timeout, what=what, interval=0.25)

    def events_become(self, expected: Counter[tuple[str, str]], what: str) -> None:
        """Events are posted just after the status write: wait for them, then none more."""
        try:
            wait_for(lambda: self.events() == expected, timeout=10, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {dict(self.events())} != {dict(expected)}") from exc


def expected_events(disconnects: int, reconnects: int) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for name in CAMERAS:
        counts[name, "Disconnected"] = disconnects
        counts[name, "Reconnected"] = reconnects
    return +counts  # drops the zeros


def streaming(more_reconnects_than: dict[str, int] | None = None) -> Callable[[Entries], bool]:
    def check(entries: Entries) -> bool:
        return all(
            e.get("connected") is True
            and e["reconnects"] > (more_reconnects_than or {}).get(name, -1)
            for name, e in entries.items()
        )

    return check


def disconnected(entries: Entries) -> bool:
    return all(e.get("connected") is False and e.get("lastError") for e in entries.values())


def wait_ticks(operator: OperatorProcess, ticks: int) -> None:
    """Until the operator has reconciled (scraped, decided, written) ``ticks`` more times."""
    start = operator.reconciles("pipeline")
    wait_for(
        lambda: operator.reconciles("pipeline") >= start + ticks,
        timeout=ticks * METRICS_INTERVAL_SECONDS + LOADED_MACHINE_MARGIN,
        what=f"{ticks} more operator ticks",
    )


def test_status_and_events_follow_the_stream_down_and_back(
    cluster: LocalCluster,
    operator: OperatorProcess,
    runner: PodRunner,
    namespace: str,
    tmp_path: Path,
) -> None:
    ns = Namespace(cluster, namespace)
    look = Look(ns)
    with RtspServer(tmp_path, read=Credentials(USER, PASSWORD)) as server:
        server.publish("cam", require("videos/car-detection.mp4"))
        ns.apply(docs=site(server))
        entries = look.until(streaming(), "every camera connected", STARTUP_DEADLINE)
        for name in CAMERAS:
            assert look.connected(name)["status"] == "True", look.connected(name)
            assert entries[name]["workload"] + f"-{entries[name]['shard']}" == POD
            assert entries[name]["observedFps"] > 0
            assert "lastFrameTime" in entries[name]
        look.events_become(expected_events(0, 0), "no stream Event while all stream")

        shown: list[str] = []  # the errors Camera status showed while the server was down
        for cycle in range(CYCLES):
            before = {name: entries[name]["reconnects"] for name in CAMERAS}
            server.kill()
            down = look.until(
                disconnected, f"cycle {cycle}: every camera disconnected, with its error",
                DOWN_DEADLINE,
            )  # fmt: skip
            shown += [down[name]["lastError"] for name in CAMERAS]
            for name in CAMERAS:
                # the error may change while the worker retries (EOF, then refused): compare
                # the condition with the entry of the same read of the Camera
                entry, condition = look.until_consistent(name)
                assert entry["connected"] is False
                assert (condition["status"], condition["reason"]) == ("False", "SourceUnreachable")
                assert condition["message"].startswith(f"pipeline {PIPELINE}: ")
            wait_ticks(operator, IDLE_TICKS)  # stays down, errors may change: no more Events
            look.events_become(expected_events(cycle + 1, cycle), f"cycle {cycle}: Disconnected")

            server.start()
            server.wait_streaming("cam")
            entries = look.until(
                streaming(more_reconnects_than=before),
                f"cycle {cycle}: every camera back, with more reconnects", BACK_DEADLINE,
            )  # fmt: skip
            assert all("lastError" not in entries[name] for name in CAMERAS), entries
            assert all(look.connected(name)["status"] == "True" for name in CAMERAS)
            look.events_become(expected_events(cycle + 1, cycle + 1), f"cycle {cycle}: Reconnected")

        wait_ticks(operator, IDLE_TICKS)
        assert look.events() == expected_events(CYCLES, CYCLES), "an Event while idle"

    world = "".join(ns.kubectl("get", kind, "-o", "yaml") for kind in ("cameras", "events"))
    worker_logs = "".join(p.read_text() for p in runner.log_dir.glob("*.log"))
    assert shown, "Camera status showed no error while the server was down"
    assert all("rtsp://" not in e or "rtsp://***@" in e for e in shown), shown  # URLs scrubbed
    for value in (PASSWORD, USER):
        for where, text in {
            "the errors Camera status showed": "".join(shown),
            "Camera status or Events": world,
            "the operator log": operator.log(),
            "the worker logs": worker_logs,
        }.items():
            assert value not in text, f"a credential leaked into {where}"
