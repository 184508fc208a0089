"""Benchmark: the operator at fleet scale on a real control plane with kwok-simulated nodes.

A fresh envtest control plane (etcd, kube-apiserver with an audit log, controller-manager,
scheduler) and kwok managing 1,000 Jetsons at 100 sites, 20 GPU servers and a few CPU nodes
(:mod:`tests.envtest.fleet`); the chart's RBAC; the operator as ``--shards`` local processes.
Phases, one run:

1. **burst**: 2 ModelVariants, 110 Pipelines and 10,000 Cameras applied as a GitOps sync
   would (server-side apply, bursts of 1,000, 16 in flight) -> every Camera assigned and every
   Pipeline Ready (its workers ready: kwok runs the pods);
2. **steady**: nothing changes; the operator's API requests are counted;
3. **churn**: 1 % of the Cameras per minute change (fps edits, deletions, new Cameras);
4. **site failure**: a hub's GPU servers go NotReady (kwok's node-not-ready stage): its GPU
   Pipeline's Cameras are re-placed on the hub's Jetsons; the servers come back; then a
   whole edge site goes NotReady and comes back;
5. **model roll**: a new build of the fleet's detector (every Pipeline's workers change),
   with all replicas, then again after one replica is killed (its shards move: 1 vs 2 shard
   holders on the same work);
6. **baseline**: kube-controller-manager's Deployment controller given as many Deployments
   (same replicas, same pod templates) as the operator made StatefulSets.

Operator requests come from the apiserver's audit log (the operator's ServiceAccount user);
CPU and RSS from /proc. ``python -m benchmarks.fleet_scale [--sites 100 ...]`` writes
benchmarks/results/fleet_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks.common import machine, write_results
from benchmarks.operator_latency import percentile
from kubevision.api.worker_config import CONFIG_FILE
from tests.envtest.controlplane import OPERATOR_USER
from tests.envtest.fleet import (
    CONTROLLER_USERS,
    KWOK_LABEL,
    FleetCluster,
    FleetShape,
    camera,
    list_json,
    read_audit,
)
from tests.envtest.fleet_load import (
    API,
    NAMESPACE,
    CameraWatch,
    FleetLoad,
    FleetOperator,
    pipelines_ready,
    placement_violations,
    reconcile_buckets,
    reconcile_p99,
    sample_process,
    start_operators,
    wait_converged,
)
from tests.envtest.nodes import KUBERNETES_VERSION
from tests.envtest.poll import WaitTimeout, wait_for

RESULTS = Path(__file__).parent / "results"
GOALS = {
    "converge_seconds": 300,
    "steady_writes_per_second": 5,
    "operator_rss_mb": 500,
    "site_failure_replace_seconds": 60,
}


@dataclass
class Sampler:
    """CPU and RSS of the operator processes every second, in a thread."""

    operators: list[FleetOperator]
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    """(time, CPU seconds summed over live operators, largest RSS)"""
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            cpu, rss = 0.0, 0
            for op in self.operators:
                if op.alive():
                    s = sample_process(op.pid)
                    cpu, rss = cpu + s.cpu_seconds, max(rss, s.rss_bytes)
            self.samples.append((time.time(), cpu, rss))

    def window(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {"cpu_cores": 0.0, "rss_mb_max": 0.0}
        cores = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
        return {
            "cpu_cores": round(max(cores, 0.0), 2),
            "rss_mb_max": round(max(s[2] for s in inside) / 2**20, 1),
        }

    def stop(self) -> None:
        self._stop.set()


class Audit:
    """Reads the apiserver's audit log; counts requests by user group, verb and resource."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.requests: list[Any] = []

    def refresh(self) -> None:
        new, self._offset = read_audit(self.path, self._offset)
        self.requests += new

    def window(self, start: float, end: float, users: tuple[str, ...]) -> dict[str, Any]:
        def flushed() -> bool:  # the apiserver writes the log in batches (at most 1 s late)
            self.refresh()
            return bool(self.requests) and self.requests[-1].at >= end

        wait_for(flushed, timeout=15, what="the audit log past the window")
        inside = [r for r in self.requests if start <= r.at <= end and r.user in users]
        verbs = Counter(r.verb for r in inside)
        writes = Counter(f"{r.verb} {r.resource}" for r in inside if r.write)
        stored = Counter(
            f"{r.verb} {r.resource}" for r in inside if r.write and 200 <= r.code < 300
        )
        by_manager = Counter(
            f"{r.verb} {r.resource} by {r.manager}" for r in inside if r.write and r.manager
        )
        seconds = max(end - start, 1e-9)
        return {
            "seconds": round(seconds, 1),
            "by_verb": dict(sorted(verbs.items())),
            "writes_by_resource": dict(writes.most_common()),
            "stored_writes_by_resource": dict(stored.most_common()),
            "applies_by_field_manager": dict(by_manager.most_common()),
            "writes": sum(writes.values()),
            "writes_per_second": round(sum(writes.values()) / seconds, 2),
            "requests_per_second": round(len(inside) / seconds, 2),
            "throttled_or_conflict": sum(1 for r in inside if r.code in (409, 429)),
        }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(percentile(values, 50), 1),
        "p99_s": round(percentile(values, 99), 1),
        "max_s": round(max(values), 1),
    }


