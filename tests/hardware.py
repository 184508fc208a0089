"""Tests that need hardware a machine may lack (a CUDA GPU, NVDEC, TensorRT, a GPU build of
ONNX Runtime, a Jetson), and the rule for every other skip.

A hardware-only test skips through :func:`skip_without` (or :func:`reason` in a ``skipif``),
which tags its reason with ``[hardware: <kind>]``. ``tests/conftest.py`` lists those at the end
of the run, and under ``CI=true`` turns any *other* skip into a failure: on a machine where the
README's prerequisites are met, only missing hardware may leave a test unrun.
"""

from __future__ import annotations

import re
from typing import Literal, NoReturn

import pytest

Hardware = Literal["gpu", "nvdec", "tensorrt", "ort-gpu", "jetson"]
_TAG = re.compile(r"\[hardware: ([a-z-]+)\]")


def reason(kind: Hardware, why: str) -> str:
    """A skip reason that marks the test as hardware-only."""
    return f"[hardware: {kind}] {why}"


def skip_without(kind: Hardware, why: str, *, module: bool = False) -> NoReturn:
    """Skip this test (or, with ``module``, the whole module) for want of ``kind``."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    pytest.skip(reason(kind, why), allow_module_level=module)


def hardware_of(skip_reason: str) -> str | None:
    """The hardware kind a skip reason names, or None for a skip of another cause."""
    match = _TAG.search(skip_reason)
    return match.group(1) if match else None
