"""Operator sharding: N replicas, each reconciling a deterministic share of the objects.

Every object (Pipeline, Camera, ModelVariant) belongs to shard ``hash(namespace/name) % N``.
Replicas announce themselves with a member Lease (``<prefix>-member-<identity>``) in the
operator's namespace; the live members, sorted, split the shards round-robin (shard ``s`` to
member ``s % M``). A replica works on a shard only while it holds that shard's Lease
(``<prefix>-shard-<s>``), taken with optimistic concurrency (a conflict means another replica
won: back off, look again next tick), so two replicas never own a shard at once even while
their views of the membership differ. When a replica dies its member Lease and shard Leases
expire and the others take its shards over (rebalanced); when one joins, the holders release
what the new split gives it.

Each replica still watches everything (planning needs every Camera and Node); sharding divides
the reconciles, the API writes and the status work, not the watch caches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubevision.operator.kube import LEASES, Kube

log = logging.getLogger("kubevision.operator.shards")
MEMBER_LABEL = "kubevision.io/operator-member"


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard an object belongs to (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def split(members: list[str], shards: int) -> dict[int, str]:
    """Shard -> the member that should own it: round-robin over the sorted live members."""
    ordered = sorted(members)
    return {s: ordered[s % len(ordered)] for s in range(shards)} if ordered else {}


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    renewed: dt.datetime | None
    duration: float
    body: dict[str, Any] | None

    def alive(self, now: dt.datetime) -> bool:
        if self.holder is None or self.renewed is None:
            return False
        return (now - self.renewed).total_seconds() < self.duration


def _view(lease: dict[str, Any] | None) -> LeaseView:
    if lease is None:
        return LeaseView(None, None, 0.0, None)
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    return LeaseView(
        holder=spec.get("holderIdentity") or None,
        renewed=dt.datetime.fromisoformat(renewed.replace("Z", "+00:00")) if renewed else None,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        body=lease,
    )


def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ShardMembership:
    """Which shards this replica owns now; :meth:`tick` (every ``lease_seconds / 3``) renews
    and rebalances. With one shard it owns everything and touches no Lease."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        shards: int,
        lease_seconds: float = 15.0,
        prefix: str = "kubevision-operator",
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.identity = identity
        self.shards = max(1, shards)
        self.lease_seconds = lease_seconds
        self._prefix = prefix
        self._clock = clock
        self.owned: frozenset[int] = (
            frozenset(range(self.shards)) if self.shards == 1 else frozenset()
        )
        self._held_until: dict[int, dt.datetime] = {}

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def owns(self, namespace: str, name: str) -> bool:
        if not self.sharded:
            return True
        return shard_of(namespace, name, self.shards) in self.current()

    def current(self) -> frozenset[int]:
        """Owned shards whose Lease has not run out since our last renewal (fencing: a replica
        cut off from the API stops working before another may take over)."""
        now = self._clock()
        return frozenset(s for s in self.owned if self._held_until.get(s, now) > now)

    def tick(self) -> bool:
        """Renew our member Lease, work out the split, take and release shard Leases.
        Returns whether the owned set changed."""
        if not self.sharded:
            return False
        now = self._clock()
        self._renew_member(now)
        members = [
            v.holder
            for v in map(
                _view, self._kube.list_pages(LEASES, self.namespace, f"{MEMBER_LABEL}=true")
            )
            if v.holder and v.alive(now)
        ]
        wanted = {s for s, who in split(members or [self.identity], self.shards).items()
                  if who == self.identity}  # fmt: skip
        before = self.current()
        for shard in range(self.shards):
            try:
                self._settle(shard, shard in wanted, now)
            except ApiException as exc:  # a conflict: another replica wrote first
                if exc.status not in (404, 409):
                    raise
                log.info("shard %d lease taken elsewhere (%s); backing off", shard, exc.status)
        changed = self.current() != before
        if changed:
            log.info(
                "shards rebalanced",
                extra={"owned": sorted(self.current()), "members": sorted(members)},
            )
        return changed

    def release_all(self) -> None:
        """A clean stop: hand every shard back at once (others need not wait for expiry)."""
        if not self.sharded:
            return
        now = self._clock()
        for shard in sorted(self.owned):
            try:
                self._write(self._shard_name(shard), None, now, self._get(self._shard_name(shard)))
            except ApiException:
                log.warning("could not release shard %d; it expires instead", shard)
        self.owned = frozenset()
        member = self._get(self._member_name())
        if member is not None:
            self._write(self._member_name(), None, now, member)

    # -- leases -------------------------------------------------------------------------------

    def _shard_name(self, shard: int) -> str:
        return f"{self._prefix}-shard-{shard}"

    def _member_name(self) -> str:
        return f"{self._prefix}-member-{self.identity}"[:253]

    def _renew_member(self, now: dt.datetime) -> None:
        name = self._member_name()
        self._write(name, self.identity, now, self._get(name), member=True)

    def _settle(self, shard: int, wanted: bool, now: dt.datetime) -> None:
        name = self._shard_name(shard)
        lease = _view(self._get(name))
        mine = lease.holder == self.identity and lease.alive(now)
        if wanted and (mine or not lease.alive(now)):
            self._write(name, self.identity, now, lease.body)
            self.owned |= {shard}
            self._held_until[shard] = now + dt.timedelta(seconds=self.lease_seconds)
        elif not wanted and mine:
            self._write(name, None, now, lease.body)  # the new split gives it to another
            self.owned -= {shard}
        elif not mine:
            self.owned -= {shard}

    def _get(self, name: str) -> dict[str, Any] | None:
        return self._kube.get(LEASES, self.namespace, name)

    def _write(
        self,
        name: str,
        holder: str | None,
        now: dt.datetime,
        current: dict[str, Any] | None,
        member: bool = False,
    ) -> None:
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(self.lease_seconds),
            "renewTime": _stamp(now),
        }
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if member:
            meta["labels"] = {MEMBER_LABEL: "true"}
        if current is None:
            self._kube.create(LEASES, {"apiVersion": LEASES.api_version, "kind": LEASES.kind,
                                       "metadata": meta, "spec": spec})  # fmt: skip
            return
        if (current.get("spec") or {}).get("holderIdentity") != holder:
            spec["acquireTime"] = _stamp(now)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        body = {"apiVersion": LEASES.api_version, "kind": LEASES.kind, "metadata": meta,
                "spec": {**(current.get("spec") or {}), **spec}}  # fmt: skip
        self._kube.replace(LEASES, body)
