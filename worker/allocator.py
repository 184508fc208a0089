"""glibc malloc settings for a process that decodes video in many short-lived threads.

Measured with the soak benchmark (8 cameras, one replaced and one restarted every 10 s): under
glibc's defaults RSS rose 35 % over 36 camera changes before levelling off, with FDs, threads
and Python objects flat. Two defaults cause it. The mmap threshold is dynamic: once a frame-sized
buffer allocated with mmap is freed, glibc raises the threshold, so later frames come from the
heap and fragment it. And every capture/decoder thread may get its own arena (up to 8 per core),
each holding its share of that freed memory. Fixing the threshold at 128 KiB (frames are always
mmapped and returned to the OS when freed) and capping arenas at 2 kept RSS flat (-0.1 %, the
same run): ``python -m benchmarks.reliability --only soak``.

The same can be set with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_ARENA_MAX`` before the process
starts; doing it here covers every way the worker runs (pod, ``kubevision-worker run``, tests).
An explicit environment setting wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""``mallopt`` parameter numbers from glibc's <malloc.h>."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own starting threshold; setting it explicitly turns off the dynamic raise."""
ARENA_MAX = 2

_SETTINGS = (
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    ("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENA_MAX),
)


def tune_allocator(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply the settings glibc has not been given through the environment; returns what was
    set (empty where the C library is not glibc, e.g. musl or macOS)."""
    environ = os.environ if environ is None else environ
    mallopt = _mallopt()
    if mallopt is None:
        return {}
    applied = {}
    for variable, parameter, value in _SETTINGS:
        if variable in environ:
            continue
        if mallopt(parameter, value) == 1:
            applied[variable] = value
        else:
            log.warning("mallopt refused %s=%d", variable, value, extra={"setting": variable})
    return applied


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        raw = libc.mallopt
    except (OSError, AttributeError):
        return None
    raw.argtypes = (ctypes.c_int, ctypes.c_int)
    raw.restype = ctypes.c_int
    function: Callable[[int, int], int] = raw
    return function