class Run:
    def __init__(self, fleet: FleetCluster, operators: list[FleetOperator]) -> None:
        self.fleet = fleet
        self.operators = operators
        self.load = FleetLoad(fleet)
        self.audit = Audit(fleet.control_plane.audit_log)
        self.sampler = Sampler(operators)
        self.sampler.start()
        self.cameras = CameraWatch(fleet.api_client())
        self.result: dict[str, Any] = {}

    def operator_window(self, start: float, end: float) -> dict[str, Any]:
        return {
            "api": self.audit.window(start, end, (OPERATOR_USER,)),
            **self.sampler.window(start, end),
        }

    def p99_since(self, before: Any) -> float | None:
        """Pipeline reconcile p99 (ms) since ``before`` (:func:`reconcile_buckets`)."""
        return _ms(reconcile_p99(before, reconcile_buckets(self.operators)))

    # -- phases ---------------------------------------------------------------------------------

    def burst(self, timeout: float) -> None:
        histogram = reconcile_buckets(self.operators)
        started = self.load.apply_all()
        applied = time.time()
        _progress(f"applied in {applied - started:.0f} s")
        try:
            state = wait_converged(self.load, self.cameras, timeout=timeout)
        except WaitTimeout:
            end = time.time()
            self.result["burst"] = {
                "apply_seconds": round(applied - started, 1),
                "converge_seconds": None,
                "cameras_assigned_at_timeout": len(self.cameras.assigned_at),
                "operator": self.operator_window(started, end),
            }
            raise
        done = time.time()
        assigned = [t - started for t in self.cameras.assigned_at.values()]
        per_pipeline = [t - started for t in state.ready_at.values()]
        violations = placement_violations(self.fleet, self.load)
        self.result["burst"] = {
            "apply_seconds": round(applied - started, 1),
            "converge_seconds": round(done - started, 1),
            "all_cameras_assigned_seconds": round(max(assigned), 1),
            "camera_assigned": _summary(assigned),
            "pipeline_ready": _summary(per_pipeline),
            "placement_violations": len(violations),
            "violations_sample": violations[:5],
            "operator": self.operator_window(started, done),
            "reconcile_p99_ms": self.p99_since(histogram),
            "last_waited_for": state.waiting,
        }

    def steady(self, seconds: float) -> None:
        start, histogram = time.time(), reconcile_buckets(self.operators)
        reconciles = sum(op.reconciles("pipeline") for op in self.operators)
        wait_for(lambda: time.time() - start >= seconds, timeout=seconds + 30, what="steady window",
                 interval=1.0)  # fmt: skip
        end = time.time()
        done = sum(op.reconciles("pipeline") for op in self.operators) - reconciles
        self.result["steady"] = {
            "operator": self.operator_window(start, end),
            "pipeline_reconciles": int(done),
            "reconcile_p99_ms": self.p99_since(histogram),
        }

    def churn(self, seconds: float) -> None:
        """1 % of the Cameras per minute: fps edits, deletions and new Cameras, in turn."""
        changes = max(1, round(len(self.load.cameras) * 0.01 * seconds / 60))
        rng = random.Random(14)
        names = sorted(self.load.cameras)
        created: dict[str, float] = {}
        start, histogram = time.time(), reconcile_buckets(self.operators)
        for i in range(changes):
            due = start + i * seconds / changes
            time.sleep(max(0.0, due - time.time()))  # pacing the load, not waiting on it
            name = rng.choice(names)
            if i % 3 == 0 and name in self.load.cameras:
                cam = self.load.cameras[name]
                cam["spec"]["fps"] = 12 if cam["spec"]["fps"] == 10 else 10
                self.load.apply("cameras", [cam])
            elif i % 3 == 1 and name in self.load.cameras:
                self.load.delete_camera(name)
                names.remove(name)
            else:
                site = self.fleet.shape.site(rng.randrange(self.fleet.shape.sites))
                new = camera(f"cam-new-{i:04d}", site, "edge", 10)
                self.load.cameras[new["metadata"]["name"]] = new
                created[new["metadata"]["name"]] = time.time()
                self.load.apply("cameras", [new])
        state = wait_converged(self.load, self.cameras, timeout=120)
        end = time.time()
        latencies = [self.cameras.assigned_at[n] - t for n, t in created.items()]
        self.result["churn"] = {
            "changes": changes,
            "per_minute_percent": 1,
            "new_camera_assigned": _summary(latencies) if latencies else None,
            "operator": self.operator_window(start, end),
            "pipelines_ready_after": len(state.ready_at),
            "reconcile_p99_ms": self.p99_since(histogram),
        }

    def site_failure(self, timeout: float) -> None:
        shape = self.fleet.shape
        hub = shape.hub_sites[1 if len(shape.hub_sites) > 1 else 0]
        servers = [
            n.name
            for n in self.fleet.fleet_nodes
            if n.labels.get("kubevision.io/site") == hub and n.name.startswith("gpu-")
        ]
        central = [n for n, c in self.load.cameras.items()
                   if c["metadata"]["labels"]["fleet.kubevision.io/role"] == "central"
                   and c["spec"]["site"] == hub]  # fmt: skip
        pipeline = f"central-{hub}"
        out: dict[str, Any] = {"hub": hub, "gpu_servers": len(servers), "cameras": len(central)}
        start = time.time()
        self.fleet.fail_nodes(servers)
        not_ready = wait_for(lambda: self._nodes_ready(servers, False), timeout=60,
                             what="GPU servers NotReady")  # fmt: skip
        moved = wait_for(lambda: self._placed(central, pipeline, "-jetson-"), timeout=timeout,
                         what="central cameras re-placed on the hub's Jetsons")  # fmt: skip
        out["nodes_not_ready_seconds"] = round(not_ready - start, 1)
        out["replaced_seconds"] = round(moved - not_ready, 1)
        self.fleet.fail_nodes(servers, failed=False)
        ready = wait_for(lambda: self._nodes_ready(servers, True), timeout=60, what="servers back")
        back = wait_for(lambda: self._placed(central, pipeline, "-nvidia-gpu-"), timeout=timeout,
                        what="central cameras back on the GPU servers")  # fmt: skip
        out["back_on_gpu_seconds"] = round(back - ready, 1)
        out["operator"] = self.operator_window(start, time.time())
        # a whole edge site: nowhere to go, so Degraded=NoSchedulableNodes, then back
        site = shape.site(min(5, shape.sites - 1))
        jetsons = [n.name for n in self.fleet.fleet_nodes
                   if n.labels.get("kubevision.io/site") == site]  # fmt: skip
        edge = f"edge-{site}"
        self.fleet.fail_nodes(jetsons)
        down = wait_for(lambda: self._nodes_ready(jetsons, False), timeout=60, what="site down")
        degraded = wait_for(lambda: self._degraded(edge), timeout=timeout, what="site Degraded")
        self.fleet.fail_nodes(jetsons, failed=False)
        up = wait_for(lambda: self._nodes_ready(jetsons, True), timeout=60, what="site back")
        recovered = wait_for(
            lambda: pipelines_ready(self.load.api, self.load.expected_cameras()).get(edge)
            and time.time(),
            timeout=timeout, what="site's Pipeline Ready again",
        )  # fmt: skip
        out["edge_site"] = {
            "site": site,
            "nodes": len(jetsons),
            "degraded_seconds": round(degraded - down, 1),
            "recovered_seconds": round(recovered - up, 1),
        }
        self.result["site_failure"] = out

    def model_roll(self, revision: int, timeout: float) -> dict[str, Any]:
        start = time.time()
        self.load.roll_variants(revision)
        wait_for(lambda: self._rolled(revision), timeout=timeout, interval=1.0,
                 what=f"every worker config on revision {revision}")  # fmt: skip
        configs = time.time()
        state = wait_converged(self.load, self.cameras, timeout=timeout)
        end = time.time()
        return {
            "last_waited_for": state.waiting,
            "configs_seconds": round(configs - start, 1),
            "ready_seconds": round(end - start, 1),
            "operator": self.operator_window(start, end),
        }

    def kill_one(self) -> float:
        """SIGKILL the last replica; seconds until a survivor holds every shard."""
        victim = self.operators[-1]
        start = time.time()
        victim.kill()
        api = self.fleet.api_client()
        survivors = {f"kubevision-operator-{i}" for i in range(len(self.operators) - 1)}

        def taken_over() -> bool:
            leases = list_json(
                api, "/apis/coordination.k8s.io/v1/namespaces/kubevision-system/leases"
            )
            shards = [x for x in leases if "-shard-" in x["metadata"]["name"]]
            return bool(shards) and all(
                x["spec"].get("holderIdentity") in survivors for x in shards
            )

        wait_for(taken_over, timeout=120, interval=0.5, what="shards taken over")
        return round(time.time() - start, 1)

    def baseline(self, timeout: float) -> None:
        """As many Deployments as the operator made StatefulSets, same replicas and pods."""
        api = self.fleet.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespace({"metadata": {"name": "baseline"}})  # type: ignore[arg-type]
        workloads = list(list_json(api, f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets"))
        deployments = [_as_deployment(s) for s in workloads]
        start = time.time()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda d: apps.create_namespaced_deployment("baseline", d), deployments))

        counts = {"available": 0}

        def available() -> bool:
            items = list(list_json(api, "/apis/apps/v1/namespaces/baseline/deployments"))
            counts["available"] = sum(
                (d.get("status") or {}).get("availableReplicas", 0) for d in items
            )
            return len(items) == len(deployments) and all(
                (d.get("status") or {}).get("availableReplicas", 0) == d["spec"]["replicas"]
                for d in items
            )

        try:
            wait_for(available, timeout=timeout, interval=1.0, what="baseline Available")
            ready: float | None = round(time.time() - start, 1)
        except WaitTimeout:
            ready = None  # recorded as not reached, with how far it got
        end = time.time()
        self.result["baseline"] = {
            "deployments": len(deployments),
            "pods": sum(d["spec"]["replicas"] for d in deployments),
            "ready_seconds": ready,
            "pods_available_at_end": counts["available"],
            "controllers_api": self.audit.window(start, end, CONTROLLER_USERS),
        }

    # -- checks -----------------------------------------------------------------------------

    def _nodes_ready(self, names: list[str], ready: bool) -> float | None:
        nodes = {
            n["metadata"]["name"]: n for n in list_json(self.fleet.api_client(), "/api/v1/nodes")
        }
        for name in names:
            node = nodes[name]
            conditions = (node.get("status") or {}).get("conditions") or []
            ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if ok != ready or (ready and "node.kubernetes.io/not-ready" in taints):
                return None
        return time.time()

    def _placed(self, cams: list[str], pipeline: str, marker: str) -> float | None:
        assigned = self.cameras.snapshot()
        for cam in cams:
            entries = [e for e in assigned.get(cam, []) if e["pipeline"] == pipeline]
            if len(entries) != 1 or marker not in entries[0]["workload"]:
                return None
        if not pipelines_ready(self.load.api, self.load.expected_cameras()).get(pipeline):
            return None
        return time.time()

    def _degraded(self, pipeline: str) -> float | None:
        body: Any = self.load.custom.get_namespaced_custom_object(
            *API, NAMESPACE, "pipelines", pipeline
        )
        for c in (body.get("status") or {}).get("conditions") or []:
            if c["type"] == "Degraded" and c["reason"] == "NoSchedulableNodes":
                return time.time()
        return None

    def _rolled(self, revision: int) -> bool:
        api = self.fleet.api_client()
        marker = f"fleet-r{revision}.onnx"
        configs = [
            cm["data"][CONFIG_FILE]
            for cm in list_json(api, f"/api/v1/namespaces/{NAMESPACE}/configmaps")
            if CONFIG_FILE in (cm.get("data") or {})
        ]
        return bool(configs) and all(marker in c for c in configs)


