"""Packaging: the design card's folders map onto ``kubevision.*`` import names safely."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.envtest.controlplane import REPO_ROOT


def test_repo_root_does_not_shadow_the_standard_library_operator_module() -> None:
    # `python -m ...` from the repo root puts operator/ first on sys.path; it must stay a
    # namespace folder (no __init__.py) so the standard library's operator module still wins.
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import operator; print(operator.__file__)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()).name == "operator.py"


def test_wheel_carries_every_source_folder_under_kubevision(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", f"--wheel-dir={tmp_path}", "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("kubevision-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("api/__init__.py", "operator/cli.py", "worker/cli.py"):
        assert f"kubevision/{module}" in names
