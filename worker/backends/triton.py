"""Triton Inference Server backend: the model runs in a Triton server, reached over gRPC.

The ModelVariant's artifact URI names the model: ``triton://<model>`` on the worker's default
server (``KUBEVISION_TRITON_URL``, else ``localhost:8001``: a sidecar) or
``triton://<host>:<port>/<model>[/<version>]``. Everything else (input name and data type,
outputs, ``max_batch_size``) is read from the server, so a model can be re-deployed without
touching the worker. Batches larger than the model's ``max_batch_size`` are split; the
server's dynamic batcher may merge requests from several workers again.

Large tensors (a YOLOX batch is megabytes) travel through POSIX shared memory registered with
the server instead of being serialised into gRPC messages; this needs the server on the same
host with the same ``/dev/shm`` (a sidecar sharing the pod's memory volume). Where the server
cannot map the region, the backend logs why and sends tensors over gRPC instead.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
import tritonclient.utils.shared_memory as shm  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

FloatArray = npt.NDArray[np.float32]

DEFAULT_URL = "localhost:8001"
"""Triton's default gRPC address: a sidecar in the worker's pod."""
DEFAULT_SHM_THRESHOLD_BYTES = 256 * 1024
"""Requests whose tensors (input plus outputs) reach this size go through shared memory;
below it the copy into a gRPC message costs less than the extra round trips."""
DEFAULT_TIMEOUT_S = 30.0
"""Deadline of every gRPC call, inference included."""
DEFAULT_READY_TIMEOUT_S = 60.0
"""How long to wait at startup for the server and the model (a sidecar may start later)."""

_SCHEME = "triton://"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP16": np.float16}
_POLL_INTERVAL_S = 0.5
_IN_USE = "currently in use"
"""Triton's refusal to unregister a region a finished request has not released yet."""
_IN_USE_WAIT_S = 5.0
_IN_USE_RETRY_S = 0.01
_REGION_IDS = itertools.count()
"""Numbers this process's shared-memory regions, so two backends never share a name."""

log = logging.getLogger(__name__)


class TritonError(RuntimeError):
    """The server or the model failed; the message names both."""


@dataclass(frozen=True)
class TritonTarget:
    """A model on a Triton server, as an artifact URI names it."""

    model: str
    version: str = ""
    """Empty: the server's version policy picks one."""
    url: str | None = None
    """``host:port`` of the server; None: the worker's default server."""


def parse_triton_uri(uri: str) -> TritonTarget:
    """``triton://<model>`` or ``triton://<host>:<port>/<model>[/<version>]`` as a target.

    Raises ValueError saying which part is wrong and what is allowed.
    """
    if not uri.startswith(_SCHEME):
        raise ValueError(f"{uri!r} is not a Triton URI: it must start with {_SCHEME}")
    parts = urllib.parse.urlsplit(uri)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{uri!r}: a Triton URI takes no user, query or fragment")
    has_address = ":" in parts.netloc
    if not has_address:
        if parts.path.strip("/"):
            raise ValueError(
                f"{uri!r}: a server address needs a port (triton://<host>:<port>/<model>"
                f"[/<version>]); without one the URI is only triton://<model>"
            )
        return TritonTarget(model=_checked_model(uri, parts.netloc))
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{uri!r}: invalid port ({error})") from None
    if not parts.hostname or port is None:
        raise ValueError(f"{uri!r}: the server address must be <host>:<port>")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not 1 <= len(segments) <= 2:
        raise ValueError(f"{uri!r}: expected triton://<host>:<port>/<model>[/<version>]")
    version = segments[1] if len(segments) == 2 else ""
    if version and not (version.isdigit() and int(version) > 0):
        raise ValueError(f"{uri!r}: the model version must be a positive integer, got {version!r}")
    return TritonTarget(
        model=_checked_model(uri, segments[0]), version=version, url=f"{host}:{port}"
    )


def _checked_model(uri: str, name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"{uri!r}: model name {name!r} must be letters, digits, '_', '.' or '-' "
            "(not starting with '.' or '-')"
        )
    return name


