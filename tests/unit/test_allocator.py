"""The worker's malloc settings: applied on glibc unless the environment already says."""

from __future__ import annotations

import platform

import pytest

from kubevision.worker.allocator import ARENA_MAX, MMAP_THRESHOLD_BYTES, tune_allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")


@glibc
def test_both_settings_are_applied_on_glibc() -> None:
    assert tune_allocator({}) == {
        "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES,
        "MALLOC_ARENA_MAX": ARENA_MAX,
    }


@glibc
@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"])
def test_a_setting_from_the_environment_wins(variable: str) -> None:
    applied = tune_allocator({variable: "65536"})
    assert variable not in applied
    assert len(applied) == 1
