"""Object detection: frames in, :class:`Detections` in original frame pixels out.

Preprocessing, the backend call and decoding + NMS are separate, timed stages, so the
orchestrator can observe each (``WorkerMetrics.stage``) and swap backends freely. A frame the
model cannot take (empty, not uint8, odd channel count) yields empty ``Detections`` and is
counted in ``Detector.rejected_frames``; it never costs the other frames of the batch their
results. Grayscale and BGRA frames are valid: they are converted, not rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from kubevision.api.worker_config import DetectorConfig, ModelConfig
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.decoders import decoder_for, nms
from kubevision.worker.detections import Detections
from kubevision.worker.nvdec import Pixels
from kubevision.worker.pending import Pending
from kubevision.worker.preprocess import (
    Frame,
    InvalidFrameError,
    Letterbox,
    check_frame,
    preprocess,
)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO detection classes in model index order (the labels of every COCO-trained
detector whose ModelConfig.labels is empty)."""

DEFAULT_MAX_DET = 300
"""Most detections per frame (COCO evaluation's limit; far above any real scene's need)."""

StageCallback = Callable[[str, float], None]
"""Called as ``(stage, seconds)`` after each stage of a batch."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock seconds of each stage for one whole batch (divide by frames for per frame)."""

    preprocess: float
    infer: float
    postprocess: float