@dataclass(frozen=True)
class _Tensor:
    """One model tensor per batch item: shape without the batch axis (-1: variable)."""

    name: str
    datatype: str
    item_shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(triton_to_np_dtype(self.datatype))
        return dtype

    def nbytes(self, rows: int) -> int:
        """Bytes of ``rows`` items; only meaningful when the item shape is fixed."""
        return rows * prod(self.item_shape) * self.dtype.itemsize

    @property
    def fixed(self) -> bool:
        return all(dim >= 0 for dim in self.item_shape)


@dataclass(frozen=True)
class _ModelSpec:
    """What the server says about the model; ``fixed_batch`` is set for non-batching models."""

    input: _Tensor
    outputs: tuple[_Tensor, ...]
    max_batch: int
    fixed_batch: int | None

    def request_bytes(self, rows: int) -> int | None:
        """Input plus output bytes of one request, None when a shape is variable."""
        tensors = (self.input, *self.outputs)
        if not all(t.fixed for t in tensors):
            return None
        return sum(t.nbytes(rows) for t in tensors)


@dataclass(frozen=True)
class _Regions:
    """The input region and the output region (outputs back to back, sized for max batch).

    ``release`` unregisters and destroys both, once: at ``close()``, or at interpreter exit
    for a backend nobody closed (a worker that ends on SIGTERM), so neither the server's
    registry nor ``/dev/shm`` keeps them.
    """

    input_name: str
    input: Any  # tritonclient's SharedMemoryRegion
    output_name: str
    output: Any
    output_offsets: tuple[int, ...]
    release: weakref.finalize[Any, Any]


