"""Camera status the operator owns: the source host, observedGeneration and the Ready condition.

Stream health (Connected, observed fps, p99, reconnects) is reported by the workers; each
Pipeline writes its own entry of ``status.assignments`` (see :mod:`.pipelines`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubevision.api.camera import CameraAssignment, CameraSpec, CameraStatus
from kubevision.operator import conditions as c


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
            c.READY, "False", "Paused", "spec.paused is true", generation, current.conditions
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
    return {
        "observedGeneration": generation,
        "sourceHost": spec.source.host,
        "conditions": [ready.wire()],
    }


def current_status(body: dict[str, Any]) -> dict[str, Any]:
    """The same operator-owned fields as they are now, to compare with :func:`desired_status`."""
    status = body.get("status") or {}
    return {k: status[k] for k in ("observedGeneration", "sourceHost", "conditions") if k in status}


def assignments(status: dict[str, Any] | None) -> dict[str, CameraAssignment]:
    """pipeline -> assignment, from a Camera's status."""
    parsed = CameraStatus.model_validate(status or {})
    return {a.pipeline: a for a in parsed.assignments}
