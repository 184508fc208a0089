"""Native TensorRT backend: an engine built from the ONNX artifact on the node's own GPU.

Engines are specific to the GPU model, the TensorRT version, the precision and the shapes
they were built for, and building one takes seconds to minutes. So the backend builds on first
use and keeps the serialized engine in a cache directory (shared by the workers of a node):
the file name is derived from everything the engine depends on (:class:`EngineKey`), the write
is atomic, and a file lock makes a second worker wait for the first one's build instead of
building the same engine at the same time. A cached engine that does not load (truncated,
built by another TensorRT) is rebuilt, never fatal.

Precision follows what the installed TensorRT offers:

- TensorRT 10 picks per-layer precision itself from builder flags (FP16, INT8; deprecated
  since 10.12 in favour of strong typing, still working). INT8 comes from a QDQ (explicitly
  quantized) model, or from entropy calibration whose result is kept in a calibration cache
  file, so later builds skip the calibration pass.
- TensorRT 11 removed those flags and implicit calibration: every network is strongly typed,
  running each layer in the type its ONNX graph says. FP16 is then had by converting the
  model's float weights and activations to float16 before parsing (inputs and outputs stay
  float32); INT8 needs a QDQ model (``python -m model_catalog.tools.int8 calibrate``).

Inference runs on torch CUDA tensors as TensorRT's device buffers (no pycuda or cuda-python
dependency): :meth:`TensorRTBackend.infer_tensor` for GPU pipelines that keep frames on the
GPU, :meth:`TensorRTBackend.infer` for the numpy protocol every backend implements. TensorRT
and torch are imported only when a backend is made, so the cache key helpers also serve code
without either (the operator naming engines, CPU-only tests).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from kubevision.api.modelvariant import BatchProfile, InputSize, Precision
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.models import sha256_of

if TYPE_CHECKING:
    import torch

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

CACHE_DIR_ENV = "KUBEVISION_ENGINE_CACHE"
"""Directory for built engines; mount one per node (hostPath) so a node builds each engine
once and restarted workers start in seconds."""
DEFAULT_LOCK_TIMEOUT_S = 1800.0
"""How long a worker waits for another one's build of the same engine before giving up; a
large detector at INT8 with calibration can take tens of minutes on a small GPU."""
_LOCK_POLL_S = 0.2
_ADDRESS_ALIGNMENT = 256
"""TensorRT wants tensor addresses 256-byte aligned; torch's allocator gives 512."""
CALIBRATION_SUFFIX = ".calib"
"""A TensorRT calibration cache shipped beside an ONNX artifact has this suffix in place of
``.onnx``; :meth:`TensorRTBackend.from_model_config` uses it for INT8 without Q/DQ layers."""
_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}
"""TensorRT DataType member name -> torch dtype name, for the I/O tensors a vision model has."""
_QDQ_LAYERS = ("QUANTIZE", "DEQUANTIZE")

log = logging.getLogger(__name__)


# -- pure helpers (no TensorRT, no GPU) --------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on: change any of it and the engine is another.

    ``calibration`` names the calibration cache of an implicitly calibrated INT8 engine, so a
    new calibration (a new cache file) gives a new engine.
    """

    model_sha256: str
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: Precision
    batch: tuple[int, int, int]
    """Optimisation profile's (min, opt, max) batch."""
    input_hw: tuple[int, int]
    calibration: str | None = None

    def digest(self) -> str:
        """SHA-256 of every field, so two keys share a file only if they are equal."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()


def engine_file_name(key: EngineKey) -> str:
    """The cache file of ``key``'s engine: readable (for an operator listing the cache) and
    unique (the digest covers what the readable part leaves out, e.g. the GPU name)."""
    major, minor = key.compute_capability
    low, opt, high = key.batch
    height, width = key.input_hw
    version = re.sub(r"[^0-9A-Za-z.]", "_", key.tensorrt_version)
    return (
        f"{key.precision}-sm{major}{minor}-trt{version}-b{low}_{opt}_{high}-{height}x{width}"
        f"-{key.digest()[:24]}.engine"
    )


def default_cache_dir() -> Path:
    """``$KUBEVISION_ENGINE_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)/kubevision."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "kubevision" / "engines"


