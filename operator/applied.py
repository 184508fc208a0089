"""Skipping server-side applies that would change nothing.

A server-side apply of an unchanged object writes nothing to etcd, but it is still a write
request the API server authenticates, admits, merges and answers: at fleet scale (hundreds of
groups, a reconcile every autoscaling tick) those no-op requests were most of the operator's
API traffic. Each object the operator renders carries the hash of its desired state in an
annotation, and :class:`AppliedObjects` remembers what each apply returned, so an object is
applied again only when

* its desired state changed (another hash),
* it is gone (deleted by someone, or never created),
* someone else changed it since (its generation, or resourceVersion for kinds without a
  generation, moved from what our apply returned), or
* this process has not applied it yet (after a start or a shard takeover: one apply per
  object repairs whatever drifted while no one watched).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

HASH_ANNOTATION = "kubevision.io/desired-hash"


def stamp(obj: dict[str, Any]) -> str:
    """Put the hash of ``obj`` (without the annotation itself) in its annotations."""
    annotations = obj.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(HASH_ANNOTATION, None)
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    annotations[HASH_ANNOTATION] = digest[:32]
    return digest[:32]


def desired_hash(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)


def fingerprint(obj: dict[str, Any]) -> str:
    """What changes when anyone edits the object's spec or data: the generation where the kind
    has one (a StatefulSet's status updates do not move it), else the resourceVersion."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"r{meta.get('resourceVersion')}"


@dataclass(frozen=True)
class _Applied:
    digest: str
    fingerprint: str
    pipeline: str


class AppliedObjects:
    """This process's memory of its last apply of each object (bounded: entries go with the
    objects, :meth:`forget`)."""

    def __init__(self) -> None:
        self._applied: dict[tuple[str, str, str], _Applied] = {}

    def needs_apply(self, kind: str, desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
        """``desired`` must be stamped; ``live`` is the object as the cache holds it now."""
        meta = desired["metadata"]
        known = self._applied.get((kind, meta["namespace"], meta["name"]))
        digest = desired_hash(desired)
        if known is None or known.digest != digest or live is None:
            return True
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            return True
        if desired_hash(live) != digest:
            return False  # the cache has not caught up with our apply yet
        return fingerprint(live) != known.fingerprint

    def record(self, kind: str, applied: dict[str, Any], pipeline: str) -> None:
        """Remember the object the apply returned (rendered for ``pipeline``)."""
        meta = applied["metadata"]
        digest = desired_hash(applied)
        if digest is not None:
            key = (kind, meta["namespace"], meta["name"])
            self._applied[key] = _Applied(digest, fingerprint(applied), pipeline)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._applied.pop((kind, namespace, name), None)

    def forget_pipeline(self, namespace: str, pipeline: str) -> None:
        """Drop the Pipeline's objects (it is gone, or its shard went to another replica)."""
        for key in [
            k for k, v in self._applied.items() if k[1] == namespace and v.pipeline == pipeline
        ]:
            del self._applied[key]

    def __len__(self) -> int:
        return len(self._applied)