def _as_deployment(sts: dict[str, Any]) -> dict[str, Any]:
    name = f"{sts['metadata']['name']}"[:50]
    template = copy.deepcopy(sts["spec"]["template"])
    template["metadata"] = {"labels": {"app": name}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": sts["spec"]["replicas"],
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def other_load() -> dict[str, Any]:
    """What else ran on the machine when the benchmark started (it is shared)."""
    out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                         text=True, check=False).stdout.splitlines()[1:6]  # fmt: skip
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "top_processes": [x.strip() for x in out]}


def _progress(what: str) -> None:
    print(f"[fleet_scale {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def measure(shape: FleetShape, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine_load_at_start": other_load()}
    with tempfile.TemporaryDirectory(prefix="kv-fleet-") as tmp:
        started = time.time()
        _progress(f"fleet up: {len(shape.nodes())} nodes")
        with FleetCluster(Path(tmp), shape) as fleet:
            result["fleet_up_seconds"] = round(time.time() - started, 1)
            _progress(f"fleet up in {result['fleet_up_seconds']} s; operators")
            operators = start_operators(fleet, shards, resync_seconds=60)
            run = Run(fleet, operators)
            rolls: dict[str, Any] = {}

            def roll_all() -> None:
                rolls[f"{len(operators)}_replicas"] = run.model_roll(2, timeout=240)
                run.result["model_roll"] = rolls

            def roll_fewer() -> None:
                run.result["rebalance_seconds"] = run.kill_one()
                rolls[f"{len(operators) - 1}_replicas"] = run.model_roll(3, timeout=240)

            phases: list[tuple[str, Callable[[], None]]] = [
                ("burst", lambda: run.burst(timeout=args.converge_timeout)),
                ("steady", lambda: run.steady(args.steady_seconds)),
                ("churn", lambda: run.churn(args.churn_seconds)),
                ("site_failure", lambda: run.site_failure(timeout=120)),
                ("model_roll", roll_all),
                *([("rebalance", roll_fewer)] if len(operators) > 1 else []),
            ]
            try:
                for name, phase in phases:
                    _progress(f"phase {name}")
                    try:
                        phase()
                    except WaitTimeout as exc:  # record how far it got; the rest is moot
                        run.result["incomplete"] = {"phase": name, "why": str(exc)}
                        break
                _progress("baseline")
                run.baseline(timeout=240)
            finally:
                run.sampler.stop()
                run.cameras.stop()
                for op in operators:
                    op.stop()
                if args.keep_logs:  # the state folder goes with the run
                    shutil.copytree(Path(tmp) / "logs", args.keep_logs, dirs_exist_ok=True)
            result |= run.result
            pods = sum(
                1 for _ in list_json(fleet.api_client(), f"/api/v1/namespaces/{NAMESPACE}/pods")
            )
            result["worker_pods"] = pods
    return result