@dataclass(frozen=True)
class ProfileShapes:
    """An optimisation profile for the one image input: (N, C, H, W) at min, opt and max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def profile_shapes(
    network_shape: Sequence[int], batch: BatchProfile, input_hw: tuple[int, int]
) -> ProfileShapes | None:
    """The profile for a network input of ``network_shape`` (-1 = dynamic), or None when the
    input is fully static (TensorRT then takes no profile).

    A dynamic batch takes the variant's batch profile, dynamic height/width its input size;
    fixed dimensions stay as the model has them, but a fixed height/width that contradicts
    the input size is an error (the worker would feed the wrong size).
    """
    if len(network_shape) != 4:
        raise ValueError(f"expected an NCHW image input, the model's is {tuple(network_shape)}")
    n, c, h, w = network_shape
    if c < 0:
        raise ValueError(f"the input's channel dimension must be fixed, got {tuple(network_shape)}")
    height, width = input_hw
    for name, dim, wanted in (("height", h, height), ("width", w, width)):
        if dim >= 0 and dim != wanted:
            raise ValueError(f"the model's input {name} is fixed at {dim}, not {wanted}")
    if min(network_shape) >= 0:
        return None
    low, opt, high = (n, n, n) if n >= 0 else (batch.min, batch.opt, batch.max)
    return ProfileShapes(
        min=(low, c, height, width), opt=(opt, c, height, width), max=(high, c, height, width)
    )


def calibration_shape(
    network_shape: Sequence[int], batch_size: int, input_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Shape of one calibration batch: the model's fixed batch if it has one."""
    n, c, _, _ = network_shape
    return (n if n >= 0 else batch_size, c, *input_hw)


@dataclass(frozen=True)
class PrecisionPlan:
    """How to get a precision out of the installed TensorRT."""

    builder_flags: tuple[str, ...] = ()
    """Names of ``tensorrt.BuilderFlag`` members to set."""
    convert_to_fp16: bool = False
    """Parse an FP16 copy of the model (strongly typed TensorRT has no FP16 flag)."""
    calibrate: bool = False
    """Implicit INT8: the builder calibrates with a calibrator (or reads its cache)."""


def precision_plan(precision: Precision, *, weakly_typed: bool, quantized: bool) -> PrecisionPlan:
    """The plan for ``precision``.

    Args:
        weakly_typed: the installed TensorRT has the FP16/INT8 builder flags (before 11).
        quantized: the parsed model has Q/DQ layers (explicit quantization).

    INT8 also enables FP16 where flags exist, so layers left unquantized run in FP16 rather
    than FP32. An unquantized model at INT8 needs calibration, which TensorRT 11 removed.
    """
    if precision == "fp32":
        return PrecisionPlan()
    if precision == "fp16":
        return PrecisionPlan(("FP16",)) if weakly_typed else PrecisionPlan(convert_to_fp16=True)
    if not weakly_typed and not quantized:
        raise ValueError(
            "INT8 with this TensorRT needs a QDQ-quantized model: TensorRT 11 removed implicit "
            "INT8 calibration (quantize with `python -m model_catalog.tools.int8 calibrate`)"
        )
    flags = ("INT8", "FP16") if weakly_typed else ()
    return PrecisionPlan(flags, calibrate=not quantized)


def chunk_plan(count: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """(start, size, padded size) per engine call for ``count`` items: at most ``max_batch``
    per call, each padded up to the profile's ``min_batch``."""
    if count < 1:
        raise ValueError("infer needs at least one item in the batch")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
    plan = []
    for start in range(0, count, max_batch):
        size = min(max_batch, count - start)
        plan.append((start, size, max(size, min_batch)))
    return plan


def fixed_batches(
    batches: Iterable[FloatArray], shape: tuple[int, int, int, int]
) -> Iterator[FloatArray]:
    """Re-cut a stream of (n, C, H, W) batches of any n into batches of exactly ``shape``,
    which is all a TensorRT calibrator may hand over; a last partial batch is dropped."""
    size, item_shape = shape[0], shape[1:]
    pending: list[FloatArray] = []
    held = 0
    for batch in batches:
        array = np.asarray(batch, np.float32)
        if array.ndim != 4 or array.shape[1:] != item_shape:
            raise ValueError(f"calibration batches must be (n, *{item_shape}), got {array.shape}")
        pending.append(array)
        held += len(array)
        while held >= size:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:size])
            pending, held = [joined[size:]], held - size
    if held:
        log.info("dropping the last %d calibration frames (not a whole batch of %d)", held, size)


