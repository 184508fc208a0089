"""Security: Secret values never leave the Secret, the operator holds only its documented
rights, and no camera URL can steer FFmpeg to another protocol or to a local file.

Pod Security "restricted" for the operator and the worker pods it renders is proven by
``tests/integration/test_chart.py`` (admission into an enforcing namespace); it is not repeated
here.
"""

from __future__ import annotations

import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubevision.api.camera import Sampling
from kubevision.api.worker_config import CameraAssignment
from kubevision.worker.capture import CameraStream, CaptureOptions
from kubevision.worker.metrics import WorkerMetrics
from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.operator import OperatorProcess
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.rtsp import Credentials, RtspServer
from tests.integration.helpers import Namespace, optimistic_cpu_detector

USER, PASSWORD, WRONG_PASSWORD = "kv-viewer", "Sup3r-s3cret!pw", "wr0ng-but-s3cret"
"""Every Secret value the end-to-end test uses: none may appear anywhere but in the Secrets."""


# -- camera URLs cannot steer FFmpeg ------------------------------------------------------------


def open_camera(url: str) -> CameraStream:
    camera = CameraAssignment(
        name="cam", url=url, timeout_seconds=3, fps=25, sampling=Sampling(), priority=100
    )
    return CameraStream(camera, WorkerMetrics("sec").camera("cam"), CaptureOptions()).start()


def refused(stream: CameraStream) -> str:
    """The error of a stream that never delivered a frame (waits for its first failure)."""
    try:
        error: str = wait_for(lambda: stream.last_error, timeout=30, what="the camera's error")
        assert stream.last_index == -1, f"{stream.camera.url} delivered frames"
        return error
    finally:
        stream.stop()


def delivers(stream: CameraStream) -> bool:
    try:
        return bool(wait_for(lambda: stream.get(timeout=0.5), timeout=30, what="a frame"))
    finally:
        stream.stop()


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo video as MPEG-TS (streamable over plain HTTP, a valid HLS segment)."""
    out = tmp_path_factory.mktemp("video") / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i",
         str(require("videos/bottle-detection.mp4")), "-t", "4", "-c", "copy", "-f", "mpegts",
         str(out)],
        check=True,
        timeout=120,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def web(ts_video: Path) -> Iterator[str]:
    """A real HTTP server: the TS clip, and HLS playlists naming it over HTTP or as a local file."""
    clip = ts_video.read_bytes()
    routes: dict[str, tuple[str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = routes.get(self.path, ("text/plain", b""))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_port}"

    def playlist(segment: str) -> bytes:
        return (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:4.0,\n{segment}\n#EXT-X-ENDLIST\n"
        ).encode()

    routes["/clip.ts"] = ("video/mp2t", clip)
    routes["/remote.m3u8"] = ("application/vnd.apple.mpegurl", playlist(f"{base}/clip.ts"))
    routes["/local.m3u8"] = ("application/vnd.apple.mpegurl", playlist(f"file://{ts_video}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()


def test_a_file_url_cannot_name_another_ffmpeg_protocol(ts_video: Path) -> None:
    """The API rejects such URLs; a worker config from elsewhere must not reach FFmpeg's
    concat/pipe protocols either (here concat would read the clip twice)."""
    assert delivers(open_camera(f"file://{ts_video}"))
    error = refused(open_camera(f"file://concat:{ts_video}|{ts_video}"))
    assert "No such file" in error


def test_an_http_camera_reads_http_but_a_playlist_cannot_make_it_read_a_local_file(
    web: str,
) -> None:
    """FFmpeg's HLS demuxer refuses a file segment in an HTTP playlist itself; the worker's
    per-scheme protocol whitelist makes the same hold for any demuxer a stream selects."""
    assert delivers(open_camera(f"{web}/clip.ts"))
    assert delivers(open_camera(f"{web}/remote.m3u8"))
    refused(open_camera(f"{web}/local.m3u8"))


# -- least privilege ---------------------------------------------------------------------------

OPERATOR_RIGHTS: dict[str, set[str]] = {
    # its own resources: watch them, finalizers/annotations, status (never a user's spec)
    "cameras.kubevision.io": {"get", "list", "watch", "patch"},
    "pipelines.kubevision.io": {"get", "list", "watch", "patch"},
    "modelvariants.kubevision.io": {"get", "list", "watch", "patch"},
    "cameras.kubevision.io/status": {"get", "patch", "update"},
    "pipelines.kubevision.io/status": {"get", "patch", "update"},
    "modelvariants.kubevision.io/status": {"get", "patch", "update"},
    # what it renders for each Pipeline
    "deployments.apps": {"get", "list", "watch", "create", "patch", "update", "delete"},
    "statefulsets.apps": {"get", "list", "watch", "create", "patch", "update", "delete"},
    "configmaps": {"get", "list", "watch", "create", "patch", "update", "delete"},
    "services": {"get", "list", "watch", "create", "patch", "update", "delete"},
    # placement and autoscaling inputs (pods: readiness and pod IPs to scrape)
    "nodes": {"get", "list", "watch"},
    "pods": {"get", "list", "watch"},
    # decisions recorded as Events
    "events": {"create", "patch"},
    "events.events.k8s.io": {"create", "patch"},
    # kopf: resource discovery and namespaces when watching the whole cluster
    "customresourcedefinitions.apiextensions.k8s.io": {"get", "list", "watch"},
    "namespaces": {"get", "list", "watch"},
    # kopf peering: one active replica (leader election)
    "clusterkopfpeerings.kopf.dev": {"get", "list", "watch", "patch"},
    "kopfpeerings.kopf.dev": {"get", "list", "watch", "patch"},
}
"""What the operator may do, and why: any change to the chart's ClusterRole fails the test
until this list (the documentation of its rights) says why. It never reads Secrets."""
EVERY_USER = {
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}
"""Granted to every authenticated user by Kubernetes' own default roles."""