def report(shape: FleetShape, shards: int, raw: dict[str, Any]) -> dict[str, Any]:
    windows = [raw[k]["operator"] for k in ("burst", "steady", "churn") if k in raw]
    measured = {
        "converge_seconds": raw["burst"]["converge_seconds"],
        "steady_writes_per_second": (raw.get("steady") or {})
        .get("operator", {})
        .get("api", {})
        .get("writes_per_second"),
        "operator_rss_mb": max(w["rss_mb_max"] for w in windows),
        "site_failure_replace_seconds": (raw.get("site_failure") or {}).get("replaced_seconds"),
    }
    return {
        "benchmark": "fleet scale: the operator on a kwok-simulated fleet",
        "hardware": machine(),
        "kubernetes": KUBERNETES_VERSION,
        "control_plane": "local etcd + kube-apiserver (audit log) + controller-manager + "
        "scheduler (envtest); kwok v0.8.0 plays kubelet for every node",
        "fleet": {
            "sites": shape.sites,
            "jetsons": shape.sites * shape.jetsons_per_site,
            "gpu_servers": shape.hubs * shape.gpu_servers_per_hub,
            "cpu_nodes": min(shape.cpu_nodes, shape.hubs),
            "cameras": shape.cameras_total,
            "pipelines": shape.sites + len(shape.hub_sites),
            "node_label": f"{KWOK_LABEL}=kwok",
        },
        "operator": f"kubevision-operator, {shards} shards, {shards} local processes as the "
        "chart's ServiceAccount user",
        "goals": GOALS,
        "measured_vs_goals": measured,
        "met": {k: measured[k] is not None and measured[k] <= GOALS[k] for k in GOALS},
        **raw,
    }


