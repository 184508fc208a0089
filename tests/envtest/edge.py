"""A stand-in for a Jetson's own files, and a runner for the edge kit's scripts (``edge_k3s/``).

The scripts read the node's files under ``KV_ROOT``; :class:`FakeJetson` lays out a root the way
the real files look (NUL-terminated device-tree string, ``/proc/meminfo``, ``nv_tegra_release``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.envtest.controlplane import REPO_ROOT

KIT = REPO_ROOT / "edge_k3s"


@dataclass(frozen=True)
class FakeJetson:
    """What a Jetson's own files say about it."""

    model: str  # /proc/device-tree/model
    mem_kib: int  # MemTotal of /proc/meminfo
    tegra_release: str | None  # first line of /etc/nv_tegra_release
    nvidia_runtime: bool = False  # /usr/bin/nvidia-container-runtime (JetPack's toolkit)

    def root(self, path: Path) -> Path:
        (path / "proc/device-tree").mkdir(parents=True)
        (path / "proc/device-tree/model").write_bytes(self.model.encode() + b"\0")
        (path / "proc/meminfo").write_text(f"MemTotal:       {self.mem_kib} kB\nMemFree: 1 kB\n")
        if self.tegra_release:
            (path / "etc").mkdir()
            (path / "etc/nv_tegra_release").write_text(self.tegra_release + "\n")
        if self.nvidia_runtime:
            runtime = path / "usr/bin/nvidia-container-runtime"
            runtime.parent.mkdir(parents=True)
            runtime.write_text("#!/bin/sh\n")
            runtime.chmod(0o755)
        return path


def l4t_release(major: int, revision: str) -> str:
    """The first line of ``/etc/nv_tegra_release`` on L4T ``R<major>.<revision>``."""
    return (
        f"# R{major} (release), REVISION: {revision}, GCID: 38968081, BOARD: generic, "
        "EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025"
    )


def run_kit(
    script: str,
    *args: str,
    root: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one of the kit's scripts on the fake node ``root`` (None: this machine)."""
    result = subprocess.run(
        ["bash", str(KIT / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "KV_ROOT": str(root) if root else ""},
        timeout=60,
    )
    if check:
        assert result.returncode == 0, f"{script} {args}: {result.stderr}"
    return result


def labels_of(output: str) -> dict[str, str]:
    """``key=value`` lines (jetson-labels.sh's output) as a dict."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
