"""Re-id on a real CUDA GPU: the torch backend's FP16 embeddings agree with ONNX Runtime's on
the CPU, and a device frame (NVDEC's) gives the embeddings its host copy gives. Skipped without
a GPU (CI); run on the GPU machine by benchmarks/gpu/reid_on_device.sh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kubevision.worker.trackers.reid import ReidEmbedder
from model_catalog.tools.reid_dynamic import batch_safe
from tests import hardware
from tests.assets import read_image, require

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason=hardware.reason("gpu", "needs a CUDA GPU")
)
SEQUENCE = "mot/MOT17-mini/MOT17-02-FRCNN"
MODELS = ["models/person_reid_retail_0288.onnx", "models/osnet_x0_25_msmt17.onnx"]


def dynamic(model: str, tmp_path: Path) -> Path:
    """The export with a dynamic batch (OSNet has one; the OMZ model is made batch-safe)."""
    path = require(model)
    if "osnet" in model:
        return path
    out = tmp_path / path.name
    onnx.save(batch_safe(onnx.load(str(path))), str(out))
    return out


def people(frame: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(BGR frame, xyxy of its mostly visible people) from MOT17-02's ground truth."""
    seq = require(SEQUENCE)
    rows = np.loadtxt(seq / "gt/gt.txt", delimiter=",", ndmin=2)
    rows = rows[(rows[:, 0] == frame) & (rows[:, 7] == 1) & (rows[:, 8] >= 0.5)]
    xyxy = np.column_stack(
        [rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]]
    )
    return read_image(seq / f"img1/{frame:06d}.jpg"), xyxy.astype(np.float32)


@pytest.mark.parametrize("model", MODELS)
def test_gpu_embeddings_match_onnx_runtime_on_the_cpu(model: str, tmp_path: Path) -> None:
    frame, boxes = people()
    path = dynamic(model, tmp_path)
    gpu = ReidEmbedder(path, device="cuda")
    assert gpu.takes_device_frames
    cpu = ReidEmbedder(path, ("CPUExecutionProvider",))
    cosine = (gpu(frame, boxes) * cpu(frame, boxes)).sum(axis=1)
    assert len(boxes) >= 10
    assert cosine.min() > 0.995, f"{model}: cosine {cosine.min():.4f}"


@pytest.mark.parametrize("model", MODELS)
def test_a_device_frame_gives_its_host_copys_embeddings(model: str, tmp_path: Path) -> None:
    frame, boxes = people()
    gpu = ReidEmbedder(dynamic(model, tmp_path), device="cuda")
    on_device = torch.from_numpy(frame).cuda()
    cosine = (gpu(on_device, boxes) * gpu(frame, boxes)).sum(axis=1)
    assert cosine.min() > 0.995, f"{model}: cosine {cosine.min():.4f}"
