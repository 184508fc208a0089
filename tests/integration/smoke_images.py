"""The built images run: the operator image reconciles the samples on the real local control
plane, and the CPU worker image analyses the demo camera from the config the operator rendered,
both as containers the way a kubelet would start them (non-root, read-only root filesystem, no
capabilities).

Not collected by ``make test`` (its name does not start with ``test_``): building the images
costs minutes the first time. ``make images-smoke`` builds them (cached: under a minute) and runs
this file explicitly. Containers run under Debian's podman with runc on the host network
(crun 1.8 refuses this kind of host's hybrid cgroup layout); images come from the storage
``tests/toolchain/images.sh`` built them into.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubevision.operator.builders import PIPELINE_LABEL
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
OPERATOR_IMAGE = f"ghcr.io/kubevision/operator:{VERSION}"
WORKER_IMAGE = f"ghcr.io/kubevision/worker:{VERSION}"
DEMO = REPO_ROOT / "model_catalog" / "demo"
MODELS = "/models"  # where the variants' file:///models/... artifacts are, as in a pod
PODMAN = ["podman", "--runtime=runc", "--cgroup-manager=cgroupfs", "--events-backend=file"]
# As a restricted pod: no root, nothing writable but /tmp, no capabilities. podman's default
# rlimits exceed what this sandbox may raise (no CAP_SYS_RESOURCE), hence explicit ones.
LIMITS = ["--ulimit=nofile=4096:4096", "--ulimit=nproc=4096:4096"]
RUN = [
    "run",
    "--detach",
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    *LIMITS,
]


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """Build the images (a cached build takes seconds) and point podman at their storage."""
    script = REPO_ROOT / "tests" / "toolchain" / "images.sh"
    subprocess.run(["bash", str(script)], check=True, timeout=3600)
    where = subprocess.run(["bash", str(script), "env"], check=True, capture_output=True, text=True)
    key, value = where.stdout.strip().split("=", 1)
    return {**os.environ, key: value}


class Container:
    """One detached podman container, removed by ``stop()``."""

    def __init__(self, env: dict[str, str], image: str, *options: str, args: list[str]) -> None:
        self._env = env
        out = self._podman(*RUN, *options, image, *args)
        self.id = out.strip()

    def _podman(self, *args: str, merged: bool = False) -> str:
        """podman's stdout (with ``merged``, its stderr too: `podman logs` replays the
        container's stderr there)."""
        result = subprocess.run(
            [*PODMAN, *args],
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def running(self) -> bool:
        state = self._podman("inspect", "--format={{.State.Status}}", self.id).strip()
        assert state == "running", f"container {state}:\n{self.logs()}"
        return True

    def logs(self) -> str:
        return self._podman("logs", self.id, merged=True)

    def stop(self) -> None:
        self._podman("rm", "--force", "--time=10", self.id)


def _readable_copy(source: Path, target: Path) -> str:
    """A copy the image's non-root user may read, for a bind mount (what a Secret volume is)."""
    target.write_bytes(source.read_bytes())
    target.chmod(0o644)
    return str(target)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def operator_container(
    podman_env: dict[str, str],
    cluster: LocalCluster,
    chart: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Container, int]]:
    """The operator image running as the chart's ServiceAccount user; yields it and its
    metrics port."""
    kubeconfig = _readable_copy(
        cluster.kubeconfig("operator"), tmp_path_factory.mktemp("operator") / "kubeconfig"
    )
    health, metrics = free_port(), free_port()
    container = Container(
        podman_env,
        OPERATOR_IMAGE,
        f"--volume={kubeconfig}:/var/run/kubevision/kubeconfig:ro",
        "--env=KUBECONFIG=/var/run/kubevision/kubeconfig",
        f"--env=KUBEVISION_OPERATOR_METRICS_PORT={metrics}",
        "--env=KUBEVISION_RESYNC_SECONDS=10",
        args=["--log-level=info", f"--liveness=http://127.0.0.1:{health}/healthz"],
    )
    try:
        wait_for(
            lambda: container.running() and _get(f"http://127.0.0.1:{health}/healthz")[0] == 200,
            timeout=90,
            what="the operator container's liveness probe",
        )
        yield container, metrics
    finally:
        print(container.logs()[-4000:])
        container.stop()


