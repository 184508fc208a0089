"""Person re-identification embeddings with ONNX Runtime, for DeepSORT.

Two input layouts, recognised from the model's input shape:

* OpenVINO Open Model Zoo's ``person-reid-retail-0288``: ``N x 256 x 128 x 3`` (NHWC, BGR,
  0-255, no normalisation), one 256-d vector per crop;
* torchreid's OSNet exports: ``N x 3 x 256 x 128`` (NCHW, RGB, ImageNet mean/std), 512-d.

All crops of a frame are resized into one array and run in one call when the export takes a
dynamic batch (``python -m model_catalog.tools.reid_dynamic`` makes one from a batch-1
export); a fixed-batch export is run in chunks of its batch. On a GPU (``device="cuda"``, with
torch and onnx2torch installed, as the CUDA worker image has them) the model runs in the
worker's PyTorch backend in FP16, and the crops of a device frame (NVDEC) are cut and resized
on the GPU: nothing crosses to the host but the boxes and the embeddings. Elsewhere ONNX
Runtime runs it, on CUDA when that build has it, else on the CPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]

from kubevision.worker.detections import FloatArray
from kubevision.worker.nvdec import Pixels
from kubevision.worker.preprocess import IMAGENET_RGB, RAW_PIXELS, InputFormat
from kubevision.worker.trackers.base import Image

INPUT_HEIGHT, INPUT_WIDTH = 256, 128
"""Crop size the models were trained on (people are about twice as tall as wide)."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
MAX_BATCH = 64
"""Crops per call on a GPU (CUDA graphs are captured up to it); a crowd larger than this
runs in several calls."""


def default_providers() -> tuple[str, ...]:
    """CUDA first where this ONNX Runtime build has it."""
    available = ort.get_available_providers()
    return tuple(p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available)


def _fits(shape: Sequence[object], wanted: Sequence[int]) -> bool:
    """Whether a model's (non-batch) input dims are ``wanted``, symbolic ones matching any."""
    return len(shape) == len(wanted) and all(
        not isinstance(d, int) or d == w for d, w in zip(shape, wanted, strict=True)
    )


