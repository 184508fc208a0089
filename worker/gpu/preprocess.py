"""Letterbox on the device: uint8 frames in, the model's normalised NCHW batch out.

Host frames are stacked per frame size into a reused pinned buffer and uploaded as uint8 (a
quarter of the bytes of float32); frames decoded by NVDEC are already device tensors. Resize
is bilinear with half-pixel centres like ``cv2.resize(INTER_LINEAR)`` on the CPU path, so both
paths see the same pixels up to rounding. The placements are the CPU path's
:class:`~kubevision.worker.preprocess.Letterbox`, so boxes map back the same way.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional

from kubevision.worker.nvdec import Pixels
from kubevision.worker.preprocess import (
    InputFormat,
    Letterbox,
    Normalization,
    check_frame,
    crop_boxes,
)

_BGR = 3
_GRAY_TO_BGR = {1: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}


def frame_size(frame: Pixels) -> tuple[int, int]:
    """(width, height) of a host or device frame."""
    return int(frame.shape[1]), int(frame.shape[0])


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array (boxes, indices) on ``device`` without waiting for the GPU.

    ``torch.tensor(..., device=...)`` copies from pageable memory and then waits until the
    calling stream has run everything queued on it (a batch's inference, say). Here the array
    is staged in pinned memory from torch's caching host allocator, which keeps the buffer
    until the copy has run, so the copy is queued like a kernel and the host goes on.
    """
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def download(tensor: torch.Tensor) -> Callable[[], np.ndarray]:
    """Queue a device tensor's copy to the host as float32; the callable waits for it.

    The copy goes into pinned memory from torch's caching host allocator, queued on the
    calling stream behind the work that computes the tensor, so the host thread goes on
    (tracking the next batch, say) instead of waiting here for the GPU.
    """
    if tensor.device.type != "cuda":
        host = tensor.float().numpy()
        return lambda: host
    source = tensor.float()
    staged = torch.empty(source.shape, dtype=torch.float32, pin_memory=True)
    staged.copy_(source, non_blocking=True)
    copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
    copied.record()

    def wait() -> np.ndarray:
        copied.synchronize()  # any thread may wait, on any stream
        return staged.numpy()

    return wait


