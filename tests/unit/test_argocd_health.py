"""Argo CD integration (charts/argocd/): the health checks run in real Lua interpreters the way
Argo CD runs them, the argocd-cm snippet carries exactly those scripts, and the Applications
and the example site hang together.

Argo CD (util/lua/lua.go) runs a custom health script in a fresh VM with only the base, table
and package libraries and a safe os: no string or math library. The resource is the global
``obj`` (its JSON as nested tables) and the script returns a table whose ``status`` must be one
of the health codes. :func:`health` does the same in Lua 5.1 (Argo CD's gopher-lua implements
5.1) and in 5.2-5.4, so the scripts stay portable.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from charts.argocd import generate_argocd_cm
from kubevision.api.camera import CameraSpec
from kubevision.api.common import ApiModel
from kubevision.api.modelvariant import ModelVariantSpec
from kubevision.api.pipeline import PipelineSpec

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "charts" / "argocd"
FIXTURES = REPO / "tests" / "fixtures" / "argocd"
SCRIPTS = {
    "Camera": "resource.customizations.health.kubevision.io_Camera",
    "Pipeline": "resource.customizations.health.kubevision.io_Pipeline",
    "ModelVariant": "resource.customizations.health.kubevision.io_ModelVariant",
    "Application": "resource.customizations.health.argoproj.io_Application",
}
"""kind -> its argocd-cm key (the script is what the generator composes for that key)."""
LUA_VERSIONS = ("lua51", "lua52", "lua53", "lua54")
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
OUTCOMES = {
    "Camera": {"Healthy", "Progressing", "Degraded", "Suspended"},
    "Pipeline": {"Healthy", "Progressing", "Degraded"},
    "ModelVariant": {"Healthy", "Progressing", "Degraded"},
    "Application": {"Healthy", "Progressing", "Degraded"},
}
"""The outcomes each kind's fixtures must cover."""

_ARGO_VM = """
local keep = {
  _G = true, _VERSION = true, assert = true, error = true, getmetatable = true, ipairs = true,
  load = true, loadstring = true, next = true, pairs = true, pcall = true, print = true,
  rawequal = true, rawget = true, rawlen = true, rawset = true, select = true,
  setmetatable = true, tonumber = true, tostring = true, type = true, unpack = true,
  xpcall = true, table = true, package = true, require = true, os = true,
}
local safe_os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time}
for name in pairs(_G) do
  if not keep[name] then
    _G[name] = nil
  end
end
os = safe_os
getmetatable("").__index = nil
"""
"""Cuts a stock Lua VM down to what Argo CD offers: no string methods either."""


class _JsonLoader(yaml.SafeLoader):
    """YAML read as the API server's JSON: timestamps stay strings."""


_JsonLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def health(obj: dict[str, Any], lua_version: str = "lua51") -> dict[str, Any]:
    """The health Argo CD computes for ``obj`` with our script for its kind."""
    return run_health(generate_argocd_cm.script(SCRIPTS[obj["kind"]]), obj, lua_version)


def run_health(script: str, obj: dict[str, Any], lua_version: str) -> dict[str, Any]:
    """Runs ``script`` in an Argo CD-like VM with ``obj`` as the global, returns its table."""
    lupa: ModuleType = importlib.import_module(f"lupa.{lua_version}")
    lua = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(_ARGO_VM)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    assert lupa.lua_type(result) == "table", f"the script returned {result!r}, not a table"
    hs = dict(result.items())
    # Argo CD turns an unknown status into Unknown "Lua returned an invalid health status"
    assert hs.get("status") in HEALTH_CODES, hs
    assert isinstance(hs.get("message", ""), str), hs
    return hs


def load_cases(path: Path) -> list[dict[str, Any]]:
    """One fixture file: a list of {case, health, message, object}."""
    return list(yaml.load(path.read_text(), Loader=_JsonLoader))


def _all_cases() -> list[Any]:
    return [
        pytest.param(case, id=f"{path.stem}: {case['case']}")
        for path in sorted(FIXTURES.glob("*.yaml"))
        for case in load_cases(path)
    ]


# -- the health scripts --------------------------------------------------------------------------


@pytest.mark.parametrize("lua_version", LUA_VERSIONS)
@pytest.mark.parametrize("case", _all_cases())
def test_health_of_each_status(case: dict[str, Any], lua_version: str) -> None:
    hs = health(case["object"], lua_version)
    assert (hs["status"], hs.get("message", "")) == (case["health"], case["message"])


@pytest.mark.parametrize("kind", sorted(OUTCOMES))
def test_fixtures_cover_every_outcome(kind: str) -> None:
    cases = [c for c in _all_cases() if c.values[0]["object"]["kind"] == kind]
    assert {c.values[0]["health"] for c in cases} == OUTCOMES[kind]


def test_live_fixtures_hold_statuses_the_operator_wrote() -> None:
    """live.yaml comes from tests/integration/test_argocd_health_live.py, not from a pen."""
    cases = load_cases(FIXTURES / "live.yaml")
    assert {c["object"]["kind"] for c in cases} == {"Camera", "Pipeline", "ModelVariant"}
    assert {c["health"] for c in cases} >= {"Healthy", "Suspended", "Degraded"}
    for case in cases:
        status = case["object"]["status"]
        assert status["observedGeneration"] == case["object"]["metadata"]["generation"]
        assert all("lastTransitionTime" in c for c in status["conditions"])


@pytest.mark.parametrize("lua_version", LUA_VERSIONS)
def test_the_vm_is_as_bare_as_argo_cds(lua_version: str) -> None:
    """A script using the string library fails here as it would in Argo CD."""
    obj = {"kind": "Camera", "metadata": {"name": "c"}}
    with pytest.raises(Exception, match=r"string|find"):
        run_health('return {status = ("Healthy"):find("H") and "Healthy"}', obj, lua_version)


