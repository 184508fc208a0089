"""Ending the real servers the tests start, the same way everywhere."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM (the server finishes what it is doing), SIGKILL after ``grace`` s: never hangs."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