def _api(w: dict[str, Any]) -> str:
    verbs = ", ".join(f"{k} {v}" for k, v in w["by_verb"].items())
    return f"{w['writes_per_second']} writes/s, {w['requests_per_second']} req/s ({verbs})"


def _camera_status_writes(api: dict[str, Any], cameras: int) -> str:
    """Camera status writes per Camera in the burst: those stored, and those the apiserver
    refused (a queued body gone stale fails its resourceVersion precondition)."""
    key = "patch cameras/status"
    sent = api["writes_by_resource"].get(key, 0)
    stored = api.get("stored_writes_by_resource", {}).get(key, sent)
    return (
        f"Burst Camera status writes: {round(stored / cameras, 2)} stored per Camera "
        f"({stored}), {sent - stored} refused as stale (409, nothing written)."
    )


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _phase_rows(r: dict[str, Any]) -> list[str]:
    """One table row per phase that ran."""
    fl, rows = r["fleet"], []
    b = r["burst"]
    if b.get("converge_seconds") is None:
        rows.append(
            _row(
                f"burst: {fl['cameras']} Cameras + Pipelines (apply {b['apply_seconds']} s)",
                f"NOT converged in time: {b['cameras_assigned_at_timeout']} Cameras assigned",
                _api(b["operator"]["api"]),
            )
        )
    else:
        rows.append(
            _row(
                f"burst: apply {fl['cameras']} Cameras + Pipelines ({b['apply_seconds']} s)",
                f"all assigned {b['all_cameras_assigned_seconds']} s; all Ready "
                f"{b['converge_seconds']} s; per Pipeline p50 {b['pipeline_ready']['p50_s']} / "
                f"p99 {b['pipeline_ready']['p99_s']} s; per Camera assigned p50 "
                f"{b['camera_assigned']['p50_s']} / p99 {b['camera_assigned']['p99_s']} s; "
                f"{b['placement_violations']} placement violations",
                _api(b["operator"]["api"]),
            )
        )
    if "steady" in r:
        s = r["steady"]
        rows.append(
            _row(
                "steady state",
                f"{s['pipeline_reconciles']} Pipeline reconciles in "
                f"{s['operator']['api']['seconds']} s",
                _api(s["operator"]["api"]),
            )
        )
    if "churn" in r:
        c = r["churn"]
        new_cam = c["new_camera_assigned"] or {}
        rows.append(
            _row(
                f"churn: {c['changes']} changes (1 %/min)",
                f"new Camera assigned p50 {new_cam.get('p50_s')} / p99 {new_cam.get('p99_s')} s",
                _api(c["operator"]["api"]),
            )
        )
    if "site_failure" in r:
        f = r["site_failure"]
        rows.append(
            _row(
                f"hub {f['hub']}: {f['gpu_servers']} GPU servers NotReady",
                f"{f['cameras']} Cameras re-placed on Jetsons and ready {f['replaced_seconds']} s "
                f"after NotReady; back on GPU {f['back_on_gpu_seconds']} s after Ready",
                _api(f["operator"]["api"]),
            )
        )
        edge = f["edge_site"]
        rows.append(
            _row(
                f"edge site {edge['site']}: {edge['nodes']} Jetsons NotReady",
                f"Degraded=NoSchedulableNodes {edge['degraded_seconds']} s; Ready again "
                f"{edge['recovered_seconds']} s after the nodes",
                "",
            )
        )
    for k, v in (r.get("model_roll") or {}).items():
        rows.append(
            _row(
                f"model roll, {k.replace('_', ' ')}",
                f"every worker config changed {v['configs_seconds']} s, all Ready "
                f"{v['ready_seconds']} s",
                _api(v["operator"]["api"]),
            )
        )
    if "rebalance_seconds" in r:
        rows.append(
            _row(
                "one replica killed (SIGKILL)",
                f"its shards held by the survivor after {r['rebalance_seconds']} s",
                "",
            )
        )
    return rows


