"""ModelVariant status: which hardware it serves, whether Pipelines may use it, and what the
workers running it found when they fetched its artifact.

Two writers share the status through server-side apply, each owning its own fields:

- the ModelVariant's own handler (:func:`desired_status`): ``observedGeneration``,
  ``hardware``, ``accepted`` (the INT8 accuracy gate), ``hardwareClasses[].measured`` and the
  ``Ready`` and ``Accepted`` conditions;
- each Pipeline's reconciler (:func:`artifact_writes`), under the Pipeline's field manager,
  from its workers' reports (``kubevision_model_*`` metrics and ``/status``):
  ``hardwareClasses[].available``/``verified``/``reason``/``message`` of the classes it runs
  the variant on, and the ``ArtifactVerified`` condition. The same reports give the Pipeline
  its ``ModelsVerified`` condition (:func:`models_condition`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubevision.api.common import Condition
from kubevision.api.modelvariant import (
    HardwareClass,
    HardwareClassStatus,
    ModelVariantSpec,
    ModelVariantStatus,
)
from kubevision.operator import conditions as c
from kubevision.operator.signals import ModelHealth, Scrape

_OWN_CONDITIONS = (c.READY, c.ACCEPTED_BY_GATE)
_MESSAGE_MAX = 1024

ModelReports = Mapping[str, Mapping[str, ModelHealth]]
"""Worker pod -> its models' health by role, from this tick's scrape."""


def desired_status(body: dict[str, Any]) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    current = ModelVariantStatus.model_validate(body.get("status") or {})
    try:
        spec = ModelVariantSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return c.invalid_spec_status(exc, generation, current.conditions)
    hardware = ",".join(h.accelerator for h in spec.hardware)
    accepted = spec.accepted()
    conditions = []
    if accepted is None:
        ready = c.condition(
            c.READY, "True", c.ACCEPTED, f"usable on {hardware}", generation, current.conditions
        )
    else:
        reason, message = _gate_verdict(spec)
        conditions.append(
            c.condition(
                c.ACCEPTED_BY_GATE,
                "True" if accepted else "False",
                reason,
                message,
                generation,
                current.conditions,
            )
        )
        ready = c.condition(
            c.READY,
            "True" if accepted else "False",
            c.ACCEPTED if accepted else reason,
            f"usable on {hardware}" if accepted else f"never selected: {message}",
            generation,
            current.conditions,
        )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "hardware": hardware,
        "hardwareClasses": [
            {"accelerator": h.accelerator, "measured": h.measured is not None}
            for h in spec.hardware
        ],
        "conditions": [ready.wire(), *(x.wire() for x in conditions)],
    }
    if accepted is not None:
        status["accepted"] = accepted
    return status


def current_status(body: dict[str, Any]) -> dict[str, Any]:
    """The fields :func:`desired_status` owns, as they are now (to skip no-op writes)."""
    status = body.get("status") or {}
    out = {k: status[k] for k in ("observedGeneration", "hardware", "accepted") if k in status}
    if "hardwareClasses" in status:
        out["hardwareClasses"] = [
            {"accelerator": h["accelerator"], "measured": h.get("measured")}
            for h in status["hardwareClasses"]
            if "measured" in h
        ]
    if "conditions" in status:
        out["conditions"] = [x for x in status["conditions"] if x.get("type") in _OWN_CONDITIONS]
    return out


def _gate_verdict(spec: ModelVariantSpec) -> tuple[str, str]:
    gate = spec.accuracy_gate
    if gate is None:
        return c.ACCURACY_NOT_MEASURED, (
            "INT8 detector without spec.accuracyGate: measure it against its FP32 parent "
            "(python -m model_catalog.tools.int8 gate)"
        )
    summary = (
        f"{gate.metric} {gate.value:.4f} vs {gate.parent_value:.4f} for {gate.parent} on "
        f"{gate.dataset}: {gate.loss_points:.2f} points lost, budget {gate.budget_points:g}"
    )
    return (c.WITHIN_BUDGET if gate.accepted else c.BUDGET_EXCEEDED), summary


# -- what the workers found ---------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What a Pipeline's workers found for one variant on one hardware class this tick."""

    available: bool
    verified: bool | None
    reason: str | None = None
    message: str | None = None


def reports(scrapes: Mapping[str, Mapping[str, Scrape]], since: float) -> dict[str, Any]:
    """This tick's model reports by pod from the autoscaler's scrapes (those since ``since``;
    a pod that did not answer now has no report)."""
    return {
        pod: scraped.models
        for pods in scrapes.values()
        for pod, scraped in pods.items()
        if scraped.at >= since
    }


def group_of(pod: str) -> str:
    """The worker group (StatefulSet) of a pod named ``<group>-<ordinal>``."""
    return pod.rsplit("-", 1)[0]