# -- the engine cache: atomic files under a lock -----------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one,
    never a partial write (a worker killed mid-write leaves only a temporary file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing).

    flock works across processes and pods that share a node's filesystem, and between
    threads that open the file separately. Waiting polls until ``timeout`` so a stuck
    builder elsewhere fails this worker with a clear error instead of hanging it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        _acquire(handle.fileno(), path, timeout)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not waiting:
                log.info("waiting for %s: another worker is building this engine", path)
                waiting = True
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path} still locked after {timeout:.0f}s") from None
            time.sleep(_LOCK_POLL_S)


def load_or_build(
    path: Path,
    build: Callable[[], bytes],
    load: Callable[[bytes], T | None],
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[T, bool]:
    """The object ``load`` makes of the cached file at ``path``, building the file first when
    it is missing or does not load. Returns (object, whether this call built it).

    The cache is checked again under the lock, so of several workers that found it missing
    only the first builds; the others load its result.
    """
    cached = _load_cached(path, load)
    if cached is not None:
        return cached, False
    with file_lock(path.with_name(path.name + ".lock"), lock_timeout):
        cached = _load_cached(path, load)
        if cached is not None:
            return cached, False
        log.info("building %s", path.name)
        started = time.monotonic()
        data = build()
        loaded = load(data)
        if loaded is None:
            raise RuntimeError(f"the freshly built {path.name} does not load")
        write_atomic(path, data)
        log.info("built %s in %.1fs (%d bytes)", path.name, time.monotonic() - started, len(data))
        return loaded, True


def _load_cached(path: Path, load: Callable[[bytes], T | None]) -> T | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        loaded = load(data)
    except RuntimeError as exc:
        log.warning("cached %s does not load (%s); rebuilding it", path, exc)
        return None
    if loaded is None:
        log.warning("cached %s is corrupt or from another TensorRT/GPU; rebuilding it", path)
    return loaded


# -- TensorRT ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Calibration:
    """Implicit INT8 calibration (TensorRT 10) for a model without Q/DQ layers.

    Attributes:
        cache: calibration cache file; read instead of calibrating when it exists, written
            after a calibration pass.
        batches: called only when the cache is missing; yields preprocessed (n, C, H, W)
            float32 batches exactly as the worker feeds the model.
        batch_size: frames per calibration batch.
    """

    cache: Path
    batches: Callable[[], Iterable[FloatArray]] | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"calibration batch_size must be >= 1, got {self.batch_size}")


def cuda_device(device: str) -> torch.device:
    """``cuda`` or ``cuda:N`` as a torch device with its index (TensorRT runs only on CUDA)."""
    kind, separator, index = device.partition(":")
    if kind != "cuda" or (separator and not index.isdigit()):
        raise ValueError(f"TensorRT needs device 'cuda' or 'cuda:N', got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU")
    return torch.device("cuda", int(index) if index else torch.cuda.current_device())


def _import_tensorrt() -> Any:
    try:
        import tensorrt  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise RuntimeError(
            "the tensorrt backend needs NVIDIA's TensorRT Python package "
            "(pip install 'kubevision[tensorrt]')"
        ) from exc
    return tensorrt


