"""Where the shared test assets are, and the rule for a missing one: skip, or fail under CI.

The assets (models, coco128, MOT clips) live outside the repository in ``../shared/assets``;
``KUBEVISION_ASSETS`` points the tests at another copy. A user's clone without them skips the
tests that need them with a reason saying so; under ``CI=true`` that skip fails the test
(``tests/conftest.py``), since CI must never pass by skipping. Call :func:`require` inside a
test or fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

ENV_VAR = "KUBEVISION_ASSETS"
REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """``$KUBEVISION_ASSETS`` if set, else ``../shared/assets`` next to the repository."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "assets"


def require(relative_path: str | Path) -> Path:
    """The asset's path; skips the test when it is missing."""
    path = assets_dir() / relative_path
    if path.exists():
        return path
    pytest.skip(f"test asset {path} is missing (set {ENV_VAR} to a copy of the shared assets)")


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """A BGR image file; fails the test (instead of passing ``None`` on) when it cannot."""
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return image.astype(np.uint8, copy=False)
