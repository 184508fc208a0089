"""Choosing the ModelVariant for a stage on one kind of hardware.

A variant qualifies when it is the named variant or belongs to the named family, does the
stage's task, is accepted on accuracy (an INT8 detector must be within its accuracy gate's
budget: ``ModelVariantSpec.accepted``), runs on the hardware class (with its extra node labels
present on some node of the group) and, for the detector, meets the Pipeline's SLO there.
Among those the most accurate wins; throughput breaks ties, then the name (so the choice is
deterministic).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubevision.api.modelvariant import (
    HardwareClass,
    HardwareTarget,
    ModelVariantSpec,
    ModelVariantStatus,
    Task,
)
from kubevision.api.pipeline import ModelRef, Slo
from kubevision.operator.hardware import NodeInfo


@dataclass(frozen=True)
class Variant:
    """A ModelVariant as the operator's index holds it."""

    name: str
    spec: ModelVariantSpec
    status: ModelVariantStatus | None = None
    """What its status says (the workers' artifact reports: :mod:`.modelvariants`)."""


@dataclass(frozen=True)
class Choice:
    """A variant and its figures on the chosen hardware."""

    variant: Variant
    target: HardwareTarget


def describe(ref: ModelRef) -> str:
    return f"variant {ref.variant}" if ref.variant else f"family {ref.family}"


def choose_variant(
    ref: ModelRef,
    task: Task,
    hardware: HardwareClass,
    nodes: Iterable[NodeInfo],
    variants: Iterable[Variant],
    slo: Slo | None = None,
) -> Choice | None:
    """The best variant for ``ref`` on ``hardware``; ``slo`` given only for the detector."""
    node_list = list(nodes)
    candidates = []
    for variant in variants:
        spec = variant.spec
        if spec.task != task or not _named_by(ref, variant) or spec.accepted() is False:
            continue
        target = spec.target(hardware)
        if target is None or not any(n.matches(target.node_selector) for n in node_list):
            continue
        if slo is not None and not _meets(target, slo):
            continue
        candidates.append(Choice(variant, target))
    if not candidates:
        return None
    return max(candidates, key=_rank)


def smaller_variant(
    ref: ModelRef,
    hardware: HardwareClass,
    nodes: Iterable[NodeInfo],
    variants: Iterable[Variant],
    current: Choice,
) -> Choice | None:
    """The degradation ladder's last step: the largest detector smaller than ``current``
    (fewer GFLOPs) that ``ref`` names and that runs on ``hardware``; None if there is none."""
    size = current.variant.spec.gflops
    if size is None:
        return None
    node_list = list(nodes)
    smaller = [
        Choice(v, t)
        for v in variants
        if v.spec.task == "detect"
        and _named_by(ref, v)
        and v.spec.accepted() is not False
        and v.spec.gflops is not None
        and v.spec.gflops < size
        and (t := v.spec.target(hardware)) is not None
        and any(n.matches(t.node_selector) for n in node_list)
    ]
    return max(
        smaller, key=lambda c: (c.variant.spec.gflops or 0.0, c.target.expected_fps), default=None
    )


def _named_by(ref: ModelRef, variant: Variant) -> bool:
    if ref.variant is not None:
        return variant.name == ref.variant
    return variant.spec.family == ref.family


def _meets(target: HardwareTarget, slo: Slo) -> bool:
    return target.p99_latency_ms <= slo.p99_latency_ms and target.expected_fps >= slo.min_fps


def _rank(choice: Choice) -> tuple[float, float, str]:
    accuracy = choice.variant.spec.accuracy
    return (accuracy.value if accuracy else 0.0, choice.target.expected_fps, choice.variant.name)
