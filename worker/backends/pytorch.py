"""PyTorch backend: ONNX models converted by onnx2torch (or any ``nn.Module``) on CUDA or CPU.

On a GPU it runs the model in FP16 (or FP32), channels-last, and replays one CUDA graph per
batch-size bucket (powers of two up to ``max_batch``): small detectors are bound by kernel
launches rather than FLOPs, and a graph replay launches the whole network at once. A batch is
padded up to its bucket; rows are independent in inference, so padding never changes a result.

``infer`` is the :class:`..base.InferenceBackend` contract (host arrays in and out, through a
pinned staging buffer); ``infer_tensor`` keeps everything on the device for the GPU pipeline
(:mod:`kubevision.worker.gpu`), which uploads uint8 frames and letterboxes them there.

(Named ``pytorch`` so no import path can resolve ``torch`` itself to this module.)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float32]
TorchPrecision = Literal["fp32", "fp16"]

HOST_CONSTANT_CONSUMERS = frozenset(
    {
        "OnnxReshape",
        "OnnxSlice",
        "OnnxResize",
        "OnnxExpand",
        "OnnxTile",
        "OnnxPad",
        "OnnxConstantOfShape",
        "OnnxRange",
        "OnnxTopK",
        "OnnxSqueezeDynamicAxes",
        "OnnxUnsqueezeDynamicAxes",
    }
)
"""onnx2torch modules that read a constant input (shape, starts, scales, ...) back to Python
with ``.tolist()``: on a GPU that is a device-to-host sync per call, which both slows every
call and makes CUDA graph capture impossible. Those constants stay in host memory."""

_WARMUP_RUNS = 3
"""Eager runs on a side stream before capture (cuDNN picks its algorithms in these)."""

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    """One captured batch-size bucket: replay after copying the batch into ``inputs``."""

    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    outputs: list[torch.Tensor]


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, plus ``max_batch`` itself when it is not one."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    return tuple(sorted({*sizes, max_batch}))


def keep_shape_constants_on_host(module: torch.nn.Module) -> int:
    """Move the constant shape/slice/scale inputs of onnx2torch's ops back to the CPU.

    Returns how many constants moved. Modules that are not fx graphs (hand-written models)
    have none.
    """
    graph = getattr(module, "graph", None)
    if not isinstance(module, torch.fx.GraphModule) or graph is None:
        return 0
    moved = 0
    for node in graph.nodes:
        if node.op != "get_attr" or not node.users:
            continue
        if all(_reads_as_shape(module, user, node) for user in node.users):
            owner_name, _, attr = node.target.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            value = getattr(owner, attr)
            if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                if attr in owner._buffers:
                    owner._buffers[attr] = value.cpu()
                else:
                    setattr(owner, attr, value.cpu())
                moved += 1
    return moved


def _reads_as_shape(module: torch.fx.GraphModule, user: torch.fx.Node, node: torch.fx.Node) -> bool:
    if user.op != "call_module":
        return False
    kind = type(module.get_submodule(str(user.target))).__name__
    return kind in HOST_CONSTANT_CONSUMERS and user.args.index(node) >= 1


def onnx_input_shape(path: Path) -> tuple[int | None, tuple[int | None, ...]]:
    """(fixed batch or None, (C, H, W) with None for symbolic dims) of a one-input ONNX model."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs; backends take exactly one")
    shape = inputs[0].type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    if len(dims) != 4:
        raise ValueError(f"{path} input has {len(dims)} dims; expected (N, C, H, W)")
    return dims[0], tuple(dims[1:])