@functools.lru_cache(maxsize=16)
def _mean_std(norm: Normalization, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalisation's (1, 3, 1, 1) mean and std on ``device``, uploaded once."""
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, torch.tensor(norm.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """A host frame as (H, W, 3) BGR (grayscale replicated, alpha dropped)."""
    frame = check_frame(frame)
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if channels == _BGR:
        return frame
    return cv2.cvtColor(frame, _GRAY_TO_BGR[channels])


class PinnedUploader:
    """Host uint8 arrays -> device tensors through one growing pinned buffer.

    The buffer is reused, so each upload first waits for the previous copy out of it (frames
    of several sizes in one batch are uploaded one size after another).
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack equally shaped uint8 arrays and upload them as one (N, ...) tensor."""
        shape = (len(arrays), *arrays[0].shape)
        if self._device.type != "cuda":
            return torch.from_numpy(np.stack(arrays))
        count = int(np.prod(shape))
        if self._copied is not None:
            self._copied.synchronize()
        if self._buffer is None or self._buffer.numel() < count:
            self._buffer = torch.empty(count, dtype=torch.uint8, pin_memory=True)
        staged = self._buffer[:count].view(shape)
        np.stack(arrays, out=staged.numpy())
        uploaded = staged.to(self._device, non_blocking=True)
        self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._copied.record()
        return uploaded


class DeviceLetterbox:
    """A model's input convention applied to a batch of frames on one device."""

    def __init__(
        self,
        width: int,
        height: int,
        fmt: InputFormat,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._size = (width, height)
        self._format = fmt
        self._device = device
        self._dtype = dtype
        self._upload = PinnedUploader(device)
        self._mean, self._std = _mean_std(fmt.normalization, device)

    def __call__(self, frames: Sequence[Pixels]) -> tuple[torch.Tensor, list[Letterbox]]:
        """The (N, 3, H, W) input batch and each frame's placement."""
        width, height = self._size
        canvas = torch.full(
            (len(frames), _BGR, height, width),
            float(self._format.pad_value),
            dtype=torch.float32,
            device=self._device,
        )
        placements = [
            Letterbox.fit(*frame_size(f), width, height, self._format.center) for f in frames
        ]
        for indices, pixels in self._groups(frames):
            box = placements[indices[0]]
            new_w, new_h = box.resized_size
            chw = pixels.permute(0, 3, 1, 2).float()
            if (new_w, new_h) != frame_size(frames[indices[0]]):
                chw = functional.interpolate(
                    chw, size=(new_h, new_w), mode="bilinear", align_corners=False
                )
            target = upload(np.array(indices, np.int64), self._device)
            rows = slice(box.pad_y, box.pad_y + new_h)
            canvas[target, :, rows, box.pad_x : box.pad_x + new_w] = chw
        if self._format.color == "rgb":
            canvas = canvas.flip(1)
        canvas = (canvas - self._mean) / self._std
        return canvas.to(self._dtype), placements

    def _groups(self, frames: Sequence[Pixels]) -> list[tuple[list[int], torch.Tensor]]:
        """Frames of one size (and one memory) as one uint8 (n, H, W, 3) device tensor each."""
        host: dict[tuple[int, int], list[int]] = defaultdict(list)
        device: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, frame in enumerate(frames):
            (device if isinstance(frame, torch.Tensor) else host)[frame_size(frame)].append(i)
        groups = [
            (idx, self._upload([as_bgr(frames[i]) for i in idx]))  # type: ignore[arg-type]
            for idx in host.values()
        ]
        groups += [
            (idx, torch.stack([frames[i].to(self._device) for i in idx]))  # type: ignore[union-attr]
            for idx in device.values()
        ]
        return groups


def device_crops(
    requests: Sequence[tuple[torch.Tensor, np.ndarray]], width: int, height: int, fmt: InputFormat
) -> torch.Tensor:
    """(N, 3, height, width) float32 model input for the boxes of several device frames, crop
    after crop in request order: the host path's pixels, i.e. the same whole-pixel boxes
    (``crop_boxes``) resized as ``cv2.resize`` INTER_LINEAR does (half-pixel centres, each
    crop's border replicated), rounded to uint8 values, then in the model's colour order and
    scale. Frames of one size are cut together, so a batch costs a couple of dozen kernels
    however many frames and boxes it holds. Nothing crosses to the host."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (frame, _) in enumerate(requests):
        groups[tuple(frame.shape)].append(i)
    members = list(groups.values())
    parts = [_bilinear_crops([requests[i] for i in group], width, height) for group in members]
    crops = parts[0] if len(parts) == 1 else _in_request_order(requests, members, parts)
    crops = crops.round().clamp(0, 255).permute(0, 3, 1, 2)
    if fmt.color == "rgb":
        crops = crops.flip(1)
    mean, std = _mean_std(fmt.normalization, crops.device)
    normalised: torch.Tensor = (crops - mean) / std
    return normalised


def _bilinear_crops(
    requests: Sequence[tuple[torch.Tensor, np.ndarray]], width: int, height: int
) -> torch.Tensor:
    """(N, height, width, 3) float32 crops of equally shaped (H, W, 3) uint8 frames. The pixels
    each output pixel reads are worked out on the host from the boxes (small arrays), the
    frames are stacked, and each of the four bilinear neighbours is one gather over all crops."""
    frame_h, frame_w = (int(v) for v in requests[0][0].shape[:2])
    boxes = [crop_boxes(xyxy, frame_w, frame_h) for _, xyxy in requests]
    owner = np.repeat(np.arange(len(boxes)), [len(b) for b in boxes])[:, None]
    crop = np.concatenate(boxes)
    x0, x1, wx = _taps(crop[:, 0], crop[:, 2], width, frame_w)
    y0, y1, wy = _taps(crop[:, 1], crop[:, 3], height, frame_h)
    device = requests[0][0].device
    rows = [(owner * frame_h + y) * frame_w for y in (y0, y1)]
    index = upload(np.concatenate([*rows, x0, x1], axis=1), device)
    top, bottom = index[:, :height], index[:, height : 2 * height]
    left, right = index[:, 2 * height : -width], index[:, -width:]
    weight = upload(np.concatenate([wy, wx], axis=1), device)
    row_weight, col_weight = weight[:, :height, None, None], weight[:, None, height:, None]
    frames = [frame for frame, _ in requests]
    pixels = (torch.stack(frames) if len(frames) > 1 else frames[0]).reshape(-1, _BGR)

    def at(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return pixels[row[:, :, None] + col[:, None, :]].float()  # (N, height, width, 3)

    upper = torch.lerp(at(top, left), at(top, right), col_weight)
    lower = torch.lerp(at(bottom, left), at(bottom, right), col_weight)
    return torch.lerp(upper, lower, row_weight)


def _taps(
    start: np.ndarray, end: np.ndarray, size: int, extent: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each crop [start, end) resized to ``size``: per output pixel the two source pixels and
    the second one's weight. The source position is OpenCV's ``start + (i + 0.5) * (end -
    start) / size - 0.5``, clamped into the crop (its border replicated); ``extent`` is the
    frame's size along this axis."""
    step = (end - start) / size
    position = start[:, None] + (np.arange(size) + 0.5) * step[:, None] - 0.5
    position = np.clip(position, start[:, None], (end - 1)[:, None])
    low = np.floor(position).astype(np.int64)
    return low, np.minimum(low + 1, extent - 1), (position - low).astype(np.float32)


def _in_request_order(
    requests: Sequence[tuple[torch.Tensor, np.ndarray]],
    groups: list[list[int]],
    parts: list[torch.Tensor],
) -> torch.Tensor:
    """Crops cut per frame size (``parts``, one per group of request indices) back in the
    order of the requests."""
    starts = np.cumsum([0] + [len(np.reshape(xyxy, (-1, 4))) for _, xyxy in requests])
    out = parts[0].new_empty((int(starts[-1]), *parts[0].shape[1:]))
    for group, part in zip(groups, parts, strict=True):
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in group])
        out[upload(rows, out.device)] = part
    return out
