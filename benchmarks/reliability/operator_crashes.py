"""Scenario: the operator SIGKILLed again and again while Cameras churn, and the control plane
restarted under it; afterwards the world must be exactly what the specs ask for.

On a real control plane (tests/envtest) with the chart's RBAC, the real operator process
reconciles three Pipelines over N Cameras while bursts of creates, edits (fps, labels that move
a camera between Pipelines, site, pause) and deletes, Pipeline edits and a Pipeline's deletion
and re-creation hit the API. In each round the operator is SIGKILLed either the moment the
first write of the reconcile the burst causes lands (a watch on the worker ConfigMaps: the
reconcile is then torn between its ConfigMap and its status writes), after a seeded random
delay past that first write, or the moment a deleted Pipeline vanishes (between kopf removing
its finalizer and the operator dropping it from Camera status). After each restart it must
converge within its resync period plus a margin to a world :func:`audit` finds nothing wrong
with: no orphaned StatefulSets/ConfigMaps/Services, every wanted camera on exactly one replica
and no other camera, Camera and Pipeline status matching the rendered ConfigMaps, and Events
bounded. Worker pods are bound to the simulated nodes, not run, so no handover copy may
remain. Then the apiserver and, separately, etcd are restarted in place: the operator must
stay up and reconcile a change made after each restart (its watches resumed).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from benchmarks.reliability import Report
from kubevision.api import GROUP, VERSION
from kubevision.api.common import LabelSelector
from kubevision.api.worker_config import CONFIG_FILE, WorkerConfig
from kubevision.operator.builders import PIPELINE_LABEL
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.operator import OperatorProcess, install_chart
from tests.envtest.poll import wait_for

NAMESPACE = "crashes"
CATALOG = REPO_ROOT / "model_catalog" / "variants" / "yolox-nano.yaml"
RESYNC_SECONDS = 10.0
"""The operator's resync period in this scenario (the chart's default is 60 s)."""
CONVERGE_MARGIN = 60.0
"""Added to the resync period (and the handover window) for a loaded 2-core machine."""
HANDOVER_SECONDS = 5.0
"""OperatorProcess's handover window: retiring replicas are removed after it."""
SITES = ("site-a", "site-b")
TIERS = ("alpha", "beta")
KILL_MODES = ("first-write", "random", "first-write", "random", "pipeline-deleted")
"""Kill modes by round, cycled: the deletion round also deletes (then recreates) Pipeline beta."""
FLUCTUATING = "beta"
"""The Pipeline that the pipeline-deleted rounds delete and the next round recreates."""


@dataclass(frozen=True)
class Size:
    cameras: int
    kills: int
    burst: int
    """Camera writes per burst."""
    seed: int = 13

    @property
    def streams_per_replica(self) -> int:
        """A few replicas per group at either size, so cameras have shards to move between."""
        return max(4, self.cameras // 12)


SMALL = Size(cameras=30, kills=5, burst=8)
FULL = Size(cameras=200, kills=50, burst=24)


# -- manifests --------------------------------------------------------------------------------


def camera(name: str, rng: random.Random) -> dict[str, Any]:
    site = rng.choice(SITES)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Camera",
        "metadata": {"name": name, "labels": _labels(rng.choice(TIERS), site)},
        "spec": {
            "source": {"url": f"rtsp://{name}.cams.example/live"},
            "fps": rng.choice((5, 10, 15)),
            "site": site,
        },
    }


def _labels(tier: str, site: str) -> dict[str, str]:
    return {"fleet": "yes", "tier": tier, "site": site}


def pipelines(size: Size) -> dict[str, dict[str, Any]]:
    """alpha: tier alpha at site-a on CPU; beta: tier beta anywhere on the default classes (GPU
    at site-a, Jetson at site-b); fleet: every camera on Jetson or CPU. Every camera a selector
    matches is placeable, so every one must be served."""
    specs = {
        "alpha": ({"tier": "alpha", "site": "site-a"}, ["cpu"]),
        FLUCTUATING: ({"tier": "beta"}, None),
        "fleet": ({"fleet": "yes"}, ["jetson", "cpu"]),
    }
    out = {}
    for name, (match, classes) in specs.items():
        spec: dict[str, Any] = {
            "cameraSelector": {"matchLabels": match},
            "stages": {"detector": {"family": "yolox-nano"}},
            "autoscaling": {"maxReplicas": 100, "streamsPerReplica": size.streams_per_replica},
        }
        if classes:
            spec["placement"] = {"hardwareClasses": classes}
        out[name] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": spec,
        }
    return out