class TorchBackend:
    """A torch module on one device (see :class:`..base.InferenceBackend`)."""

    name = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: tuple[int, int, int],
        device: str = "cuda",
        precision: TorchPrecision = "fp16",
        max_batch: int = 64,
        cuda_graphs: bool = True,
        fixed_batch: int | None = None,
        input_name: str = "images",
        output_names: Sequence[str] | None = None,
    ) -> None:
        """Move the module to ``device`` and, on CUDA with ``cuda_graphs``, capture the buckets.

        Args:
            module: the network in eval mode semantics (it is put into eval mode here).
            input_shape: (C, H, W) of one input.
            device: ``cpu``, ``cuda`` or ``cuda:N``.
            precision: ``fp16`` runs weights and activations in half precision (CUDA only;
                on CPU the backend runs FP32 whatever is asked, and says so).
            max_batch: most frames per model call (ignored for fixed-batch models).
            cuda_graphs: capture a graph per batch bucket; a model that cannot be captured
                runs eagerly, logged once.
            fixed_batch: the batch the model was exported with, when it cannot take others.
            input_name: for logs and the InferenceBackend contract.
            output_names: names of the outputs; default ``output0..``.
        """
        self._device = torch.device(device)
        if precision == "fp16" and self._device.type == "cpu":
            log.info("precision fp16 is for CUDA; running FP32 on the CPU")
            precision = "fp32"
        self.precision: TorchPrecision = precision
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._fixed_batch = fixed_batch
        self._max_batch = fixed_batch or max_batch
        self._input_shape = input_shape
        self._input_names = (input_name,)
        self._channels_last = self._device.type == "cuda"
        module = module.eval().to(self._device, dtype=self._dtype)
        module = module.to(memory_format=self._memory_format)
        keep_shape_constants_on_host(module)
        self._module = module
        self._staging: torch.Tensor | None = None
        probe = self._run_eager(self._zeros(self._fixed_batch or 1))
        self._output_names = tuple(output_names or (f"output{i}" for i in range(len(probe))))
        self._graphs: dict[int, _Graph] = {}
        if cuda_graphs and self._device.type == "cuda":
            self._capture_all()

    @classmethod
    def from_onnx(
        cls,
        path: Path,
        *,
        input_shape: tuple[int, int, int] | None = None,
        **kwargs: object,
    ) -> TorchBackend:
        """Convert an ONNX model with onnx2torch; symbolic H/W need ``input_shape``.

        Flatten-by-batch reshapes are folded first (:mod:`.shape_folding`), so exported
        classifiers (``x.view(x.size(0), -1)``) run without a device sync and capture as
        CUDA graphs; square max pools are split into row and column pools
        (:mod:`.separable_pooling`: the same values for far fewer reads); and each
        ``x * sigmoid(x)`` becomes one SiLU (:mod:`.silu_fusion`).
        """
        import onnx
        from onnx2torch import convert

        from kubevision.worker.backends.separable_pooling import separate_max_pools
        from kubevision.worker.backends.shape_folding import fold_batch_reshapes
        from kubevision.worker.backends.silu_fusion import fuse_silu

        # onnx2torch's Slice indexes with a list; torch warns on every process's first call.
        # The CPU tests compare the converted model with ONNX Runtime, so a semantic change
        # in a future torch would fail them rather than pass silently.
        warnings.filterwarnings(
            "ignore", "Using a non-tuple sequence for multidimensional indexing", UserWarning
        )
        fixed_batch, shape = onnx_input_shape(path)
        if input_shape is None:
            if any(d is None for d in shape):
                raise ValueError(f"{path} has a symbolic input size {shape}; pass input_shape")
            input_shape = (int(shape[0] or 0), int(shape[1] or 0), int(shape[2] or 0))
        model = onnx.load(str(path))
        if folded := fold_batch_reshapes(model):
            log.info("folded %d shape-computed reshapes of %s into constants", folded, path.name)
        if split := separate_max_pools(model):
            log.info("split %d square max pools of %s into row and column pools", split, path.name)
        names = [o.name for o in model.graph.output]
        module = convert(model)
        if fused := fuse_silu(module):
            log.info("fused %d sigmoid-multiply pairs of %s into SiLU", fused, path.name)
        return cls(
            module,
            input_shape=input_shape,
            fixed_batch=fixed_batch,
            output_names=names,
            input_name=model.graph.input[0].name,
            **kwargs,  # type: ignore[arg-type]
        )

    # -- the InferenceBackend contract --------------------------------------------------------

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return self._input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self._output_names

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def graph_buckets(self) -> tuple[int, ...]:
        """Batch sizes replayed from CUDA graphs (empty when running eagerly)."""
        return tuple(sorted(self._graphs))

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        """Host batch (N, C, H, W) in, host outputs (N, ...) float32 out."""
        array = np.ascontiguousarray(batch, np.float32)
        if len(array) == 0:
            raise ValueError("infer needs at least one item in the batch")
        outputs = self.infer_tensor(self._upload(array))
        return [out.float().cpu().numpy() for out in outputs]

    def infer_tensor(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Device batch (N, C, H, W) in, device outputs (N, ...) out; never synchronises.

        The outputs are the caller's (copies, not the graphs' static buffers).
        """
        count = len(batch)
        if count == 0:
            raise ValueError("infer needs at least one item in the batch")
        parts = [
            self._run(batch[start : start + self._max_batch])
            for start in range(0, count, self._max_batch)
        ]
        if len(parts) == 1:
            return parts[0]
        return [torch.cat(per_output) for per_output in zip(*parts, strict=True)]

    # -- internals ----------------------------------------------------------------------------

    def _zeros(self, count: int) -> torch.Tensor:
        zeros = torch.zeros((count, *self._input_shape), dtype=self._dtype, device=self._device)
        return zeros.contiguous(memory_format=self._memory_format)

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self._channels_last else torch.contiguous_format

    def _upload(self, array: FloatArray) -> torch.Tensor:
        """Host array -> device tensor, through a reused pinned buffer on CUDA."""
        host = torch.from_numpy(array)
        if self._device.type != "cuda":
            return host
        if self._staging is None or self._staging.numel() < host.numel():
            self._staging = torch.empty(host.numel(), dtype=torch.float32, pin_memory=True)
        staged = self._staging[: host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self._device, non_blocking=True)

    def _run(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        size = len(chunk)
        bucket = self._bucket(size)
        if bucket is None:
            padded = chunk
            if (target := self._eager_size(size)) > size:
                padded = torch.cat([chunk, self._zeros(target - size).to(chunk)])
            return [out[:size].float() for out in self._run_eager(padded)]
        graph = self._graphs[bucket]
        graph.inputs[:size].copy_(chunk)
        graph.graph.replay()
        return [out[:size].float() for out in graph.outputs]  # .float() copies out of the pool

    def _eager_size(self, size: int) -> int:
        """The batch an eager call runs: the model's fixed batch, else on CUDA the bucket.

        Padding eager CUDA calls to the same buckets as the graphs keeps the set of shapes
        small: cuDNN picks (and may compile) kernels per new shape, which costs far more than
        the padded rows when batch sizes vary call to call (crops per frame do).
        """
        if self._fixed_batch is not None:
            return max(size, self._fixed_batch)
        if self._device.type != "cuda":
            return size
        return next(b for b in graph_buckets(self._max_batch) if b >= size)

    def _bucket(self, size: int) -> int | None:
        return next((b for b in sorted(self._graphs) if b >= size), None)

    def _run_eager(self, batch: torch.Tensor) -> list[torch.Tensor]:
        batch = batch.to(self._device, self._dtype).contiguous(memory_format=self._memory_format)
        with torch.inference_mode():
            result = self._module(batch)
        return _outputs(result)

    def _capture_all(self) -> None:
        buckets = (self._fixed_batch,) if self._fixed_batch else graph_buckets(self._max_batch)
        pool = torch.cuda.graph_pool_handle()
        try:
            for size in sorted(buckets, reverse=True):  # largest first: the rest reuse its pool
                self._graphs[size] = self._capture(size, pool)
        except RuntimeError as error:
            self._graphs.clear()
            log.warning("CUDA graph capture failed; running eagerly: %s", error)
            return
        log.info("captured CUDA graphs for batch sizes %s", self.graph_buckets)

    def _capture(self, size: int, pool: Any) -> _Graph:
        inputs = self._zeros(size)
        side = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(_WARMUP_RUNS):
                self._module(inputs)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            result = self._module(inputs)
        return _Graph(graph, inputs, _outputs(result))


def _outputs(result: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A module's one output or several as a list."""
    if isinstance(result, torch.Tensor):
        return [result]
    return list(result)
