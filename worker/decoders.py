"""Raw detector outputs -> candidate boxes per image, and class-aware NMS.

Each decoder turns one family's output layout into dense per-anchor boxes (input-pixel xyxy)
and per-class scores for the whole batch at once, then :func:`select` keeps, per image, the
anchors whose best class clears the confidence threshold and the class filter. NMS runs in
OpenCV's C++ (greedy, like torchvision's). No Python loop touches individual boxes.

``DECODERS`` maps ``ModelConfig.decoder`` to the decoder and to the input convention the same
family was trained with, since a layout name implies its family's preprocessing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, cast

import cv2
import numpy as np
import numpy.typing as npt

from kubevision.worker.preprocess import RAW_PIXELS, UNIT_RANGE, InputFormat, Normalization

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

STRIDES = (8, 16, 32)
"""Feature-map strides of the three heads of YOLOX, YOLOv8 and NanoDet-m."""
NANODET_MEAN_STD = Normalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395))
"""NanoDet's normalisation (BGR order, 0-255 scale)."""
_CELL_CENTRE = 0.5
"""NanoDet's GFL head places anchor points at the centre of each feature-map cell."""


class Candidates(NamedTuple):
    """Boxes of one image that passed the threshold and class filter, before NMS."""

    xyxy: FloatArray
    """(N, 4) boxes in network-input pixels."""
    scores: FloatArray
    class_ids: IntArray


Decode = Callable[
    [Sequence[FloatArray], tuple[int, int], float, BoolArray | None], list[Candidates]
]
"""(outputs, (input width, input height), confidence, class mask or None) -> per image."""


def select(
    xyxy: FloatArray, class_scores: FloatArray, confidence: float, class_mask: BoolArray | None
) -> list[Candidates]:
    """Per image, the anchors whose best class scores >= confidence and is allowed.

    The class filter applies after picking the best class (as Ultralytics does), so a truck is
    not relabelled a car because only cars were asked for.

    Args:
        xyxy: (B, A, 4) boxes.
        class_scores: (B, A, C) final per-class scores.
        confidence: minimum score kept.
        class_mask: (C,) True for classes to keep; None keeps all.
    """
    class_ids = class_scores.argmax(axis=2)
    scores = np.take_along_axis(class_scores, class_ids[..., None], axis=2)[..., 0]
    keep = scores >= confidence
    if class_mask is not None:
        if len(class_mask) != class_scores.shape[2]:
            raise ValueError(
                f"the model outputs {class_scores.shape[2]} classes but {len(class_mask)} were "
                "expected (labels / class mask)"
            )
        keep &= class_mask[class_ids]
    return [
        Candidates(
            np.ascontiguousarray(xyxy[i][keep[i]], np.float32),
            np.ascontiguousarray(scores[i][keep[i]], np.float32),
            class_ids[i][keep[i]].astype(np.int64),
        )
        for i in range(len(keep))
    ]


@functools.cache
def anchor_grid(width: int, height: int) -> tuple[FloatArray, FloatArray]:
    """Cell coordinates (A, 2) as (x, y) and stride (A, 1) of every anchor, heads in order.

    Anchors run stride by stride, row-major within a head (x fastest), as all three families
    flatten them. Feature maps are ceil(size / stride) like the strided convolutions produce.
    """
    cells, strides = [], []
    for stride in STRIDES:
        ys, xs = np.meshgrid(
            np.arange(math.ceil(height / stride)),
            np.arange(math.ceil(width / stride)),
            indexing="ij",
        )
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((xs.size, 1), stride))
    grid = np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)
    for array in grid:
        array.setflags(write=False)  # cached and shared: nobody may modify it
    return grid


def _check_anchors(found: int, input_size: tuple[int, int], family: str) -> None:
    expected = len(anchor_grid(*input_size)[0])
    if found != expected:
        raise ValueError(
            f"{family} output has {found} anchors but a {input_size[0]}x{input_size[1]} input "
            f"has {expected} at strides {STRIDES}; is ModelConfig.input_size right?"
        )


def _single_output(outputs: Sequence[FloatArray], family: str) -> FloatArray:
    if len(outputs) != 1:
        raise ValueError(f"{family} models have one output, got {len(outputs)}")
    return np.asarray(outputs[0], np.float32)


def decode_yolox(
    outputs: Sequence[FloatArray],
    input_size: tuple[int, int],
    confidence: float,
    class_mask: BoolArray | None = None,
) -> list[Candidates]:
    """YOLOX ``(B, A, 5 + C)``: xy offsets in cells, log wh, objectness, class probabilities.

    Score = objectness x class probability (both already sigmoid in the export).
    """
    raw = _single_output(outputs, "yolox")
    _check_anchors(raw.shape[1], input_size, "yolox")
    cells, strides = anchor_grid(*input_size)
    centre = (raw[..., :2] + cells) * strides
    half = np.exp(raw[..., 2:4]) * strides / 2
    xyxy = np.concatenate([centre - half, centre + half], axis=2)
    return select(xyxy, raw[..., 4:5] * raw[..., 5:], confidence, class_mask)


