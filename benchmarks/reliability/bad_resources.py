"""Bad custom resources: invalid objects the API server must reject, and valid but unsatisfiable
ones the operator must explain without spinning.

Invalid objects are generated with ``hypothesis`` from the CRD schemas that :mod:`kubevision.api`
produces (wrong types, out-of-range numbers, bad patterns and enums, oversize strings, lists and
maps, missing required fields) plus one strategy per CEL rule (``x-kubernetes-validations``),
each applied to a valid base object. Every object is sent to the real API server (a server-side
dry run: admission and validation run in full, nothing is stored); each must be rejected with a
message naming the mutated field. A seed makes a run reproducible
(``KUBEVISION_FUZZ_SEED=<seed> python -m benchmarks.reliability --only bad_resources``).

Unsatisfiable objects (unknown variant, a selector matching nothing, an SLO no variant meets,
a site without nodes, a missing credentials Secret) then run under the real operator: each gets
a condition saying why, ``kubevision_operator_reconciles_total`` grows no faster than one
reconcile per Pipeline per resync period over a quiet window (no hot loop), and the operator
logs no traceback.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import hypothesis.strategies as st
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from benchmarks.reliability import Report
from kubevision.api import GROUP, VERSION
from kubevision.api.crd import RESOURCES, build_crd
from kubevision.operator.scaling import ReconciledKind
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.operator import OperatorProcess, install_chart
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import WaitTimeout, wait_for

Obj = dict[str, Any]
Path_ = tuple[str | int, ...]
SAMPLES = REPO_ROOT / "crds" / "samples"
CATALOG = REPO_ROOT / "model_catalog" / "variants"
PLURALS = {r.kind: r.plural for r in RESOURCES}
FULL_EXAMPLES, SMALL_EXAMPLES = 1200, 150


def _doc(path: Path, name: str) -> Obj:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["apiVersion"].startswith(f"{GROUP}/") and doc["metadata"]["name"] == name:
            return dict(doc)
    raise LookupError(f"no {GROUP} object {name!r} in {path}")


def _with(doc: Obj, path: Path_, value: Any) -> Obj:
    """A deep copy of ``doc`` with ``path`` set (missing parent objects created empty)."""
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[path[-1]] = value
    return out


def _without(doc: Obj, path: Path_) -> Obj:
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _get(doc: Obj, path: Path_) -> Any:
    node: Any = doc
    for key in path:
        if isinstance(key, int):
            if not isinstance(node, list) or len(node) <= key:
                return None
            node = node[key]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def field_path(path: Path_) -> str:
    """How the API server names a field: ``spec.zones[0].points[1][0]``."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


# -- valid base objects: the shipped samples, widened so more fields are present --------------

LOBBY = _doc(SAMPLES / "camera.yaml", "lobby")
PARKING = _doc(SAMPLES / "camera.yaml", "parking")
ADAPTIVE = _with(LOBBY, ("spec", "sampling"), {"mode": "adaptive", "minFps": 1, "maxFps": 5})
PIPELINE = _with(
    _doc(SAMPLES / "pipeline.yaml", "people"),
    ("spec", "placement"),
    {"nodeSelector": {"a": "b"}, "tolerations": [{"key": "gpu", "value": "yes"}]},
)
PIPELINE_FULL = _with(
    _with(
        _with(
            PIPELINE,
            ("spec", "cameraSelector", "matchExpressions"),
            [{"key": "tier", "operator": "In", "values": ["gold"]}],
        ),
        ("spec", "outputs"),
        [
            {"type": "webhook", "url": "https://hooks.example/kv"},
            {"type": "file", "path": "/var/log/kv.jsonl"},
        ],
    ),
    ("spec", "autoscaling", "prometheusUrl"),
    "http://prometheus.monitoring:9090",
)
ROLLOUT = _with(
    PIPELINE,
    ("spec", "rollout"),
    {"candidate": {"variant": "yolox-nano-416-onnx-int8"}, "steps": [10, 50, 100]},
)
CASCADE = _doc(SAMPLES / "cascade" / "cloud.yaml", "dock-cloud")  # spec.source: edge events
VARIANT = _doc(SAMPLES / "modelvariant.yaml", "yolox-nano-416-onnx-fp32")
INT8 = _doc(CATALOG / "yolox-nano.yaml", "yolox-nano-416-trt-int8")
BASES: tuple[Obj, ...] = (
    LOBBY,
    PARKING,
    ADAPTIVE,
    PIPELINE,
    PIPELINE_FULL,
    CASCADE,
    VARIANT,
    INT8,
)


