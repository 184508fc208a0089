"""The CRDs generated from ``kubevision.api``, and the small pieces of logic the models carry.

No cluster needed: a stale, undocumented or non-structural CRD is caught here in seconds, not
when the API server rejects it, prunes fields, or a user runs ``kubectl explain``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubevision.api.camera import CameraSource, CameraSpec
from kubevision.api.common import LabelSelector
from kubevision.api.crd import RESOURCES, Resource, build_crd, drifted
from tests.envtest.controlplane import REPO_ROOT

# JSON-Schema keywords a Kubernetes structural schema must not contain.
NON_STRUCTURAL_KEYWORDS = ("$ref", "anyOf", "oneOf", "allOf", "nullable", "title")

SHORT_NAMES = {"cameras": ["cam"], "pipelines": ["vpl"], "modelvariants": ["mv"]}

by_kind = pytest.mark.parametrize("resource", RESOURCES, ids=[r.kind for r in RESOURCES])


def _version(resource: Resource) -> dict[str, Any]:
    """The single served version of the resource's CRD."""
    versions: list[dict[str, Any]] = build_crd(resource)["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def _schema(resource: Resource) -> dict[str, Any]:
    root: dict[str, Any] = _version(resource)["schema"]["openAPIV3Schema"]
    return root


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` with a readable path.

    Walks only schema positions (properties, items, additionalProperties), so property names
    and default values are never mistaken for schema keywords.
    """
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _nodes(extra, f"{path}{{}}")


def _properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The nodes ``kubectl explain`` shows as fields: those reached through ``properties``."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _properties(child, f"{path}.{name}")
    if "items" in node:
        yield from _properties(node["items"], f"{path}[]")


def _cel_messages(resource: Resource) -> list[str]:
    return [
        rule["message"]
        for _, node in _nodes(_schema(resource), resource.kind)
        for rule in node.get("x-kubernetes-validations", [])
    ]


# --- the CRD files ---------------------------------------------------------------------------


def test_committed_crds_match_the_models() -> None:
    stale = drifted(REPO_ROOT)
    assert not stale, (
        "the CRD YAML has drifted from kubevision.api: run `make crds` and commit the result "
        f"({', '.join(str(p.relative_to(REPO_ROOT)) for p in stale)})"
    )


@by_kind
def test_every_spec_and_status_field_is_documented(resource: Resource) -> None:
    # Descriptions come from the models' attribute docstrings and are what `kubectl explain`
    # prints; a field without one leaves users guessing units and allowed values.
    undocumented = [
        path
        for path, node in _properties(_schema(resource), resource.kind)
        if path.split(".")[1] in ("spec", "status") and not node.get("description")
    ]
    assert not undocumented, f"add an attribute docstring for: {undocumented}"


@by_kind
def test_schema_is_structural(resource: Resource) -> None:
    # The API server refuses non-structural schemas for apiextensions.k8s.io/v1 CRDs.
    for path, node in _nodes(_schema(resource), resource.kind):
        forbidden = [k for k in NON_STRUCTURAL_KEYWORDS if k in node]
        assert not forbidden, f"{path} has {forbidden}"
        assert node.get("type"), f"{path} has no type"
        if "properties" in node:
            assert node["type"] == "object", f"{path} has properties but type {node['type']}"
            assert "additionalProperties" not in node, f"{path} has both kinds of properties"


@by_kind
def test_names_subresources_and_columns(resource: Resource) -> None:
    crd = build_crd(resource)
    names = crd["spec"]["names"]
    assert names["shortNames"] == SHORT_NAMES[resource.plural]
    assert names["categories"] == ["kubevision"]

    version = _version(resource)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("Camera", "spec.source.url must not carry a password"),
        ("Pipeline", "minReplicas must not exceed spec.autoscaling.maxReplicas"),
        ("ModelVariant", "INT8 TensorRT/OpenVINO/Triton variants must name their calibration"),
    ],
)
def test_cel_rule_exists(kind: str, fragment: str) -> None:
    (resource,) = (r for r in RESOURCES if r.kind == kind)
    messages = _cel_messages(resource)
    assert any(fragment in m for m in messages), f"no CEL rule says {fragment!r}: {messages}"


# --- logic on the models ---------------------------------------------------------------------

_APP_CAM = {"app": "cam", "tier": "edge"}


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    """A selector with one matchExpressions entry."""
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param({}, _APP_CAM, True, id="empty-matches-all"),
        pytest.param({}, {}, True, id="empty-matches-unlabelled"),
        pytest.param({"matchLabels": {"app": "cam"}}, _APP_CAM, True, id="matchLabels"),
        pytest.param({"match_labels": {"app": "cam"}}, _APP_CAM, True, id="matchLabels-snake"),
        pytest.param({"matchLabels": {"app": "db"}}, _APP_CAM, False, id="matchLabels-value"),
        pytest.param({"matchLabels": {"zone": "a"}}, _APP_CAM, False, id="matchLabels-missing"),
        pytest.param(
            {"matchLabels": {"app": "cam", "tier": "core"}}, _APP_CAM, False, id="matchLabels-all"
        ),
        pytest.param(_expr("app", "In", "cam", "db"), _APP_CAM, True, id="In"),
        pytest.param(_expr("app", "In", "db"), _APP_CAM, False, id="In-other-value"),
        pytest.param(_expr("zone", "In", "a"), _APP_CAM, False, id="In-missing-key"),
        pytest.param(_expr("app", "NotIn", "db"), _APP_CAM, True, id="NotIn"),
        pytest.param(_expr("app", "NotIn", "cam"), _APP_CAM, False, id="NotIn-listed-value"),
        pytest.param(_expr("zone", "NotIn", "a"), _APP_CAM, True, id="NotIn-missing-key"),
        pytest.param(_expr("app", "Exists"), _APP_CAM, True, id="Exists"),
        pytest.param(_expr("zone", "Exists"), _APP_CAM, False, id="Exists-missing"),
        pytest.param(_expr("zone", "DoesNotExist"), _APP_CAM, True, id="DoesNotExist"),
        pytest.param(_expr("app", "DoesNotExist"), _APP_CAM, False, id="DoesNotExist-present"),
        pytest.param(
            {"matchLabels": {"app": "cam"}, **_expr("tier", "In", "core")},
            _APP_CAM,
            False,
            id="labels-and-expressions-are-ANDed",
        ),
    ],
)
def test_label_selector_matches(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("fps", "sampling", "expected"),
    [
        pytest.param(30, None, 30, id="default-is-all"),
        pytest.param(30, {"mode": "all"}, 30, id="all"),
        pytest.param(30, {"mode": "everyN", "everyN": 3}, 10, id="everyN"),
        pytest.param(12.5, {"mode": "everyN", "every_n": 2}, 6.25, id="everyN-snake"),
        pytest.param(30, {"mode": "adaptive", "minFps": 1, "maxFps": 5}, 5, id="adaptive"),
        pytest.param(10, {"mode": "adaptive", "maxFps": 25}, 10, id="adaptive-capped-by-source"),
        pytest.param(30, {"mode": "adaptive"}, 30, id="adaptive-without-maxFps"),
    ],
)
def test_effective_fps(fps: float, sampling: dict[str, Any] | None, expected: float) -> None:
    spec: dict[str, Any] = {"source": {"url": "rtsp://cam.example/stream"}, "fps": fps}
    if sampling is not None:
        spec["sampling"] = sampling
    assert CameraSpec.model_validate(spec).effective_fps == pytest.approx(expected)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("rtsp://lobby-cam.site-a.example:554/stream1", "lobby-cam.site-a.example"),
        ("rtsps://viewer@dock-cam.example/live", "dock-cam.example"),
        ("file:///var/lib/kubevision/videos/car.mp4", "/var/lib/kubevision/videos/car.mp4"),
        ("v4l2:///dev/video0", "/dev/video0"),
    ],
    ids=["rtsp", "rtsp-with-user", "file", "v4l2"],
)
def test_camera_source_host(url: str, host: str) -> None:
    # The host feeds the Source printer column, so it must never include user info.
    assert CameraSource.model_validate({"url": url}).host == host
