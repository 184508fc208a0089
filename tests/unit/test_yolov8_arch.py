"""The benchmark's YOLOv8 (random weights) is the published architecture: Ultralytics' exact
parameter counts, the published GFLOPs at 640, and the exported output layout that the worker's
``decode_yolov8`` reads (anchors stride by stride, row-major; xywh in pixels, then 80 scores).

Sizes and FLOPs are counted on the meta device (shapes only, no arithmetic), so all four scales
cost well under a second; the output checks run the n and s models on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpu.yolov8_arch import NUM_CLASSES, REG_MAX, STRIDES, Detect, YOLOv8, build
from kubevision.worker.decoders import decode_yolov8

# yolov8.yaml's summary comments (BatchNorm separate) and Ultralytics' fused summaries.
EXACT_PARAMS = {"n": 3_157_200, "s": 11_166_560, "m": 25_902_640, "l": 43_691_520}
EXACT_FUSED_PARAMS = {"n": 3_151_904, "s": 11_156_544, "m": 25_886_080, "l": 43_668_288}
# The README's table (params in millions, GFLOPs at 640 of the fused model).
PUBLISHED = {"n": (3.2, 8.7), "s": (11.2, 28.6), "m": (25.9, 78.9), "l": (43.7, 165.2)}
SIZE = 640
ANCHORS_640 = sum((SIZE // s) ** 2 for s in STRIDES)


def meta_model(scale: str, fuse: bool) -> YOLOv8:
    with torch.device("meta"):
        return build(scale, fuse=fuse)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scale", sorted(PUBLISHED))
def test_parameter_counts_match_ultralytics(scale: str) -> None:
    assert parameters(meta_model(scale, fuse=False)) == EXACT_PARAMS[scale]
    fused = parameters(meta_model(scale, fuse=True))
    assert fused == EXACT_FUSED_PARAMS[scale]
    assert fused / 1e6 == pytest.approx(PUBLISHED[scale][0], rel=0.02)


@pytest.mark.parametrize("scale", sorted(PUBLISHED))
def test_flops_at_640_match_published(scale: str) -> None:
    """FlopCounterMode counts 2 FLOPs per multiply-accumulate, the convention of the published
    figures (Ultralytics doubles thop's MAC count): half of it would be off by 2x."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        meta_model(scale, fuse=True)(torch.empty(1, 3, SIZE, SIZE, device="meta"))
    gflops = counter.get_total_flops() / 1e9
    assert gflops == pytest.approx(PUBLISHED[scale][1], rel=0.03)


@pytest.mark.parametrize(("scale", "batch"), [("n", 2), ("s", 1)])
def test_output_has_the_exported_layout(scale: str, batch: int) -> None:
    with torch.inference_mode():
        out = build(scale)(torch.rand(batch, 3, SIZE, SIZE))
    assert out.shape == (batch, 4 + NUM_CLASSES, ANCHORS_640)
    assert torch.isfinite(out).all()
    scores = out[:, 4:]
    assert ((scores >= 0) & (scores <= 1)).all()


def test_seeded_weights_are_reproducible() -> None:
    first, second, other = build("n", seed=1), build("n", seed=1), build("n", seed=2)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(first(x), second(x))
        assert not torch.equal(first(x), other(x))


def _pin_head(detect: Detect, best_class: int, logit: float) -> None:
    """Zero the last box and class convolutions: every side's distance is then the mean of
    0..REG_MAX-1 and every class scores sigmoid(0), except ``best_class`` at sigmoid(logit)."""
    with torch.no_grad():
        for branch in (*detect.box, *detect.cls):
            last = branch[-1]
            assert isinstance(last, nn.Conv2d)
            assert last.bias is not None
            last.weight.zero_()
            last.bias.zero_()
            if last.out_channels == NUM_CLASSES:
                last.bias[best_class] = logit


def test_decode_yolov8_reads_the_output() -> None:
    """With the head pinned, every anchor is a box centred on its cell, of side
    2 x 7.5 strides, labelled ``best_class``: the decoder must find each where the exported
    layout puts it."""
    model = build("n")
    best_class, logit = 7, 1.0
    _pin_head(model.detect, best_class, logit)
    with torch.inference_mode():
        out = model(torch.rand(1, 3, SIZE, SIZE)).numpy()
    (found,) = decode_yolov8([out], (SIZE, SIZE), confidence=0.7)

    centres, strides = [], []
    for stride in STRIDES:
        cells = SIZE // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres.append((np.stack([xs.ravel(), ys.ravel()], 1) + 0.5) * stride)
        strides.append(np.full((cells * cells, 1), stride))
    half = np.concatenate(strides) * (REG_MAX - 1) / 2
    expected = np.concatenate([np.concatenate(centres) - half, np.concatenate(centres) + half], 1)

    assert len(found.xyxy) == ANCHORS_640
    np.testing.assert_allclose(found.xyxy, expected, atol=1e-3)
    assert (found.class_ids == best_class).all()
    np.testing.assert_allclose(found.scores, 1 / (1 + np.exp(-logit)), rtol=1e-5)


def test_unknown_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="one of"):
        build("x")
