"""``python -m tests.envtest up|down|status|show|demo``: the local cluster for people.

``up`` starts a detached supervisor (``serve``) that runs the control plane and the simulated
nodes (and, with ``--operator``, the Helm chart and the operator) until ``down`` sends it
SIGTERM; state, kubeconfigs and logs live in ``--state-dir``. ``demo`` is what ``make demo``
runs: the cluster with the operator, the sample manifests applied, and what became of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubevision.operator.signals import quantile
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.nodes import CPU_NODE
from tests.envtest.operator import OperatorProcess, install_chart
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import WaitTimeout, wait_for

DEFAULT_STATE_DIR = REPO_ROOT / ".kubevision" / "cluster"
DEMO_DIR = REPO_ROOT / "model_catalog" / "demo"
"""The bundled model and video the demo's worker analyses (no download needed)."""


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "supervisor.pid"


def _running_pid(state_dir: Path) -> int | None:
    try:
        pid = int(_pid_file(state_dir).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def serve(state_dir: Path, with_operator: bool = False) -> int:
    """Run the cluster (and optionally the operator) in the foreground until SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _pid_file(state_dir).write_text(str(os.getpid()))
    with LocalCluster(state_dir) as cluster:
        _link_tools(cluster, state_dir / "bin")
        operator, runner = None, None
        if with_operator:
            install_chart(cluster)
            operator = OperatorProcess(cluster, state_dir / "logs" / "operator.log")
            operator.start()
            # Worker pods on the CPU node run as local processes (no kubelet here); the GPU
            # server's and the Jetson's pods stay bound but not started (no such hardware).
            runner = PodRunner(
                cluster.api_client(),
                state_dir / "pods",
                DEMO_DIR,
                log_dir=state_dir / "logs" / "pods",
                nodes=(CPU_NODE,),
            )
            runner.start()
        (state_dir / "ready").write_text(f"{cluster.startup_seconds:.1f}\n")
        while not stop.wait(2.0):
            cluster.control_plane.check_alive()
        if runner is not None:
            runner.stop()
        if operator is not None:
            operator.stop()
    (state_dir / "ready").unlink(missing_ok=True)
    _pid_file(state_dir).unlink(missing_ok=True)
    return 0


def _link_tools(cluster: LocalCluster, bin_dir: Path) -> None:
    """Put the pinned kubectl and helm in one folder a person can add to PATH."""
    bin_dir.mkdir(exist_ok=True)
    for tool in (cluster.toolchain.kubectl, cluster.toolchain.helm):
        (bin_dir / tool.name).unlink(missing_ok=True)
        (bin_dir / tool.name).symlink_to(tool)


def up(state_dir: Path, with_operator: bool = False) -> int:
    if _running_pid(state_dir):
        print(f"cluster already running (state in {state_dir})")
        _print_usage(state_dir)
        return 0
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    log_path = state_dir / "supervisor.log"
    print(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler "
        "and simulated nodes (first run builds Kubernetes from source: ~10 min) ..."
    )
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.envtest",
                "serve",
                f"--state-dir={state_dir}",
                *(["--operator"] if with_operator else []),
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"cluster failed to start; log:\n{log_path.read_text()[-4000:]}")
        return (state_dir / "ready").exists()

    try:
        wait_for(ready, timeout=1800, what="the local cluster", interval=0.5)
    except WaitTimeout:
        proc.terminate()
        raise
    startup = (state_dir / "ready").read_text().strip()
    print(f"cluster ready in {startup}s")
    _print_usage(state_dir)
    return 0


def down(state_dir: Path) -> int:
    pid = _running_pid(state_dir)
    if pid is None:
        print("no local cluster running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _running_pid(state_dir) == pid and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for another process to exit; there is nothing to poll instead
    if _running_pid(state_dir) == pid:
        os.kill(pid, signal.SIGKILL)
    print(f"cluster stopped; logs kept in {state_dir / 'logs'}")
    return 0


def status(state_dir: Path, quiet: bool = False) -> int:
    running = _running_pid(state_dir) is not None and (state_dir / "ready").exists()
    if not quiet:
        print(f"running; state in {state_dir}" if running else "not running")
        if running:
            _print_usage(state_dir)
    return 0 if running else 1


def show(state_dir: Path) -> int:
    """Print the simulated hardware the way a person would look at it with kubectl."""
    if status(state_dir, quiet=True) != 0:
        print("not running: make cluster-up")
        return 1
    kubectl = [str(state_dir / "bin" / "kubectl"), f"--kubeconfig={state_dir / 'admin.kubeconfig'}"]
    columns = ",".join(
        [
            "NAME:.metadata.name",
            "ARCH:.status.nodeInfo.architecture",
            "SITE:.metadata.labels.kubevision\\.io/site",
            "ACCELERATOR:.metadata.labels.kubevision\\.io/accelerator",
            "GPU:.metadata.labels.nvidia\\.com/gpu\\.product",
            "GPUS:.status.allocatable.nvidia\\.com/gpu",
            "JETSON:.metadata.labels.kubevision\\.io/jetson-model",
            "TAINTS:.spec.taints[*].key",
        ]
    )
    views = (["get", "nodes", "-o", "wide"], ["get", "nodes", "-o", f"custom-columns={columns}"])
    for args in views:
        print(f"$ kubectl {' '.join(args)}")
        subprocess.run([*kubectl, *args], check=True)
        print()
    return 0


def demo(state_dir: Path) -> int:
    """Cluster + chart + operator; the samples placed on GPU and Jetson nodes, and a worker on
    the CPU node analysing the bundled video for real."""
    down(state_dir)
    up(state_dir, with_operator=True)
    kubectl = [str(state_dir / "bin" / "kubectl"), f"--kubeconfig={state_dir / 'admin.kubeconfig'}"]

    def run(*args: str, input: str | None = None) -> str:
        return subprocess.run(
            [*kubectl, *args], input=input, capture_output=True, text=True, check=True
        ).stdout

    print(
        "1. applying crds/samples (3 Cameras at two sites, a Pipeline) and model_catalog/variants"
    )
    for path in (REPO_ROOT / "crds" / "samples", REPO_ROOT / "model_catalog" / "variants"):
        run("apply", "-f", str(path))
    print(
        "2. applying model_catalog/demo/demo.yaml (a Camera on the bundled video, a CPU Pipeline)"
    )
    run(
        "apply",
        "-f",
        "-",
        input=(DEMO_DIR / "demo.yaml").read_text().replace("DEMO_DIR", str(DEMO_DIR)),
    )
    pod = wait_for(
        lambda: _ready_demo_pod(run),
        timeout=180,
        what="the demo worker pod to run and report Ready",
    )
    metrics_url = f"http://{pod['status']['podIP']}:9090/metrics"
    wait_for(
        lambda: _processed(metrics_url) >= 60,
        timeout=120,
        what="the demo worker to analyse 60 frames",
    )

    print("\n$ kubectl get cameras,pipelines,modelvariants,statefulsets,pods -o wide")
    print(run("get", "cameras,pipelines,modelvariants,statefulsets,pods", "-o", "wide"))
    _print_worker(metrics_url, state_dir / "logs" / "pods")
    print("""
The operator (running as its chart's ServiceAccount; log in logs/operator.log) grouped the
sample cameras by site and hardware: site-a's on the GPU server, site-b's on the Jetson, each
with the best YOLOX-nano build meeting the SLO there (bound by the real scheduler; there is no
GPU or Jetson here to start them). The demo camera's worker runs on the CPU node as a local
process standing in for the kubelet, with the config and env the operator rendered.""")
    _print_usage(state_dir)
    return 0


def _ready_demo_pod(run: Callable[..., str]) -> dict[str, Any] | None:
    pods = json.loads(run("get", "pods", "-l", "kubevision.io/pipeline=demo", "-o", "json"))
    for pod in pods["items"]:
        conditions = pod["status"].get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return dict(pod)
    return None


def _metric_samples(url: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _processed(url: str) -> float:
    return sum(
        s.value for s in _metric_samples(url) if s.name == "kubevision_frames_processed_total"
    )


def _print_worker(url: str, pod_logs: Path) -> None:
    """What the demo worker measured, from its own /metrics, and its latest events."""
    samples = _metric_samples(url)
    processed = _processed(url)
    buckets: dict[float, float] = {}
    for s in samples:
        if s.name == "kubevision_frame_latency_seconds_bucket":
            buckets[float(s.labels["le"])] = buckets.get(float(s.labels["le"]), 0) + s.value
    p99 = quantile(0.99, sorted(buckets.items()))
    detected = {
        s.labels["class"]: int(s.value) for s in samples if s.name == "kubevision_detections_total"
    }
    print(f"$ curl {url}   (the demo worker's metrics)")
    print(
        f"  frames processed: {processed:.0f}; end-to-end p99 <= "
        f"{(p99 or 0) * 1000:.0f} ms (histogram bucket); detections by class: {detected}"
    )
    events = [
        line
        for log in sorted(pod_logs.glob("default_demo-*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith('{"kind"')
    ]
    print(f"  latest events ({len(events)} so far, JSON lines on the worker's stdout):")
    for line in events[-3:]:
        print(f"    {line[:160]}")


def _print_usage(state_dir: Path) -> None:
    kubeconfig = state_dir / "admin.kubeconfig"
    print(f"""
  admin kubeconfig:    {kubeconfig}
  operator kubeconfig: {state_dir / "operator.kubeconfig"}  (only the chart's RBAC)
  pinned kubectl/helm: {state_dir / "bin"}
  logs:                {state_dir / "logs"}

  export KUBECONFIG={kubeconfig} PATH={state_dir / "bin"}:$PATH
  kubectl get nodes -o wide

  stop it with: make cluster-down
""")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.envtest", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "show", "demo", "serve"])
    parser.add_argument(
        "--operator",
        action="store_true",
        help="with up/serve: also install the chart and run the operator",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state_dir = args.state_dir.resolve()
    if args.command in ("up", "serve"):
        return {"up": up, "serve": serve}[args.command](state_dir, args.operator)
    commands = {"down": down, "status": status, "show": show, "demo": demo}
    return commands[args.command](state_dir)


if __name__ == "__main__":
    sys.exit(main())
