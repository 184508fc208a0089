"""Detector outputs -> per-frame boxes on the device: decode, threshold, batched NMS, unmap.

The same formulas as :mod:`kubevision.worker.decoders` in torch, for the families whose
outputs are one dense tensor (YOLOX, YOLOv8). NMS is torchvision's, run once for the whole
batch with (frame, class) as the group, so a batch of 64 frames is one kernel sequence rather
than 64. Only the kept boxes cross to the host, in a single copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from kubevision.worker.decoders import anchor_grid
from kubevision.worker.detections import Detections
from kubevision.worker.gpu.preprocess import upload
from kubevision.worker.preprocess import Letterbox

DeviceDecode = Callable[
    [Sequence[torch.Tensor], tuple[int, int]], tuple[torch.Tensor, torch.Tensor]
]
"""(outputs, (input width, input height)) -> (xyxy (B, A, 4), class scores (B, A, C))."""


@functools.lru_cache(maxsize=16)
def _grid(width: int, height: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The host decoders' anchor grid (cells, strides), copied to ``device`` once."""
    cells, strides = anchor_grid(width, height)
    return torch.tensor(cells, device=device), torch.tensor(strides, device=device)


def decode_yolox(
    outputs: Sequence[torch.Tensor], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOX (B, A, 5 + C): xy cell offsets, log wh, objectness, class probabilities."""
    raw = outputs[0].float()
    cells, strides = _grid(*size, raw.device)
    centre = (raw[..., :2] + cells) * strides
    half = torch.exp(raw[..., 2:4]) * strides / 2
    return torch.cat([centre - half, centre + half], dim=2), raw[..., 4:5] * raw[..., 5:]


def decode_yolov8(
    outputs: Sequence[torch.Tensor], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv8 (B, 4 + C, A): centre xywh in input pixels, class scores."""
    raw = outputs[0].float().transpose(1, 2)
    half = raw[..., 2:4] / 2
    return torch.cat([raw[..., :2] - half, raw[..., :2] + half], dim=2), raw[..., 4:]


DEVICE_DECODERS: dict[str, DeviceDecode] = {"yolox": decode_yolox, "yolov8": decode_yolov8}
"""Decoders that run on the device; other families decode on the host (see the detector)."""


def select_nms(
    xyxy: torch.Tensor,
    class_scores: torch.Tensor,
    *,
    confidence: float,
    class_mask: torch.Tensor,
    iou: float,
    max_det: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame, best class >= confidence and allowed, class-aware NMS, best ``max_det``.

    Returns flat (boxes, scores, class ids, frame index), grouped by frame, best first within
    each frame. The class filter applies after the best class is picked, as on the CPU path.
    """
    best, class_ids = class_scores.max(dim=2)
    keep = (best >= confidence) & class_mask[class_ids]
    frame_idx, anchor_idx = keep.nonzero(as_tuple=True)
    boxes = xyxy[frame_idx, anchor_idx]
    scores, classes = best[frame_idx, anchor_idx], class_ids[frame_idx, anchor_idx]
    kept = batched_nms(boxes, scores, frame_idx * class_scores.shape[2] + classes, iou)
    order = torch.sort(frame_idx[kept], stable=True).indices  # by frame, score order kept
    kept = kept[order]
    frames = frame_idx[kept]
    counts = torch.bincount(frames, minlength=xyxy.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(kept), device=kept.device) - starts[frames]
    kept = kept[rank < max_det]
    return boxes[kept], scores[kept], classes[kept], frame_idx[kept]


def to_frames(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    frame_idx: torch.Tensor,
    placements: Sequence[Letterbox],
) -> list[Detections]:
    """Input-pixel boxes -> frame pixels (clipped, empty ones dropped), one host copy, split."""
    affine = upload(
        np.array(
            [
                [p.scale_x, p.scale_y, p.pad_x, p.pad_y, p.frame_width, p.frame_height]
                for p in placements
            ],
            np.float32,
        ),
        boxes.device,
    )[frame_idx]
    scale, offset, limit = (
        affine[:, 0:2].repeat(1, 2),
        affine[:, 2:4].repeat(1, 2),
        affine[:, 4:6].repeat(1, 2),
    )
    frame_boxes = torch.minimum(((boxes - offset) / scale).clamp(min=0), limit)
    packed = (
        torch.cat(
            [frame_boxes, scores[:, None], classes[:, None].float(), frame_idx[:, None].float()],
            dim=1,
        )
        .cpu()
        .numpy()
    )
    has_area = (packed[:, 2] > packed[:, 0]) & (packed[:, 3] > packed[:, 1])
    packed = packed[has_area]
    per_frame = np.bincount(packed[:, 6].astype(np.int64), minlength=len(placements))
    return [
        Detections(part[:, :4].copy(), part[:, 4].copy(), part[:, 5].astype(np.int64))
        for part in np.split(packed, np.cumsum(per_frame)[:-1])
    ]