# -- strategies derived from the structural schema ---------------------------------------------

_WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
    "integer": st.one_of(
        st.text(max_size=6),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6).filter(
            lambda f: not f.is_integer()
        ),
    ),
    "number": st.one_of(st.text(max_size=6), st.booleans(), st.lists(st.integers(), max_size=2)),
    "boolean": st.one_of(st.text(max_size=6), st.integers()),
    "array": st.one_of(st.text(max_size=6), st.integers(), st.dictionaries(st.text(), st.text())),
    "object": st.one_of(st.text(max_size=6), st.integers(), st.lists(st.integers(), max_size=2)),
}


@dataclass(frozen=True)
class Case:
    """One way to break one field of one base object; ``mutate`` draws the broken object."""

    name: str
    path: Path_
    """The field the API server's message must name."""
    mutate: st.SearchStrategy[Obj]


def _numbers(node: dict[str, Any]) -> st.SearchStrategy[float | int]:
    """Numbers outside ``node``'s bounds (OpenAPI 3.0 exclusive flags included)."""
    integer = node["type"] == "integer"
    options: list[st.SearchStrategy[float | int]] = []
    for bound, below in (("minimum", True), ("maximum", False)):
        if bound not in node:
            continue
        limit = node[bound]
        exclusive = node.get("exclusiveMinimum" if below else "exclusiveMaximum") is True
        edge = limit if exclusive else (limit - 1 if integer and below else limit + 1)
        if not integer and not exclusive:
            edge = limit - 1e-3 if below else limit + 1e-3
        make = st.integers if integer else _floats
        options.append(make(max_value=edge) if below else make(min_value=edge))
    return st.one_of(options)


def _floats(*, min_value: float | None = None, max_value: float | None = None) -> Any:
    return st.floats(
        min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False
    ).filter(lambda f: abs(f) < 1e30)


def _breakers(node: dict[str, Any], value: Any) -> Iterator[tuple[str, st.SearchStrategy[Any]]]:
    """(constraint, strategy of values violating it) for one schema node."""
    kind = node.get("type", "object")
    yield "type", _WRONG_TYPE[kind]
    if kind in ("integer", "number") and ("minimum" in node or "maximum" in node):
        yield "range", _numbers(node)
    if "maxLength" in node:
        n = node["maxLength"]
        yield "maxLength", st.text(st.characters(codec="ascii"), min_size=n + 1, max_size=n + 64)
    if "pattern" in node:
        regex = re.compile(node["pattern"])
        yield "pattern", st.text(max_size=40).filter(lambda s: regex.search(s) is None)
    if "enum" in node:
        allowed = set(node["enum"])
        yield "enum", st.text(max_size=12).filter(lambda s: s not in allowed)
    if kind == "array" and "maxItems" in node:
        item = value[0] if isinstance(value, list) and value else "x"
        yield "maxItems", st.integers(1, 8).map(lambda k: [item] * (node["maxItems"] + k))
    if kind == "array" and node.get("minItems", 0) > 0:
        yield "minItems", st.just(value[: node["minItems"] - 1] if isinstance(value, list) else [])
    if kind == "object" and "maxProperties" in node:
        n = node["maxProperties"]
        yield (
            "maxProperties",
            st.integers(n + 1, n + 8).map(lambda k: {f"k{i}": "v" for i in range(k)}),
        )


def _slots(node: dict[str, Any], base: Obj, path: Path_) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """Every field the schema defines under ``path`` that can be set in ``base`` (list items
    only where the base has one)."""
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _slots(child, base, (*path, key))
    if "items" in node and _get(base, (*path, 0)) is not None:
        yield from _slots(node["items"], base, (*path, 0))


def _schema(kind: str) -> dict[str, Any]:
    resource = next(r for r in RESOURCES if r.kind == kind)
    crd = build_crd(resource)
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(spec["properties"]["spec"])


def schema_cases() -> list[Case]:
    """Cases derived from the schemas: one per (base, field, violated constraint), and one per
    required field removed."""
    cases: dict[tuple[str, Path_, str], Case] = {}
    for base in BASES:
        for path, node in _slots(_schema(base["kind"]), base, ("spec",)):
            if path == ("spec",):
                continue
            for constraint, values in _breakers(node, _get(base, path)):
                key = (base["kind"], path, constraint)
                mutate = _set(base, path, values)
                cases.setdefault(key, Case(f"{base['kind']} {constraint}", path, mutate))
            for required in node.get("required", []):
                full = (*path, required)
                if _get(base, full) is not None:
                    key = (base["kind"], full, "required")
                    cases.setdefault(
                        key, Case(f"{base['kind']} required", full, st.just(_without(base, full)))
                    )
    return list(cases.values())