class TritonBackend:
    """A model served by Triton (see :class:`..base.InferenceBackend`); close it when done.

    ``infer`` may be called from several threads: plain gRPC requests run in parallel, while
    requests through this instance's one pair of shared-memory regions take turns.
    """

    name = "triton"

    def __init__(
        self,
        uri: str,
        url: str = DEFAULT_URL,
        *,
        shm_threshold_bytes: int | None = DEFAULT_SHM_THRESHOLD_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        """Wait for the model to be ready and read its metadata and config.

        Args:
            uri: the artifact URI, ``triton://...`` (see :func:`parse_triton_uri`).
            url: ``host:port`` of the server when ``uri`` names none.
            shm_threshold_bytes: requests of at least this many bytes (input + outputs) use
                system shared memory; None never does (a server on another host).
            timeout_s: deadline of every gRPC call.
            ready_timeout_s: how long to wait for the server and the model at startup.
        """
        if shm_threshold_bytes is not None and shm_threshold_bytes < 0:
            raise ValueError(f"shm_threshold_bytes must be >= 0 or None, got {shm_threshold_bytes}")
        if timeout_s <= 0 or ready_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got {timeout_s} and {ready_timeout_s}")
        target = parse_triton_uri(uri)
        self._url = target.url or url
        self._model = target.model
        self._version = target.version
        self._timeout = timeout_s
        self._shm_threshold = shm_threshold_bytes
        self._shm_lock = threading.Lock()
        self._regions: _Regions | None = None
        self._closed = False
        self._client = grpcclient.InferenceServerClient(self._url)
        try:
            self._wait_ready(ready_timeout_s)
            self._spec = self._read_spec()
        except BaseException:
            self._client.close()
            raise
        if self._shm_threshold is not None and self._spec.request_bytes(1) is None:
            log.info("%s has variable tensor shapes: tensors go over gRPC", self._describe())
            self._shm_threshold = None
        log.info(
            "%s ready: input %s %s %s, outputs %s, max batch %d, shared memory %s",
            self._describe(),
            self._spec.input.name,
            self._spec.input.datatype,
            list(self._spec.input.item_shape),
            [o.name for o in self._spec.outputs],
            self._spec.max_batch,
            "off" if self._shm_threshold is None else f"from {self._shm_threshold} bytes",
        )

    @classmethod
    def from_uri(cls, uri: str, default_url: str | None = None) -> TritonBackend:
        """The backend for an artifact URI; ``default_url`` (else :data:`DEFAULT_URL`) is the
        server of a URI that names none."""
        return cls(uri, default_url or DEFAULT_URL)

    @property
    def max_batch(self) -> int:
        return self._spec.max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return (self._spec.input.name,)

    @property
    def output_names(self) -> Sequence[str]:
        return tuple(o.name for o in self._spec.outputs)

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        """Run ``batch`` (N, ...) in requests of at most ``max_batch``; outputs are float32."""
        if self._closed:
            raise TritonError(f"{self._describe()}: backend is closed")
        chunk_input = self._checked_input(batch)
        parts = [
            self._infer_chunk(chunk_input[start : start + self._spec.max_batch])
            for start in range(0, len(chunk_input), self._spec.max_batch)
        ]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(per_output) for per_output in zip(*parts, strict=True)]

    def close(self) -> None:
        """Unregister and destroy the shared-memory regions and close the channel; idempotent."""
        with self._shm_lock:
            if self._closed:
                return
            self._closed = True
            self._release_regions()
        self._client.close()

    def __enter__(self) -> TritonBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _describe(self) -> str:
        version = f" version {self._version}" if self._version else ""
        return f"Triton server {self._url} model {self._model!r}{version}"

    def _error(self, what: str, error: Exception) -> TritonError:
        return TritonError(f"{self._describe()}: {what} failed: {error}")

    # -- startup -------------------------------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        """Poll until the model is ready; a model the server does not know fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            ready, detail = self._readiness()
            if ready:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TritonError(f"{self._describe()} not ready after {timeout:g} s: {detail}")
            time.sleep(min(_POLL_INTERVAL_S, remaining))

    def _readiness(self) -> tuple[bool, str]:
        """(ready, why not); raises TritonError when the repository lacks the model."""
        try:
            if self._client.is_model_ready(
                self._model, self._version, client_timeout=self._timeout
            ):
                return True, "ready"
            index = self._client.get_model_repository_index(client_timeout=self._timeout)
        except InferenceServerException as error:
            return False, f"server unreachable ({error})"
        entries = [m for m in index.models if m.name == self._model]
        if not entries:
            known = sorted({m.name for m in index.models})
            raise TritonError(f"{self._describe()}: no such model on the server (it has {known})")
        if self._version and all(m.version not in ("", self._version) for m in entries):
            known = sorted(m.version for m in entries)
            raise TritonError(f"{self._describe()}: no such version (the server has {known})")
        states = ", ".join(
            f"version {m.version or '?'} {m.state or 'not loaded'}"
            + (f" ({m.reason})" if m.reason else "")
            for m in entries
        )
        return False, f"model not ready: {states}"

    def _read_spec(self) -> _ModelSpec:
        try:
            metadata = self._client.get_model_metadata(
                self._model, self._version, client_timeout=self._timeout
            )
            config = self._client.get_model_config(
                self._model, self._version, client_timeout=self._timeout
            ).config
        except InferenceServerException as error:
            raise self._error("reading model metadata", error) from error
        if len(metadata.inputs) != 1:
            raise TritonError(
                f"{self._describe()} has {len(metadata.inputs)} inputs; backends take exactly one"
            )
        (model_input,) = metadata.inputs
        if model_input.datatype not in _INPUT_DTYPES:
            raise TritonError(
                f"{self._describe()} input is {model_input.datatype}; supported: "
                f"{sorted(_INPUT_DTYPES)}"
            )
        for output in metadata.outputs:
            dtype = triton_to_np_dtype(output.datatype)
            if dtype is None or np.dtype(dtype).kind not in "biuf":
                raise TritonError(
                    f"{self._describe()} output {output.name!r} is {output.datatype}; "
                    "only numeric outputs are supported"
                )
        return self._spec_from(metadata, int(config.max_batch_size))

    def _spec_from(self, metadata: Any, max_batch_size: int) -> _ModelSpec:
        """Split off the batch axis: Triton's own (max_batch_size > 0) or a fixed first dim."""
        input_shape = [int(d) for d in metadata.inputs[0].shape]
        fixed_batch: int | None = None
        if max_batch_size == 0:
            if not input_shape or input_shape[0] < 1:
                raise TritonError(
                    f"{self._describe()} has max_batch_size 0 and input shape {input_shape}: "
                    "set max_batch_size in its config, or give the input a fixed first dimension"
                )
            fixed_batch = input_shape[0]

        def tensor(meta: Any) -> _Tensor:
            return _Tensor(meta.name, meta.datatype, tuple(int(d) for d in meta.shape[1:]))

        return _ModelSpec(
            input=tensor(metadata.inputs[0]),
            outputs=tuple(tensor(o) for o in metadata.outputs),
            max_batch=fixed_batch or max_batch_size,
            fixed_batch=fixed_batch,
        )

    # -- inference -----------------------------------------------------------------------------

    def _checked_input(self, batch: FloatArray) -> npt.NDArray[Any]:
        """The batch in the model's dtype, after checking it has the model's item shape."""
        batch = np.asarray(batch)
        expected = self._spec.input.item_shape
        if batch.ndim != len(expected) + 1 or any(
            want not in (-1, got) for want, got in zip(expected, batch.shape[1:], strict=True)
        ):
            raise ValueError(
                f"{self._describe()} takes batches of {list(expected)} (-1: any size), got "
                f"{list(batch.shape)}"
            )
        if len(batch) == 0:
            raise ValueError("infer needs at least one item in the batch")
        return np.ascontiguousarray(batch, self._spec.input.dtype)

    def _infer_chunk(self, chunk: npt.NDArray[Any]) -> list[FloatArray]:
        rows = len(chunk)
        fixed = self._spec.fixed_batch
        if fixed is not None and rows < fixed:
            padding = np.zeros((fixed - rows, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        size = self._spec.request_bytes(len(chunk))
        if self._shm_threshold is not None and size is not None and size >= self._shm_threshold:
            with self._shm_lock:
                regions = self._shared_regions()
                if regions is not None:
                    return self._infer_shared(chunk, rows, regions)
        return self._infer_grpc(chunk, rows)

    def _infer_grpc(self, chunk: npt.NDArray[Any], rows: int) -> list[FloatArray]:
        model_input = grpcclient.InferInput(
            self._spec.input.name, list(chunk.shape), self._spec.input.datatype
        )
        model_input.set_data_from_numpy(chunk)
        result = self._request(
            model_input, [grpcclient.InferRequestedOutput(o.name) for o in self._spec.outputs]
        )
        outputs: list[FloatArray] = []
        for output in self._spec.outputs:
            data = result.as_numpy(output.name)
            if data is None:
                raise TritonError(f"{self._describe()}: response lacks output {output.name!r}")
            # A copy: tritonclient's arrays are read-only views of the response message.
            outputs.append(np.array(data[:rows], np.float32))
        return outputs

    def _infer_shared(
        self, chunk: npt.NDArray[Any], rows: int, regions: _Regions
    ) -> list[FloatArray]:
        """One request through the regions; any failure drops them (a restarted server has
        forgotten them), so the next large request registers fresh ones."""
        try:
            shm.set_shared_memory_region(regions.input, [chunk])
            model_input = grpcclient.InferInput(
                self._spec.input.name, list(chunk.shape), self._spec.input.datatype
            )
            model_input.set_shared_memory(regions.input_name, chunk.nbytes)
            requested = []
            for output, offset in zip(self._spec.outputs, regions.output_offsets, strict=True):
                wanted = grpcclient.InferRequestedOutput(output.name)
                wanted.set_shared_memory(regions.output_name, output.nbytes(len(chunk)), offset)
                requested.append(wanted)
            result = self._request(model_input, requested)
            return [
                self._read_output(result, output, offset, rows, regions)
                for output, offset in zip(self._spec.outputs, regions.output_offsets, strict=True)
            ]
        except BaseException:
            self._release_regions()
            raise

    def _read_output(
        self, result: Any, output: _Tensor, offset: int, rows: int, regions: _Regions
    ) -> FloatArray:
        """A float32 copy: the region is overwritten by the next request."""
        tensor = result.get_output(output.name)
        if tensor is None:
            raise TritonError(f"{self._describe()}: response lacks output {output.name!r}")
        view = shm.get_contents_as_numpy(
            regions.output, triton_to_np_dtype(tensor.datatype), list(tensor.shape), offset
        )
        return np.array(view[:rows], np.float32)

    def _request(self, model_input: Any, outputs: list[Any]) -> Any:
        try:
            return self._client.infer(
                self._model,
                [model_input],
                model_version=self._version,
                outputs=outputs,
                client_timeout=self._timeout,
            )
        except InferenceServerException as error:
            raise self._error("inference", error) from error

    # -- shared memory ------------------------------------------------------------------------

    def _shared_regions(self) -> _Regions | None:
        """The registered regions, created on first use; None after the server refused them."""
        if self._closed:  # close() ran while this request waited for the lock
            raise TritonError(f"{self._describe()}: backend is closed")
        if self._regions is None and self._shm_threshold is not None:
            self._regions = self._register_regions()
        return self._regions

    def _register_regions(self) -> _Regions | None:
        """Create and register regions for a full batch; None (and shared memory off for
        good) when the server cannot map them."""
        rows = self._spec.fixed_batch or self._spec.max_batch
        offsets = tuple(
            itertools.accumulate((o.nbytes(rows) for o in self._spec.outputs[:-1]), initial=0)
        )
        sizes = (self._spec.input.nbytes(rows), sum(o.nbytes(rows) for o in self._spec.outputs))
        base = _region_base_name()
        names = (f"{base}-input", f"{base}-output")
        handles: list[Any] = []
        registered: list[str] = []
        try:
            for name, size in zip(names, sizes, strict=True):
                handles.append(shm.create_shared_memory_region(name, f"/{name}", size, True))
                self._client.register_system_shared_memory(
                    name, f"/{name}", size, client_timeout=self._timeout
                )
                registered.append(name)
        except (InferenceServerException, shm.SharedMemoryException) as error:
            log.warning(
                "%s: shared memory unavailable (%s); sending tensors over gRPC instead "
                "(is the server on another host or without this /dev/shm?)",
                self._describe(),
                error,
            )
            self._shm_threshold = None
            _drop_regions(self._client, self._describe(), registered, handles, self._timeout)
            return None
        log.info("%s: registered shared memory %s (%d + %d bytes)", self._describe(), base, *sizes)
        release = weakref.finalize(
            self, _drop_regions, self._client, self._describe(), registered, handles, self._timeout
        )
        return _Regions(names[0], handles[0], names[1], handles[1], offsets, release)

    def _release_regions(self) -> None:
        if self._regions is not None:
            regions, self._regions = self._regions, None
            regions.release()


def _drop_regions(
    client: Any, owner: str, registered: list[str], handles: list[Any], timeout: float
) -> None:
    """Unregister (best effort: the server may be gone) and destroy local regions."""
    for name in registered:
        _unregister(client, owner, name, timeout)
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def _unregister(client: Any, owner: str, name: str, timeout: float) -> None:
    """The server releases a request's hold on a region just after answering it, so an
    unregister right after the last inference can be refused as "in use": retry briefly."""
    deadline = time.monotonic() + _IN_USE_WAIT_S
    while True:
        try:
            client.unregister_system_shared_memory(name, client_timeout=timeout)
            return
        except InferenceServerException as error:
            if _IN_USE not in str(error) or time.monotonic() >= deadline:
                log.warning("%s: could not unregister %s: %s", owner, name, error)
                return
        time.sleep(_IN_USE_RETRY_S)


def _region_base_name() -> str:
    """``kubevision-<host>-<pid>-<n>-<random>``: unique among every client of one server, since
    pods (hostnames) differ, processes in a pod by pid and backends in a process by n. The
    random part covers a restarted container: pid 1 again, while the crashed one's regions
    may still be in the pod's /dev/shm and in the server's registry."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]
    return f"kubevision-{host}-{os.getpid()}-{next(_REGION_IDS)}-{secrets.token_hex(4)}"
