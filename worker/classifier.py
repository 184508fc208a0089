"""Crop classification: a class (top-k) for each detected box, one backend call per batch.

Crops are stretched to the model input (objects fill the crop, so the usual resize-then-
centre-crop of whole-image classifiers would cut them) in the ImageNet convention that
ONNX-zoo and torchvision classifiers share: RGB, ImageNet mean/std. Scores are softmax
probabilities over the model's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.nvdec import Pixels
from kubevision.worker.pending import Pending
from kubevision.worker.preprocess import IMAGENET_RGB, InputFormat, crops, to_tensor

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Labelled = tuple[IntArray, FloatArray]
"""(class ids, scores) of one frame's boxes, each (N, top_k), best first."""

IMAGENET_INPUT = InputFormat(color="rgb", normalization=IMAGENET_RGB)


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names, one per line in class-id order (blank lines ignored)."""
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


class CropClassifier:
    """A classification model applied to the boxes of a frame."""

    def __init__(
        self,
        model: ModelConfig,
        backend: InferenceBackend,
        top_k: int = 1,
        *,
        labels_file: Path | None = None,
        input_format: InputFormat = IMAGENET_INPUT,
    ) -> None:
        """Check the configuration up front.

        Args:
            model: the resolved ModelVariant (task ``classify``).
            backend: runs the model.
            top_k: classes returned per crop, >= 1.
            labels_file: class names (e.g. the model's ``imagenet_classes.txt``), used when
                ``model.labels`` is empty; one of the two must name the classes.
            input_format: the model's input convention (ImageNet's unless told otherwise).
        """
        if model.task != "classify":
            raise ValueError(f"model {model.variant!r} is a {model.task} model, not classify")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if model.labels:
            self.labels: tuple[str, ...] = tuple(model.labels)
        elif labels_file is not None:
            self.labels = read_labels(labels_file)
        else:
            raise ValueError(
                f"model {model.variant!r} has no labels: set ModelConfig.labels or pass labels_file"
            )
        if top_k > len(self.labels):
            raise ValueError(f"top_k {top_k} exceeds the model's {len(self.labels)} classes")
        self._backend = backend
        self._size = (model.input_size.width, model.input_size.height)
        self._format = input_format
        self.top_k = top_k

    def __call__(self, frame: Pixels, boxes: FloatArray) -> tuple[IntArray, FloatArray]:
        """(class ids, scores), each (N, top_k) best first, for the (N, 4) frame-pixel boxes."""
        return self.classify_many([(frame, boxes)])[0]

    def classify_many(self, requests: Sequence[tuple[Pixels, FloatArray]]) -> list[Labelled]:
        """The boxes of several frames (every camera's in one detected batch) in one backend
        call, so a call's fixed cost (a GPU sync, a graph launch) is paid per batch, not per
        frame. One (class ids, scores) pair per request, as :meth:`__call__` returns."""
        return self.submit(requests).result()

    def submit(self, requests: Sequence[tuple[Pixels, FloatArray]]) -> Pending[list[Labelled]]:
        """:meth:`classify_many` without waiting for a device backend: the crops and the model
        are queued on the GPU and the result waits for their answers, so the caller can do
        host work (track the next batch) meanwhile. Host frames and host backends are
        classified before this returns."""
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for _, b in requests]
        counts = [len(b) for b in boxes]
        if not sum(counts):
            empty = np.empty((0, self.top_k), np.int64), np.empty((0, self.top_k), np.float32)
            return Pending.done([empty] * len(requests))
        frames = [(frame, b) for (frame, _), b in zip(requests, boxes, strict=True) if len(b)]
        logits = self._logits(frames)
        bounds = np.cumsum(counts)[:-1]

        def labelled() -> list[Labelled]:
            class_ids, scores = self._top_k(logits())
            return list(zip(np.split(class_ids, bounds), np.split(scores, bounds), strict=True))

        return Pending(labelled)

    def _logits(self, frames: list[tuple[Pixels, FloatArray]]) -> Callable[[], FloatArray]:
        """Logits of every box, frame by frame, once the returned callable is called. Crops of
        host frames are cut on the host; those of device frames (NVDEC) on the device, and go
        to a device backend as they are (one small copy of the logits back), so a frame never
        crosses to the host."""
        host = [(i, f, b) for i, (f, b) in enumerate(frames) if isinstance(f, np.ndarray)]
        device = [(i, f, b) for i, (f, b) in enumerate(frames) if not isinstance(f, np.ndarray)]
        parts: dict[int, FloatArray] = {}
        if host:
            pixels = np.concatenate([crops(f, b, *self._size) for _, f, b in host])
            (logits,) = self._backend.infer(to_tensor(pixels, self._format))
            parts |= _split([(i, b) for i, _, b in host], logits)
        device_logits = self._device_logits([(f, b) for _, f, b in device]) if device else None

        def gathered() -> FloatArray:
            if device_logits is not None:
                parts.update(_split([(i, b) for i, _, b in device], device_logits()))
            return np.concatenate([parts[i] for i in range(len(frames))])

        return gathered

    def _device_logits(self, frames: Sequence[tuple[Any, FloatArray]]) -> Callable[[], FloatArray]:
        """Logits of device frames' boxes, queued (``Any``: torch tensors; torch is imported
        only where frames are on a device); the callable waits for them."""
        from kubevision.worker.gpu.preprocess import device_crops, download

        batch = device_crops(frames, *self._size, self._format)
        infer_tensor = getattr(self._backend, "infer_tensor", None)
        if infer_tensor is None:  # a host backend (ONNX Runtime): the crops go down, once
            (logits,) = self._backend.infer(batch.cpu().numpy())
            return lambda: logits
        (device_logits,) = infer_tensor(batch)
        return download(device_logits)

    def _top_k(self, logits: FloatArray) -> tuple[IntArray, FloatArray]:
        if logits.shape[1] != len(self.labels):
            raise ValueError(
                f"the model outputs {logits.shape[1]} classes but has {len(self.labels)} labels"
            )
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        top = np.argpartition(-probs, self.top_k - 1, axis=1)[:, : self.top_k]
        order = np.argsort(-np.take_along_axis(probs, top, axis=1), axis=1, kind="stable")
        class_ids = np.take_along_axis(top, order, axis=1).astype(np.int64)
        return class_ids, np.take_along_axis(probs, class_ids, axis=1).astype(np.float32)

    def names(self, class_ids: Sequence[int] | IntArray) -> list[str]:
        """Label names of class ids (for sinks and logs)."""
        return [self.labels[int(i)] for i in class_ids]


def _split(rows: list[tuple[int, FloatArray]], logits: FloatArray) -> dict[int, FloatArray]:
    """Logits of consecutive frames' boxes -> each frame's (frame index, its boxes)."""
    bounds = np.cumsum([len(boxes) for _, boxes in rows])[:-1]
    return dict(zip([i for i, _ in rows], np.split(logits, bounds), strict=True))