def decode_yolov8(
    outputs: Sequence[FloatArray],
    input_size: tuple[int, int],
    confidence: float,
    class_mask: BoolArray | None = None,
) -> list[Candidates]:
    """YOLOv8 ``(B, 4 + C, A)``: centre xywh in input pixels, class scores, no objectness."""
    raw = _single_output(outputs, "yolov8").transpose(0, 2, 1)
    _check_anchors(raw.shape[1], input_size, "yolov8")
    half = raw[..., 2:4] / 2
    xyxy = np.concatenate([raw[..., :2] - half, raw[..., :2] + half], axis=2)
    return select(xyxy, raw[..., 4:], confidence, class_mask)


def decode_nanodet(
    outputs: Sequence[FloatArray],
    input_size: tuple[int, int],
    confidence: float,
    class_mask: BoolArray | None = None,
) -> list[Candidates]:
    """NanoDet-m (GFL head) as exported: class scores per stride, then distances per stride.

    ``cls_pred_stride_{8,16,32}`` are (B, A_s, C) sigmoid scores; ``dis_pred_stride_{8,16,32}``
    are (B, A_s, 4 x bins) logits of a discrete distribution over distances (in strides) from
    the cell centre to the left, top, right and bottom edges; the distance is its expectation.
    """
    if len(outputs) != 2 * len(STRIDES):
        raise ValueError(
            f"nanodet models have {2 * len(STRIDES)} outputs (scores then distances for strides "
            f"{STRIDES}), got {len(outputs)}"
        )
    scores = np.concatenate([np.asarray(o, np.float32) for o in outputs[: len(STRIDES)]], axis=1)
    logits = np.concatenate([np.asarray(o, np.float32) for o in outputs[len(STRIDES) :]], axis=1)
    _check_anchors(scores.shape[1], input_size, "nanodet")
    if logits.shape[:2] != scores.shape[:2] or logits.shape[2] % 4:
        raise ValueError(
            f"nanodet distance outputs must be (B, A, 4 x bins) matching scores {scores.shape}, "
            f"got {logits.shape}"
        )
    bins = logits.shape[2] // 4
    logits = logits.reshape(*logits.shape[:2], 4, bins)
    prob = np.exp(logits - logits.max(axis=3, keepdims=True))
    prob /= prob.sum(axis=3, keepdims=True)
    cells, strides = anchor_grid(*input_size)
    distance = (prob @ np.arange(bins, dtype=np.float32)) * strides
    centre = (cells + _CELL_CENTRE) * strides
    xyxy = np.concatenate([centre - distance[..., :2], centre + distance[..., 2:]], axis=2)
    return select(xyxy, scores, confidence, class_mask)


def nms(
    xyxy: FloatArray,
    scores: FloatArray,
    class_ids: IntArray,
    iou: float,
    max_det: int | None = None,
) -> IntArray:
    """Indices kept by greedy class-aware NMS, best score first (at most ``max_det``).

    A box is dropped when its IoU with a better box of the same class exceeds ``iou``. Classes
    are separated by shifting each class's boxes into its own region (torchvision's trick),
    after moving all boxes to non-negative coordinates so no two regions can overlap. Scores
    are replaced by their rank, because OpenCV drops scores of exactly 0 and breaks ties in no
    documented order.
    """
    count = len(xyxy)
    if count == 0:
        return np.empty(0, np.int64)
    boxes = np.asarray(xyxy, np.float64).reshape(count, 4)
    boxes = boxes - boxes.min()
    span = boxes.max() + 1
    boxes += (np.asarray(class_ids, np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    rank = np.empty(count, np.float32)
    rank[order] = np.arange(count, 0, -1, dtype=np.float32)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # OpenCV's stubs name only sequences; the binding reads the arrays directly.
    kept = cv2.dnn.NMSBoxes(
        cast("list[cv2.typing.Rect2d]", xywh), cast("list[float]", rank), 0, iou
    )
    keep = np.asarray(kept, np.int64).reshape(-1)
    return keep[:max_det]


@dataclass(frozen=True)
class DecoderSpec:
    """An output layout and the input convention its model family was trained with."""

    decode: Decode
    input_format: InputFormat


DECODERS: Mapping[str, DecoderSpec] = MappingProxyType(
    {
        # YOLOX's own preprocessing pads only right/bottom with 114 and feeds raw BGR.
        "yolox": DecoderSpec(decode_yolox, InputFormat("bgr", RAW_PIXELS, 114, center=False)),
        "yolov8": DecoderSpec(decode_yolov8, InputFormat("rgb", UNIT_RANGE, 114, center=True)),
        # NanoDet warps with a black (0) border, centred, then normalises.
        "nanodet": DecoderSpec(
            decode_nanodet, InputFormat("bgr", NANODET_MEAN_STD, 0, center=True)
        ),
    }
)


def decoder_for(name: str | None) -> DecoderSpec:
    """The registered decoder for ``ModelConfig.decoder``, or an error naming the choices."""
    if name is None or name not in DECODERS:
        raise ValueError(f"unknown detector decoder {name!r}; one of {sorted(DECODERS)}")
    return DECODERS[name]
