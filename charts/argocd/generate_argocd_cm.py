"""Writes argocd-cm.yaml: the argocd-cm entries that give Argo CD KubeVision's health checks.

The Lua files in health/ are the source; the ConfigMap inlines them verbatim (the shared
common.lua in front of each KubeVision check), so run this after editing one
(``python -m charts.argocd.generate_argocd_cm``). A unit test fails on drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "argocd-cm.yaml"
SCRIPTS = {
    "resource.customizations.health.kubevision.io_Camera": (
        "health/common.lua",
        "health/camera.lua",
    ),
    "resource.customizations.health.kubevision.io_Pipeline": (
        "health/common.lua",
        "health/pipeline.lua",
    ),
    "resource.customizations.health.kubevision.io_ModelVariant": (
        "health/common.lua",
        "health/modelvariant.lua",
    ),
    "resource.customizations.health.argoproj.io_Application": ("health/application.lua",),
}
"""argocd-cm key -> the files its script is made of, in order, relative to this folder (keys
are <group>_<Kind>). Argo CD runs each script alone, so the shared helpers of common.lua are
put in front of every KubeVision check."""


def script(key: str) -> str:
    """The Lua text Argo CD runs for ``key``."""
    return "".join((HERE / path).read_text() for path in SCRIPTS[key])


HEADER = """\
# Generated from charts/argocd/health/*.lua by `python -m charts.argocd.generate_argocd_cm`.
# Merge into Argo CD's own ConfigMap (keeps its other keys):
#   kubectl -n argocd patch configmap argocd-cm --type merge \\
#     --patch-file charts/argocd/argocd-cm.yaml
"""


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so the scripts stay readable in the YAML."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def configmap() -> dict[str, Any]:
    """The ConfigMap carrying every script, keyed as Argo CD expects."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {
                "app.kubernetes.io/name": "argocd-cm",
                "app.kubernetes.io/part-of": "argocd",
            },
        },
        "data": {key: script(key) for key in SCRIPTS},
    }


def render() -> str:
    """The text of argocd-cm.yaml."""
    body = yaml.dump(configmap(), Dumper=_LiteralDumper, sort_keys=False, width=1000)
    return HEADER + body


if __name__ == "__main__":
    OUTPUT.write_text(render())
