"""Building blocks shared by the three custom resources: the model base, conditions, selectors.

Models use snake_case attributes and camelCase wire names (``alias_generator``), like every
Kubernetes API. Validation that needs more than one field is written as CEL rules
(``x-kubernetes-validations``) so the API server rejects bad objects before the operator sees
them; :func:`cel` builds such a rule.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""An RFC 1123 label: what Kubernetes accepts as a name or a label value used as a name."""
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""An RFC 1123 subdomain: what most object names (e.g. a ModelVariant's) may be."""


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields ignored, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict Kubernetes expects (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``message`` tells the user what to fix."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


URL_WITH_PASSWORD = "^[a-z0-9+.-]+://[^/@]*:[^/@]*@"
"""A URL whose userinfo holds a password (``scheme://user:password@host``)."""


def no_password(field: str, message: str, *, optional: bool = False) -> dict[str, str]:
    """A CEL rule: the URL in ``field`` carries no password (credentials belong in a Secret,
    which never ends up in status, events or logs)."""
    rule = f"!self.{field}.matches('{URL_WITH_PASSWORD}')"
    return cel(
        f"!has(self.{field}) || {rule}" if optional else rule, message, field_path=f".{field}"
    )


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules for a model or field."""
    return {"x-kubernetes-validations": list(rules)}


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A metav1.Condition: the latest observation of one aspect of the object's state."""

    type: str = Field(max_length=316, pattern=r"^([a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?)$")
    """CamelCase type, e.g. Ready or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: dt.datetime
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set for."""


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class LabelSelectorRequirement(ApiModel):
    """One matchExpressions entry of a label selector."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                " : (!has(self.values) || size(self.values) == 0)",
                "values must be non-empty for In and NotIn and empty for Exists and DoesNotExist",
                field_path=".values",
            )
        )
    }

    key: str = Field(max_length=317)
    """Label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to values: In, NotIn, Exists or DoesNotExist."""
    values: list[str] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn; Exists and DoesNotExist ignore them."""


class LabelSelector(ApiModel):
    """A metav1.LabelSelector; an empty selector selects every object in the namespace."""

    match_labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Set-based requirements that must all hold."""

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes label-selector semantics."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            value = labels.get(req.key)
            ok = {
                "In": present and value in req.values,
                "NotIn": not present or value not in req.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class SecretKeyNames(ApiModel):
    """A Secret in the object's namespace holding a username and a password."""

    name: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the Secret."""
    username_key: str = Field(default="username", max_length=253)
    """Key of the username in the Secret."""
    password_key: str = Field(default="password", max_length=253)
    """Key of the password in the Secret."""


class Toleration(ApiModel):
    """A core/v1 Toleration added to worker pods."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.operator == 'Equal' ? has(self.key) : !has(self.value)",
                "tolerations need a key with operator Equal, and no value with operator Exists",
                field_path=".key",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies to effect NoExecute only",
                field_path=".tolerationSeconds",
            ),
        )
    }

    key: str | None = Field(default=None, max_length=317)
    """Taint key to tolerate; unset with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists (any value) or Equal (value must match); defaults to Equal."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value to match with operator Equal; leave unset with Exists."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match: NoSchedule, PreferNoSchedule or NoExecute; unset matches all."""
    toleration_seconds: int | None = None
    """With effect NoExecute: seconds the pod stays after the taint appears; unset is forever."""
