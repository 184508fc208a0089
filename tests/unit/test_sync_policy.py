"""How the worker's threads wait for the GPU: with ``blocking`` a thread waiting on a long
kernel sleeps instead of spinning a core (measured as the process's CPU time over the wait),
the context keeps its other flags, and a host without the NVIDIA driver says so. The GPU tests
run each policy in a fresh process (the policy belongs to the process's CUDA context) and are
skipped without a GPU (CI); run on the GPU machine by the device scripts."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from typing import Any

import pytest
import torch

from kubevision.worker.gpu.sync_policy import SyncPolicyError, set_sync_policy
from tests import hardware

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason=hardware.reason("gpu", "needs a CUDA GPU")
)

WAIT = """
import json, time, ctypes, torch
from kubevision.worker.gpu.sync_policy import set_sync_policy
set_sync_policy({policy!r})
a = torch.randn(4096, 4096, device="cuda")
a = a @ a / 64  # cuBLAS starts up (host work) outside the measured wait
torch.cuda.synchronize()
start, cpu = time.perf_counter(), time.process_time()
for _ in range(400):
    a = a @ a / 64  # ~1-2 s of kernels queued at once, then one wait
torch.cuda.synchronize()
driver = ctypes.CDLL("libcuda.so.1")
flags, active = ctypes.c_uint(), ctypes.c_int()
driver.cuDevicePrimaryCtxGetState(0, ctypes.byref(flags), ctypes.byref(active))
print(json.dumps({{"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "flags": flags.value, "active": active.value}}))
"""


def waited(policy: str) -> dict[str, Any]:
    """A fresh process's wall and CPU seconds over one long GPU wait under ``policy``."""
    done = subprocess.run(
        [sys.executable, "-c", WAIT.format(policy=policy)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@needs_gpu
def test_a_gpu_wait_sleeps_when_blocking_and_holds_a_core_when_spinning() -> None:
    blocking, spinning = waited("blocking"), waited("spin")
    assert blocking["active"] == 1
    assert blocking["flags"] & 0x07 == 0x04
    assert spinning["flags"] & 0x07 == 0x01
    assert spinning["cpu"] > 0.6 * spinning["wall"], spinning  # the busy wait holds a core
    assert blocking["cpu"] < 0.3 * blocking["wall"], blocking  # the thread slept


@pytest.mark.skipif(
    ctypes.util.find_library("cuda") is not None, reason="this host has the NVIDIA driver"
)
def test_without_the_driver_the_policy_says_why() -> None:
    with pytest.raises(SyncPolicyError, match="NVIDIA driver library is not loadable"):
        set_sync_policy("blocking")