# -- one strategy per CEL rule -----------------------------------------------------------------

_USER = st.text(st.characters(codec="ascii", exclude_characters="/@:?#"), max_size=12)
_HOSTS = st.sampled_from(["cam.example", "10.0.0.7:554", "[::1]:8554"])
_NAMES = st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z")


def _password_urls(schemes: list[str]) -> st.SearchStrategy[str]:
    """``scheme://user:password@host/...``: credentials a URL must never carry."""
    return st.builds(
        lambda s, u, p, h: f"{s}://{u}:{p}@{h}/x", st.sampled_from(schemes), _USER, _USER, _HOSTS
    )


def _case(name: str, path: Path_, mutate: st.SearchStrategy[Obj]) -> Case:
    return Case(f"CEL {name}", path, mutate)


def _set(base: Obj, path: Path_, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    return values.map(lambda v: _with(base, path, v))


def _adaptive_inverted(lo: float, hi: float) -> dict[str, Any]:
    return {"mode": "adaptive", "minFps": hi, "maxFps": lo}


def cel_cases() -> list[Case]:
    """A violation of every CEL rule the API defines (checked by
    ``tests/reliability/test_bad_resources.py``)."""
    src, samp = ("spec", "source"), ("spec", "sampling")
    out0, auto = ("spec", "outputs", 0), ("spec", "autoscaling")
    stages, roll = ("spec", "stages"), ("spec", "rollout")
    fps = _floats(min_value=0.5, max_value=240)
    return [
        _case(
            "url password",
            (*src, "url"),
            _set(LOBBY, (*src, "url"), _password_urls(["rtsp", "http", "rtmps"])),
        ),
        _case(
            "url query password",
            (*src, "url"),
            _set(
                LOBBY,
                (*src, "url"),
                st.builds(
                    lambda k, v: f"rtsp://cam.example/s?user=a&{k}={v}",
                    st.sampled_from(["password", "PASSWD", "pwd", "Pass"]),
                    _USER,
                ),
            ),
        ),
        _case(
            "url control characters",
            (*src, "url"),
            _set(
                LOBBY,
                (*src, "url"),
                st.builds(
                    lambda c, tail: f"rtsp://cam.example/s{c}{tail}",
                    st.sampled_from(list("\r\t \x00\x7f")),
                    st.sampled_from(["", "X-Injected: 1", "-i file:/etc/passwd"]),
                ),
            ),
        ),
        _case(
            "url relative path",
            (*src, "url"),
            _set(
                PARKING,
                (*src, "url"),
                st.builds(
                    lambda s, p: f"{s}://{p}",
                    st.sampled_from(["file", "v4l2"]),
                    st.sampled_from(
                        [
                            "concat:/a.mp4|/b.mp4",
                            "pipe:0",
                            "subfile,,start,0,end,9,,:/etc/passwd",
                            "videos/a.mp4",
                        ]
                    ),
                ),
            ),
        ),
        _case(
            "transport",
            (*src, "transport"),
            _set(PARKING, (*src, "transport"), st.sampled_from(["tcp", "udp"])),
        ),
        _case(
            "everyN mode",
            (*samp, "everyN"),
            _set(LOBBY, samp, st.integers(1, 1000).map(lambda n: {"mode": "all", "everyN": n})),
        ),
        _case("everyN missing", (*samp, "everyN"), st.just(_without(PARKING, (*samp, "everyN")))),
        _case(
            "motionThreshold",
            (*samp, "motionThreshold"),
            _set(
                LOBBY,
                samp,
                st.builds(
                    lambda m, t: {"mode": m, "motionThreshold": t},
                    st.sampled_from(["all", "keyframes"]),
                    _floats(min_value=0.01, max_value=1),
                ),
            ),
        ),
        _case(
            "minFps mode",
            (*samp, "mode"),
            _set(LOBBY, samp, fps.map(lambda f: {"mode": "all", "minFps": f})),
        ),
        _case(
            "minFps>maxFps",
            (*samp, "minFps"),
            _set(
                LOBBY,
                samp,
                st.tuples(fps, fps)
                .filter(lambda t: t[0] < t[1])
                .map(lambda t: _adaptive_inverted(*t)),
            ),
        ),
        _case(
            "zone names",
            ("spec", "zones"),
            st.just(_with(LOBBY, ("spec", "zones"), LOBBY["spec"]["zones"] * 2)),
        ),
        _case(
            "line names",
            ("spec", "lines"),
            st.just(_with(PARKING, ("spec", "lines"), PARKING["spec"]["lines"] * 2)),
        ),
        _case(
            "replicas",
            (*auto, "minReplicas"),
            _set(
                PIPELINE,
                auto,
                st.integers(1, 999).flatmap(
                    lambda hi: st.integers(hi + 1, 1000).map(
                        lambda lo: {"minReplicas": lo, "maxReplicas": hi}
                    )
                ),
            ),
        ),
        _case(
            "variant and family",
            (*stages, "detector"),
            _set(PIPELINE, (*stages, "detector", "variant"), _NAMES),
        ),
        _case(
            "neither variant nor family",
            (*stages, "classifier"),
            st.just(_without(PIPELINE, (*stages, "classifier", "variant"))),
        ),
        _case(
            "detector and source",
            (*stages, "detector"),
            st.one_of(
                _set(CASCADE, (*stages, "detector"), _NAMES.map(lambda n: {"family": n})),
                st.just(_without(PIPELINE, (*stages, "detector"))),
            ),
        ),
        _case(
            "cascade classifier",
            (*stages, "classifier"),
            st.just(_without(CASCADE, (*stages, "classifier"))),
        ),
        _case(
            "camera stages with a source",
            src,
            st.sampled_from(
                [
                    _with(CASCADE, (*stages, "pose"), {"family": "yolov8n-pose"}),
                    _with(CASCADE, roll, ROLLOUT["spec"]["rollout"]),
                    _with(CASCADE, ("spec", "snapshots"), {"storage": "node"}),
                ]
            ),
        ),
        _case(
            "deepsort reid",
            (*stages, "tracker", "reid"),
            st.just(_with(PIPELINE, (*stages, "tracker", "type"), "deepsort")),
        ),
        _case(
            "reid without deepsort",
            (*stages, "tracker", "reid"),
            _set(PIPELINE, (*stages, "tracker", "reid"), _NAMES.map(lambda n: {"family": n})),
        ),
        _case(
            "output url",
            (*out0, "url"),
            _set(
                PIPELINE,
                out0,
                st.sampled_from(
                    [{"type": "webhook"}, {"type": "stdout", "url": "https://x.example"}]
                ),
            ),
        ),
        _case(
            "output topic",
            (*out0, "topic"),
            _set(PIPELINE, out0, _USER.map(lambda t: {"type": "stdout", "topic": t})),
        ),
        _case("output path", (*out0, "path"), _set(PIPELINE, out0, st.just({"type": "file"}))),
        _case(
            "kafka url",
            (*out0, "url"),
            _set(
                PIPELINE,
                out0,
                st.sampled_from(
                    [
                        {"type": "kafka", "url": "https://broker.example:9092", "topic": "e"},
                        {"type": "mqtt", "url": "kafka://broker.example:9092", "topic": "e"},
                        {"type": "webhook", "url": "kafkas://broker.example:9093"},
                    ]
                ),
            ),
        ),
        _case(
            "output password",
            (*out0, "url"),
            _set(
                PIPELINE,
                out0,
                _password_urls(["https", "mqtt", "wss"]).map(
                    lambda u: {"type": "webhook", "url": u}
                ),
            ),
        ),
        _case(
            "two stdout",
            ("spec", "outputs"),
            st.just(_with(PIPELINE, ("spec", "outputs"), [{"type": "stdout"}] * 2)),
        ),
        _case(
            "spool claim in memory",
            ("spec", "spool", "persistentVolumeClaim"),
            _set(
                PIPELINE,
                ("spec", "spool"),
                st.builds(
                    lambda size: {"storage": "memory", "persistentVolumeClaim": {"size": size}},
                    st.sampled_from(["1Gi", "512Mi", "10G"]),
                ),
            ),
        ),
        _case(
            "snapshots url",
            ("spec", "snapshots", "url"),
            _set(
                PIPELINE,
                ("spec", "snapshots"),
                st.sampled_from(
                    [
                        {"storage": "s3"},
                        {"storage": "node", "url": "s3://snapshots/edge"},
                        {"storage": "inline", "endpoint": "http://minio.storage:9000"},
                        {"storage": "node", "credentialsSecretRef": {"name": "s3-keys"}},
                    ]
                ),
            ),
        ),
        _case(
            "rollout candidate changes nothing",
            (*roll, "candidate"),
            _set(ROLLOUT, (*roll, "candidate"), st.just({})),
        ),
        _case(
            "rollout candidate variant and family",
            (*roll, "candidate", "variant"),
            _set(
                ROLLOUT,
                (*roll, "candidate"),
                st.tuples(_NAMES, _NAMES).map(lambda vf: {"variant": vf[0], "family": vf[1]}),
            ),
        ),
        _case(
            "rollout promote and abort",
            (*roll, "promote"),
            st.just(_with(_with(ROLLOUT, (*roll, "promote"), True), (*roll, "abort"), True)),
        ),
        _case(
            "rollout steps not increasing",
            (*roll, "steps"),
            _set(
                ROLLOUT,
                (*roll, "steps"),
                st.lists(st.integers(1, 100), min_size=2, max_size=10, unique=True).filter(
                    lambda steps: steps != sorted(steps)
                ),
            ),
        ),
        _case(
            "degradation repeats",
            ("spec", "degradation", "allowed"),
            _set(
                PIPELINE,
                ("spec", "degradation", "allowed"),
                st.sampled_from(["frameSkip", "resolution"]).map(lambda s: [s, s]),
            ),
        ),
        _case(
            "pipeline name",
            ("metadata", "name"),
            _set(PIPELINE, ("metadata", "name"), st.integers(41, 63).map(lambda n: "p" * n)),
        ),
        _case(
            "toleration key",
            ("spec", "placement", "tolerations", 0, "key"),
            st.just(
                _with(
                    PIPELINE,
                    ("spec", "placement", "tolerations", 0),
                    {"operator": "Exists", "value": "x"},
                )
            ),
        ),
        _case(
            "tolerationSeconds",
            ("spec", "placement", "tolerations", 0, "tolerationSeconds"),
            _set(
                PIPELINE,
                ("spec", "placement", "tolerations", 0, "tolerationSeconds"),
                st.integers(0, 10**6),
            ),
        ),
        _case(
            "selector values",
            ("spec", "cameraSelector", "matchExpressions", 0, "values"),
            _set(
                PIPELINE_FULL,
                ("spec", "cameraSelector", "matchExpressions", 0, "operator"),
                st.sampled_from(["Exists", "DoesNotExist"]),
            ),
        ),
        _case(
            "prometheusUrl password",
            (*auto, "prometheusUrl"),
            _set(PIPELINE, (*auto, "prometheusUrl"), _password_urls(["http", "https"])),
        ),
        _case(
            "int8 calibration",
            ("spec", "calibration"),
            st.just(_without(INT8, ("spec", "calibration"))),
        ),
        _case(
            "accuracy gate on a non-INT8 build",
            ("spec", "accuracyGate"),
            _set(
                VARIANT,
                ("spec", "accuracyGate"),
                st.tuples(_floats(min_value=0, max_value=1), _floats(min_value=0, max_value=1)).map(
                    lambda pv: {
                        "parent": "yolox-nano-416-onnx-fp32",
                        "parentValue": pv[0],
                        "value": pv[1],
                        "dataset": "coco128 images 64-127",
                    }
                ),
            ),
        ),
        _case(
            "s3 endpoint on another artifact",
            ("spec", "artifact"),
            _set(
                VARIANT,
                ("spec", "artifact", "endpoint"),
                _NAMES.map(lambda n: f"http://{n}.storage:9000"),
            ),
        ),
        _case(
            "triton uri",
            ("spec", "artifact", "uri"),
            _set(VARIANT, ("spec", "artifact", "uri"), _NAMES.map(lambda n: f"triton://{n}")),
        ),
        _case(
            "sha256",
            ("spec", "artifact", "sha256"),
            st.just(_without(VARIANT, ("spec", "artifact", "sha256"))),
        ),
        _case(
            "decoder", ("spec", "decoder"), st.just(_with(VARIANT, ("spec", "task"), "classify"))
        ),
        _case(
            "tracking thresholds order",
            ("spec", "tracking"),
            _set(
                VARIANT,
                ("spec", "tracking"),
                st.tuples(
                    _floats(min_value=0.01, max_value=0.99), _floats(min_value=0.01, max_value=0.99)
                ).map(lambda ab: {"highScore": min(ab), "lowScore": max(ab), "newTrackScore": 1.0}),
            ),
        ),
        _case(
            "tracking on a classifier",
            ("spec", "tracking"),
            st.just(_without(_with(VARIANT, ("spec", "task"), "classify"), ("spec", "decoder"))),
        ),
        _case(
            "accelerators",
            ("spec", "hardware"),
            st.just(_with(VARIANT, ("spec", "hardware"), VARIANT["spec"]["hardware"][:1] * 2)),
        ),
        _case(
            "batch",
            ("spec", "batch"),
            _set(
                VARIANT,
                ("spec", "batch"),
                st.integers(2, 1024).map(lambda n: {"min": n, "opt": 1, "max": n}),
            ),
        ),
        _case(
            "artifact password",
            ("spec", "artifact", "uri"),
            _set(VARIANT, ("spec", "artifact", "uri"), _password_urls(["https", "s3"])),
        ),
        _case(
            "calibration cache password",
            ("spec", "calibration", "cacheUri"),
            _set(INT8, ("spec", "calibration", "cacheUri"), _password_urls(["https", "gs"])),
        ),
        _case(
            "calibration password",
            ("spec", "calibration", "datasetUri"),
            _set(INT8, ("spec", "calibration", "datasetUri"), _password_urls(["https", "s3"])),
        ),
    ]


# -- applying objects to the API server ---------------------------------------------------------


def rejection(api: client.CustomObjectsApi, namespace: str, obj: Obj) -> str | None:
    """The API server's message for ``obj`` created in a dry run; None when it was accepted."""
    body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[obj["kind"]], body, dry_run="All"
        )
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    return None


