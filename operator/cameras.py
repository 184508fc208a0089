"""Camera status the operator owns: the source host, observedGeneration and the Ready and
Connected conditions (the Camera's summary).

Each Pipeline writes its own entry of ``status.assignments`` (see :mod:`.pipelines`), with the
stream health its worker reports (:mod:`.streamhealth`); ``Connected`` sums those entries up, so
a camera read by several Pipelines is connected only when every one of their workers reads it.
A Pipeline's write carries the summary as it will be after the write (:func:`entry_write`), so
placing a camera is one write; the operator's own write (:func:`desired_status`, on every
Camera event) corrects what that could not know (a spec edit, another Pipeline's entry written
at the same moment) and writes Cameras no Pipeline takes.
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
    generation, spec, current = _parse(body)
    return summary(spec, generation, current.assignments, current.conditions)


def entry_write(
    spec: CameraSpec | ValidationError,
    generation: int | None,
    status: CameraStatus,
    pipeline: str,
    entry: CameraAssignment | None,
) -> dict[str, Any]:
    """What a Pipeline's manager applies to set (``entry``) or drop (None) its entry of a
    Camera's ``status.assignments``: the entry and the Camera's summary as it will then be, so
    one write places the camera and says so (the operator's own status write then finds
    nothing to change: at 10,000 Cameras that halves a GitOps burst's writes). Every write of
    a Pipeline's manager carries the summary: an apply that left out fields the manager owned
    alone would delete them."""
    entries = [a for a in status.assignments if a.pipeline != pipeline]
    entries += [entry] if entry is not None else []
    own = {"assignments": [entry.wire()]} if entry is not None else {}
    return own | summary(spec, generation, entries, status.conditions)


def entry_write_for(
    body: dict[str, Any], pipeline: str, entry: CameraAssignment | None
) -> dict[str, Any]:
    """:func:`entry_write` for a Camera as the API returns it."""
    generation, spec, current = _parse(body)
    return entry_write(spec, generation, current, pipeline, entry)


def _parse(body: dict[str, Any]) -> tuple[int | None, CameraSpec | ValidationError, CameraStatus]:
    current = CameraStatus.model_validate(body.get("status") or {})
    try:
        spec: CameraSpec | ValidationError = CameraSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        spec = exc
    return body["metadata"].get("generation"), spec, current


def summary(
    spec: CameraSpec | ValidationError,
    generation: int | None,
    entries: list[CameraAssignment],
    previous: list[Condition],
) -> dict[str, Any]:
    """observedGeneration, sourceHost, Ready and Connected for a Camera whose Pipelines'
    entries are ``entries`` (in any order: messages name them sorted, so every writer that
    knows the same entries writes the same status)."""
    if isinstance(spec, ValidationError):
        return c.invalid_spec_status(spec, generation, previous)
    entries = sorted(entries, key=lambda a: a.pipeline)
    if spec.paused:
        ready = c.condition(c.READY, "False", c.PAUSED, "spec.paused is true", generation, previous)
    elif entries:
        where = ", ".join(f"{a.pipeline}/{a.workload}[{a.shard}]" for a in entries)
        ready = c.condition(
            c.READY, "True", c.ASSIGNED_TO_WORKER, f"processed by {where}", generation, previous
        )
    else:
        ready = c.condition(
            c.READY,
            "False",
            c.NO_PIPELINE,
            "no Pipeline with a usable worker selects this camera",
            generation,
            previous,
        )
    connected = connected_condition(entries, spec.paused, generation, previous)
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
