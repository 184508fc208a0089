"""The operator's I/O with the API server: server-side apply, listing and pruning its objects.

A thin layer over the kubernetes client's REST call so every write is a server-side apply with
one field manager (idempotent: applying the same object twice changes nothing).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubevision.api import API_VERSION

log = logging.getLogger("kubevision.operator.kube")

_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
_RETRIED = frozenset({409, 429, 503, 504})
"""Answers worth another try: a conflict, API priority and fairness throttling us, an API
server restarting or overloaded."""
_ATTEMPTS = 4
_BACKOFF_SECONDS = 0.2
_MAX_RETRY_AFTER = 10.0


@dataclass(frozen=True)
class Kind:
    """Where a kind of object lives in the REST API."""

    api_version: str
    plural: str
    kind: str

    @property
    def prefix(self) -> str:
        """The REST root of the kind's API group: /api/v1 for core, /apis/<group/version>."""
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


CONFIGMAPS = Kind("v1", "configmaps", "ConfigMap")
SERVICES = Kind("v1", "services", "Service")
STATEFULSETS = Kind("apps/v1", "statefulsets", "StatefulSet")
PODS = Kind("v1", "pods", "Pod")
PIPELINES = Kind(API_VERSION, "pipelines", "Pipeline")
CAMERAS = Kind(API_VERSION, "cameras", "Camera")
MODELVARIANTS = Kind(API_VERSION, "modelvariants", "ModelVariant")
LEASES = Kind("coordination.k8s.io/v1", "leases", "Lease")
OWNED_KINDS = (STATEFULSETS, SERVICES, CONFIGMAPS)
"""Everything a Pipeline owns, in the order it is applied (and pruned in reverse)."""


class Kube:
    """Synchronous API access; handlers call it from worker threads."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self._api = api
        self.field_manager = field_manager

    @classmethod
    def connect(cls, field_manager: str, connections: int | None = None) -> Kube:
        """In-cluster credentials in a pod, else the current kubeconfig; ``connections``
        kept open to the apiserver (one per thread that calls it at once; the client's
        default is 5 per CPU)."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        if connections is not None:
            configuration.connection_pool_maxsize = connections
        return cls(client.ApiClient(configuration), field_manager)

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        retried: frozenset[int] = _RETRIED,
    ) -> Any:
        """One REST call; raises ApiException (with the server's message) unless 2xx. A
        conflict, throttling (429) or an overloaded server is retried a few times with jittered
        exponential backoff (or after the server's Retry-After), so a burst does not turn into
        a reconcile error and a full backoff of the caller."""
        for attempt in range(_ATTEMPTS):
            try:
                return self._call_once(method, path, body, query, content_type)
            except ApiException as exc:
                if exc.status not in retried or attempt == _ATTEMPTS - 1:
                    raise
                delay = _retry_delay(exc, attempt)
                log.info("%s %s answered %s; retrying in %.2fs", method, path, exc.status, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _call_once(
        self,
        method: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]] | None,
        content_type: str,
    ) -> Any:
        method, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=30
        )
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def apply(
        self,
        kind: Kind,
        obj: dict[str, Any],
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` (forcing ownership of the fields it sets). With a
        ``metadata.resourceVersion`` (a precondition) a conflict is not retried: the same
        request could never succeed."""
        meta = obj["metadata"]
        query = [("fieldManager", field_manager or self.field_manager), ("force", "true")]
        retried = _RETRIED - {409} if "resourceVersion" in meta else _RETRIED
        path = kind.path(meta["namespace"], meta["name"], subresource)
        result: dict[str, Any] = self._call("PATCH", path, obj, query, _APPLY, retried)
        return result

    def apply_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        status: dict[str, Any],
        field_manager: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply the fields in ``status`` (fields this manager set before and
        left out now are removed; other managers' fields stay); returns the object. With
        ``resource_version``, only onto that version of the object (else 409 Conflict)."""
        meta = {"name": name, "namespace": namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        obj = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": meta,
            "status": status,
        }
        return self.apply(kind, obj, subresource="status", field_manager=field_manager)

    def list_labeled(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = self._call("GET", kind.path(namespace), query=[("labelSelector", label_selector)])
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def list_all(self, kind: Kind, field_selector: str) -> list[dict[str, Any]]:
        """Objects of ``kind`` in every namespace matching a field selector."""
        result = self._call(
            "GET", f"{kind.prefix}/{kind.plural}", query=[("fieldSelector", field_selector)]
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def list_pages(
        self, kind: Kind, namespace: str | None = None, label_selector: str = "", limit: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every object of ``kind`` (in ``namespace``, or all), in pages of ``limit``."""
        path = kind.path(namespace) if namespace else f"{kind.prefix}/{kind.plural}"
        token = ""
        while True:
            query = [("limit", str(limit))]
            query += [("labelSelector", label_selector)] if label_selector else []
            query += [("continue", token)] if token else []
            page = self._call("GET", path, query=query)
            yield from page.get("items", [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", kind.path(obj["metadata"]["namespace"]), obj)
        return result

    def replace(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: fails with 409 when someone wrote first."""
        meta = obj["metadata"]
        result: dict[str, Any] = self._call_once(
            "PUT", kind.path(meta["namespace"], meta["name"]), obj, None, "application/json"
        )
        return result

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", kind.path(namespace, name), {"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", kind.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result


def _retry_delay(exc: ApiException, attempt: int) -> float:
    """The server's Retry-After when it gives one, else 0.2 s doubling, with full jitter."""
    headers = exc.headers or {}
    retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
    if retry_after:
        try:
            return min(float(retry_after), _MAX_RETRY_AFTER)
        except ValueError:
            pass
    return random.uniform(0, _BACKOFF_SECONDS * 2**attempt)