@dataclass
class FuzzResult:
    """What the fuzzer tried and every object the API server handled wrongly."""

    seed: int
    tried: int = 0
    by_case: dict[str, int] = field(default_factory=dict)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    """Invalid objects the server stored (or would have): the field and the object."""
    unnamed: list[dict[str, Any]] = field(default_factory=list)
    """Rejections whose message does not name the offending field."""
    seconds: float = 0.0
    cel_rules_hit: set[str] = field(default_factory=set)
    """Messages of the CEL rules some rejection quoted."""

    @property
    def cel_rules_missed(self) -> set[str]:
        """CEL rules of the API that no generated object violated."""
        return cel_messages() - self.cel_rules_hit

    @property
    def ok(self) -> bool:
        return (
            self.tried > 0 and not self.accepted and not self.unnamed and not self.cel_rules_missed
        )

    def figures(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "invalid_objects_tried": self.tried,
            "rejected": self.tried - len(self.accepted),
            "rejected_without_field_named": len(self.unnamed),
            "cases": len(self.by_case),
            "cel_rules_violated": f"{len(self.cel_rules_hit)}/{len(cel_messages())}",
            "seconds": round(self.seconds, 1),
            "failures": (self.accepted + self.unnamed)[:20],
        }


def cel_messages() -> set[str]:
    """The message of every CEL rule in the generated CRDs."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            found.update(rule["message"] for rule in node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)

    walk([build_crd(r) for r in RESOURCES])
    return found


def fuzz_seed() -> int:
    """``KUBEVISION_FUZZ_SEED`` reproduces a run; otherwise a fresh seed (reported)."""
    return int(os.environ.get("KUBEVISION_FUZZ_SEED") or random.SystemRandom().randrange(2**32))


def _explore(
    strategy: st.SearchStrategy[tuple[Case, Obj]],
    examples: int,
    fuzz_seed: int,
    check: Callable[[Case, Obj], None],
) -> None:
    """Up to ``examples`` draws of ``strategy`` (fewer when it has fewer distinct values)."""

    @seed(fuzz_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def attempt(drawn: tuple[Case, Obj]) -> None:
        check(*drawn)

    attempt()


def _pair(case: Case) -> st.SearchStrategy[tuple[Case, Obj]]:
    return case.mutate.map(lambda obj: (case, obj))


def fuzz(api: client.CustomObjectsApi, namespace: str, examples: int, fuzz_seed: int) -> FuzzResult:
    """``examples`` invalid objects: about half break CEL rules (an equal share per rule, so
    a small run violates each one), the rest schema constraints that hypothesis picks."""
    result = FuzzResult(fuzz_seed)
    rules, fields, messages = cel_cases(), schema_cases(), cel_messages()
    started = time.monotonic()

    def check(case: Case, obj: Obj) -> None:
        result.tried += 1
        result.by_case[case.name] = result.by_case.get(case.name, 0) + 1
        message = rejection(api, namespace, obj)
        where = field_path(case.path)
        if message is None:
            result.accepted.append({"case": case.name, "field": where, "object": obj})
            return
        if where not in message:
            result.unnamed.append({"case": case.name, "field": where, "message": message[:500]})
        result.cel_rules_hit |= {m for m in messages if m in message}

    share = max(1, examples // 2 // len(rules))
    for index, rule in enumerate(rules):
        _explore(_pair(rule), share, fuzz_seed + index, check)
    remaining = max(0, examples - result.tried)
    _explore(st.sampled_from(fields).flatmap(_pair), remaining, fuzz_seed, check)
    result.seconds = time.monotonic() - started
    return result


# -- valid but unsatisfiable objects under the real operator ------------------------------------


def _camera(name: str, labels: dict[str, str], **spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Camera",
        "metadata": {"name": name, "labels": labels},
        "spec": {"source": {"url": f"rtsp://{name}.example/s"}, **spec},
    }


def _pipeline(name: str, selects: str, detector: dict[str, Any], **spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "cameraSelector": {"matchLabels": {"group": selects}},
            "stages": {"detector": detector},
            "placement": {"hardwareClasses": ["cpu"]},
            **spec,
        },
    }


MISSING_SECRET_HINT = "no-such-secret"
"""A credentials Secret that does not exist: the Pipeline's condition must name it."""
UNSATISFIABLE: dict[str, tuple[str, str, str]] = {
    "unknown-variant": ("Ready", "NoMatchingVariant", "no-such-variant"),
    "selects-nothing": ("Ready", "NoCameras", ""),
    "slo-unmet": ("Ready", "NoMatchingVariant", ""),
    "no-site-nodes": ("Ready", "NoSchedulableNodes", ""),
    "missing-secret": ("Ready", "WorkersStarting", MISSING_SECRET_HINT),
}
"""Pipeline -> the condition (type, reason, words its message must hold) that says why it
cannot run."""
UNSERVED_CAMERAS: dict[str, str | None] = {
    "plain": "NoPipeline",
    "far-away": "NoPipeline",
    "locked": None,
}
"""Camera -> the reason its Ready condition must give (None: any). A Camera no Pipeline can
serve has its status written once its wait for an assignment ends, which may be well after the
Pipelines' conditions: the quiet window starts after that write, not during it."""


