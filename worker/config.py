"""Loading the worker config the operator renders, and noticing when it changes.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file's content is polled
(cheap: one small read every few seconds) rather than watched with inotify, which misses the
swap. Camera assignments then change without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from kubevision.api.worker_config import CameraAssignment, WorkerConfig

log = logging.getLogger("kubevision.worker.config")


class ConfigError(Exception):
    """The config file is missing or invalid; the message says which and why."""


def load_config(path: Path) -> WorkerConfig:
    try:
        return WorkerConfig.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"worker config {path} does not exist") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(
            f"worker config {path} is invalid at {first['loc']}: {first['msg']}"
        ) from exc


def shard_index(explicit: int | None = None) -> int:
    """This replica's shard: ``--shard``, else KUBEVISION_SHARD (the StatefulSet pod index)."""
    if explicit is not None:
        return explicit
    value = os.environ.get("KUBEVISION_SHARD", "0")
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"KUBEVISION_SHARD must be an integer, got {value!r}") from exc


def my_cameras(config: WorkerConfig, shard: int) -> list[CameraAssignment]:
    """The cameras this replica processes (none if the shard no longer exists)."""
    return list(config.shards[shard]) if shard < len(config.shards) else []


class ConfigWatcher:
    """Calls ``on_change(config)`` whenever the file's content changes to a valid config.

    An invalid new version is logged and ignored: the worker keeps running the last good one.
    """

    def __init__(
        self, path: Path, on_change: Callable[[WorkerConfig], None], interval: float = 2.0
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._interval = interval
        self._digest = self._read_digest()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self._path.read_bytes()).hexdigest()
        except OSError:
            return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> bool:
        """Look once; True when a new valid config was delivered."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self._path)
        except ConfigError as exc:
            log.error("ignoring new worker config: %s", exc)
            return False
        log.info("worker config changed; applying without restart")
        self._on_change(config)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()
