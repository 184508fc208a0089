"""How this process's threads wait for the GPU: asleep in the driver, or spinning on a core.

CUDA's default (``CU_CTX_SCHED_AUTO``) spins a waiting thread whenever the host has more
cores than the process has CUDA contexts, which is every GPU server. A worker waits for the GPU
in many threads at once: each camera's capture thread while NVDEC maps a picture or converts
the last one, the inference thread for a batch's boxes, the finishing thread for the
classifier's answers. Under MPS those waits are long (other processes' kernels run first), so
spinning costs whole cores that the next worker process needs. ``blocking`` puts waiters to
sleep until the GPU signals (``CU_CTX_SCHED_BLOCKING_SYNC``), at the cost of a wake-up
(microseconds) per wait; ``spin`` and ``auto`` are CUDA's own policies, kept for comparison.

The policy belongs to each GPU's primary context, which torch and PyNvVideoCodec share, and is
set through the driver API (``libcuda``) before either of them first touches the GPU.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Literal

log = logging.getLogger(__name__)

SyncPolicy = Literal["blocking", "spin", "auto"]
SYNC_POLICIES: tuple[SyncPolicy, ...] = ("blocking", "spin", "auto")

_SCHED_FLAGS: dict[SyncPolicy, int] = {"auto": 0x00, "spin": 0x01, "blocking": 0x04}
"""``CU_CTX_SCHED_AUTO``, ``CU_CTX_SCHED_SPIN``, ``CU_CTX_SCHED_BLOCKING_SYNC`` (cuda.h)."""
_SCHED_MASK = 0x07


class SyncPolicyError(RuntimeError):
    """The driver refused the policy (its message and CUresult say why)."""


def set_sync_policy(policy: SyncPolicy) -> int:
    """Give every visible GPU's primary context ``policy``, keeping its other flags; returns
    how many GPUs got it. Call it before the process's first CUDA work: a context that is
    already active may keep its old policy on drivers before CUDA 11."""
    driver = _driver()
    _check(driver, driver.cuInit(0), "cuInit")
    count = ctypes.c_int()
    _check(driver, driver.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    set_flags = getattr(driver, "cuDevicePrimaryCtxSetFlags_v2", None)
    set_flags = set_flags or driver.cuDevicePrimaryCtxSetFlags
    for index in range(count.value):
        device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
        _check(driver, driver.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
        _check(
            driver,
            driver.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)),
            "cuDevicePrimaryCtxGetState",
        )
        wanted = (flags.value & ~_SCHED_MASK) | _SCHED_FLAGS[policy]
        _check(driver, set_flags(device, ctypes.c_uint(wanted)), "cuDevicePrimaryCtxSetFlags")
    log.info("cuda sync policy=%s gpus=%d", policy, count.value)
    return count.value


def _driver() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise SyncPolicyError(f"the NVIDIA driver library is not loadable: {exc}") from exc


def _check(driver: ctypes.CDLL, result: int, call: str) -> None:
    if result == 0:
        return
    name = ctypes.c_char_p()
    driver.cuGetErrorName(result, ctypes.byref(name))
    text = name.value.decode() if name.value else "unknown error"
    raise SyncPolicyError(f"{call} failed: {text} ({result})")