class Detector:
    """A detection model with its preprocessing, decoder, thresholds and class filter."""

    def __init__(
        self,
        model: ModelConfig,
        backend: InferenceBackend,
        confidence: float,
        nms_iou: float,
        classes: Sequence[str] | None = None,
        *,
        max_det: int = DEFAULT_MAX_DET,
        on_stage: StageCallback | None = None,
    ) -> None:
        """Check the configuration up front, so a bad one fails at startup, not per frame.

        Args:
            model: the resolved ModelVariant (task ``detect``, a known ``decoder``).
            backend: runs the model.
            confidence: minimum score kept, in (0, 1].
            nms_iou: IoU above which a worse box of the same class is dropped, in (0, 1].
            classes: class names to keep (from ``model.labels`` or COCO's); None or empty
                keeps all.
            max_det: most detections kept per frame, >= 1.
            on_stage: receives ``("preprocess" | "infer" | "postprocess", seconds)``.
        """
        if model.task != "detect":
            raise ValueError(f"model {model.variant!r} is a {model.task} model, not detect")
        if not 0 < confidence <= 1:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        if max_det < 1:
            raise ValueError(f"max_det must be >= 1, got {max_det}")
        self.labels: tuple[str, ...] = tuple(model.labels) or COCO_CLASSES
        unknown = sorted(set(classes or ()) - set(self.labels))
        if unknown:
            raise ValueError(
                f"classes {unknown} are not labels of model {model.variant!r}; its labels are "
                f"{list(self.labels)}"
            )
        # Always a mask, even keeping every class: decoding then also checks that the model
        # outputs as many classes as there are labels.
        self._class_mask = np.isin(np.array(self.labels), list(classes or self.labels))
        spec = decoder_for(model.decoder)
        self._decode = spec.decode
        self._format = spec.input_format
        self._size = (model.input_size.width, model.input_size.height)
        self._backend = backend
        self._confidence = confidence
        self._nms_iou = nms_iou
        self._max_det = max_det
        self._on_stage = on_stage
        self.rejected_frames = 0

    @classmethod
    def from_config(
        cls,
        config: DetectorConfig,
        backend: InferenceBackend,
        *,
        max_det: int = DEFAULT_MAX_DET,
        on_stage: StageCallback | None = None,
    ) -> Detector:
        """A detector as the worker config describes it."""
        return cls(
            config.model,
            backend,
            config.confidence,
            config.nms_iou,
            config.classes,
            max_det=max_det,
            on_stage=on_stage,
        )

    @property
    def backend_name(self) -> str:
        """The runtime running the model (for logs)."""
        return self._backend.name

    def __call__(self, frames: Sequence[Pixels]) -> list[Detections]:
        """Detections per frame, in frame pixels, best first; empty for rejected frames.

        The host pipeline takes host frames only (a GPU frame is rejected); the device
        detector (:mod:`kubevision.worker.gpu.detector`) takes both.
        """
        return self.submit(frames).result()

    def submit(self, frames: Sequence[Pixels]) -> Pending[list[Detections]]:
        """:meth:`__call__` in two halves. On a GPU the frames' preprocessing and the model
        are queued on the calling thread's stream, and :meth:`Pending.result` (on any thread)
        decodes, runs NMS and copies the boxes down on its own stream; so the thread that
        batches frames never waits for the GPU. The host pipeline does it all here. Stage
        times are reported when the result is taken."""
        results = [Detections.empty() for _ in frames]
        valid = [i for i, frame in enumerate(frames) if self._accept(i, frame)]
        if not valid:
            return Pending.done(results)
        finish = self._launch([frames[i] for i in valid])

        def detections() -> list[Detections]:
            found, timings = finish()
            for i, frame_detections in zip(valid, found, strict=True):
                results[i] = frame_detections
            if self._on_stage is not None:
                self._on_stage("preprocess", timings.preprocess)
                self._on_stage("infer", timings.infer)
                self._on_stage("postprocess", timings.postprocess)
            return results

        return Pending(detections)

    def _launch(
        self, frames: Sequence[Pixels]
    ) -> Callable[[], tuple[list[Detections], StageTimings]]:
        """The valid frames' detections and stage timings, once the returned callable is
        called (the host path runs every stage now; see gpu.detector)."""
        start = time.perf_counter()
        host = [cast("Frame", frame) for frame in frames]  # _accept let only host frames in
        tensor, placements = preprocess(host, *self._size, self._format)
        prepared = time.perf_counter()
        outputs = self._backend.infer(tensor)
        inferred = time.perf_counter()
        found = self._decode_on_host(outputs, placements)
        done = time.perf_counter()
        timings = StageTimings(prepared - start, inferred - prepared, done - inferred)
        return lambda: (found, timings)

    def _decode_on_host(
        self, outputs: Sequence[npt.NDArray[np.float32]], placements: Sequence[Letterbox]
    ) -> list[Detections]:
        candidates = self._decode(outputs, self._size, self._confidence, self._class_mask)
        return [
            self._finish(found.xyxy, found.scores, found.class_ids, placement)
            for found, placement in zip(candidates, placements, strict=True)
        ]

    def _check(self, frame: Pixels) -> None:
        """Raise :class:`InvalidFrameError` for a frame this detector cannot take."""
        check_frame(frame)

    def _accept(self, index: int, frame: Pixels) -> bool:
        try:
            self._check(frame)
        except InvalidFrameError as error:
            self.rejected_frames += 1
            # The first rejection is loud; a camera stuck on bad frames must not flood the log.
            level = logging.WARNING if self.rejected_frames == 1 else logging.DEBUG
            log.log(level, "frame %d rejected (empty Detections): %s", index, error)
            return False
        return True

    def _finish(
        self,
        xyxy: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        class_ids: npt.NDArray[np.int64],
        placement: Letterbox,
    ) -> Detections:
        """NMS, then back to frame pixels; boxes left without area by clipping are dropped."""
        keep = nms(xyxy, scores, class_ids, self._nms_iou, self._max_det)
        boxes = placement.to_frame(xyxy[keep])
        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Detections(boxes[has_area], scores[keep][has_area], class_ids[keep][has_area])


def build_detector(
    config: DetectorConfig,
    backend: InferenceBackend,
    *,
    max_det: int = DEFAULT_MAX_DET,
    on_stage: StageCallback | None = None,
) -> Detector:
    """The detector for ``backend``: all on the device for the torch backend, else the host
    pipeline (CPU letterbox and NMS around the backend call)."""
    if backend.name == "torch":
        from kubevision.worker.gpu.detector import DeviceDetector

        return DeviceDetector.from_config(config, backend, max_det=max_det, on_stage=on_stage)
    return Detector.from_config(config, backend, max_det=max_det, on_stage=on_stage)
