"""Camera status the operator owns: the source host, observedGeneration and the Ready and
Connected conditions.

Each Pipeline writes its own entry of ``status.assignments`` (see :mod:`.pipelines`), with the
stream health its worker reports (:mod:`.streamhealth`); ``Connected`` sums those entries up, so
a camera read by several Pipelines is connected only when every one of their workers reads it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubevision.api.camera import CameraAssignment, CameraSpec, CameraStatus
from kubevision.api.common import Condition, ConditionStatus
from kubevision.operator import conditions as c
from kubevision.operator.streamhealth import pod_name


def desired_status(body: dict[str, Any]) -> dict[str, Any]:
    """The operator-owned part of a Camera's status, as the wire dict to apply."""
    generation = body["metadata"].get("generation")
    current = CameraStatus.model_validate(body.get("status") or {})
    try:
        spec = CameraSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return c.invalid_spec_status(exc, generation, current.conditions)
    if spec.paused:
        ready = c.condition(
            c.READY, "False", c.PAUSED, "spec.paused is true", generation, current.conditions
        )
    elif current.assignments:
        where = ", ".join(f"{a.pipeline}/{a.workload}[{a.shard}]" for a in current.assignments)
        ready = c.condition(
            c.READY,
            "True",
            c.ASSIGNED_TO_WORKER,
            f"processed by {where}",
            generation,
            current.conditions,
        )
    else:
        ready = c.condition(
            c.READY,
            "False",
            c.NO_PIPELINE,
            "no Pipeline with a usable worker selects this camera",
            generation,
            current.conditions,
        )
    connected = connected_condition(
        current.assignments, spec.paused, generation, current.conditions
    )
    return {
        "observedGeneration": generation,
        "sourceHost": spec.source.host,
        "conditions": [ready.wire(), connected.wire()],
    }


def connected_condition(
    entries: list[CameraAssignment],
    paused: bool,
    generation: int | None,
    previous: list[Condition],
) -> Condition:
    """True when every Pipeline's worker receives frames; False, with each failing worker's
    error, when one cannot read the stream; Unknown while one has not reported (or none is
    assigned). Its message changes only with the transitions, never with fps."""
    failing = [a for a in entries if a.connected is False]
    waiting = [a for a in entries if a.connected is None]
    status: ConditionStatus
    if paused or not entries:
        reason = c.PAUSED if paused else c.NO_PIPELINE
        status, message = "Unknown", "no worker reads the stream"
    elif failing:
        reason, status = c.SOURCE_UNREACHABLE, "False"
        message = "; ".join(
            f"pipeline {a.pipeline}: {a.last_error or 'no frames'}" for a in failing
        )
    elif waiting:
        reason, status = c.AWAITING_WORKER, "Unknown"
        message = (
            "waiting for "
            + ", ".join(f"pipeline {a.pipeline}'s worker {pod_name(a)}" for a in waiting)
            + " to report the stream"
        )
    else:
        reason, status = c.STREAMING, "True"
        message = "receiving frames for pipeline " + ", ".join(a.pipeline for a in entries)
    return c.condition(c.CONNECTED, status, reason, message, generation, previous)


def current_status(body: dict[str, Any]) -> dict[str, Any]:
    """The same operator-owned fields as they are now, to compare with :func:`desired_status`."""
    status = body.get("status") or {}
    return {k: status[k] for k in ("observedGeneration", "sourceHost", "conditions") if k in status}


def assignments(status: dict[str, Any] | None) -> dict[str, CameraAssignment]:
    """pipeline -> assignment, from a Camera's status."""
    parsed = CameraStatus.model_validate(status or {})
    return {a.pipeline: a for a in parsed.assignments}
