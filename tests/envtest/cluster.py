"""A local cluster: the real control plane plus simulated Nodes, ready to schedule pods."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.envtest.controlplane import ControlPlane, Toolchain
from tests.envtest.nodes import DEFAULT_NODES, NodeSimulator, SimulatedNode
from tests.envtest.poll import wait_for
from tests.envtest.processes import Service

log = logging.getLogger("envtest")


class LocalCluster(Service):
    """Start with ``with LocalCluster(dir) as cluster:``; everything stops on exit."""

    def __init__(
        self,
        state_dir: Path,
        nodes: tuple[SimulatedNode, ...] = DEFAULT_NODES,
        toolchain: Toolchain | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.control_plane = ControlPlane(state_dir, toolchain or Toolchain.locate())
        self._nodes = nodes
        self._simulator: NodeSimulator | None = None
        self.startup_seconds = 0.0

    @property
    def toolchain(self) -> Toolchain:
        return self.control_plane.toolchain

    def kubeconfig(self, user: str = "admin") -> Path:
        return self.control_plane.kubeconfig(user)

    def api_client(self, user: str = "admin") -> client.ApiClient:
        """A Python client authenticated as ``user`` ("admin" or "operator")."""
        return config.new_client_from_config(config_file=str(self.kubeconfig(user)))

    def start(self) -> None:
        started = time.monotonic()
        self.control_plane.start()
        try:
            self._simulator = NodeSimulator(self.api_client(), self._nodes)
            self._simulator.start()
            wait_for(
                self._nodes_schedulable, timeout=90, what="simulated nodes Ready and untainted"
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("cluster with %d nodes ready in %.1fs", len(self._nodes), self.startup_seconds)

    def stop(self) -> None:
        if self._simulator is not None:
            self._simulator.stop()
        self.control_plane.stop()

    def _nodes_schedulable(self) -> bool:
        """True once the lifecycle controller has lifted the not-ready taints from every node."""
        core = client.CoreV1Api(self.api_client())
        raw: Any = core.list_node(_preload_content=False)  # skip the model layer: plain JSON
        nodes = json.loads(raw.data)["items"]
        expected = {n.name: {t["key"] for t in n.taints} for n in self._nodes}
        for node in nodes:
            name = node["metadata"]["name"]
            if name not in expected:
                continue
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            conditions = node["status"].get("conditions", [])
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            if not ready or taints != expected.pop(name):
                return False
        return not expected
