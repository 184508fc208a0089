"""YOLOv8 n/s/m/l detection models in plain PyTorch, with RANDOM weights, for throughput benchmarks.

The layers follow Ultralytics' published definition ``ultralytics/cfg/models/v8/yolov8.yaml``
(``nc: 80``; ``scales: [depth, width, max_channels]`` n ``[0.33, 0.25, 1024]``, s ``[0.33, 0.50,
1024]``, m ``[0.67, 0.75, 768]``, l ``[1.00, 1.00, 512]``; the backbone's Conv/C2f stages and
SPPF, the FPN/PAN head with nearest Upsample + Concat, and the decoupled ``Detect`` head with a
distribution-focal-loss box decoder, ``reg_max`` 16). It is written from that definition, not
taken from the AGPL ``ultralytics`` package, and carries no trained weights: the weights are
random (seeded), so the models are only good for speed and FLOP figures, never for accuracy.
Any figure measured with them must say "random weights".

Inference output has the exported ONNX layout ``(B, 4 + 80, A)``: box centre x, y, width and
height in input pixels, then sigmoid class scores (A = 8400 at 640x640), which is what
:func:`kubevision.worker.decoders.decode_yolov8` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

NUM_CLASSES = 80
REG_MAX = 16
"""Bins of the distribution each box side's distance is predicted as (DFL)."""
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Scale:
    """One row of the yaml's ``scales``: repeat and channel multipliers, and a channel cap."""

    depth: float
    width: float
    max_channels: int

    def channels(self, base: int) -> int:
        """``make_divisible(min(base, max_channels) * width, 8)`` as Ultralytics' parser does."""
        return math.ceil(min(base, self.max_channels) * self.width / 8) * 8

    def repeats(self, base: int) -> int:
        return max(round(base * self.depth), 1)


SCALES = {
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
}


