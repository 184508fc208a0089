"""The detector on the GPU: device letterbox -> torch model (CUDA graphs) -> device NMS.

Same contract and validation as :class:`kubevision.worker.detector.Detector` (it is one, with
the three stages moved to the device); it also accepts device frames from NVDEC. The thread
that submits a batch only queues the letterbox and the model on its CUDA stream; the thread
that takes the result has its own stream wait for them on the GPU, then runs decode and NMS
and copies the kept boxes down: only that thread waits for the GPU. Stage times are
measured with CUDA events, since host timestamps around asynchronous launches would only
measure the launches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

import torch

from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.detections import Detections
from kubevision.worker.detector import DEFAULT_MAX_DET, Detector, StageCallback, StageTimings
from kubevision.worker.gpu.postprocess import DEVICE_DECODERS, select_nms, to_frames
from kubevision.worker.gpu.preprocess import DeviceLetterbox
from kubevision.worker.nvdec import Pixels, order_after
from kubevision.worker.preprocess import InvalidFrameError, Letterbox

_MS = 1e-3


class _Clock:
    """One batch's stage boundaries: CUDA events on a GPU, the host clock on a CPU.

    Marked five times: start, prepared, inferred (on the launching thread's stream), then
    post-processing's start and end (on the finishing thread's), so the time the batch waits
    between the two threads counts in no stage.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[torch.cuda.Event | float] = []

    def mark(self) -> torch.cuda.Event | None:
        """Mark now; returns the CUDA event (on a GPU), which later work can wait for."""
        if not self._cuda:
            self._marks.append(time.perf_counter())
            return None
        event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        event.record()
        self._marks.append(event)
        return event

    def stages(self) -> StageTimings:
        """Preprocess, infer and postprocess seconds (call after the work has synchronised)."""
        if self._cuda:
            events = [m for m in self._marks if isinstance(m, torch.cuda.Event)]
            events[-1].synchronize()  # the work before it is done; the event itself may not be
            spans = [a.elapsed_time(b) * _MS for a, b in itertools.pairwise(events)]
        else:
            times = [m for m in self._marks if isinstance(m, float)]
            spans = [b - a for a, b in itertools.pairwise(times)]
        prep, infer, _, post = spans
        return StageTimings(prep, infer, post)


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

    def _check(self, frame: Pixels) -> None:
        """Host frames as on the CPU path; device frames must be NVDEC's (H, W, 3) uint8."""
        if not isinstance(frame, torch.Tensor):
            super()._check(frame)
        elif frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InvalidFrameError(
                f"a device frame must be (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}"
            )

    def _launch(
        self, frames: Sequence[Pixels]
    ) -> Callable[[], tuple[list[Detections], StageTimings]]:
        """Letterbox and model queued on this thread's stream; the callable makes its own
        thread's stream wait for them, then decodes, runs NMS and copies the boxes down."""
        clock = _Clock(self._torch.device)
        clock.mark()
        batch, placements = self._letterbox(frames)
        clock.mark()
        outputs = self._torch.infer_tensor(batch)
        inferred = clock.mark()

        def finish() -> tuple[list[Detections], StageTimings]:
            if inferred is not None:  # this thread's stream waits for the model, on the GPU
                for output in outputs:
                    order_after(output, inferred)
            clock.mark()
            found = self._post_process(outputs, placements)
            clock.mark()
            return found, clock.stages()

        return finish

    def _post_process(
        self, outputs: list[torch.Tensor], placements: list[Letterbox]
    ) -> list[Detections]:
        if self._device_decode is None:  # a family decoded on the host (e.g. NanoDet)
            return self._decode_on_host([o.float().cpu().numpy() for o in outputs], placements)
        xyxy, scores = self._device_decode(outputs, self._size)
        kept = select_nms(
            xyxy,
            scores,
            confidence=self._confidence,
            class_mask=self._device_mask,
            iou=self._nms_iou,
            max_det=self._max_det,
        )
        return to_frames(*kept, placements)  # the host copy synchronises