def unsatisfiable_objects() -> list[Obj]:
    """One Pipeline per way of being unsatisfiable, with the cameras and variant it needs."""
    variant = copy.deepcopy(VARIANT)
    variant["spec"]["hardware"] = [{"accelerator": "cpu", "expectedFps": 45, "p99LatencyMs": 40}]
    family = {"family": VARIANT["spec"]["family"]}
    creds = {"credentialsSecretRef": {"name": MISSING_SECRET_HINT}}
    return [
        variant,
        _camera("plain", {"group": "plain"}),
        _camera("far-away", {"group": "far"}, site="no-such-site"),
        _camera("locked", {"group": "locked"}, source={"url": "rtsp://locked.example/s", **creds}),
        _pipeline("unknown-variant", "plain", {"variant": "no-such-variant"}),
        _pipeline("selects-nothing", "nobody", family),
        _pipeline("slo-unmet", "plain", family, slo={"p99LatencyMs": 1}),
        _pipeline("no-site-nodes", "far", family),
        _pipeline("missing-secret", "locked", family),
    ]


def _condition(
    api: client.CustomObjectsApi, namespace: str, name: str, type_: str, plural: str = "pipelines"
) -> Any:
    body: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    for cond in (body.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return cond
    return None


def _explained(api: client.CustomObjectsApi, namespace: str) -> dict[str, Any] | None:
    """Every unsatisfiable Pipeline's condition, once each has the expected reason, and every
    Camera's Ready condition (keyed ``camera/<name>``), once written."""
    found = {}
    for name, (type_, reason, words) in UNSATISFIABLE.items():
        cond = _condition(api, namespace, name, type_)
        if cond is None or cond["reason"] != reason or words not in cond.get("message", ""):
            return None
        found[name] = cond
    for name, want in UNSERVED_CAMERAS.items():
        cond = _condition(api, namespace, name, "Ready", "cameras")
        if cond is None or want not in (None, cond["reason"]):
            return None
        found[f"camera/{name}"] = cond
    return found


@dataclass
class UnsatisfiableResult:
    conditions: dict[str, Any]
    window_seconds: float
    reconciles_by_kind: dict[str, float]
    reconcile_bound: float
    pipelines_in_cluster: int
    tracebacks: list[str]

    @property
    def reconciles(self) -> float:
        return sum(self.reconciles_by_kind.values())

    @property
    def ok(self) -> bool:
        return self.reconciles <= self.reconcile_bound and not self.tracebacks

    def figures(self) -> dict[str, Any]:
        return {
            "conditions": {k: f"{v['reason']}: {v['message']}" for k, v in self.conditions.items()},
            "quiet_window_seconds": round(self.window_seconds, 1),
            "reconciles_in_window": self.reconciles,
            "reconciles_in_window_by_kind": self.reconciles_by_kind,
            "reconciles_per_minute": round(self.reconciles * 60 / self.window_seconds, 1),
            "reconcile_bound_in_window": self.reconcile_bound,
            "pipelines_in_cluster": self.pipelines_in_cluster,
            "operator_tracebacks": self.tracebacks[:5],
        }


RECONCILED_KINDS: tuple[str, ...] = get_args(ReconciledKind)


def reconcile_bound(pipelines: int, window: float, resync: float) -> float:
    """Most reconciles a quiet cluster may do in ``window`` seconds: each Pipeline once per
    resync period (plus the one in progress); Cameras and ModelVariants reconcile only on
    change, and nothing changes in a quiet window."""
    return pipelines * (window // resync + 1)


def unsatisfiable(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, resync: float, windows: int
) -> UnsatisfiableResult:
    """Apply :func:`unsatisfiable_objects`, wait for each Pipeline's condition, then count the
    operator's reconciles over ``windows`` resync periods in which nothing changes."""
    log_start = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    api = client.CustomObjectsApi(cluster.api_client())
    for obj in unsatisfiable_objects():
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj)
    try:
        conditions = wait_for(
            lambda: _explained(api, namespace), timeout=resync * 3 + 60, what="conditions"
        )
    except WaitTimeout as exc:
        now = {n: _condition(api, namespace, n, t) for n, (t, _, _) in UNSATISFIABLE.items()}
        now |= {
            f"camera/{n}": _condition(api, namespace, n, "Ready", "cameras")
            for n in UNSERVED_CAMERAS
        }
        raise AssertionError(f"conditions do not say why: {now}") from exc
    before, started = {k: operator.reconciles(k) for k in RECONCILED_KINDS}, time.monotonic()
    time.sleep(resync * windows)  # a measurement window, not a synchronisation
    count = {k: operator.reconciles(k) - before[k] for k in RECONCILED_KINDS}
    window = time.monotonic() - started
    listed: Any = api.list_cluster_custom_object(GROUP, VERSION, "pipelines")
    pipelines = len(listed["items"])
    tail = operator.log_path.read_text(errors="replace")[log_start:]
    tracebacks = [chunk[:2000] for chunk in tail.split("Traceback (most recent call last)")[1:]]
    return UnsatisfiableResult(
        conditions,
        window,
        count,
        reconcile_bound(pipelines, window, resync),
        pipelines,
        tracebacks,
    )


def run(full: bool) -> Report:
    """The whole scenario on a fresh local cluster with the chart's operator."""
    examples = FULL_EXAMPLES if full else SMALL_EXAMPLES
    resync = 10.0
    with tempfile.TemporaryDirectory(prefix="kv-bad-resources-") as tmp:
        state = Path(tmp)
        with LocalCluster(state) as cluster:
            install_chart(cluster)
            core = client.CoreV1Api(cluster.api_client())
            core.create_namespace({"metadata": {"name": "bad-resources"}})  # type: ignore[arg-type]
            api = client.CustomObjectsApi(cluster.api_client())
            fuzzed = fuzz(api, "bad-resources", examples, fuzz_seed())
            operator = OperatorProcess(cluster, state / "operator.log", resync_seconds=resync)
            runner = PodRunner(cluster.api_client(), state / "pods", model_dir=state)
            operator.start()
            runner.start()
            try:
                unsat = unsatisfiable(cluster, operator, "bad-resources", resync, 6 if full else 3)
            finally:
                runner.stop()
                operator.stop()
    return Report(
        name="bad_resources",
        load="real kube-apiserver with the generated CRDs; the chart's operator",
        faults="none",
        bad_inputs=(
            f"{fuzzed.tried} invalid Camera/Pipeline/ModelVariant objects (hypothesis, seed "
            f"{fuzzed.seed}); {len(UNSATISFIABLE)} valid but unsatisfiable Pipelines"
        ),
        lost=(
            f"{len(fuzzed.accepted)} invalid objects accepted, {len(fuzzed.unnamed)} rejections "
            f"not naming the field, {len(unsat.tracebacks)} operator tracebacks, "
            f"{unsat.reconciles:.0f} reconciles in {unsat.window_seconds:.0f}s "
            f"(bound {unsat.reconcile_bound:.0f})"
        ),
        ok=fuzzed.ok and unsat.ok,
        figures={"fuzz": fuzzed.figures(), "unsatisfiable": unsat.figures()},
        command="make bench-reliability  # python -m benchmarks.reliability --only bad_resources",
    )