class Conv(nn.Sequential):
    """Conv2d (no bias, 'same' padding) + BatchNorm + SiLU; the yaml's ``Conv``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03),
            nn.SiLU(inplace=True),
        )


class Bottleneck(nn.Module):
    """Two 3x3 Convs, with a residual add where the C2f asks for a shortcut."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 3)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP stage with two convolutions: split, n Bottlenecks on one half, concat every output."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.hidden)
        self.cv2 = Conv((2 + n) * self.hidden, c_out)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_in // 2)
        self.cv2 = Conv(c_in // 2 * 4, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.cv1(x)]
        for _ in range(3):
            parts.append(self.pool(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


def _branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        Conv(c_in, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1)
    )


class Detect(nn.Module):
    """Decoupled head: per level a box branch (4 x REG_MAX logits) and a class branch.

    The box logits are softmaxed per side and their expectation (a fixed 1x1 convolution with
    weights 0..15, as Ultralytics' ``DFL``) is the distance in strides from the cell centre to
    the left, top, right and bottom edges.
    """

    def __init__(self, channels: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        box_hidden = max(16, channels[0] // 4, 4 * REG_MAX)
        cls_hidden = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(_branch(c, box_hidden, 4 * REG_MAX) for c in channels)
        self.cls = nn.ModuleList(_branch(c, cls_hidden, num_classes) for c in channels)
        self.dfl = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.dfl.weight.copy_(torch.arange(REG_MAX, dtype=torch.float32).view(1, -1, 1, 1))
        self._anchors: dict[tuple[object, ...], tuple[Tensor, Tensor]] = {}

    def forward(self, feats: list[Tensor]) -> Tensor:
        boxes = torch.cat([b(f).flatten(2) for b, f in zip(self.box, feats, strict=True)], 2)
        scores = torch.cat([c(f).flatten(2) for c, f in zip(self.cls, feats, strict=True)], 2)
        batch, _, count = boxes.shape
        bins = boxes.view(batch, 4, REG_MAX, count).transpose(2, 1).softmax(1)
        distance = self.dfl(bins).view(batch, 4, count)
        centres, strides = self._grid(feats)
        top_left = centres - distance[:, :2]
        bottom_right = centres + distance[:, 2:]
        xy = (top_left + bottom_right) / 2 * strides
        wh = (bottom_right - top_left) * strides
        return torch.cat([xy, wh, scores.sigmoid()], 1)

    def _grid(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Cell centres (2, A) in strides and each anchor's stride (1, A), cached per shape:
        the export bakes them in as constants, and a CUDA graph must not rebuild them."""
        first = feats[0]
        key = (first.device, first.dtype, *(f.shape[2:] for f in feats))
        if key not in self._anchors:
            centres, strides = [], []
            for feat, stride in zip(feats, STRIDES, strict=True):
                h, w = feat.shape[2:]
                ys, xs = torch.meshgrid(
                    torch.arange(h, device=first.device, dtype=first.dtype) + 0.5,
                    torch.arange(w, device=first.device, dtype=first.dtype) + 0.5,
                    indexing="ij",
                )
                centres.append(torch.stack([xs.flatten(), ys.flatten()]))
                strides.append(
                    torch.full((1, h * w), stride, device=first.device, dtype=first.dtype)
                )
            self._anchors[key] = (torch.cat(centres, 1), torch.cat(strides, 1))
        return self._anchors[key]


class YOLOv8(nn.Module):
    """The yaml's backbone (layers 0-9), head (10-21) and Detect(P3, P4, P5)."""

    def __init__(self, scale: Scale, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c = scale.channels
        d = scale.repeats
        p3, p4, p5 = c(256), c(512), c(1024)
        self.stem = nn.Sequential(
            Conv(3, c(64), 3, 2),
            Conv(c(64), c(128), 3, 2),
            C2f(c(128), c(128), d(3), shortcut=True),
            Conv(c(128), p3, 3, 2),
            C2f(p3, p3, d(6), shortcut=True),
        )
        self.down4 = nn.Sequential(Conv(p3, p4, 3, 2), C2f(p4, p4, d(6), shortcut=True))
        self.down5 = nn.Sequential(
            Conv(p4, p5, 3, 2), C2f(p5, p5, d(3), shortcut=True), SPPF(p5, p5)
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(p5 + p4, p4, d(3), shortcut=False)
        self.top_down3 = C2f(p4 + p3, p3, d(3), shortcut=False)
        self.reduce3 = Conv(p3, p3, 3, 2)
        self.bottom_up4 = C2f(p3 + p4, p4, d(3), shortcut=False)
        self.reduce4 = Conv(p4, p4, 3, 2)
        self.bottom_up5 = C2f(p4 + p5, p5, d(3), shortcut=False)
        self.detect = Detect((p3, p4, p5), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.stem(x)
        b4 = self.down4(b3)
        b5 = self.down5(b4)
        h4 = self.top_down4(torch.cat([self.up(b5), b4], 1))
        out3 = self.top_down3(torch.cat([self.up(h4), b3], 1))
        out4 = self.bottom_up4(torch.cat([self.reduce3(out3), h4], 1))
        out5 = self.bottom_up5(torch.cat([self.reduce4(out4), b5], 1))
        return self.detect([out3, out4, out5])


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv's BatchNorm into its convolution (inference only): one kernel, not two."""
    for module in model.modules():
        if isinstance(module, Conv) and isinstance(module[1], nn.BatchNorm2d):
            conv, bn = module[0], module[1]
            assert isinstance(conv, nn.Conv2d)
            module[0] = fuse_conv_bn_eval(conv, bn)
            module[1] = nn.Identity()
    return model


def build(scale: str, *, seed: int = 0, fuse: bool = True) -> YOLOv8:
    """YOLOv8-``scale`` (n, s, m or l) with seeded RANDOM weights, in eval mode.

    Args:
        scale: one of :data:`SCALES`.
        seed: the weights are ``torch.manual_seed(seed)`` then PyTorch's default init.
        fuse: fold BatchNorm into the convolutions, as an inference export does.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown YOLOv8 scale {scale!r}; one of {sorted(SCALES)}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = YOLOv8(SCALES[scale]).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    if fuse:
        fuse_batchnorm(model)
    return model
