"""A real S3-compatible HTTP server on a loopback port: moto's server (``moto_server``), from
the virtualenv ``tests/toolchain/s3_server.sh`` makes (moto's botocore cannot share the
project's venv with the kubernetes client). Only its HTTP endpoint is used: buckets and
objects are created with the MinIO client, as any S3 user would."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import wait_for
from tests.envtest.processes import Service, spawn, terminate

TOOLCHAIN_SCRIPT = REPO_ROOT / "tests" / "toolchain" / "s3_server.sh"
ACCESS_KEY = "kubevision-test"
SECRET_KEY = "kubevision-test-secret"  # moto accepts any credentials; the client signs with them
REGION = "us-east-1"


def locate() -> Path | None:
    """``moto_server`` where ``s3_server.sh`` installed it, or None when it has not run (tests
    never install anything)."""
    where = subprocess.run(
        ["bash", str(TOOLCHAIN_SCRIPT), "--where"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    binary = Path(where) / "bin" / "moto_server"
    return binary if (Path(where) / ".complete").exists() and binary.exists() else None


class S3Server(Service):
    """``moto_server`` on ``127.0.0.1:<free port>``; ``endpoint`` is its URL."""

    def __init__(self, binary: Path, state_dir: Path) -> None:
        self.binary = binary
        self.log_path = state_dir / "moto_server.log"
        self.port = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        self._popen = spawn(
            [str(self.binary), "-H", "127.0.0.1", "-p", str(self.port)], self.log_path
        )
        wait_for(self._answers, timeout=timeout, what=f"moto_server on {self.endpoint}")

    def _answers(self) -> bool:
        if self._popen is not None and self._popen.poll() is not None:
            raise RuntimeError(f"moto_server exited; see {self.log_path}")
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as response:
            return bool(response.status == 200)

    def stop(self) -> None:
        terminate(self._popen, grace=5.0)
