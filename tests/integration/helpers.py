"""Helpers shared by the integration tests: kubectl in one namespace, and what the operator
made there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubevision.api.worker_config import CONFIG_FILE, WorkerConfig
from tests.envtest.cluster import LocalCluster


class Namespace:
    """kubectl in one test namespace, plus readers for what the operator produced."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = self.cluster.control_plane.kubectl("-n", self.name, *args, input=input, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def apply(self, *paths: Path, docs: list[dict[str, Any]] | None = None) -> None:
        for path in paths:
            self.kubectl("apply", "-f", str(path))
        if docs:
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args.append(f"-l={selector}")
        out = self.kubectl(*args, check=False)
        return json.loads(out) if out else None

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        result = self.get(kind, selector=selector)
        return list(result["items"]) if result else []

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(kind, name)
        for cond in ((obj or {}).get("status") or {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None

    def worker_config(self, name: str) -> WorkerConfig:
        cm = self.get("configmap", name)
        return WorkerConfig.model_validate(json.loads(cm["data"][CONFIG_FILE]))