# -- argocd-cm.yaml ------------------------------------------------------------------------------


def _crd_key(path: Path) -> str:
    spec = yaml.safe_load(path.read_text())["spec"]
    return f"resource.customizations.health.{spec['group']}_{spec['names']['kind']}"


def test_argocd_cm_inlines_every_script_byte_for_byte() -> None:
    text = generate_argocd_cm.OUTPUT.read_text()
    cm = yaml.safe_load(text)
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    crd_keys = {_crd_key(p) for p in (REPO / "crds").glob("*.kubevision.io.yaml")}
    application = "resource.customizations.health.argoproj.io_Application"
    assert set(cm["data"]) == crd_keys | {application}
    for key in generate_argocd_cm.SCRIPTS:
        assert cm["data"][key] == generate_argocd_cm.script(key), f"{key} differs from its files"
    assert text == generate_argocd_cm.render(), (
        "stale: run python -m charts.argocd.generate_argocd_cm"
    )


# -- the Applications ----------------------------------------------------------------------------

SYNC_OPTIONS = {"ServerSideApply=true", "CreateNamespace=true"}
"""The Argo CD sync options these Applications may use (a typo would be silently ignored)."""


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _applications() -> dict[str, dict[str, Any]]:
    apps = _docs(ARGOCD / "application.yaml")
    for path in sorted((ARGOCD / "apps").glob("*.yaml")):
        apps += _docs(path)
    return {a["metadata"]["name"]: a for a in apps}


def _wave(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


@pytest.mark.parametrize("name", sorted(_applications()))
def test_application_is_complete(name: str) -> None:
    app = _applications()[name]
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    spec = app["spec"]
    assert spec["project"] == "default"
    source = spec["source"]
    assert source["repoURL"].startswith("https://")
    assert source["targetRevision"]
    assert (REPO / source["path"]).is_dir(), source["path"]
    assert spec["destination"]["server"] == "https://kubernetes.default.svc"
    assert set(spec["syncPolicy"].get("syncOptions", [])) <= SYNC_OPTIONS
    assert set(spec["syncPolicy"]["automated"]) <= {"prune", "selfHeal"}


def test_app_of_apps_syncs_crds_then_operator_then_site() -> None:
    apps = _applications()
    children = {d["metadata"]["name"] for p in (ARGOCD / "apps").glob("*.yaml") for d in _docs(p)}
    assert apps["kubevision"]["spec"]["source"]["path"] == "charts/argocd/apps"
    assert children == {"kubevision-crds", "kubevision-operator", "kubevision-site-a"}
    order = ("kubevision-crds", "kubevision-operator", "kubevision-site-a")
    waves = [_wave(apps[name]) for name in order]
    assert waves == sorted(set(waves)), waves


def test_crds_are_never_pruned_and_come_from_the_chart() -> None:
    crds = _applications()["kubevision-crds"]
    assert crds["spec"]["syncPolicy"]["automated"]["prune"] is False
    assert "resources-finalizer.argocd.argoproj.io" not in crds["metadata"].get("finalizers", [])
    assert "ServerSideApply=true" in crds["spec"]["syncPolicy"]["syncOptions"]
    folder = REPO / crds["spec"]["source"]["path"]
    docs = [d for p in folder.glob("*.yaml") for d in _docs(p)]
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}
    ours = [d for p in (REPO / "crds").glob("*.yaml") for d in _docs(p)]
    assert {d["metadata"]["name"] for d in docs} >= {d["metadata"]["name"] for d in ours}


def _leaves(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in values.items():
        path = (*prefix, key)
        out += _leaves(value, path) if isinstance(value, dict) and value else [path]
    return out


def test_operator_app_installs_the_chart_without_its_crds() -> None:
    source = _applications()["kubevision-operator"]["spec"]["source"]
    assert source["path"] == "charts/kubevision"
    helm = source["helm"]
    assert helm["skipCrds"] is True
    defaults = yaml.safe_load((REPO / "charts" / "kubevision" / "values.yaml").read_text())
    for path in _leaves(helm["valuesObject"]):
        node: Any = defaults
        for key in path:
            assert key in node, f"values.yaml has no {'.'.join(path)}"
            node = node[key]


# -- the example site ----------------------------------------------------------------------------

SPECS: dict[str, type[ApiModel]] = {
    "ModelVariant": ModelVariantSpec,
    "Camera": CameraSpec,
    "Pipeline": PipelineSpec,
}


def _site() -> list[dict[str, Any]]:
    site = _applications()["kubevision-site-a"]["spec"]["source"]["path"]
    return [d for p in sorted((REPO / site).glob("*.yaml")) for d in _docs(p)]


def test_example_site_is_valid_and_ordered() -> None:
    objects = _site()
    assert sorted(o["kind"] for o in objects) == ["Camera", "ModelVariant", "Pipeline"]
    by_kind = {o["kind"]: o for o in objects}
    for obj in objects:
        assert obj["apiVersion"] == "kubevision.io/v1alpha1"
        assert "namespace" not in obj["metadata"], "Argo CD's destination sets the namespace"
        SPECS[obj["kind"]].model_validate(obj["spec"])
    assert _wave(by_kind["ModelVariant"]) < _wave(by_kind["Camera"]) == _wave(by_kind["Pipeline"])
    pipeline = PipelineSpec.model_validate(by_kind["Pipeline"]["spec"])
    assert pipeline.camera_selector.matches(by_kind["Camera"]["metadata"]["labels"])
    assert pipeline.detector.variant == by_kind["ModelVariant"]["metadata"]["name"]
