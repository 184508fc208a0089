"""A test-only kubelet for KubeVision worker pods: each bound worker pod runs as a local process.

No kubelet runs in the test cluster (:mod:`tests.envtest.nodes` only simulates Nodes), so worker
pods would stay Pending with no process behind them. :class:`PodRunner` does a kubelet's part
for them, and only for them (label ``app.kubernetes.io/name=kubevision-worker``, container args
``serve ...`` or, for a cascade Pipeline, ``cascade ...``, bound to one of the simulated nodes):

* it gives the pod a loopback IP (``127.0.20.N``; Linux routes all of 127/8 to ``lo``, so
  nothing ever leaves this machine) and starts ``kubevision-worker <args>`` bound to it, with
  the pod's env resolved (``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``, plain values)
  and its ConfigMap volumes written to a per-pod folder that follows the ConfigMap, as the
  kubelet's atomic symlink swap does (emptyDir volumes are folders of the pod's own, kept
  across restarts of its process);
* it reports the pod through ``pods/status`` (Running, IPs, container status, conditions),
  with Ready following the worker's real ``/readyz``, so the StatefulSet's readyReplicas and
  the operator's Pipeline status are the real thing, and ``http://<podIP>:9090/metrics``
  answers (the operator scrapes it). The metrics Service gets no endpoints: an EndpointSlice
  may not hold a loopback address, so whatever discovers workers must read ``status.podIP``;
* it restarts an exited process with a backoff (restartCount++), and on deletion stops the
  process (SIGTERM, SIGKILL after the grace period) before it removes the pod, so the
  :class:`~tests.envtest.nodes.NodeSimulator` is told to leave these pods alone.

Unlike a kubelet it starts nothing for a pod whose namespace is already being deleted (an
earlier test's leftovers, about to go): on a small machine those would only steal CPU.

One supervisor thread polls the API (a short poll is simpler than a watch and fast enough);
every API call, probe and wait has a timeout, and the number of pods is capped, so neither the
thread nor :meth:`PodRunner.stop` can hang.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.envtest.nodes import DEFAULT_NODES, NodeSimulator, SimulatedNode

log = logging.getLogger("envtest.podrunner")

NAME_LABEL = "app.kubernetes.io/name"
WORKER_NAME = "kubevision-worker"
WORKER = Path(sys.executable).parent / "kubevision-worker"

POD_NETWORK = "127.0.20."
"""Pod IPs are 127.0.20.1-254: loopback only, never another address."""
MAX_PODS = 64
"""More claimed pods than this are left Pending (and still removed on deletion)."""
DEFAULT_PORT = 9090

API_TIMEOUT = 10.0
"""Seconds one API call may take; the supervisor's tick (and stop()) is bounded by it."""
PROBE_PERIOD = 1.0
PROBE_TIMEOUT = 1.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 20.0
BACKOFF_RESET_AFTER = 10.0
"""A process that ran this long before exiting restarts after the initial backoff again."""
MAX_GRACE = 30.0
"""Upper bound on a pod's terminationGracePeriodSeconds (tests must not wait minutes)."""
STOP_GRACE = 5.0
"""How long stop() lets every process handle SIGTERM before it kills the rest."""
_STATUS_PATCH = "application/strategic-merge-patch+json"
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_VAR_REF = re.compile(r"\$\((\w+)\)")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Probes go straight to the pod IP, whatever proxy the environment names."""


class _NotYet(Exception):
    """The container cannot start yet (a missing Secret/ConfigMap); the message says why."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Volume:
    """A ConfigMap volume materialised in a folder, and the version written there."""

    configmap: str
    optional: bool
    items: dict[str, str]
    """key -> relative path; empty: every key under its own name."""
    folder: Path
    written: set[Path] = field(default_factory=set)
    resource_version: str | None = None