def can_i_list(cluster: LocalCluster, namespace: str) -> dict[str, set[str]]:
    """``kubectl auth can-i --list`` as the operator: resource -> verbs (resource rules only)."""
    out = cluster.control_plane.kubectl(
        f"--kubeconfig={cluster.kubeconfig('operator')}", "auth", "can-i", "--list",
        f"--namespace={namespace}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rights: dict[str, set[str]] = {}
    for line in out.stdout.splitlines()[1:]:
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) < 4 or not columns[0]:
            continue  # a non-resource URL rule
        resource, verbs = columns[0], columns[-1].strip("[]").split()
        rights.setdefault(resource, set()).update(verbs)
    return rights


def test_the_operator_holds_exactly_its_documented_rights(
    cluster: LocalCluster, chart: str, namespace: str
) -> None:
    rights = can_i_list(cluster, namespace)
    assert "secrets" not in rights
    assert {r: v for r, v in rights.items() if r not in EVERY_USER} == OPERATOR_RIGHTS


# -- Secret values stay in their Secrets --------------------------------------------------------


def secure_site(ns: Namespace, server: RtspServer) -> list[dict[str, Any]]:
    """Two RTSP cameras with credentials from Secrets (one of them wrong) and a CPU Pipeline."""

    def camera(name: str, secret: str) -> dict[str, Any]:
        return {
            "apiVersion": "kubevision.io/v1alpha1",
            "kind": "Camera",
            "metadata": {"name": name, "labels": {"app": "secure"}},
            "spec": {
                "source": {
                    "url": server.url("cam"),
                    "transport": "tcp",
                    "credentialsSecretRef": {"name": secret},
                },
                "fps": 25,
                "site": "site-a",
                "sampling": {"mode": "everyN", "everyN": 5},
            },
        }

    def secret(name: str, password: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"username": USER, "password": password},
        }

    pipeline = {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "secure"},
        "spec": {
            "cameraSelector": {"matchLabels": {"app": "secure"}},
            "stages": {"detector": {"variant": "yolox-nano-secure"}},
            "placement": {"hardwareClasses": ["cpu"]},
        },
    }
    return [
        secret("good-creds", PASSWORD),
        secret("wrong-creds", WRONG_PASSWORD),
        optimistic_cpu_detector("yolox-nano-secure", require("models/yolox_nano_416.onnx")),
        camera("entrance", "good-creds"),
        camera("backdoor", "wrong-creds"),
        pipeline,
    ]


def worker_metrics(ns: Namespace) -> str:
    texts = []
    for pod in ns.items("pods", "app.kubernetes.io/name=kubevision-worker"):
        ip = (pod.get("status") or {}).get("podIP")
        if ip:
            with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=5) as resp:
                texts.append(resp.read().decode())
    return "\n".join(texts)


def test_secret_values_reach_only_the_camera(
    cluster: LocalCluster,
    operator: OperatorProcess,
    runner: PodRunner,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A worker reads an authenticated RTSP camera (and fails on one with a wrong password):
    neither password nor user name shows in ConfigMaps, Events, statuses, pod specs, the
    operator's or the worker's logs, or metrics."""
    ns = Namespace(cluster, namespace)
    with RtspServer(tmp_path, read=Credentials(USER, PASSWORD)) as server:
        server.publish("cam", require("videos/car-detection.mp4"))
        ns.apply(docs=secure_site(ns, server))
        metrics = wait_for(
            lambda: (
                (text := worker_metrics(ns))
                and re.search(r'frames_processed_total\{camera="entrance"[^}]*\} [1-9]', text)
                and re.search(r'camera_reconnects_total\{camera="backdoor"[^}]*\} [1-9]', text)
                and text
            ),
            timeout=180,
            what="the worker to stream the good camera and retry the wrong one",
        )
    world = "".join(
        ns.kubectl("get", kind, "-o", "yaml")
        for kind in (
            "configmaps", "cameras", "pipelines", "modelvariants", "events", "statefulsets",
            "pods", "services",
        )
    )  # fmt: skip
    worker_logs = "".join(p.read_text() for p in runner.log_dir.glob("*.log"))
    assert "401" in worker_logs or "Unauthorized" in worker_logs, "the wrong password was tried"
    for value in (PASSWORD, WRONG_PASSWORD, USER):
        for where, text in {
            "the API objects": world,
            "the operator log": operator.log(),
            "the worker logs": worker_logs,
            "the worker metrics": metrics,
        }.items():
            assert value not in text, f"a Secret value leaked into {where}"
