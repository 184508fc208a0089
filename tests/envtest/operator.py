"""Run the real operator (``kubevision-operator``) as a local process against a LocalCluster.

It authenticates as the chart's ServiceAccount user, so it has exactly the chart's RBAC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import OPERATOR_NAMESPACE, REPO_ROOT, free_port
from tests.envtest.poll import wait_for

CHART = REPO_ROOT / "charts" / "kubevision"
RUNTIME_CLASS = REPO_ROOT / "edge_k3s" / "runtimeclass.yaml"


def install_chart(cluster: LocalCluster, release: str = "kubevision") -> None:
    """``helm upgrade --install`` the chart (CRDs, RBAC, operator Deployment) and the Jetson
    RuntimeClass K3s would provide, then wait until the CRDs serve."""
    out = subprocess.run(
        [
            str(cluster.toolchain.helm),
            f"--kubeconfig={cluster.kubeconfig()}",
            "upgrade",
            "--install",
            release,
            str(CHART),
            f"--namespace={OPERATOR_NAMESPACE}",
            "--create-namespace",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if out.returncode != 0:
        raise RuntimeError(f"helm install of {release} failed: {out.stderr.strip()}")
    cluster.control_plane.kubectl("apply", "-f", str(RUNTIME_CLASS))
    for crd in ("cameras", "pipelines", "modelvariants"):
        cluster.control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.kubevision.io"
        )


class OperatorProcess:
    """The operator as a child process; ``kill()`` simulates a crash, ``start()`` a restart."""

    def __init__(
        self,
        cluster: LocalCluster,
        log_path: Path,
        resync_seconds: float = 30,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        """``args`` are extra CLI options (``--peering=…``, ``--namespace=…``), ``env`` extra
        variables (``POD_ID``, kopf's peering identity); ``kubeconfig`` defaults to the chart's
        ServiceAccount user of the session release."""
        self._cluster = cluster
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self._args = list(args)
        self._env = dict(env or {})
        self._kubeconfig = kubeconfig or cluster.kubeconfig("operator")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self._kubeconfig),
            "KUBEVISION_RESYNC_SECONDS": str(self.resync_seconds),
            "KUBEVISION_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # real kubelets refresh ConfigMaps in ~1 min; the PodRunner does it in 0.5 s
            "KUBEVISION_HANDOVER_SECONDS": "5",
            **self._env,
        }
        script = Path(sys.executable).parent / "kubevision-operator"
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    str(script),
                    "--log-level=info",
                    f"--liveness=http://127.0.0.1:{port}/healthz",
                    *self._args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(lambda: self._healthy(port), timeout=timeout, what="the operator's liveness probe")

    def _healthy(self, port: int) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self._proc.returncode}:\n{self.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the OOM killer strikes."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reconciles(self, kind: str | None = None, result: str | None = None) -> float:
        """``kubevision_operator_reconciles_total`` of this process, summed over the kinds and
        results not pinned by the arguments (the operator exports every series from 0)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "kubevision_operator_reconciles_total"
            and kind in (None, sample.labels.get("kind"))
            and result in (None, sample.labels.get("result"))
        )