def observations(
    reports: ModelReports, hardware_of: Mapping[str, HardwareClass]
) -> dict[tuple[str, HardwareClass], Observation]:
    """(variant, hardware class) -> what the reports say; a failure outweighs a success of
    the same variant elsewhere on the class (one node's bad cache is still worth seeing)."""
    found: dict[tuple[str, HardwareClass], Observation] = {}
    for pod, models in sorted(reports.items()):
        hardware = hardware_of.get(group_of(pod))
        if hardware is None:
            continue
        for health in models.values():
            if health.verified:
                found.setdefault((health.variant, hardware), Observation(True, True))
                continue
            mismatch = health.reason == c.CHECKSUM_MISMATCH
            found[health.variant, hardware] = Observation(
                available=mismatch,
                verified=False if mismatch else None,
                reason=health.reason,
                message=_bounded(f"pod {pod}: {health.message or health.reason}"),
            )
    return found


def artifact_writes(
    found: Mapping[tuple[str, HardwareClass], Observation],
    statuses: Mapping[str, ModelVariantStatus],
    now: dt.datetime,
) -> dict[str, dict[str, Any]]:
    """variant -> the status to apply under the Pipeline's field manager, only for variants
    whose reported state differs from what their status shows (an unchanged one costs no
    write); ``statuses`` holds the variants' current status by name."""
    by_variant: dict[str, dict[HardwareClass, Observation]] = {}
    for (variant, hardware), observation in found.items():
        by_variant.setdefault(variant, {})[hardware] = observation
    writes = {}
    for variant, classes in sorted(by_variant.items()):
        current = statuses.get(variant)
        if current is None:
            continue  # not a ModelVariant of this namespace (any more)
        shown = {h.accelerator: h for h in current.hardware_classes}
        if all(_same(shown.get(hw), seen) for hw, seen in classes.items()):
            continue
        stamp = now.astimezone(dt.UTC).replace(microsecond=0)
        entries = [
            HardwareClassStatus(
                accelerator=hw,
                available=seen.available,
                verified=seen.verified,
                reason=seen.reason,
                message=seen.message,
                last_update_time=stamp,
            ).wire()
            for hw, seen in sorted(classes.items())
        ]
        writes[variant] = {
            "hardwareClasses": entries,
            "conditions": [_artifact_condition(classes, current.conditions).wire()],
        }
    return writes


def _same(shown: HardwareClassStatus | None, seen: Observation) -> bool:
    if shown is None:
        return False
    return (shown.available, shown.verified, shown.reason, shown.message) == (
        seen.available,
        seen.verified,
        seen.reason,
        seen.message,
    )


def _artifact_condition(
    classes: Mapping[HardwareClass, Observation], previous: Iterable[Condition]
) -> Condition:
    bad = [(hw, o) for hw, o in sorted(classes.items()) if not (o.available and o.verified)]
    if not bad:
        where = ", ".join(sorted(classes))
        return c.condition(
            c.ARTIFACT_VERIFIED,
            "True",
            c.CHECKSUM_MATCHED,
            f"workers on {where} fetched the artifact and its SHA-256 matched",
            None,
            previous,
        )
    first = bad[0][1]
    message = "; ".join(f"{hw}: {o.message}" for hw, o in bad)
    return c.condition(
        c.ARTIFACT_VERIFIED, "False", first.reason or "Unknown", _bounded(message), None, previous
    )


def models_condition(
    reports: ModelReports | None, generation: int | None, previous: list[Condition]
) -> Condition:
    """The Pipeline's ModelsVerified: every ready worker runs its configured models, whose
    artifacts matched their checksums; else which pod, which model and why (the worker keeps
    running what it had). Without a fresh scrape, what the condition said stays."""
    if reports is None:
        kept = next((x for x in previous if x.type == c.MODELS_VERIFIED), None)
        if kept is not None:
            return kept
        return c.condition(
            c.MODELS_VERIFIED, "Unknown", c.AWAITING_METRICS, "no worker report yet", generation
        )
    failures = [
        (pod, health)
        for pod, models in sorted(reports.items())
        for _, health in sorted(models.items())
        if not health.verified
    ]
    if failures:
        message = "; ".join(
            f"pod {pod}: {h.role} {h.variant} not loaded ({h.message or h.reason}); "
            f"still running {h.running or 'nothing'}"
            for pod, h in failures
        )
        reason = failures[0][1].reason or "Unknown"
        return c.condition(
            c.MODELS_VERIFIED, "False", reason, _bounded(message, 4096), generation, previous
        )
    if not any(reports.values()):
        return c.condition(
            c.MODELS_VERIFIED,
            "Unknown",
            c.AWAITING_METRICS,
            "no ready worker reported its models yet",
            generation,
            previous,
        )
    return c.condition(
        c.MODELS_VERIFIED,
        "True",
        c.CHECKSUM_MATCHED,
        "every ready worker runs its configured models; their artifacts' SHA-256 matched",
        generation,
        previous,
    )


def _bounded(text: str, limit: int = _MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