def markdown(r: dict[str, Any]) -> str:
    b, base, fl = r["burst"], r["baseline"], r["fleet"]
    s, c = r.get("steady") or {}, r.get("churn") or {}
    goals = [
        _row(k, r["goals"][k], r["measured_vs_goals"][k], "met" if r["met"][k] else "NOT met")
        for k in r["goals"]
    ]
    load = r["machine_load_at_start"]
    converge = b.get("converge_seconds")
    ratio = (
        round(converge / max(base["ready_seconds"], 0.1), 2)
        if converge and base["ready_seconds"]
        else None
    )
    incomplete = r.get("incomplete")
    cpu = "; ".join(
        f"{k} {r[k]['operator']['cpu_cores']} cores, {r[k]['operator']['rss_mb_max']} MB, "
        f"reconcile p99 {r[k].get('reconcile_p99_ms')} ms"
        for k in ("burst", "steady", "churn")
        if k in r
    )
    return "\n".join(
        [
            "# Fleet scale",
            "",
            f"Hardware: {r['hardware']} (shared with other agents; 1-min load at start "
            f"{load['loadavg_1m']}, top: {'; '.join(load['top_processes'][:3])}).",
            f"Kubernetes {r['kubernetes']} ({r['control_plane']}). Fleet: {fl['jetsons']} "
            f"Jetsons at {fl['sites']} sites, {fl['gpu_servers']} GPU servers (8 GPUs each), "
            f"{fl['cpu_nodes']} CPU nodes; {fl['cameras']} Cameras, {fl['pipelines']} Pipelines; "
            f"{r['worker_pods']} worker pods at the end. Operator: {r['operator']}. Fleet up "
            f"(control plane, kwok, every node Ready): {r['fleet_up_seconds']} s. Wall time "
            f"{r['wall_seconds']} s.",
            "",
            "| goal | target | measured | |",
            "|---|---|---|---|",
            *goals,
            "",
            "| phase | result | operator API requests (audit log) |",
            "|---|---|---|",
            *_phase_rows(r),
            "",
            *(
                [f"Stopped early: phase {incomplete['phase']}: {incomplete['why']}", ""]
                if incomplete
                else []
            ),
            f"Operator CPU (all replicas) / RSS (largest replica) and Pipeline reconcile p99 "
            f"(with its autoscaling step): {cpu}.",
            "",
            f"Baseline, same run and control plane: kube-controller-manager's Deployment "
            f"controller given {base['deployments']} Deployments ({base['pods']} pods, the "
            f"templates of the operator's StatefulSets): all Available in "
            f"{base['ready_seconds']} s ({base['pods_available_at_end']} pods available at the "
            f"end of the wait); its controllers' requests: "
            f"{_api(base['controllers_api'])}. Burst convergence / baseline: {ratio} (the burst "
            f"also creates, assigns and reports {fl['cameras']} Cameras).",
            "",
            *(
                [f"Steady-state writes by resource: {s['operator']['api']['writes_by_resource']}."]
                if s
                else []
            ),
            *(
                [f"Churn writes by resource: {c['operator']['api']['writes_by_resource']}."]
                if c
                else []
            ),
            f"Burst writes by resource: {b['operator']['api']['writes_by_resource']}.",
            _camera_status_writes(b["operator"]["api"], fl["cameras"]),
            "Burst server-side applies by field manager: "
            f"{b['operator']['api']['applies_by_field_manager']}.",
            "Reproduce: `make bench-fleet` (`python -m benchmarks.fleet_scale`).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--jetsons-per-site", type=int, default=10)
    parser.add_argument("--cameras-per-site", type=int, default=100)
    parser.add_argument("--hubs", type=int, default=10)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--converge-timeout", type=float, default=330)
    parser.add_argument("--steady-seconds", type=float, default=40)
    parser.add_argument("--churn-seconds", type=float, default=60)
    parser.add_argument("--name", default="fleet_scale")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy the run's logs (operators, kwok, control plane) here"
    )
    args = parser.parse_args()
    shape = FleetShape(
        sites=args.sites,
        jetsons_per_site=args.jetsons_per_site,
        hubs=args.hubs,
        cameras_per_site=args.cameras_per_site,
        cpu_nodes=min(4, args.hubs),
    )
    started = time.time()
    raw = measure(shape, args.shards, args)
    raw["wall_seconds"] = round(time.time() - started, 1)
    result = report(shape, args.shards, raw)
    write_results(RESULTS, args.name, result, markdown(result))
    print(json.dumps(result["measured_vs_goals"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
