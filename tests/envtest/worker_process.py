"""A real ``kubevision-worker serve`` process on a free loopback port, as a pod runs it.

Shared by the tests and benchmarks that need the worker binary itself (signals, spool
outages): one place builds its argv and environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.assets import require
from tests.envtest.controlplane import free_port
from tests.envtest.processes import spawn, terminate

WORKER = Path(sys.executable).parent / "kubevision-worker"


class WorkerProcess:
    """``kubevision-worker serve --config CONFIG`` on 127.0.0.1, one inference thread, shard 0,
    models from the assets' ``models/``; ``extra_args`` are added (e.g. ``--spool-dir``)."""

    def __init__(self, config: Path, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        model = require("models/yolox_nano_416.onnx")
        self.port = free_port()
        self.log_path = log_path
        env = {**os.environ, "KUBEVISION_SHARD": "0", "KUBEVISION_MODEL_DIR": str(model.parent)}
        argv = [
            str(WORKER),
            "serve",
            f"--config={config}",
            f"--port={self.port}",
            "--host=127.0.0.1",
            "--threads=1",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] = spawn(argv, log_path, env=env)

    @property
    def target(self) -> str:
        """What Prometheus calls this worker (its ``instance`` label)."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.target}/metrics"

    def ready(self) -> bool:
        """Whether /readyz answers 200 (False while it cannot be reached)."""
        try:
            with urllib.request.urlopen(f"http://{self.target}/readyz", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    def ready_or_exited(self) -> bool:
        """True once ready, or at once if the process died (no long wait for a dead one)."""
        return self.proc.poll() is not None or self.ready()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: no close, no flush, perhaps mid-commit."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s: never hangs."""
        terminate(self.proc, grace=30)
