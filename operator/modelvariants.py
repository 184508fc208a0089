"""ModelVariant status: which hardware it serves and whether Pipelines can use it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubevision.api.modelvariant import ModelVariantSpec, ModelVariantStatus
from kubevision.operator import conditions as c


def desired_status(body: dict[str, Any]) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    current = ModelVariantStatus.model_validate(body.get("status") or {})
    try:
        spec = ModelVariantSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return c.invalid_spec_status(exc, generation, current.conditions)
    hardware = ",".join(h.accelerator for h in spec.hardware)
    ready = c.condition(
        c.READY, "True", c.ACCEPTED, f"usable on {hardware}", generation, current.conditions
    )
    return {"observedGeneration": generation, "hardware": hardware, "conditions": [ready.wire()]}


def current_status(body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    return {k: status[k] for k in ("observedGeneration", "hardware", "conditions") if k in status}
