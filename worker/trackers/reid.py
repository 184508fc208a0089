"""Person re-identification embeddings with ONNX Runtime, for DeepSORT.

Built for OpenVINO Open Model Zoo's ``person-reid-retail-0288`` exported to ONNX: input
``N x 256 x 128 x 3`` (NHWC, BGR, 0-255, no normalisation), output one 256-d vector per crop.
All crops of a frame are resized into one array; the model is then run in chunks of its batch
size (the shipped export fixes it at 1, so that is one run per crop; an export with a
dynamic batch runs all crops in one call).
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
"""Crop size the model was trained on (people are about twice as tall as wide)."""


class ReidEmbedder:
    """Callable ``(frame, xyxy) -> (N, D)`` L2-normalised embeddings (the ``Embedder`` protocol)."""

    def __init__(
        self, model_path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)
    ) -> None:
        self.session = ort.InferenceSession(str(model_path), providers=list(providers))
        model_input = self.session.get_inputs()[0]
        batch, *hwc = model_input.shape
        if hwc != [INPUT_HEIGHT, INPUT_WIDTH, 3]:
            raise ValueError(
                f"{model_path} takes input {model_input.shape}; this embedder needs an NHWC "
                f"N x {INPUT_HEIGHT} x {INPUT_WIDTH} x 3 model such as person-reid-retail-0288"
            )
        self._input = model_input.name
        self._batch = batch if isinstance(batch, int) else None
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, frame: Image, xyxy: FloatArray) -> FloatArray:
        crops = self.crops(frame, xyxy)
        if len(crops) == 0:
            return np.empty((0, self.dim), np.float32)
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