class TensorRTBackend:
    """A TensorRT engine for an ONNX model with one NCHW image input (see
    :class:`..base.InferenceBackend`)."""

    name = "tensorrt"

    def __init__(
        self,
        model_path: Path,
        *,
        input_size: InputSize,
        precision: Precision = "fp32",
        batch: BatchProfile | None = None,
        device: str = "cuda",
        cache_dir: Path | None = None,
        calibration: Int8Calibration | None = None,
        workspace_bytes: int | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        """Load the cached engine for this model, GPU and settings, building it if needed.

        Args:
            model_path: the .onnx file to build from.
            input_size: the variant's network input size (dynamic height/width take it).
            precision: fp32, fp16 or int8 (see the module docstring for how each is built).
            batch: the optimisation profile's min/opt/max batch; a fixed-batch model keeps
                its own. Default 1/1/1.
            device: ``cuda`` or ``cuda:N``.
            cache_dir: where engines are kept; default :func:`default_cache_dir`.
            calibration: for INT8 of a model without Q/DQ layers (TensorRT 10 only).
            workspace_bytes: cap on the builder's scratch memory; None lets TensorRT use
                what the GPU has.
            lock_timeout: seconds to wait for another worker's build of the same engine.
        """
        import torch

        self._device = cuda_device(device)
        trt = _import_tensorrt()
        self._trt = trt
        self._lock = threading.Lock()
        self._logger = _python_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        profile = batch or BatchProfile()
        input_hw = (input_size.height, input_size.width)
        key = EngineKey(
            model_sha256=sha256_of(model_path),
            gpu_name=torch.cuda.get_device_name(self._device),
            compute_capability=torch.cuda.get_device_capability(self._device),
            tensorrt_version=str(trt.__version__),
            precision=precision,
            batch=(profile.min, profile.opt, profile.max),
            input_hw=input_hw,
            calibration=calibration.cache.name if precision == "int8" and calibration else None,
        )
        self._engine_path = (cache_dir or default_cache_dir()) / engine_file_name(key)
        builder = _EngineBuilder(trt, self._logger, self._device, workspace_bytes)
        with torch.cuda.device(self._device):
            self._engine, self._built = load_or_build(
                self._engine_path,
                lambda: builder.build(model_path, precision, profile, input_hw, calibration),
                self._deserialize,
                lock_timeout=lock_timeout,
            )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        if self._context is None:
            raise RuntimeError(f"no execution context for {self._engine_path} (GPU memory?)")
        self._read_io(model_path, profile)

    @classmethod
    def from_model_config(
        cls, model: ModelConfig, model_path: Path, device: str = "cuda", **kwargs: Any
    ) -> TensorRTBackend:
        """The backend for a resolved ModelVariant, building from its ONNX artifact.

        The profile spans batch 1 to ``batch_max`` and is tuned for ``batch_max``: the worker
        fills batches up to it under load, which is when speed matters. INT8 of a model
        without Q/DQ layers reads the calibration cache beside the artifact (same name,
        :data:`CALIBRATION_SUFFIX`). ``kwargs`` go to the constructor (cache_dir, ...).
        """
        calibration = None
        if model.precision == "int8":
            calibration = Int8Calibration(cache=model_path.with_suffix(CALIBRATION_SUFFIX))
        return cls(
            model_path,
            input_size=model.input_size,
            precision=model.precision,
            batch=BatchProfile(min=1, opt=model.batch_max, max=model.batch_max),
            device=device,
            calibration=calibration,
            **kwargs,
        )

    def _deserialize(self, data: bytes) -> Any:
        return self._runtime.deserialize_cuda_engine(data)

    def _read_io(self, model_path: Path, profile: BatchProfile) -> None:
        """Names, dtypes and batch range of the engine's tensors (by name, TensorRT 10+)."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ValueError(f"{model_path} has {len(inputs)} inputs; backends take exactly one")
        (self._input_name,) = inputs
        self._input_dtype = _torch_dtype(engine.get_tensor_dtype(self._input_name))
        self._outputs = tuple(
            (n, _torch_dtype(engine.get_tensor_dtype(n))) for n in names if n not in inputs
        )
        fixed = int(engine.get_tensor_shape(self._input_name)[0])
        if fixed >= 0:
            self._min_batch = self._max_batch = fixed
            if fixed != profile.max:
                log.info(
                    "%s has a fixed batch of %d; running it %d at a time (batch max %d ignored)",
                    model_path.name,
                    fixed,
                    fixed,
                    profile.max,
                )
        else:
            low, _, high = engine.get_tensor_profile_shape(self._input_name, 0)
            self._min_batch, self._max_batch = int(low[0]), int(high[0])

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return (self._input_name,)

    @property
    def output_names(self) -> Sequence[str]:
        return tuple(name for name, _ in self._outputs)

    @property
    def engine_path(self) -> Path:
        """The cached engine file this backend runs."""
        return self._engine_path

    @property
    def built_engine(self) -> bool:
        """True when this backend built its engine, False when it loaded it from the cache."""
        return self._built

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        """Run a host batch (N, C, H, W); every output comes back (N, ...) as float32."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self._device)
        outputs = self.infer_tensor(tensor)
        return [out.float().cpu().numpy() for out in outputs]

    def infer_tensor(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Run a batch (N, C, H, W) already on this backend's GPU; float32 outputs stay there.

        Ordered after the caller's pending work on its current stream, and the caller's later
        work on that stream is ordered after the inference: no host synchronisation.
        """
        import torch

        if batch.device != self._device:
            raise ValueError(f"batch is on {batch.device}, this engine runs on {self._device}")
        if batch.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {tuple(batch.shape)}")
        batch = batch.to(self._input_dtype)
        parts = [
            self._run(batch[start : start + size], padded)
            for start, size, padded in chunk_plan(len(batch), self._min_batch, self._max_batch)
        ]
        if len(parts) == 1:
            return parts[0]
        return [torch.cat(per_output) for per_output in zip(*parts, strict=True)]

    def _run(self, chunk: torch.Tensor, padded: int) -> list[torch.Tensor]:
        """One engine call on the backend's own stream (TensorRT syncs the whole device when
        enqueued on the legacy default stream, which is torch's default)."""
        import torch

        size = len(chunk)
        if padded > size:
            chunk = torch.cat([chunk, chunk.new_zeros((padded - size, *chunk.shape[1:]))])
        if not chunk.is_contiguous() or chunk.data_ptr() % _ADDRESS_ALIGNMENT:
            chunk = chunk.contiguous().clone()
        caller = torch.cuda.current_stream(self._device)
        with self._lock, torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._stream.wait_stream(caller)
            context = self._context
            if not context.set_input_shape(self._input_name, tuple(chunk.shape)):
                raise ValueError(f"input shape {tuple(chunk.shape)} is outside the profile")
            context.set_tensor_address(self._input_name, chunk.data_ptr())
            outputs = []
            for name, dtype in self._outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=dtype, device=self._device)
                context.set_tensor_address(name, out.data_ptr())
                outputs.append(out)
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to enqueue {self._engine_path.name}")
            # the allocator must not hand these buffers out again before both streams are done
            chunk.record_stream(self._stream)
            for out in outputs:
                out.record_stream(caller)
        caller.wait_stream(self._stream)
        return [out[:size].float() for out in outputs]


class _EngineBuilder:
    """ONNX -> serialized engine, with the precision plan of the installed TensorRT."""

    def __init__(
        self, trt: Any, logger: Any, device: torch.device, workspace_bytes: int | None
    ) -> None:
        self._trt, self._logger, self._device = trt, logger, device
        self._workspace_bytes = workspace_bytes

    def build(
        self,
        model_path: Path,
        precision: Precision,
        batch: BatchProfile,
        input_hw: tuple[int, int],
        calibration: Int8Calibration | None,
    ) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        # the parser owns the weights the network points at: keep it until the build is done
        network, parser = self._parse(builder, model_path, model_path.read_bytes())
        plan = precision_plan(
            precision,
            weakly_typed=hasattr(trt.BuilderFlag, "FP16"),
            quantized=_has_qdq(trt, network),
        )
        if plan.convert_to_fp16:
            network, parser = self._parse(builder, model_path, _fp16_onnx(model_path))
        if network.num_inputs != 1:
            raise ValueError(f"{model_path} has {network.num_inputs} inputs; backends take one")
        model_input = network.get_input(0)
        shape = tuple(int(d) for d in model_input.shape)
        config = builder.create_builder_config()
        if self._workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace_bytes)
        profile = profile_shapes(shape, batch, input_hw)
        if profile is not None:
            config.add_optimization_profile(self._profile(builder, model_input.name, profile))
        for flag in plan.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        calibrator = None
        if plan.calibrate:
            calibrator = self._calibrator(
                builder, config, model_input.name, shape, input_hw, calibration
            )
        log.info(
            "building a TensorRT %s engine for %s (flags %s, profile %s)",
            precision,
            model_path.name,
            plan.builder_flags,
            profile,
        )
        serialized = builder.build_serialized_network(network, config)
        del calibrator, parser
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build {model_path} (its log above says why)")
        return bytes(serialized)

    def _parse(self, builder: Any, model_path: Path, model: bytes) -> tuple[Any, Any]:
        trt = self._trt
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(model, str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT cannot parse {model_path}: {errors}")
        return network, parser

    def _profile(self, builder: Any, name: str, shapes: ProfileShapes) -> Any:
        profile = builder.create_optimization_profile()
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        return profile

    def _calibrator(
        self,
        builder: Any,
        config: Any,
        input_name: str,
        network_shape: tuple[int, ...],
        input_hw: tuple[int, int],
        calibration: Int8Calibration | None,
    ) -> Any:
        if calibration is None:
            raise ValueError(
                "INT8 of a model without Q/DQ layers needs an Int8Calibration (a cache file, "
                "and calibration batches unless the cache exists)"
            )
        if not calibration.cache.is_file() and calibration.batches is None:
            raise ValueError(
                f"INT8 without Q/DQ layers: no calibration cache at {calibration.cache} and no "
                "calibration batches to make one"
            )
        shape = calibration_shape(network_shape, calibration.batch_size, input_hw)
        if min(network_shape) < 0:
            # calibration runs at one shape, that of its own profile
            fixed = ProfileShapes(min=shape, opt=shape, max=shape)
            config.set_calibration_profile(self._profile(builder, input_name, fixed))
        calibrator = _entropy_calibrator(self._trt, calibration, shape, self._device)
        config.int8_calibrator = calibrator
        return calibrator


def _has_qdq(trt: Any, network: Any) -> bool:
    """Whether the network is explicitly quantized (Q/DQ layers from the ONNX graph)."""
    kinds = {getattr(trt.LayerType, name) for name in _QDQ_LAYERS}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def _fp16_onnx(model_path: Path) -> bytes:
    """The model with float16 weights and activations and float32 inputs/outputs, for a
    strongly typed TensorRT to run in FP16."""
    import onnx
    from onnxruntime.transformers.float16 import (  # type: ignore[import-untyped]
        convert_float_to_float16,
    )

    model = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    data: bytes = model.SerializeToString()
    return data


def _torch_dtype(dtype: Any) -> torch.dtype:
    import torch

    name = str(dtype.name)
    if name not in _TORCH_DTYPES:
        raise ValueError(f"TensorRT tensor type {name} has no torch equivalent here")
    torch_dtype: torch.dtype = getattr(torch, _TORCH_DTYPES[name])
    return torch_dtype


def _python_logger(trt: Any) -> Any:
    """A TensorRT logger that writes to this module's logger (structured logs, not stderr)."""
    levels = {
        "INTERNAL_ERROR": logging.ERROR,
        "ERROR": logging.ERROR,
        "WARNING": logging.WARNING,
        "INFO": logging.DEBUG,  # TensorRT's info is per-layer chatter
    }

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(str(severity.name))
            if level is not None:
                log.log(level, "TensorRT: %s", msg)

    return _Logger()


def _entropy_calibrator(
    trt: Any, calibration: Int8Calibration, shape: tuple[int, int, int, int], device: torch.device
) -> Any:
    """An IInt8EntropyCalibrator2 over ``calibration`` (built per call: the base class exists
    only once TensorRT is imported, and only in TensorRT 10)."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches: Iterator[FloatArray] | None = None
            self._current: torch.Tensor | None = None  # TensorRT reads it after we return

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._batches is None:
                assert calibration.batches is not None  # checked before the build
                self._batches = fixed_batches(calibration.batches(), shape)
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._current = torch.from_numpy(batch).to(device)
            torch.cuda.synchronize(device)  # TensorRT reads on its own stream
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if calibration.cache.is_file():
                log.info("INT8 scales from %s", calibration.cache)
                return calibration.cache.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            write_atomic(calibration.cache, bytes(cache))
            log.info("wrote the INT8 calibration cache %s", calibration.cache)

    return _Calibrator()