# -- reading the world ------------------------------------------------------------------------


class Api:
    """Plain-JSON reads and the writes the scenario makes, as the cluster admin."""

    def __init__(self, cluster: LocalCluster) -> None:
        api = cluster.api_client()
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def crs(self, plural: str) -> list[dict[str, Any]]:
        raw: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, plural, _preload_content=False
        )
        return list(json.loads(raw.data)["items"])

    def core_list(self, fn: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
        raw: Any = fn(NAMESPACE, _preload_content=False, **kwargs)
        return list(json.loads(raw.data)["items"])

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, body)

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name, body)

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)


@dataclass
class World:
    """One read of everything the audit compares."""

    pipelines: dict[str, dict[str, Any]]
    cameras: dict[str, dict[str, Any]]
    owned: dict[str, list[dict[str, Any]]]
    """kind -> the objects labelled with a Pipeline (ConfigMaps, Services, StatefulSets)."""

    @classmethod
    def read(cls, api: Api) -> World:
        selector = {"label_selector": PIPELINE_LABEL}
        return cls(
            pipelines={p["metadata"]["name"]: p for p in api.crs("pipelines")},
            cameras={c["metadata"]["name"]: c for c in api.crs("cameras")},
            owned={
                "ConfigMap": api.core_list(api.core.list_namespaced_config_map, **selector),
                "Service": api.core_list(api.core.list_namespaced_service, **selector),
                "StatefulSet": api.core_list(api.apps.list_namespaced_stateful_set, **selector),
            },
        )

    def of(self, kind: str, pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The objects of ``kind`` this Pipeline owns, by name."""
        uid = pipeline["metadata"]["uid"]
        return {
            o["metadata"]["name"]: o
            for o in self.owned[kind]
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        }

    def wanted(self, pipeline: dict[str, Any]) -> set[str]:
        selector = LabelSelector.model_validate(pipeline["spec"]["cameraSelector"])
        return {
            name
            for name, cam in self.cameras.items()
            if not cam["spec"].get("paused") and selector.matches(cam["metadata"].get("labels", {}))
        }


def homes(configmaps: dict[str, dict[str, Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """camera -> every "group[shard]" serving it (handover copies aside), and the copies."""
    served: dict[str, list[str]] = {}
    copies = []
    for name, cm in configmaps.items():
        for shard, cams in enumerate(_config(cm).shards):
            for cam in cams:
                where = f"{name}[{shard}]"
                if cam.handover:
                    copies.append(f"{cam.name}@{where}")
                else:
                    served.setdefault(cam.name, []).append(where)
    return served, copies


def _config(configmap: dict[str, Any]) -> WorkerConfig:
    return WorkerConfig.model_validate(json.loads(configmap["data"][CONFIG_FILE]))


def audit(world: World) -> list[str]:
    """Everything that differs from what the specs ask for; empty once converged."""
    problems = _orphans(world)
    for name, pipeline in world.pipelines.items():
        if pipeline["metadata"].get("deletionTimestamp"):
            problems.append(f"pipeline {name} still being deleted")
            continue
        problems += _serving(world, name, pipeline)
        problems += _pipeline_status(world, name, pipeline)
    problems += _camera_status(world)
    return problems


def _orphans(world: World) -> list[str]:
    """Objects whose owner Pipeline is gone, or that no group of a live Pipeline wants."""
    live = {p["metadata"]["uid"]: p for p in world.pipelines.values()}
    problems = []
    wanted_groups = {
        uid: set.intersection(*(set(world.of(kind, p)) for kind in world.owned))
        for uid, p in live.items()
    }
    for kind, objects in world.owned.items():
        for obj in objects:
            refs = obj["metadata"].get("ownerReferences") or []
            uids = [r.get("uid") for r in refs if r.get("kind") == "Pipeline"]
            name = obj["metadata"]["name"]
            if not any(uid in live for uid in uids):
                problems.append(f"orphaned {kind} {name} (owner Pipeline gone)")
            elif not any(name in wanted_groups[uid] for uid in uids if uid in live):
                problems.append(f"orphaned {kind} {name} (not a complete group)")
    return problems


def _serving(world: World, name: str, pipeline: dict[str, Any]) -> list[str]:
    configmaps = world.of("ConfigMap", pipeline)
    statefulsets = world.of("StatefulSet", pipeline)
    served, copies = homes(configmaps)
    wanted = world.wanted(pipeline)
    problems = [
        f"{name}: {cam} on {len(w)} replicas: {w}" for cam, w in served.items() if len(w) > 1
    ]
    problems += [f"{name}: {cam} unassigned" for cam in sorted(wanted - served.keys())]
    problems += [f"{name}: {cam} served but not wanted" for cam in sorted(served.keys() - wanted)]
    problems += [f"{name}: handover copy {c} outstanding" for c in copies]
    for group, cm in configmaps.items():
        config = _config(cm)
        replicas = (statefulsets.get(group) or {}).get("spec", {}).get("replicas")
        if replicas != len(config.shards):
            problems.append(f"{name}: {group} has {replicas} replicas for {len(config.shards)}")
        if not any(config.shards):
            problems.append(f"{name}: {group} has no cameras")
    return problems


def _pipeline_status(world: World, name: str, pipeline: dict[str, Any]) -> list[str]:
    status = pipeline.get("status") or {}
    configmaps = world.of("ConfigMap", pipeline)
    served, _ = homes(configmaps)
    groups = {g["name"]: g for g in status.get("groups") or []}
    problems = []
    if status.get("observedGeneration") != pipeline["metadata"]["generation"]:
        problems.append(f"{name}: status.observedGeneration behind")
    if status.get("cameras") != len(served):
        problems.append(f"{name}: status.cameras {status.get('cameras')} != {len(served)}")
    if set(groups) != set(configmaps):
        problems.append(f"{name}: status.groups {sorted(groups)} != {sorted(configmaps)}")
    for group, cm in configmaps.items():
        config = _config(cm)
        if group in groups and groups[group].get("replicas") != len(config.shards):
            problems.append(f"{name}: status of {group} says {groups[group].get('replicas')}")
    return problems


def _camera_status(world: World) -> list[str]:
    """Each Camera's assignments are exactly where the ConfigMaps put it; Ready follows."""
    where: dict[tuple[str, str], str] = {}
    for pname, pipeline in world.pipelines.items():
        served, _ = homes(world.of("ConfigMap", pipeline))
        for cam_name, places in served.items():
            where[(cam_name, pname)] = places[0]
    problems = []
    for name, cam in world.cameras.items():
        status = cam.get("status") or {}
        have = {
            a["pipeline"]: f"{a['workload']}[{a['shard']}]" for a in status.get("assignments") or []
        }
        want = {p: w for (c, p), w in where.items() if c == name}
        if have != want:
            problems.append(f"camera {name}: status.assignments {have} != {want}")
        if status.get("observedGeneration") != cam["metadata"]["generation"]:
            problems.append(f"camera {name}: status.observedGeneration behind")
        conditions: list[dict[str, Any]] = status.get("conditions") or []
        ready = next((c for c in conditions if c["type"] == "Ready"), {})
        if (ready.get("status") == "True") != bool(want):
            problems.append(f"camera {name}: Ready={ready.get('status')} with assignments {want}")
    return problems


def torn(world: World) -> bool:
    """The operator's own writes disagree with each other: its ConfigMaps already say one thing
    while Camera or Pipeline status still says another (a reconcile cut between writes)."""
    status_problems = _camera_status(world)
    for name, pipeline in world.pipelines.items():
        status_problems += _pipeline_status(world, name, pipeline)
    return any("observedGeneration" not in p for p in status_problems)


def operator_events(api: Api) -> Counter[tuple[str, str, str]]:
    """(kind, name, reason) -> Events posted about our custom resources."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for event in api.core_list(api.core.list_namespaced_event):
        involved = event.get("involvedObject") or {}
        if involved.get("kind") in ("Pipeline", "Camera", "ModelVariant"):
            counts[(involved["kind"], involved.get("name", ""), event.get("reason", ""))] += max(
                1, int(event.get("count") or 1)
            )
    return counts


# -- faults -----------------------------------------------------------------------------------


class Tripwire:
    """A watch on one list call in a thread: ``wait()`` returns once an event matching the
    armed predicate arrives, so a kill can land on a chosen write."""

    def __init__(self, list_fn: Callable[..., Any]) -> None:
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._hit = threading.Event()
        self._predicate: Callable[[str, Any], bool] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(list_fn,), daemon=True)
        self._thread.start()

    def _run(self, list_fn: Callable[..., Any]) -> None:
        while not self._stopped.is_set():
            try:  # the stream resumes by itself when the server ends it
                for event in self._watch.stream(list_fn, NAMESPACE, timeout_seconds=300):
                    self._see(event["type"], event["object"])
            except Exception:  # noqa: BLE001 - a broken stream: watch again until stopped
                continue

    def _see(self, kind: str, obj: Any) -> None:
        with self._lock:
            if self._predicate and self._predicate(kind, obj):
                self._predicate = None
                self._hit.set()

    def arm(self, predicate: Callable[[str, Any], bool]) -> None:
        with self._lock:
            self._hit.clear()
            self._predicate = predicate

    def wait(self, timeout: float) -> bool:
        return self._hit.wait(timeout)

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def _group_write(kind: str, obj: Any) -> bool:
    labels = obj.metadata.labels or {}
    return kind in ("ADDED", "MODIFIED") and PIPELINE_LABEL in labels


def _deleted(name: str) -> Callable[[str, Any], bool]:
    return lambda kind, obj: kind == "DELETED" and obj["metadata"]["name"] == name


@dataclass
class Churn:
    """Seeded bursts of Camera and Pipeline writes, as users and GitOps make them."""

    api: Api
    size: Size
    rng: random.Random
    specs: dict[str, dict[str, Any]]
    next_id: int = 0
    alive: set[str] = field(default_factory=set)

    def create_cameras(self, n: int) -> list[str]:
        names = []
        for _ in range(n):
            name = f"cam-{self.next_id:04d}"
            self.next_id += 1
            self.api.create("cameras", camera(name, self.rng))
            self.alive.add(name)
            names.append(name)
        return names

    def burst(self, editable: list[str]) -> None:
        """``size.burst`` Camera writes plus, now and then, an edit of one ``editable``
        Pipeline."""
        for _ in range(self.size.burst):
            op = self.rng.choice(("create", "delete", "fps", "move", "site", "pause"))
            if op == "create" or not self.alive:
                self.create_cameras(1)
                continue
            name = self.rng.choice(sorted(self.alive))
            if op == "delete":
                self.api.delete("cameras", name)
                self.alive.discard(name)
            else:
                self.api.patch("cameras", name, self._edit(op))
        if self.rng.random() < 0.3:
            spr = self.size.streams_per_replica + self.rng.choice((-1, 0, 1))
            body = {"spec": {"autoscaling": {"streamsPerReplica": spr}}}
            self.api.patch("pipelines", self.rng.choice(editable), body)

    def _edit(self, op: str) -> dict[str, Any]:
        site, tier = self.rng.choice(SITES), self.rng.choice(TIERS)
        edits: dict[str, dict[str, Any]] = {
            "fps": {"spec": {"fps": self.rng.choice((5, 10, 15, 20))}},
            "move": {"metadata": {"labels": {"tier": tier}}},
            "site": {"metadata": {"labels": {"site": site}}, "spec": {"site": site}},
            "pause": {"spec": {"paused": self.rng.random() < 0.5}},
        }
        return edits[op]


@dataclass
class Kill:
    mode: str
    torn: bool
    """The operator's writes disagreed right after the kill (cut mid-reconcile)."""
    restart_s: float
    """start -> the restarted operator's liveness probe answers."""
    converge_s: float
    """kill -> the audit finds nothing wrong."""


def converge_deadline() -> float:
    return RESYNC_SECONDS * 2 + HANDOVER_SECONDS + CONVERGE_MARGIN


def converged(api: Api, what: str) -> None:
    """Poll the audit until it is clean (the last problems are in the timeout's message)."""
    last: list[str] = []

    def clean() -> bool:
        last[:] = audit(World.read(api))
        return not last

    try:
        wait_for(clean, timeout=converge_deadline(), what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still wrong: {last[:10]}") from None


@dataclass
class Crashes:
    """The scenario's running parts: API, operator, tripwires and the churn."""

    cluster: LocalCluster
    operator: OperatorProcess
    size: Size
    api: Api = field(init=False)
    churn: Churn = field(init=False)
    rng: random.Random = field(init=False)
    kills: list[Kill] = field(default_factory=list)
    rounds: int = 0

    def __post_init__(self) -> None:
        self.api = Api(self.cluster)
        self.rng = random.Random(self.size.seed)
        self.churn = Churn(self.api, self.size, self.rng, pipelines(self.size))

    def populate(self) -> float:
        """The catalog, the Pipelines and every camera; seconds until first convergence."""
        started = time.monotonic()
        self.cluster.control_plane.kubectl("apply", "-n", NAMESPACE, "-f", str(CATALOG))
        for spec in self.churn.specs.values():
            self.api.create("pipelines", spec)
        self.churn.create_cameras(self.size.cameras)
        converged(self.api, "the initial cameras reconciled")
        return time.monotonic() - started

    def crash_rounds(self) -> None:
        configmaps = Tripwire(self.api.core.list_namespaced_config_map)
        pipes = Tripwire(
            lambda namespace, **kw: self.api.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "pipelines", **kw
            )
        )
        try:
            for i in range(self.size.kills):
                self.kills.append(self._round(KILL_MODES[i % len(KILL_MODES)], configmaps, pipes))
        finally:
            configmaps.stop()
            pipes.stop()

    def _round(self, mode: str, configmaps: Tripwire, pipes: Tripwire) -> Kill:
        """One burst, one SIGKILL at the mode's moment, one restart, one convergence."""
        self.rounds += 1
        if FLUCTUATING not in {p["metadata"]["name"] for p in self.api.crs("pipelines")}:
            self.api.create("pipelines", self.churn.specs[FLUCTUATING])
        if mode == "pipeline-deleted":
            pipes.arm(_deleted(FLUCTUATING))
            self.api.delete("pipelines", FLUCTUATING)
        else:
            configmaps.arm(_group_write)
        editable = [p for p in self.churn.specs if p != FLUCTUATING or mode != "pipeline-deleted"]
        delay = self.rng.uniform(0, 0.8) if mode == "random" else 0.0
        with ThreadPoolExecutor(1) as pool:
            burst = pool.submit(self.churn.burst, editable)
            tripped = (pipes if mode == "pipeline-deleted" else configmaps).wait(60)
            # fault injection, not synchronisation: a seeded moment inside the reconcile
            time.sleep(delay)
            killed_at = time.monotonic()
            self.operator.kill()
            burst.result()
        was_torn = tripped and torn(World.read(self.api))
        starting = time.monotonic()
        self.operator.start()
        restarted = time.monotonic() - starting
        converged(self.api, f"convergence after kill {len(self.kills) + 1} ({mode})")
        return Kill(mode, was_torn, restarted, time.monotonic() - killed_at)

    def quiet_events(self) -> int:
        """Events posted while nothing changes for two reconciles of every Pipeline (0: no
        storm from a steady world)."""
        before = sum(operator_events(self.api).values())
        target = self.operator.reconciles("pipeline", "ok") + 2 * len(self.churn.specs)
        wait_for(
            lambda: self.operator.reconciles("pipeline", "ok") >= target,
            timeout=converge_deadline(),
            what="two more reconciles of every Pipeline",
        )
        return sum(operator_events(self.api).values()) - before


def crashed(operator: OperatorProcess) -> int:
    """Reconciles that raised something other than an API error: bugs."""
    return operator.log().count("reconcile crashed")


def restart_component(crashes: Crashes, component: str) -> float:
    """Restart one control-plane component under the running operator; seconds from the API
    serving again to a Camera created then being reconciled. The operator must not exit."""
    crashes.cluster.control_plane.restart(component)
    served = time.monotonic()
    wait_for(
        lambda: crashes.churn.create_cameras(1),
        timeout=60,
        what=f"a Camera created after the {component} restart",
    )
    converged(crashes.api, f"a change after the {component} restart reconciled")
    if not crashes.operator.alive():
        raise AssertionError(f"the operator exited during the {component} restart")
    return time.monotonic() - served


# -- the report -------------------------------------------------------------------------------


def distribution(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min_s": round(ordered[0], 2),
        "p50_s": round(statistics.median(ordered), 2),
        "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "max_s": round(ordered[-1], 2),
    }


def event_bound(crashes: Crashes) -> int:
    """Most Events one object may get for one reason: one per burst that changed something
    plus one per kill (a torn reconcile may repeat its decision) plus the first one."""
    return crashes.rounds + len(crashes.kills) + 1


@contextmanager
def scenario(state: Path, size: Size) -> Iterator[Crashes]:
    """A control plane of its own in ``state`` (the kills must meet no other operator, and
    restarting it disturbs nobody) with the chart, the namespace and the operator; all stopped
    on exit, the logs kept in ``state/logs``."""
    with LocalCluster(state) as cluster:
        install_chart(cluster)
        operator = OperatorProcess(
            cluster,
            state / "logs" / "operator-crashes.log",
            resync_seconds=RESYNC_SECONDS,
            args=[f"--namespace={NAMESPACE}"],
        )
        api = Api(cluster)
        api.core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
        operator.start()
        try:
            yield Crashes(cluster, operator, size)
        finally:
            operator.stop()


def measure(crashes: Crashes, figures: dict[str, Any]) -> None:
    """Every fault of the scenario in order, its figures into ``figures`` as they come;
    raises AssertionError when a check fails."""
    figures["initial_convergence_s"] = round(crashes.populate(), 2)
    try:
        crashes.crash_rounds()
    finally:
        figures |= kill_figures(crashes)
    figures["control_plane_restart_to_reconciled_s"] = {
        c: round(restart_component(crashes, c), 2) for c in ("kube-apiserver", "etcd")
    }
    figures["events_while_quiet"] = quiet = crashes.quiet_events()
    events = operator_events(crashes.api)
    (worst, most) = events.most_common(1)[0] if events else (("", "", ""), 0)
    figures |= {
        "cameras_at_end": len(crashes.churn.alive),
        "events_max_per_object_reason": most,
        "events_worst": "/".join(worst),
        "events_bound": event_bound(crashes),
        "reconciles_crashed": crashed(crashes.operator),
    }
    if crashed(crashes.operator):
        raise AssertionError("a reconcile crashed (a bug, not the API away): see the log")
    if most > event_bound(crashes):
        raise AssertionError(f"{most} Events {'/'.join(worst)}: more than {event_bound(crashes)}")
    if quiet:
        raise AssertionError(f"{quiet} Events posted while nothing changed")


def kill_figures(crashes: Crashes) -> dict[str, Any]:
    if not crashes.kills:
        return {"kills": 0}
    return {
        "kills": len(crashes.kills),
        "kills_by_mode": dict(Counter(k.mode for k in crashes.kills)),
        "kills_that_cut_a_reconcile": sum(k.torn for k in crashes.kills),
        "restart_s": distribution([k.restart_s for k in crashes.kills]),
        "convergence_after_kill_s": distribution([k.converge_s for k in crashes.kills]),
        "convergence_deadline_s": converge_deadline(),
    }


def run(full: bool) -> Report:
    size = FULL if full else SMALL
    state = Path(tempfile.mkdtemp(prefix="kv-crashes-"))  # kept: the logs of a failed run
    lost = "nothing: no orphan, every camera on exactly one replica, status matches the world"
    figures: dict[str, Any] = {"logs": str(state / "logs")}
    try:
        with scenario(state, size) as crashes:
            measure(crashes, figures)
    except AssertionError as exc:
        lost = f"check failed: {exc}"
    return Report(
        name="operator_crashes",
        load=f"{size.cameras} Cameras, 3 Pipelines, bursts of {size.burst} Camera writes",
        faults=f"operator SIGKILLed {size.kills} times (at the first write of a reconcile, at a "
        "random moment in it, as a Pipeline vanishes); kube-apiserver and etcd restarted",
        bad_inputs="none",
        lost=lost,
        ok=lost.startswith("nothing"),
        figures=figures,
    )
