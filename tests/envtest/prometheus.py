"""A real Prometheus server (the Debian ``prometheus`` binary) scraping given targets.

The autoscaler can read its signals from a Prometheus HTTP API; tests check that path against
the real server rather than a fake, so PromQL, ``rate`` extrapolation and error answers are the
ones production sees. The server listens only on ``127.0.0.1:<free port>`` (UI + API), keeps
its TSDB and log in a directory of the caller's, and its config is checked by ``promtool``
before it starts, so a bad config fails with promtool's message instead of a readiness timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.processes import Service, spawn, terminate

JOB = "kubevision-workers"
"""The one scrape job; its targets are the ``host:port`` list given to :class:`Prometheus`."""


def find_binaries() -> tuple[Path, Path] | None:
    """``prometheus`` and ``promtool`` from PATH (Debian puts both in /usr/bin), or None."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return Path(prometheus), Path(promtool)


class Prometheus(Service):
    """``prometheus`` as a child process; use as a context manager or ``start()``/``stop()``.

    Scrapes and evaluates every second so tests see new samples quickly.
    """

    def __init__(
        self,
        targets: Sequence[str],
        state_dir: Path,
        *,
        binaries: tuple[Path, Path] | None = None,
    ) -> None:
        found = binaries or find_binaries()
        if found is None:
            raise FileNotFoundError(
                "prometheus/promtool not found: apt-get install prometheus (.ci/run does)"
            )
        self.prometheus, self.promtool = found
        self.targets = list(targets)
        self.state_dir = state_dir
        self.config_path = state_dir / "prometheus.yml"
        self.log_path = state_dir / "prometheus.log"
        self.port = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the UI and HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The generated configuration: 1 s scrapes of the static targets, nothing else."""
        return {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def start(self, timeout: float = 30.0) -> None:
        """Write and check the config, start the server and return once ``/-/ready`` answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        check = subprocess.run(
            [str(self.promtool), "check", "config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise ValueError(f"promtool rejected {self.config_path}:\n{check.stdout}{check.stderr}")
        self.port = free_port()
        argv = [
            str(self.prometheus),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.state_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._popen = spawn(argv, self.log_path)
        try:
            # An early exit (port taken, bad flag) ends the wait at once instead of timing out.
            wait_for(
                lambda: self._exited() or self._get("/-/ready")[0] == 200,
                timeout=timeout,
                what=f"prometheus ready at {self.url}",
            )
            self.check_alive()
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> None:
        """Raise with the end of the log if the server has exited."""
        if self._exited():
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"prometheus exited; end of {self.log_path}:\n{tail}")

    def targets_up(self) -> frozenset[str]:
        """The ``host:port`` of every active target whose last scrape succeeded."""
        status, body = self._get("/api/v1/targets?state=active")
        if status != 200:
            raise RuntimeError(f"/api/v1/targets answered {status}")
        active = json.loads(body)["data"]["activeTargets"]
        return frozenset(str(t["labels"]["instance"]) for t in active if t.get("health") == "up")

    def instant(self, query: str) -> float | None:
        """The first sample of an instant query (None: empty result); raises on an error.

        Independent of the operator's client on purpose: tests compare the two.
        """
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": query}))
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"query {query!r} answered {status}: {answer.get('error')}")
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds: never hangs."""
        terminate(self._popen, grace)

    def _exited(self) -> bool:
        return self._popen is not None and self._popen.poll() is not None

    def _get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
