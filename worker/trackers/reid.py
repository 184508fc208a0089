"""Person re-identification embeddings with ONNX Runtime, for DeepSORT.

Two input layouts, recognised from the model's input shape:

* OpenVINO Open Model Zoo's ``person-reid-retail-0288``: ``N x 256 x 128 x 3`` (NHWC, BGR,
  0-255, no normalisation), one 256-d vector per crop;
* torchreid's OSNet exports: ``N x 3 x 256 x 128`` (NCHW, RGB, ImageNet mean/std), 512-d.

All crops of a frame are resized into one array and run in one call when the export takes a
dynamic batch (``python -m model_catalog.tools.prepare dynamic`` makes one from a batch-1
export); a fixed-batch export is run in chunks of its batch. CUDA is used when ONNX Runtime
has it, else the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]

from kubevision.worker.detections import FloatArray
from kubevision.worker.trackers.base import Image

INPUT_HEIGHT, INPUT_WIDTH = 256, 128
"""Crop size the models were trained on (people are about twice as tall as wide)."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


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

    def __init__(self, model_path: Path, providers: Sequence[str] | None = None) -> None:
        self.session = ort.InferenceSession(
            str(model_path), providers=list(providers or default_providers())
        )
        model_input = self.session.get_inputs()[0]
        batch, *rest = model_input.shape
        if _fits(rest, (INPUT_HEIGHT, INPUT_WIDTH, 3)):
            self.nchw = False
        elif _fits(rest, (3, INPUT_HEIGHT, INPUT_WIDTH)):
            self.nchw = True
        else:
            raise ValueError(
                f"{model_path} takes input {model_input.shape}; this embedder needs "
                f"N x {INPUT_HEIGHT} x {INPUT_WIDTH} x 3 (person-reid-retail-0288) or "
                f"N x 3 x {INPUT_HEIGHT} x {INPUT_WIDTH} (OSNet)"
            )
        self._input = model_input.name
        self._batch = batch if isinstance(batch, int) else None
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, frame: Image, xyxy: FloatArray) -> FloatArray:
        crops = self.crops(frame, xyxy)
        if len(crops) == 0:
            return np.empty((0, self.dim), np.float32)
        if self.nchw:
            crops = ((crops[..., ::-1] - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
        chunk = self._batch or len(crops)
        outputs = []
        for start in range(0, len(crops), chunk):
            batch = crops[start : start + chunk]
            padded = np.zeros((chunk, *batch.shape[1:]), np.float32)
            padded[: len(batch)] = batch
            outputs.append(self.session.run(None, {self._input: padded})[0][: len(batch)])
        emb = np.concatenate(outputs).astype(np.float32)
        unit: FloatArray = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return unit

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