@dataclass
class _Pod:
    """What the runner knows and runs for one pod (keyed by uid: StatefulSets reuse names)."""

    uid: str
    namespace: str
    name: str
    ip: str
    host_ip: str
    folder: Path
    log_path: Path
    container: dict[str, Any]
    volumes: list[_Volume]
    mounts: list[tuple[str, Path]]
    """(mountPath in the pod, local folder), longest mountPath first."""
    port: int
    probe: dict[str, Any] | None
    body: dict[str, Any]
    start_time: str = field(default_factory=_now)
    popen: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] = ("ContainerCreating", "")
    next_start: float = 0.0
    backoff: float = BACKOFF_INITIAL
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0
    stop_deadline: float | None = None
    """Set once termination began: SIGKILL at this monotonic time."""
    gone: bool = False
    """The pod object no longer exists (force-deleted): nothing to remove or report."""
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    reported: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def container_id(self) -> str:
        """The process as a container ID: a new one means the worker was restarted."""
        return f"podrunner://{self.popen.pid}" if self.popen is not None else ""


class PodRunner:
    """Runs the worker pods bound to ``nodes`` as local processes until :meth:`stop`.

    ``model_dir`` becomes the workers' ``KUBEVISION_MODEL_DIR`` (where ``file:///models/x``
    artifacts resolve); ``work_dir`` holds each pod's config folder; ``log_dir`` one log per pod.
    """

    def __init__(
        self,
        api: client.ApiClient,
        work_dir: Path,
        model_dir: Path,
        log_dir: Path | None = None,
        nodes: Iterable[SimulatedNode] = DEFAULT_NODES,
        interval: float = 0.5,
        threads: int = 1,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._work_dir = work_dir
        self._model_dir = model_dir
        self._log_dir = log_dir or work_dir / "logs"
        self._nodes = frozenset(n.name for n in nodes)
        self._interval = interval
        self._threads = threads
        self._pods: dict[str, _Pod] = {}
        self._host_ips: dict[str, str] = {}
        self._next_ip = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._claiming = False
        self._undo_deferral: Callable[[], None] | None = None
        self._limit_logged = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Claim worker pods (the NodeSimulator now leaves them to us) and start supervising."""
        for d in (self._work_dir, self._log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._claiming = True
        self._undo_deferral = NodeSimulator.defer_pod_deletions(self.claims)
        self._thread.start()
        log.info("pod runner started nodes=%s work_dir=%s", sorted(self._nodes), self._work_dir)

    def stop(self) -> None:
        """Stop supervising, terminate every process (killing what ignores SIGTERM), report
        the pods not ready and hand their deletion back to the NodeSimulator. Never hangs."""
        self._stop.set()
        if self._thread.is_alive():
            # a tick is bounded by API_TIMEOUT per call; whatever it still does after this
            # cannot start a process (_start checks _stop under the lock)
            self._thread.join(timeout=2 * API_TIMEOUT)
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            if pod.alive():
                assert pod.popen is not None
                pod.popen.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for pod in pods:
            if pod.popen is None:
                continue
            try:
                pod.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pod ignored SIGTERM; killing pod=%s pid=%d", pod.key, pod.popen.pid)
                pod.popen.kill()
                try:
                    pod.popen.wait(5)
                except subprocess.TimeoutExpired:  # unkillable (D state): give up, never hang
                    log.error("pod process did not die pod=%s pid=%d", pod.key, pod.popen.pid)
        report_until = time.monotonic() + STOP_GRACE
        for pod in pods:
            if pod.gone or time.monotonic() >= report_until:
                continue
            if pod.popen is not None and pod.popen.returncode is not None:
                pod.last_terminated = self._terminated(pod, pod.popen.returncode)
            pod.popen, pod.ready, pod.waiting = None, False, ("PodRunnerStopped", "")
            try:
                self._report(pod, timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - best effort: the API may be gone already
                log.warning("could not report pod stopped pod=%s error=%s", pod.key, exc)
        with self._lock:
            self._pods.clear()
        self._claiming = False
        if self._undo_deferral is not None:
            self._undo_deferral()
            self._undo_deferral = None
        log.info("pod runner stopped pods=%d", len(pods))

    @property
    def log_dir(self) -> Path:
        """Where each worker pod's process log goes (one file per pod)."""
        return self._log_dir

    def claims(self, pod: dict[str, Any]) -> bool:
        """Whether this runner runs (and finishes the deletion of) ``pod`` (plain JSON)."""
        if not self._claiming:
            return False
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        if (meta.get("labels") or {}).get(NAME_LABEL) != WORKER_NAME:
            return False
        if spec.get("nodeName") not in self._nodes:
            return False
        containers = spec.get("containers") or []
        command = (containers[0].get("args") or [])[:1] if len(containers) == 1 else []
        return command in (["serve"], ["cascade"])

    def running(self, namespace: str | None = None) -> dict[str, int]:
        """Pod name -> pid of each live worker process (in ``namespace``, if given)."""
        with self._lock:
            return {
                p.name: p.popen.pid
                for p in self._pods.values()
                if p.popen is not None
                and p.popen.poll() is None
                and namespace in (None, p.namespace)
            }

    # -- the supervisor ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a transient API error must not kill the stand-in kubelet
                log.exception("pod runner tick failed; retrying")
            self._stop.wait(self._interval)

    def _tick(self) -> None:
        raw: Any = self._core.list_pod_for_all_namespaces(
            label_selector=f"{NAME_LABEL}={WORKER_NAME}",
            _preload_content=False,
            _request_timeout=API_TIMEOUT,
        )
        seen: set[str] = set()
        terminating: dict[str, bool] = {}
        for body in json.loads(raw.data)["items"]:
            if self.claims(body):
                seen.add(body["metadata"]["uid"])
                try:
                    self._observe(body, terminating)
                except Exception as exc:  # noqa: BLE001 - one pod's trouble must not stop others
                    log.warning("pod sync failed pod=%s error=%r", _key(body), exc)
        for pod in list(self._pods.values()):
            if pod.uid not in seen and not pod.gone:
                log.info("pod vanished; stopping its process pod=%s", pod.key)
                pod.gone = True
                self._begin_termination(pod, 2.0)
        configmaps: dict[tuple[str, str], dict[str, Any] | None] = {}
        for pod in list(self._pods.values()):
            if self._stop.is_set():
                return
            try:
                self._supervise(pod, configmaps)
            except Exception as exc:  # noqa: BLE001 - one pod's trouble must not stop others
                log.warning("pod supervision failed pod=%s error=%r", pod.key, exc)

    def _observe(self, body: dict[str, Any], terminating: dict[str, bool]) -> None:
        """React to the pod object as listed: admit it, or begin its termination."""
        meta = body["metadata"]
        pod = self._pods.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            if pod is None:  # never started here: nothing to stop
                self._remove(meta["namespace"], meta["name"], meta["uid"])
            else:
                pod.body = body
                self._begin_termination(pod, _grace(body))
        elif pod is not None:
            pod.body = body
        elif not self._terminating(meta["namespace"], terminating):
            self._admit(body)
        # else: a pod of a namespace being deleted (an earlier test's) is about to be deleted
        # too; starting a worker for it would only burn CPU. It is removed once deleted.

    def _terminating(self, namespace: str, cache: dict[str, bool]) -> bool:
        """Whether the namespace is being deleted (looked up once per tick)."""
        if namespace not in cache:
            raw: Any = self._core.read_namespace(
                namespace, _preload_content=False, _request_timeout=API_TIMEOUT
            )
            cache[namespace] = (json.loads(raw.data).get("status") or {}).get("phase") == (
                "Terminating"
            )
        return cache[namespace]

    def _admit(self, body: dict[str, Any]) -> None:
        """Start tracking a new pod: its IP, folders, volumes and probe."""
        meta, spec = body["metadata"], body["spec"]
        key = _key(body)
        ip = self._allocate_ip() if len(self._pods) < MAX_PODS else None
        if ip is None:
            if time.monotonic() - self._limit_logged > 30:  # not on every tick
                self._limit_logged = time.monotonic()
                log.warning(
                    "pod limit reached; leaving pods Pending pod=%s limit=%d", key, MAX_PODS
                )
            return
        container = spec["containers"][0]
        stem = f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        folder = self._work_dir / stem
        folder.mkdir(parents=True, exist_ok=True)
        by_name = {v["name"]: v for v in spec.get("volumes") or []}
        volumes: list[_Volume] = []
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            local = folder / "volumes" / mount["name"]
            if "emptyDir" in by_name.get(mount["name"], {}):  # the pod's own, as long as it lives
                local.mkdir(parents=True, exist_ok=True)
                mounts.append((mount["mountPath"].rstrip("/"), local))
                continue
            source = by_name.get(mount["name"], {}).get("configMap")
            if source is None:  # e.g. the service-account token: workers do not use it
                log.debug("ignoring a non-ConfigMap mount pod=%s volume=%s", key, mount["name"])
                continue
            local.mkdir(parents=True, exist_ok=True)
            volumes.append(
                _Volume(
                    configmap=source["name"],
                    optional=bool(source.get("optional")),
                    items={i["key"]: i["path"] for i in source.get("items") or []},
                    folder=local,
                )
            )
            mounts.append((mount["mountPath"].rstrip("/"), local))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        pod = _Pod(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            host_ip=self._host_ip(spec["nodeName"]),
            folder=folder,
            log_path=self._log_dir / f"{stem}.log",
            container=container,
            volumes=volumes,
            mounts=mounts,
            port=_metrics_port(container),
            probe=container.get("readinessProbe"),
            body=body,
        )
        with self._lock:
            self._pods[pod.uid] = pod
        log.info("pod admitted pod=%s node=%s ip=%s", key, spec["nodeName"], ip)

    def _supervise(
        self, pod: _Pod, configmaps: dict[tuple[str, str], dict[str, Any] | None]
    ) -> None:
        """One step of the pod's state machine: terminate, sync config, (re)start, probe."""
        now = time.monotonic()
        if pod.stop_deadline is not None:
            self._continue_termination(pod, now)
            return
        self._sync_volumes(pod, configmaps)
        if pod.popen is None:
            if now >= pod.next_start:
                self._start(pod)
        elif pod.popen.poll() is not None:
            self._exited(pod, pod.popen.returncode, now)
        elif now >= pod.next_probe:
            pod.next_probe = now + min(PROBE_PERIOD, _probe_period(pod.probe))
            self._probe(pod)
        self._report(pod)

    # -- processes ---------------------------------------------------------------------------

    def _start(self, pod: _Pod) -> None:
        try:
            env = self._environment(pod)
            if any(v.resource_version is None for v in pod.volumes if not v.optional):
                raise _NotYet("ContainerCreating", "waiting for the ConfigMap volume")
        except _NotYet as exc:
            pod.waiting = (exc.args[0], exc.args[1])
            pod.next_start = time.monotonic() + 1.0
            return
        argv = [
            str(WORKER),
            *(_rewrite(a, pod.mounts) for a in pod.container.get("args") or []),
            f"--host={pod.ip}",
            f"--port={pod.port}",
            f"--threads={self._threads}",
        ]
        with self._lock:
            if self._stop.is_set():
                return
            with pod.log_path.open("ab") as out:
                out.write(f"--- {_now()} podrunner: starting {' '.join(argv)}\n".encode())
                out.flush()
                pod.popen = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=pod.folder,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches only pytest
                )
        pod.started_at, pod.started_mono = _now(), time.monotonic()
        pod.ready, pod.probe_failures, pod.next_probe = False, 0, 0.0
        log.info(
            "worker started pod=%s pid=%d ip=%s restarts=%d",
            pod.key,
            pod.popen.pid,
            pod.ip,
            pod.restart_count,
        )

    def _exited(self, pod: _Pod, code: int, now: float) -> None:
        """Like a kubelet with restartPolicy Always: restart after a growing backoff."""
        ran = now - pod.started_mono
        pod.backoff = BACKOFF_INITIAL if ran >= BACKOFF_RESET_AFTER else pod.backoff
        pod.last_terminated = self._terminated(pod, code)
        pod.popen, pod.ready = None, False
        pod.restart_count += 1
        pod.next_start = now + pod.backoff
        pod.waiting = ("CrashLoopBackOff", f"back-off {pod.backoff:.0f}s restarting the worker")
        log.warning(
            "worker exited pod=%s code=%d ran_s=%.1f restart_in_s=%.1f log=%s",
            pod.key,
            code,
            ran,
            pod.backoff,
            pod.log_path,
        )
        pod.backoff = min(pod.backoff * 2, BACKOFF_MAX)

    def _terminated(self, pod: _Pod, code: int) -> dict[str, Any]:
        return {
            "terminated": {
                "exitCode": code if code >= 0 else 128 - code,  # -15: killed by SIGTERM -> 143
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": pod.started_at or pod.start_time,
                "finishedAt": _now(),
                "containerID": pod.container_id(),
            }
        }

    def _begin_termination(self, pod: _Pod, grace: float) -> None:
        """SIGTERM now, SIGKILL after the grace period (a shorter one wins, as in Kubernetes)."""
        deadline = time.monotonic() + min(grace, MAX_GRACE)
        if pod.stop_deadline is not None and pod.stop_deadline <= deadline:
            return
        first = pod.stop_deadline is None
        pod.stop_deadline = deadline
        if first and pod.alive():
            assert pod.popen is not None
            pod.popen.terminate()
            log.info("stopping worker pod=%s pid=%d grace_s=%.0f", pod.key, pod.popen.pid, grace)
        if first and not pod.gone:
            pod.ready, pod.waiting = False, ("Terminating", "")
            self._report(pod)

    def _continue_termination(self, pod: _Pod, now: float) -> None:
        assert pod.stop_deadline is not None
        if pod.alive():
            if now < pod.stop_deadline:
                return
            assert pod.popen is not None
            log.warning("grace period over; killing pod=%s pid=%d", pod.key, pod.popen.pid)
            pod.popen.kill()
            try:
                pod.popen.wait(5)
            except subprocess.TimeoutExpired:
                return  # try again next tick
        code = pod.popen.returncode if pod.popen is not None else None
        log.info("worker stopped pod=%s code=%s", pod.key, code)
        if not pod.gone:
            self._remove(pod.namespace, pod.name, pod.uid)
        with self._lock:
            del self._pods[pod.uid]
        shutil.rmtree(pod.folder, ignore_errors=True)

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does last: delete the pod for good (only this uid, never a
        StatefulSet's replacement of the same name)."""
        try:
            self._core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
                _request_timeout=API_TIMEOUT,
            )
            log.info("pod removed pod=%s/%s", namespace, name)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- what a kubelet prepares -------------------------------------------------------------

    def _environment(self, pod: _Pod) -> dict[str, str]:
        """The process env: a minimal base, the model folder, then the pod's env resolved."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(pod.folder),
            "HOSTNAME": pod.name,
            "PYTHONUNBUFFERED": "1",
            "KUBEVISION_MODEL_DIR": str(self._model_dir),
        }
        resolved: dict[str, str] = {}
        for var in pod.container.get("env") or []:
            name = var["name"]
            value: str | None
            if "valueFrom" in var:
                value = self._value_from(pod, var["valueFrom"], name)
            else:  # $(VAR) refers to a variable defined before it, as in Kubernetes
                value = _VAR_REF.sub(
                    lambda m: resolved.get(m.group(1), m.group(0)), var.get("value", "")
                )
            if value is not None:  # None: an absent optional reference leaves it unset
                resolved[name] = value
        return {**env, **resolved}

    def _value_from(self, pod: _Pod, source: dict[str, Any], var: str) -> str | None:
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        for kind, ref_key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            data = self._read_data(kind, pod.namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                what = f"{kind} {ref['name']!r} key {ref['key']!r}"
                raise _NotYet("CreateContainerConfigError", f"{var}: {what} not found")
            return data[ref["key"]]
        raise _NotYet("CreateContainerConfigError", f"{var}: unsupported valueFrom")

    def _read_data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's (decoded) or ConfigMap's data; None when it does not exist."""
        try:
            if kind == "secret":
                raw: Any = self._core.read_namespaced_secret(
                    name, namespace, _preload_content=False, _request_timeout=API_TIMEOUT
                )
                data = json.loads(raw.data).get("data") or {}
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            raw = self._core.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=API_TIMEOUT
            )
            return dict(json.loads(raw.data).get("data") or {})
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _sync_volumes(self, pod: _Pod, cache: dict[tuple[str, str], dict[str, Any] | None]) -> None:
        """Write each ConfigMap volume's files when the ConfigMap changed (one read per
        ConfigMap per tick, shared by its pods)."""
        for volume in pod.volumes:
            key = (pod.namespace, volume.configmap)
            if key not in cache:
                try:
                    raw: Any = self._core.read_namespaced_config_map(
                        volume.configmap,
                        pod.namespace,
                        _preload_content=False,
                        _request_timeout=API_TIMEOUT,
                    )
                    cache[key] = json.loads(raw.data)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    cache[key] = None
            cm = cache[key]
            if cm is None:  # gone: a kubelet keeps the last content it wrote
                continue
            version = cm["metadata"]["resourceVersion"]
            if version == volume.resource_version:
                continue
            files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
            files.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
            if volume.items:
                files = {volume.items[k]: v for k, v in files.items() if k in volume.items}
            written = {_write_atomic(volume.folder, rel, content) for rel, content in files.items()}
            for stale in volume.written - written:
                stale.unlink(missing_ok=True)
            volume.written, volume.resource_version = written, version
            log.info(
                "config volume synced pod=%s configmap=%s resource_version=%s",
                pod.key,
                volume.configmap,
                version,
            )

    def _probe(self, pod: _Pod) -> None:
        """HTTP GET the readiness probe on the pod IP, as the kubelet does."""
        if pod.probe is None:
            pod.ready = True
            return
        get = pod.probe.get("httpGet") or {}
        port = get.get("port", pod.port)
        if isinstance(port, str):
            port = _named_port(pod.container, port)
        url = f"http://{pod.ip}:{port}{get.get('path', '/')}"
        try:
            with _DIRECT.open(url, timeout=PROBE_TIMEOUT) as resp:
                ok = 200 <= resp.status < 400
        except (urllib.error.URLError, OSError):
            ok = False
        if ok:
            pod.probe_failures = 0
            if not pod.ready:
                log.info(
                    "worker ready pod=%s after_s=%.1f", pod.key, time.monotonic() - pod.started_mono
                )
            pod.ready = True
        else:
            pod.probe_failures += 1
            if pod.probe_failures >= int(pod.probe.get("failureThreshold", 3)):
                pod.ready = False

    # -- status ------------------------------------------------------------------------------

    def _report(self, pod: _Pod, timeout: float = API_TIMEOUT) -> None:
        """Patch pods/status when what we would report changed."""
        if pod.gone:
            return
        status = self._status(pod)
        if status == pod.reported:
            return
        try:
            self._core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"metadata": {"uid": pod.uid}, "status": status},
                _content_type=_STATUS_PATCH,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            if exc.status == 404 or (exc.status is not None and exc.status >= 500):
                return  # gone (the next list notices) or transient: try again next tick
            log.error("pod status rejected pod=%s status=%s body=%s", pod.key, exc.status, exc.body)
        pod.reported = status

    def _status(self, pod: _Pod) -> dict[str, Any]:
        running = pod.alive()
        state: dict[str, Any]
        if running:
            state = {"running": {"startedAt": pod.started_at}, "waiting": None, "terminated": None}
        else:
            reason, message = pod.waiting
            waiting = {"reason": reason, **({"message": message} if message else {})}
            state = {"waiting": waiting, "running": None, "terminated": None}
        container = {
            "name": pod.container["name"],
            "image": pod.container.get("image", ""),
            "imageID": "",
            "containerID": pod.container_id(),
            "ready": running and pod.ready,
            "started": running,
            "restartCount": pod.restart_count,
            "state": state,
            "lastState": pod.last_terminated or {},
        }
        ready = "True" if running and pod.ready else "False"
        conditions = [
            self._condition(pod, "PodScheduled", "True"),
            self._condition(pod, "PodReadyToStartContainers", "True"),
            self._condition(pod, "Initialized", "True"),
            self._condition(pod, "ContainersReady", ready),
            self._condition(pod, "Ready", ready),
        ]
        return {
            "phase": "Pending" if pod.started_at is None else "Running",
            "hostIP": pod.host_ip,
            "hostIPs": [{"ip": pod.host_ip}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": pod.start_time,
            "conditions": conditions,
            "containerStatuses": [container],
        }

    def _condition(self, pod: _Pod, type_: str, status: str) -> dict[str, Any]:
        """A condition whose lastTransitionTime moves only when its status does."""
        old = pod.transitions.get(type_)
        if old is None and type_ == "PodScheduled":  # the scheduler's, keep its time
            scheduled = [
                c
                for c in (pod.body.get("status") or {}).get("conditions") or []
                if c.get("type") == type_ and c.get("status") == status
            ]
            if scheduled and scheduled[0].get("lastTransitionTime"):
                old = (status, scheduled[0]["lastTransitionTime"])
        if old is None or old[0] != status:
            old = (status, _now())
        pod.transitions[type_] = old
        cond: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": old[1]}
        if status == "False":
            cond["reason"] = "ContainersNotReady"
            cond["message"] = f"containers with unready status: [{pod.container['name']}]"
        return cond

    # -- helpers -----------------------------------------------------------------------------

    def _allocate_ip(self) -> str | None:
        """The next free 127.0.20.N (1-254, round robin, so a just-freed IP is reused last)."""
        used = {p.ip for p in self._pods.values()}
        for _ in range(254):
            self._next_ip = self._next_ip % 254 + 1
            ip = f"{POD_NETWORK}{self._next_ip}"
            if ip not in used:
                return ip
        return None

    def _host_ip(self, node: str) -> str:
        """The node's InternalIP, from its status (the simulator's loopback address)."""
        if node not in self._host_ips:
            raw: Any = self._core.read_node(
                node, _preload_content=False, _request_timeout=API_TIMEOUT
            )
            addresses = (json.loads(raw.data).get("status") or {}).get("addresses") or []
            internal = [a["address"] for a in addresses if a.get("type") == "InternalIP"]
            if not internal:
                raise RuntimeError(f"node {node} reports no InternalIP")
            self._host_ips[node] = internal[0]
        return self._host_ips[node]


def _key(body: dict[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def _grace(body: dict[str, Any]) -> float:
    """The grace period a deletion asked for, else the pod's own, else Kubernetes' default."""
    meta, spec = body["metadata"], body.get("spec") or {}
    for value in (
        meta.get("deletionGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
    ):
        if value is not None:
            return float(value)
    return 30.0


def _metrics_port(container: dict[str, Any]) -> int:
    ports = container.get("ports") or []
    for port in ports:
        if port.get("name") == "metrics":
            return int(port["containerPort"])
    return int(ports[0]["containerPort"]) if ports else DEFAULT_PORT


def _named_port(container: dict[str, Any], name: str) -> int:
    for port in container.get("ports") or []:
        if port.get("name") == name:
            return int(port["containerPort"])
    return DEFAULT_PORT


def _probe_period(probe: dict[str, Any] | None) -> float:
    return float((probe or {}).get("periodSeconds", 10))


def _field(pod: _Pod, path: str) -> str:
    """A fieldRef's value; a missing label or annotation is empty, as in Kubernetes."""
    meta = pod.body["metadata"]
    match = _FIELD.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.body["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod.body["spec"].get("serviceAccountName", ""),
        "status.podIP": pod.ip,
        "status.hostIP": pod.host_ip,
    }
    if path not in simple:
        raise _NotYet("CreateContainerConfigError", f"unsupported fieldRef {path}")
    return simple[path]


def _rewrite(arg: str, mounts: list[tuple[str, Path]]) -> str:
    """Point an argument that names a file under a volume's mountPath at the local copy."""
    for mount_path, local in mounts:
        pattern = rf"(?<![\w./-]){re.escape(mount_path)}(?=/|$)"
        if re.search(pattern, arg):
            return re.sub(pattern, str(local), arg)
    return arg


def _write_atomic(folder: Path, relative: str, content: bytes) -> Path:
    """Write a volume file via a temp file and rename, so a reader never sees half of it."""
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValueError(f"volume item path {relative!r} leaves its volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, target)
    return target