class ReidEmbedder:
    """Callable ``(frame, xyxy) -> (N, D)`` L2-normalised embeddings (the ``Embedder`` protocol)."""

    def __init__(
        self, model_path: Path, providers: Sequence[str] | None = None, device: str = "cpu"
    ) -> None:
        self._torch: Any = None
        if device.startswith("cuda") and _has_torch():
            from kubevision.worker.backends.pytorch import TorchBackend, onnx_input_shape

            _, shape = onnx_input_shape(model_path)
            self.nchw = _nchw(model_path, shape)
            self._torch = TorchBackend.from_onnx(
                model_path, device=device, precision="fp16", max_batch=MAX_BATCH
            )
            probe = np.zeros((1, *(int(d or 0) for d in shape)), np.float32)
            self.dim = int(self._torch.infer(probe)[0].shape[-1])
            return
        self.session = ort.InferenceSession(
            str(model_path), providers=list(providers or default_providers())
        )
        model_input = self.session.get_inputs()[0]
        batch, *rest = model_input.shape
        self.nchw = _nchw(model_path, rest)
        self._input = model_input.name
        self._batch = batch if isinstance(batch, int) else None
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    @property
    def _format(self) -> InputFormat:
        """The crops' colour order and scale, as the GPU crop cutter takes them."""
        if self.nchw:
            return InputFormat(color="rgb", normalization=IMAGENET_RGB)
        return InputFormat(color="bgr", normalization=RAW_PIXELS)

    @property
    def takes_device_frames(self) -> bool:
        """Whether it runs on the GPU, where a device (NVDEC) frame is cropped as it is."""
        return self._torch is not None

    def __call__(self, frame: Pixels, xyxy: FloatArray) -> FloatArray:
        if len(xyxy) == 0:
            return np.empty((0, self.dim), np.float32)
        if self._torch is not None:
            emb = self._device_embeddings(frame, xyxy)
        else:
            host = frame if isinstance(frame, np.ndarray) else frame.cpu().numpy()
            emb = self._host_embeddings(self.crops(host, xyxy))
        unit: FloatArray = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return unit

    def _model_input(self, crops: FloatArray) -> FloatArray:
        """Host crops (N, H, W, 3, BGR 0-255) as the model takes them: as they are (OMZ), or
        RGB, ImageNet mean/std, NCHW (OSNet)."""
        if not self.nchw:
            return crops
        normalised: FloatArray = ((crops[..., ::-1] - IMAGENET_MEAN) / IMAGENET_STD).transpose(
            0, 3, 1, 2
        )
        return normalised

    def _host_embeddings(self, crops: FloatArray) -> FloatArray:
        """ONNX Runtime over host crops, in chunks of a fixed-batch export's batch."""
        crops = self._model_input(crops)
        chunk = self._batch or len(crops)
        outputs = []
        for start in range(0, len(crops), chunk):
            batch = crops[start : start + chunk]
            padded = np.zeros((chunk, *batch.shape[1:]), np.float32)
            padded[: len(batch)] = batch
            outputs.append(self.session.run(None, {self._input: padded})[0][: len(batch)])
        return np.concatenate(outputs).astype(np.float32)

    def _device_embeddings(self, frame: Pixels, xyxy: FloatArray) -> FloatArray:
        """The torch backend: crops of a device frame cut on the GPU, a host frame's on the
        host (then uploaded); one small copy of the embeddings back."""
        import torch

        from kubevision.worker.gpu.preprocess import device_crops

        if isinstance(frame, np.ndarray):
            crops = self._model_input(self.crops(frame, xyxy))
            batch = torch.from_numpy(np.ascontiguousarray(crops)).to(self._torch.device)
        else:
            batch = device_crops([(frame, xyxy)], INPUT_WIDTH, INPUT_HEIGHT, self._format)
            if not self.nchw:  # (N, 3, H, W) -> the OMZ model's (N, H, W, 3)
                batch = batch.permute(0, 2, 3, 1)
        (emb,) = self._torch.infer_tensor(batch.contiguous())
        host: FloatArray = emb.float().cpu().numpy()
        return host

    @staticmethod
    def crops(frame: Image, xyxy: FloatArray) -> FloatArray:
        """(N, 256, 128, 3) float32 BGR crops, boxes clipped to the frame (at least 1 px)."""
        height, width = frame.shape[:2]
        box = np.round(np.asarray(xyxy, np.float64)).astype(np.int64)
        x1 = np.clip(box[:, 0], 0, width - 1)
        y1 = np.clip(box[:, 1], 0, height - 1)
        x2 = np.clip(box[:, 2], x1 + 1, width)
        y2 = np.clip(box[:, 3], y1 + 1, height)
        out = np.empty((len(box), INPUT_HEIGHT, INPUT_WIDTH, 3), np.float32)
        for i in range(len(box)):
            out[i] = cv2.resize(
                frame[y1[i] : y2[i], x1[i] : x2[i]],
                (INPUT_WIDTH, INPUT_HEIGHT),
                interpolation=cv2.INTER_LINEAR,
            )
        return out


def _has_torch() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx2torch"))


def _nchw(model_path: Path, dims: Sequence[object]) -> bool:
    """Whether the model takes NCHW (OSNet) rather than NHWC (OMZ) crops; else a clear error."""
    if _fits(dims, (INPUT_HEIGHT, INPUT_WIDTH, 3)):
        return False
    if _fits(dims, (3, INPUT_HEIGHT, INPUT_WIDTH)):
        return True
    raise ValueError(
        f"{model_path} takes input {list(dims)} per crop; this embedder needs "
        f"{INPUT_HEIGHT} x {INPUT_WIDTH} x 3 (person-reid-retail-0288) or "
        f"3 x {INPUT_HEIGHT} x {INPUT_WIDTH} (OSNet)"
    )
