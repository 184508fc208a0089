"""The detector on the GPU: device letterbox -> torch model (CUDA graphs) -> device NMS.

Same contract and validation as :class:`kubevision.worker.detector.Detector` (it is one, with
the three stages moved to the device); it also accepts device frames from NVDEC. Stage times
are measured with CUDA events, since host timestamps around asynchronous launches would
only measure the launches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import torch

from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.detections import Detections
from kubevision.worker.detector import DEFAULT_MAX_DET, Detector, StageCallback, StageTimings
from kubevision.worker.gpu.postprocess import DEVICE_DECODERS, select_nms, to_frames
from kubevision.worker.gpu.preprocess import DeviceLetterbox
from kubevision.worker.nvdec import Pixels
from kubevision.worker.preprocess import InvalidFrameError

_MS = 1e-3


class _Clock:
    """Stage boundaries: CUDA events on a GPU, the host clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[torch.cuda.Event | float] = []

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def spans(self) -> list[float]:
        """Seconds between consecutive marks (call after the work has synchronised)."""
        marks, self._marks = self._marks, []
        if self._cuda:
            events = [m for m in marks if isinstance(m, torch.cuda.Event)]
            events[-1].synchronize()  # the work before it is done; the event itself may not be
            return [a.elapsed_time(b) * _MS for a, b in itertools.pairwise(events)]
        times = [m for m in marks if isinstance(m, float)]
        return [b - a for a, b in itertools.pairwise(times)]


class DeviceDetector(Detector):
    """A :class:`Detector` whose preprocessing, inference and NMS run on the backend's device."""

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
        """As :class:`Detector`; the backend must be a :class:`TorchBackend`."""
        if not isinstance(backend, TorchBackend):
            raise TypeError(f"the device detector runs torch models, got a {backend.name} backend")
        super().__init__(
            model, backend, confidence, nms_iou, classes, max_det=max_det, on_stage=on_stage
        )
        self._torch = backend
        device = backend.device
        self._letterbox = DeviceLetterbox(*self._size, self._format, device)
        self._device_decode = DEVICE_DECODERS.get(model.decoder or "")
        self._device_mask = torch.as_tensor(self._class_mask, device=device)
        self._clock = _Clock(device)

    def _check(self, frame: Pixels) -> None:
        """Host frames as on the CPU path; device frames must be NVDEC's (H, W, 3) uint8."""
        if not isinstance(frame, torch.Tensor):
            super()._check(frame)
        elif frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InvalidFrameError(
                f"a device frame must be (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}"
            )

    def _detect(self, frames: Sequence[Pixels]) -> tuple[list[Detections], StageTimings]:
        self._clock.mark()
        batch, placements = self._letterbox(frames)
        self._clock.mark()
        outputs = self._torch.infer_tensor(batch)
        self._clock.mark()
        if self._device_decode is None:  # a family decoded on the host (e.g. NanoDet)
            found = self._decode_on_host([o.float().cpu().numpy() for o in outputs], placements)
        else:
            xyxy, scores = self._device_decode(outputs, self._size)
            kept = select_nms(
                xyxy,
                scores,
                confidence=self._confidence,
                class_mask=self._device_mask,
                iou=self._nms_iou,
                max_det=self._max_det,
            )
            found = to_frames(*kept, placements)  # the host copy synchronises
        self._clock.mark()
        prep, infer, post = self._clock.spans()
        return found, StageTimings(prep, infer, post)