@pytest.fixture(scope="module")
def reconciled(operator_container: tuple[Container, int], cluster: LocalCluster) -> Namespace:
    """The catalog, the samples and the demo (its video and model where a pod sees /models)
    applied in a fresh namespace, once the operator rendered a StatefulSet for each Pipeline."""
    ns = Namespace(cluster, f"images-{os.getpid()}")
    cluster.control_plane.kubectl("create", "namespace", ns.name)
    ns.apply(REPO_ROOT / "model_catalog" / "variants", REPO_ROOT / "crds" / "samples")
    demo = (DEMO / "demo.yaml").read_text().replace("DEMO_DIR", MODELS)
    ns.apply(docs=list(yaml.safe_load_all(demo)))
    for pipeline in ("demo", "people"):
        wait_for(
            functools.partial(ns.items, "statefulsets", f"{PIPELINE_LABEL}={pipeline}"),
            timeout=90,
            what=f"the operator image's StatefulSets for Pipeline {pipeline}",
        )
    return ns


def test_operator_image_reconciles_the_samples(reconciled: Namespace) -> None:
    images = {
        sts["metadata"]["name"]: sts["spec"]["template"]["spec"]["containers"][0]["image"]
        for sts in reconciled.items("statefulsets")
    }
    print(json.dumps(images, indent=1))
    assert WORKER_IMAGE in images.values(), images  # the demo's CPU group
    assert {f"{WORKER_IMAGE}-cuda", f"{WORKER_IMAGE}-l4t-r36"} <= set(images.values()), images
    for pipeline in ("demo", "people"):
        ready = wait_for(
            functools.partial(reconciled.condition, "pipeline", pipeline, "Ready"),
            timeout=60,
            what=f"Pipeline {pipeline}'s Ready condition",
        )
        assert ready["reason"] in {"WorkersStarting", "WorkersReady"}, ready  # no kubelet here


def test_operator_image_serves_its_metrics(
    operator_container: tuple[Container, int], reconciled: Namespace
) -> None:
    _, port = operator_container
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert status == 200
    assert "kubevision_operator_desired_replicas" in names, sorted(names)


def test_worker_image_processes_the_demo_camera_from_the_rendered_config(
    podman_env: dict[str, str], reconciled: Namespace, tmp_path: Path
) -> None:
    (sts,) = reconciled.items("statefulsets", f"{PIPELINE_LABEL}=demo")
    spec = sts["spec"]["template"]["spec"]["containers"][0]
    (config_map,) = [
        v["configMap"]["name"]
        for v in sts["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    ]
    config = tmp_path / "config"
    config.mkdir()
    for key, body in reconciled.get("configmap", config_map)["data"].items():
        (config / key).write_text(body)
        (config / key).chmod(0o644)
    env = [f"--env={e['name']}={e['value']}" for e in spec["env"] if "value" in e]
    port = free_port()  # host network: a free port instead of the pod's own 9090
    worker = Container(
        podman_env,
        WORKER_IMAGE,
        f"--volume={config}:/etc/kubevision:ro",
        f"--volume={DEMO}:{MODELS}:ro",
        "--env=KUBEVISION_SHARD=0",
        *env,
        args=[*spec["args"], f"--port={port}", "--host=127.0.0.1"],
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: worker.running() and _get(f"{url}/readyz")[0] == 200,
            timeout=120,
            what="the worker container's /readyz",
        )
        processed = wait_for(
            lambda: _processed(_get(f"{url}/metrics")[1], "demo-bottles") >= 30,
            timeout=120,
            what="30 frames of the demo camera processed in the worker container",
        )
        assert processed
        metrics = _get(f"{url}/metrics")[1].splitlines()
        print(*(m for m in metrics if m.startswith("kubevision_frames_")), sep="\n")
    finally:
        print(worker.logs()[-4000:])
        worker.stop()


def _processed(text: str, camera: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kubevision_frames_processed_total"
        and sample.labels.get("camera") == camera
    )


@pytest.mark.parametrize("image", [OPERATOR_IMAGE, WORKER_IMAGE])
def test_image_runs_as_65532_without_build_tools(podman_env: dict[str, str], image: str) -> None:
    tools = "('gcc', 'cc', 'c++', 'make', 'ld')"
    probe = f"import os, shutil; print(os.getuid(), [t for t in {tools} if shutil.which(t)])"
    run = [*PODMAN, "run", "--rm", "--network=none", *LIMITS, "--entrypoint=python3", image]
    result = subprocess.run(
        [*run, "-c", probe], env=podman_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65532 []"
    inspect = [*PODMAN, "image", "inspect", "--format={{json .Labels}}", image]
    labels = json.loads(
        subprocess.run(inspect, env=podman_env, capture_output=True, text=True, check=True).stdout
    )
    assert labels["org.opencontainers.image.version"] == VERSION
