"""Frames -> network input tensors: letterbox, colour order, normalisation, NCHW float32.

Each model family was trained with one input convention (BGR or RGB, raw pixels, /255 or
mean/std, letterbox padding value and alignment); feeding it anything else costs accuracy
silently, so the convention is an explicit :class:`InputFormat` rather than scattered flags.
Per-frame work is only ``cv2.resize`` into a preallocated uint8 batch canvas; colour swap,
layout change and normalisation then run once, vectorised, over the whole batch.

Frames are ``uint8`` BGR as decoders deliver them: ``(H, W, 3)``; grayscale ``(H, W)`` or
``(H, W, 1)`` (IR cameras at night) is replicated to three channels and ``(H, W, 4)`` BGRA
loses its alpha. Anything else is an :class:`InvalidFrameError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Frame = npt.NDArray[np.uint8]

ColorOrder = Literal["bgr", "rgb"]
_GRAY_CHANNELS = (1,)
_COLOR_CHANNELS = (3, 4)  # BGR, BGRA
_BGR = 3


class InvalidFrameError(ValueError):
    """A frame no model can take (empty, wrong dtype or channel count); says which rule failed."""


@dataclass(frozen=True)
class Normalization:
    """``(pixel - mean) / std`` per channel, pixels in 0-255, channels in the model's order.

    One formula covers all three conventions: none (mean 0, std 1), /255 (std 255) and
    mean/std (e.g. ImageNet's, scaled to 0-255).
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if min(self.std) <= 0:
            raise ValueError(f"normalisation std must be > 0 per channel, got {self.std}")


RAW_PIXELS = Normalization()
"""No normalisation: the network sees 0-255 (YOLOX)."""
UNIT_RANGE = Normalization(std=(255.0, 255.0, 255.0))
"""Pixels / 255 (YOLOv8)."""
IMAGENET_RGB = Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
"""ImageNet mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) in 0-255, RGB order."""


@dataclass(frozen=True)
class InputFormat:
    """The input convention a model was trained with.

    Attributes:
        color: channel order the network expects.
        normalization: applied after the colour swap.
        pad_value: raw pixel value (0-255, before normalisation) of the letterbox border.
        center: True pads both sides equally (Ultralytics, NanoDet); False pads only right and
            bottom (YOLOX's own preprocessing).
    """

    color: ColorOrder = "bgr"
    normalization: Normalization = RAW_PIXELS
    pad_value: int = 114
    center: bool = True


@dataclass(frozen=True)
class Letterbox:
    """Where a frame landed in the network input: ``input = frame * scale + pad`` per axis.

    The scales come from the rounded resized size, so mapping back is exact to the pixel grid
    the network saw rather than off by the rounding of a single ratio.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    frame_width: int
    frame_height: int

    @classmethod
    def fit(
        cls, frame_width: int, frame_height: int, width: int, height: int, center: bool = True
    ) -> Letterbox:
        """The largest aspect-preserving placement of a frame inside a width x height input."""
        ratio = min(width / frame_width, height / frame_height)
        new_w = min(width, max(1, round(frame_width * ratio)))
        new_h = min(height, max(1, round(frame_height * ratio)))
        pad_x, pad_y = ((width - new_w) // 2, (height - new_h) // 2) if center else (0, 0)
        return cls(
            new_w / frame_width, new_h / frame_height, pad_x, pad_y, frame_width, frame_height
        )

    @property
    def resized_size(self) -> tuple[int, int]:
        """(width, height) of the frame's pixels inside the input, padding excluded."""
        return round(self.frame_width * self.scale_x), round(self.frame_height * self.scale_y)

    def _affine(self) -> tuple[FloatArray, FloatArray]:
        scale = np.array([self.scale_x, self.scale_y] * 2, np.float32)
        offset = np.array([self.pad_x, self.pad_y] * 2, np.float32)
        return scale, offset

    def to_input(self, xyxy: FloatArray) -> FloatArray:
        """Frame-pixel boxes (N, 4) -> input-pixel boxes."""
        scale, offset = self._affine()
        return np.asarray(xyxy, np.float32).reshape(-1, 4) * scale + offset

    def to_frame(self, xyxy: FloatArray) -> FloatArray:
        """Input-pixel boxes (N, 4) -> frame-pixel boxes, clipped to the frame."""
        scale, offset = self._affine()
        boxes = (np.asarray(xyxy, np.float32).reshape(-1, 4) - offset) / scale
        limits = np.array([self.frame_width, self.frame_height] * 2, np.float32)
        clipped: FloatArray = np.clip(boxes, np.float32(0), limits)
        return clipped


def check_frame(frame: object) -> Frame:
    """The frame as a uint8 image array, or :class:`InvalidFrameError` saying what is wrong."""
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InvalidFrameError(f"a frame must be uint8, got {frame.dtype}")
    channels = frame.shape[2] if frame.ndim == 3 else None
    if frame.ndim not in (2, 3) or (
        channels is not None and channels not in _GRAY_CHANNELS + _COLOR_CHANNELS
    ):
        raise InvalidFrameError(
            f"a frame must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {frame.shape}"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidFrameError(f"a frame must have pixels, got shape {frame.shape}")
    return frame


def _paste(dst: Frame, src: Frame, width: int, height: int) -> None:
    """Resize ``src`` to width x height into ``dst`` (H, W, 3), whatever its channel count."""
    resized = cv2.resize(src, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[:, :, None]
    dst[...] = resized[:, :, :_BGR]  # gray broadcasts to 3 channels, BGRA loses alpha


def letterbox(
    frame: Frame, width: int, height: int, fmt: InputFormat, out: Frame | None = None
) -> tuple[Frame, Letterbox]:
    """One frame resized into a padded width x height BGR canvas (``out`` if given)."""
    frame = check_frame(frame)
    box = Letterbox.fit(frame.shape[1], frame.shape[0], width, height, fmt.center)
    canvas = np.empty((height, width, _BGR), np.uint8) if out is None else out
    canvas[...] = fmt.pad_value
    new_w, new_h = box.resized_size
    region = canvas[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w]
    _paste(region, frame, new_w, new_h)
    return canvas, box


def to_tensor(images: Frame, fmt: InputFormat) -> FloatArray:
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) float32 in the model's colour order and scale."""
    channels = slice(None, None, -1) if fmt.color == "rgb" else slice(None)
    tensor = np.ascontiguousarray(images[..., channels].transpose(0, 3, 1, 2), dtype=np.float32)
    if fmt.normalization != RAW_PIXELS:
        norm = fmt.normalization
        tensor -= np.asarray(norm.mean, np.float32)[None, :, None, None]
        tensor /= np.asarray(norm.std, np.float32)[None, :, None, None]
    return tensor


def preprocess(
    frames: Sequence[Frame], width: int, height: int, fmt: InputFormat
) -> tuple[FloatArray, list[Letterbox]]:
    """Letterbox every frame into one batch tensor; the placements map boxes back."""
    canvas = np.empty((len(frames), height, width, _BGR), np.uint8)
    placements = [letterbox(f, width, height, fmt, out=canvas[i])[1] for i, f in enumerate(frames)]
    return to_tensor(canvas, fmt), placements


def crops(frame: Frame, xyxy: FloatArray, width: int, height: int) -> Frame:
    """(N, height, width, 3) uint8 BGR crops of frame-pixel boxes, each stretched to fit.

    Boxes are clipped to the frame and widened to at least one pixel, so every box yields a
    crop and results stay aligned with the input rows.
    """
    frame = check_frame(frame)
    frame_h, frame_w = frame.shape[:2]
    x1, y1, x2, y2 = crop_boxes(xyxy, frame_w, frame_h).T
    out = np.empty((len(x1), height, width, _BGR), np.uint8)
    for i in range(len(x1)):
        _paste(out[i], frame[y1[i] : y2[i], x1[i] : x2[i]], width, height)
    return out


def crop_boxes(xyxy: FloatArray, frame_w: int, frame_h: int) -> npt.NDArray[np.int64]:
    """(N, 4) whole-pixel crops of frame-pixel boxes: outward to whole pixels, clipped to the
    frame and at least one pixel wide (the device crops cut the same pixels)."""
    boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
    x1 = np.clip(np.floor(boxes[:, 0]), 0, frame_w - 1).astype(np.int64)
    y1 = np.clip(np.floor(boxes[:, 1]), 0, frame_h - 1).astype(np.int64)
    x2 = np.clip(np.ceil(boxes[:, 2]).astype(np.int64), x1 + 1, frame_w)
    y2 = np.clip(np.ceil(boxes[:, 3]).astype(np.int64), y1 + 1, frame_h)
    return np.column_stack([x1, y1, x2, y2])
