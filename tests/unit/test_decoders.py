"""The detection path piece by piece: letterbox geometry and tensors, the three decoders on
synthetic raw outputs with a known box, class-aware NMS, and the Detector's contract (frame
pixels out, validation up front, bad frames survived). A fake backend stands in for the model
except in the backend tests, which load real exports from the shared assets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import create_backend
from kubevision.worker.backends.ort import CPU, OrtBackend, default_providers
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.decoders import (
    DECODERS,
    STRIDES,
    Candidates,
    decode_nanodet,
    decode_yolov8,
    decode_yolox,
    decoder_for,
    nms,
)
from kubevision.worker.detector import COCO_CLASSES, Detector
from kubevision.worker.preprocess import (
    RAW_PIXELS,
    UNIT_RANGE,
    InputFormat,
    InvalidFrameError,
    Letterbox,
    Normalization,
    letterbox,
    preprocess,
)
from tests.assets import require

FloatArray = npt.NDArray[np.float32]
SIZE = 416
NUM_CLASSES = len(COCO_CLASSES)


def model_config(
    decoder: str | None = "yolov8",
    task: str = "detect",
    size: int = SIZE,
    labels: Sequence[str] = (),
    batch_max: int = 8,
) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "variant": "test-model",
            "family": "test",
            "task": task,
            "format": "onnx",
            "precision": "fp32",
            "input_size": InputSize(width=size, height=size),
            "decoder": decoder,
            "batch_max": batch_max,
            "labels": list(labels),
            "artifact": Artifact(uri="file:///models/test.onnx"),
        }
    )


def anchor_index(stride: int, cell_x: int, cell_y: int, width: int, height: int) -> int:
    """The documented anchor order: stride by stride, row-major within each feature map."""
    index = 0
    for s in STRIDES:
        cols, rows = math.ceil(width / s), math.ceil(height / s)
        if s == stride:
            return index + cell_y * cols + cell_x
        index += cols * rows
    raise ValueError(stride)


def anchor_count(width: int, height: int) -> int:
    return sum(math.ceil(width / s) * math.ceil(height / s) for s in STRIDES)


# ---------------------------------------------------------------- letterbox and tensors


@pytest.mark.parametrize(
    ("frame_size", "input_size", "center"),
    [
        ((640, 480), (416, 416), True),
        ((480, 640), (416, 416), True),
        ((1920, 1080), (416, 416), False),
        ((416, 416), (416, 416), True),
        ((100, 37), (320, 320), True),
        ((1280, 720), (640, 384), True),
    ],
)
def test_letterbox_round_trip_maps_boxes_back(
    frame_size: tuple[int, int], input_size: tuple[int, int], center: bool
) -> None:
    fw, fh = frame_size
    placement = Letterbox.fit(fw, fh, *input_size, center=center)
    boxes = np.array([[0, 0, fw, fh], [fw * 0.1, fh * 0.2, fw * 0.5, fh * 0.9]], np.float32)
    in_input = placement.to_input(boxes)
    assert in_input.min() >= 0
    assert (in_input[:, [2, 3]] <= np.array(input_size, np.float32) + 1e-3).all()
    np.testing.assert_allclose(placement.to_frame(in_input), boxes, atol=1e-3)


def test_letterbox_places_pixels_where_the_geometry_says() -> None:
    """A bright rectangle in the frame lands, in the canvas, on to_input of its box."""
    frame = np.zeros((480, 640, 3), np.uint8)
    box = np.array([[200, 100, 440, 300]], np.float32)
    frame[100:300, 200:440] = 255
    fmt = InputFormat(pad_value=114, center=True)
    canvas, placement = letterbox(frame, SIZE, SIZE, fmt)
    bright_rows, bright_cols = np.nonzero(canvas[..., 0] > 200)
    found = [bright_cols.min(), bright_rows.min(), bright_cols.max() + 1, bright_rows.max() + 1]
    np.testing.assert_allclose(found, placement.to_input(box)[0], atol=1.0)
    assert (canvas[: placement.pad_y] == 114).all()  # top padding (640x480 pads vertically)
    assert placement.pad_x == 0


def test_to_frame_clips_boxes_to_the_frame() -> None:
    placement = Letterbox.fit(640, 480, SIZE, SIZE)
    outside = np.array([[-50, -50, 500, 500]], np.float32)
    np.testing.assert_allclose(placement.to_frame(outside), [[0, 0, 640, 480]])


@pytest.mark.parametrize(
    ("fmt", "expected_first_pixel"),
    [
        (InputFormat("bgr", RAW_PIXELS), [10, 20, 30]),
        (InputFormat("rgb", RAW_PIXELS), [30, 20, 10]),
        (InputFormat("rgb", UNIT_RANGE), [30 / 255, 20 / 255, 10 / 255]),
        (
            InputFormat("bgr", Normalization(mean=(1, 2, 3), std=(2, 4, 6))),
            [(10 - 1) / 2, (20 - 2) / 4, (30 - 3) / 6],
        ),
    ],
)
def test_preprocess_colour_order_and_normalisation(
    fmt: InputFormat, expected_first_pixel: list[float]
) -> None:
    frame = np.empty((SIZE, SIZE, 3), np.uint8)
    frame[...] = (10, 20, 30)  # B, G, R
    tensor, _ = preprocess([frame, frame], SIZE, SIZE, fmt)
    assert tensor.shape == (2, 3, SIZE, SIZE)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[1, :, 0, 0], expected_first_pixel, rtol=1e-6)


def test_preprocess_batches_frames_of_different_sizes() -> None:
    frames = [np.full((h, w, 3), 200, np.uint8) for w, h in [(640, 480), (300, 900), (50, 50)]]
    tensor, placements = preprocess(frames, SIZE, SIZE, InputFormat(pad_value=0))
    assert tensor.shape == (3, 3, SIZE, SIZE)
    for image, placement in zip(tensor, placements, strict=True):
        w, h = placement.resized_size
        x, y = placement.pad_x, placement.pad_y
        assert (image[:, y : y + h, x : x + w] == 200).all()
        assert image.sum() == 200 * 3 * w * h  # everything else is padding (0)


@pytest.mark.parametrize(
    "frame",
    [
        np.full((48, 64), 90, np.uint8),
        np.full((48, 64, 1), 90, np.uint8),
        np.full((48, 64, 4), 90, np.uint8),
    ],
    ids=["gray", "gray-1-channel", "bgra"],
)
def test_gray_and_bgra_frames_become_bgr(frame: npt.NDArray[np.uint8]) -> None:
    canvas, _ = letterbox(frame, 64, 64, InputFormat(pad_value=0))
    expected, _ = letterbox(np.full((48, 64, 3), 90, np.uint8), 64, 64, InputFormat(pad_value=0))
    np.testing.assert_array_equal(canvas, expected)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "must have pixels"),
        (np.zeros((10, 0, 3), np.uint8), "must have pixels"),
        (np.zeros((10, 10, 3), np.float32), "must be uint8"),
        (np.zeros((10, 10, 5), np.uint8), "got (10, 10, 5)"),
        (np.zeros(10, np.uint8), "got (10,)"),
    ],
)
def test_invalid_frames_say_what_is_wrong(frame: npt.NDArray[np.generic], message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        letterbox(frame, SIZE, SIZE, InputFormat())  # type: ignore[arg-type]


# ---------------------------------------------------------------- decoders


def yolox_output(size: int = SIZE) -> tuple[list[FloatArray], list[float], int, float]:
    """One YOLOX anchor (stride 16, cell (10, 5)) encoding box (132, 72, 196, 104), car 0.72."""
    raw = np.zeros((1, anchor_count(size, size), 5 + NUM_CLASSES), np.float32)
    row = raw[0, anchor_index(16, 10, 5, size, size)]
    row[:4] = [0.25, 0.5, np.log(64 / 16), np.log(32 / 16)]  # centre (164, 88), 64 x 32
    row[4] = 0.9  # objectness
    row[5 + 2] = 0.8  # class 2 (car)
    return [raw], [132, 72, 196, 104], 2, 0.72


def yolov8_output(size: int = SIZE) -> tuple[list[FloatArray], list[float], int, float]:
    """One YOLOv8 anchor with centre box (150, 200, 100, 50) -> (100, 175, 200, 225), dog 0.6."""
    raw = np.zeros((1, 4 + NUM_CLASSES, anchor_count(size, size)), np.float32)
    column = anchor_index(32, 4, 6, size, size)
    raw[0, :4, column] = [150, 200, 100, 50]
    raw[0, 4 + 16, column] = 0.6  # class 16 (dog)
    return [raw], [100, 175, 200, 225], 16, 0.6


def nanodet_output(size: int = 320) -> tuple[list[FloatArray], list[float], int, float]:
    """One NanoDet anchor (stride 8, cell (3, 4), centre (28, 36)); distances 2, 1, 3, 4 strides
    as near one-hot distributions -> box (12, 28, 52, 68); class 5 (bus) 0.6."""
    bins = 8
    scores, distances = [], []
    for s in STRIDES:
        count = math.ceil(size / s) ** 2
        scores.append(np.zeros((1, count, NUM_CLASSES), np.float32))
        distances.append(np.zeros((1, count, 4 * bins), np.float32))
    anchor = 4 * math.ceil(size / 8) + 3
    scores[0][0, anchor, 5] = 0.6
    logits = np.full((4, bins), -50.0, np.float32)
    logits[np.arange(4), [2, 1, 3, 4]] = 50.0
    distances[0][0, anchor] = logits.ravel()
    return [*scores, *distances], [12, 28, 52, 68], 5, 0.6


DecoderCase = tuple[
    Callable[..., list[Candidates]],
    Callable[[], tuple[list[FloatArray], list[float], int, float]],
    int,
]
DECODER_CASES: list[DecoderCase] = [
    (decode_yolox, yolox_output, SIZE),
    (decode_yolov8, yolov8_output, SIZE),
    (decode_nanodet, nanodet_output, 320),
]
DECODER_IDS = ["yolox", "yolov8", "nanodet"]


@pytest.mark.parametrize(("decode", "make", "size"), DECODER_CASES, ids=DECODER_IDS)
def test_decoder_recovers_the_known_box(
    decode: Callable[..., list[Candidates]],
    make: Callable[[], tuple[list[FloatArray], list[float], int, float]],
    size: int,
) -> None:
    outputs, box, class_id, score = make()
    (found,) = decode(outputs, (size, size), 0.5)
    np.testing.assert_allclose(found.xyxy, [box], atol=1e-3)
    np.testing.assert_allclose(found.scores, [score], rtol=1e-5)
    assert found.class_ids.tolist() == [class_id]


@pytest.mark.parametrize(("decode", "make", "size"), DECODER_CASES, ids=DECODER_IDS)
def test_decoder_confidence_and_class_filter(
    decode: Callable[..., list[Candidates]],
    make: Callable[[], tuple[list[FloatArray], list[float], int, float]],
    size: int,
) -> None:
    outputs, _, class_id, score = make()
    assert len(decode(outputs, (size, size), score + 0.01)[0].xyxy) == 0
    others = np.ones(NUM_CLASSES, bool)
    others[class_id] = False
    assert len(decode(outputs, (size, size), 0.5, others)[0].xyxy) == 0
    assert len(decode(outputs, (size, size), 0.5, ~others)[0].xyxy) == 1


@pytest.mark.parametrize(("decode", "make", "size"), DECODER_CASES, ids=DECODER_IDS)
def test_decoder_rejects_a_wrong_input_size(
    decode: Callable[..., list[Candidates]],
    make: Callable[[], tuple[list[FloatArray], list[float], int, float]],
    size: int,
) -> None:
    outputs, *_ = make()
    with pytest.raises(ValueError, match="anchors"):
        decode(outputs, (size * 2, size), 0.5)


def test_decoders_handle_a_batch() -> None:
    (raw,), box, *_ = yolov8_output()
    empty = np.zeros_like(raw)
    results = decode_yolov8([np.concatenate([raw, empty, raw])], (SIZE, SIZE), 0.5)
    assert [len(r.xyxy) for r in results] == [1, 0, 1]
    np.testing.assert_allclose(results[2].xyxy, [box], atol=1e-3)


def test_decoder_registry() -> None:
    assert set(DECODERS) == {"yolox", "yolov8", "nanodet"}
    assert decoder_for("yolov8").input_format.color == "rgb"
    with pytest.raises(ValueError, match=r"unknown detector decoder 'ssd'; one of \['nanodet'"):
        decoder_for("ssd")


# ---------------------------------------------------------------- NMS


@pytest.mark.parametrize(
    ("boxes", "scores", "class_ids", "iou", "kept"),
    [
        # overlapping (IoU 0.68), same class: the better one survives, wherever it is
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.5, 0.9], [0, 0], 0.5, [1]),
        # the same boxes, different classes: both survive, best first
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.5, 0.9], [0, 3], 0.5, [1, 0]),
        # same class, apart
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 1], 0.5, [0, 1]),
        # IoU exactly 0.5 is not above 0.5: kept
        ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [0, 0], 0.5, [0, 1]),
        ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [0, 0], 0.49, [0]),
        # scores of exactly zero are still boxes
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.0, 0.0], [0, 0], 0.5, [0, 1]),
        # negative coordinates must not let one class's region reach into another's
        ([[0, 0, 10, 10], [-11, -11, -1, -1]], [0.9, 0.8], [0, 1], 0.5, [0, 1]),
        # a chain: 0 suppresses 1, so 2 (overlapping only 1) survives
        (
            [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]],
            [0.9, 0.8, 0.7],
            [0, 0, 0],
            0.3,
            [0, 2],
        ),
    ],
)
def test_nms(
    boxes: list[list[float]], scores: list[float], class_ids: list[int], iou: float, kept: list[int]
) -> None:
    keep = nms(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(class_ids), iou)
    assert keep.tolist() == kept


def test_nms_empty_and_max_det() -> None:
    assert (
        nms(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int64), 0.5).size
        == 0
    )
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(5)], np.float32)
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, np.zeros(5, np.int64), 0.5, max_det=3).tolist() == [3, 4, 1]


# ---------------------------------------------------------------- detector


class FakeBackend:
    """Returns the same raw output for every item of the batch; records batch shapes."""

    name = "fake"
    max_batch = 8
    input_names = ("images",)
    output_names = ("output0",)

    def __init__(self, outputs: list[FloatArray]) -> None:
        self.outputs = outputs
        self.calls: list[tuple[int, ...]] = []

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        self.calls.append(batch.shape)
        return [np.repeat(out, len(batch), axis=0) for out in self.outputs]


def yolov8_detector(**kwargs: object) -> tuple[Detector, FakeBackend]:
    backend = FakeBackend(yolov8_output()[0])
    return Detector(model_config(), backend, 0.25, 0.45, **kwargs), backend  # type: ignore[arg-type]


def test_detector_maps_boxes_to_frame_pixels() -> None:
    """832x416 -> scale 0.5, pad 104 rows: input box (100, 175, 200, 225) is frame
    (200, 142, 400, 242)."""
    detector, backend = yolov8_detector()
    (found,) = detector([np.zeros((416, 832, 3), np.uint8)])
    np.testing.assert_allclose(found.xyxy, [[200, 142, 400, 242]], atol=1e-3)
    assert found.class_ids.tolist() == [16]
    assert detector.labels[16] == "dog"
    assert backend.calls == [(1, 3, SIZE, SIZE)]


def test_detector_survives_bad_frames() -> None:
    """Invalid frames give empty Detections and are counted; the others keep their results;
    grayscale is valid."""
    detector, backend = yolov8_detector()
    good = np.zeros((416, 832, 3), np.uint8)
    frames = [
        np.zeros((0, 0, 3), np.uint8),
        good,
        np.zeros((416, 832), np.uint8),  # grayscale
        np.zeros((10, 10, 3), np.float64),
        None,
    ]
    results = detector(frames)  # type: ignore[arg-type]
    assert [len(r) for r in results] == [0, 1, 1, 0, 0]
    np.testing.assert_allclose(results[2].xyxy, results[1].xyxy)
    assert detector.rejected_frames == 3
    assert backend.calls == [(2, 3, SIZE, SIZE)]


def test_detector_with_only_bad_frames_skips_inference() -> None:
    seen: list[str] = []
    detector, backend = yolov8_detector(on_stage=lambda stage, _: seen.append(stage))
    assert detector([np.zeros((0, 5, 3), np.uint8)])[0].xyxy.shape == (0, 4)
    assert detector([]) == []
    assert backend.calls == []
    assert seen == []  # no stage ran


def test_detector_reports_stage_timings() -> None:
    seen: list[tuple[str, float]] = []
    detector, _ = yolov8_detector(on_stage=lambda stage, seconds: seen.append((stage, seconds)))
    detector([np.zeros((100, 100, 3), np.uint8)])
    assert [stage for stage, _ in seen] == ["preprocess", "infer", "postprocess"]
    assert all(seconds >= 0 for _, seconds in seen)


def test_a_submitted_batch_reports_its_stages_once_its_result_is_taken() -> None:
    seen: list[str] = []
    detector, backend = yolov8_detector(on_stage=lambda stage, _: seen.append(stage))
    pending = detector.submit([np.zeros((100, 100, 3), np.uint8)])
    assert len(backend.calls) == 1
    assert seen == []
    first = pending.result()
    assert pending.result() is first  # taken once, however often asked
    assert seen == ["preprocess", "infer", "postprocess"]


def test_detector_class_filter() -> None:
    frame = np.zeros((416, 832, 3), np.uint8)
    assert len(yolov8_detector(classes=["person", "car"])[0]([frame])[0]) == 0
    assert len(yolov8_detector(classes=["dog"])[0]([frame])[0]) == 1


def yolov8_single_box(cxcywh: list[float], score: float = 0.9) -> FakeBackend:
    (raw,), *_ = yolov8_output()
    raw[...] = 0
    raw[0, :4, 0] = cxcywh
    raw[0, 4 + 16, 0] = score
    return FakeBackend([raw])


def test_detector_clips_boxes_reaching_into_the_padding() -> None:
    """Input rows 50..150 of an 832x416 frame (pad 104 rows) are frame rows -108..92: clipped."""
    detector = Detector(model_config(), yolov8_single_box([200, 100, 40, 100]), 0.25, 0.45)
    (found,) = detector([np.zeros((416, 832, 3), np.uint8)])
    np.testing.assert_allclose(found.xyxy, [[360, 0, 440, 92]], atol=1e-3)


def test_detector_drops_boxes_entirely_in_the_padding() -> None:
    """A box in the top padding of a wide frame has no area once clipped: no detection."""
    backend = yolov8_single_box([200, 20, 40, 20])  # input rows 10..30, all padding
    detector = Detector(model_config(), backend, 0.25, 0.45)
    assert len(detector([np.zeros((416, 832, 3), np.uint8)])[0]) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 0.0}, r"confidence must be in \(0, 1\], got 0.0"),
        ({"confidence": 1.5}, r"confidence must be in \(0, 1\], got 1.5"),
        ({"confidence": float("nan")}, "confidence must be in"),
        ({"nms_iou": 0.0}, r"nms_iou must be in \(0, 1\], got 0.0"),
        ({"nms_iou": -0.2}, "nms_iou must be in"),
        ({"max_det": 0}, "max_det must be >= 1"),
        ({"classes": ["car", "unicorn"]}, r"classes \['unicorn'\] are not labels"),
        ({"model": model_config(decoder="ssd")}, "unknown detector decoder 'ssd'"),
        ({"model": model_config(decoder=None)}, "unknown detector decoder None"),
        ({"model": model_config(decoder=None, task="classify")}, "is a classify model"),
    ],
)
def test_detector_validates_its_configuration(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "model": model_config(),
        "backend": FakeBackend([]),
        "confidence": 0.25,
        "nms_iou": 0.45,
    }
    with pytest.raises(ValueError, match=message):
        Detector(**(args | kwargs))  # type: ignore[arg-type]


def test_detector_labels_must_match_the_model_outputs() -> None:
    detector = Detector(
        model_config(labels=["a", "b"]), FakeBackend(yolov8_output()[0]), 0.25, 0.45
    )
    with pytest.raises(ValueError, match="outputs 80 classes but 2 were expected"):
        detector([np.zeros((64, 64, 3), np.uint8)])


# ---------------------------------------------------------------- backends


def test_default_providers() -> None:
    assert default_providers("cpu") == [CPU]
    with pytest.raises(ValueError, match="device must be"):
        default_providers("gpu0")
    with pytest.raises(ValueError, match="device must be"):
        default_providers("cuda:x")


def test_create_backend_refuses_openvino_off_the_cpu() -> None:
    """OpenVINO variants run on CPUs (tests/unit/test_openvino_backend.py); on a CUDA device
    the worker says which formats to use instead of loading anything."""
    model = model_config().model_copy(update={"format": "openvino"})
    with pytest.raises(ValueError, match="runs on device 'cpu'"):
        create_backend(model, Path("model.xml"), "cuda:0")


@pytest.mark.parametrize(
    ("asset", "size", "batch_max", "expected_max_batch"),
    [
        ("models/yolox_nano_416.onnx", 416, 8, 1),  # fixed batch 1 in the export
        ("models/mobilenetv2_12_int8.onnx", 224, 2, 2),  # dynamic batch
    ],
)
def test_ort_backend_runs_any_batch_size(
    asset: str, size: int, batch_max: int, expected_max_batch: int
) -> None:
    """A batch of 3 gives the same outputs as three single runs, whatever the model's batch."""
    backend = OrtBackend(require(asset), max_batch=batch_max)
    assert backend.max_batch == expected_max_batch
    batch = np.random.default_rng(0).uniform(0, 1, (3, 3, size, size)).astype(np.float32)
    (batched,) = backend.infer(batch)
    singles = np.concatenate([backend.infer(batch[i : i + 1])[0] for i in range(3)])
    assert batched.shape[0] == 3
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- classifier


class FakeClassifierBackend:
    name = "fake"
    max_batch = 16
    input_names = ("input",)
    output_names = ("output",)

    def __init__(self, logits: list[float]) -> None:
        self.logits = np.array([logits], np.float32)
        self.calls: list[tuple[int, ...]] = []

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        self.calls.append(batch.shape)
        return [np.repeat(self.logits, len(batch), axis=0)]


def classifier_config(labels: Sequence[str] = ("a", "b", "c", "d")) -> ModelConfig:
    return model_config(decoder=None, task="classify", size=224, labels=labels)


def test_classifier_top_k_is_sorted_and_batched() -> None:
    backend = FakeClassifierBackend([0.0, 3.0, 1.0, 2.0])
    classifier = CropClassifier(classifier_config(), backend, top_k=3)
    frame = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[0, 0, 50, 50], [10, 10, 190, 90], [60, 60, 60, 60]], np.float32)
    class_ids, scores = classifier(frame, boxes)
    assert class_ids.tolist() == [[1, 3, 2]] * 3  # the degenerate last box still gets a crop
    expected = np.exp([3.0, 2.0, 1.0]) / np.exp([0.0, 3.0, 1.0, 2.0]).sum()
    np.testing.assert_allclose(scores, [expected] * 3, rtol=1e-5)
    assert backend.calls == [(3, 3, 224, 224)]
    assert classifier.names(class_ids[0]) == ["b", "d", "c"]


def test_classifier_without_boxes_skips_inference() -> None:
    backend = FakeClassifierBackend([0.0, 1.0, 2.0, 3.0])
    class_ids, scores = CropClassifier(classifier_config(), backend, top_k=2)(
        np.zeros((10, 10, 3), np.uint8), np.empty((0, 4), np.float32)
    )
    assert class_ids.shape == (0, 2)
    assert scores.shape == (0, 2)
    assert backend.calls == []


def test_classifier_labels_come_from_config_or_file(tmp_path: Path) -> None:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("tench\ngoldfish\n\n")
    backend = FakeClassifierBackend([0.0, 1.0])
    classifier = CropClassifier(classifier_config(labels=()), backend, labels_file=labels_file)
    assert classifier.labels == ("tench", "goldfish")
    with pytest.raises(ValueError, match="has no labels"):
        CropClassifier(classifier_config(labels=()), backend)
    with pytest.raises(ValueError, match="top_k 5 exceeds"):
        CropClassifier(classifier_config(), backend, top_k=5)
    with pytest.raises(ValueError, match="is a detect model"):
        CropClassifier(model_config(), backend)
    with pytest.raises(ValueError, match="outputs 2 classes but has 4 labels"):
        CropClassifier(classifier_config(), backend)(
            np.zeros((10, 10, 3), np.uint8), np.array([[0, 0, 5, 5]], np.float32)
        )


def test_classifier_crops_are_exact_regions() -> None:
    """The crop (not the whole frame) reaches the model: a red box in a blue frame is red."""
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[...] = (255, 0, 0)
    frame[20:40, 30:70] = (0, 0, 255)
    seen: list[FloatArray] = []

    class Recorder(FakeClassifierBackend):
        def infer(self, batch: FloatArray) -> list[FloatArray]:
            seen.append(batch)
            return super().infer(batch)

    CropClassifier(classifier_config(), Recorder([0, 1, 2, 3]))(
        frame, np.array([[30, 20, 70, 40]], np.float32)
    )
    # RGB, ImageNet-normalised: red channel (255 - 123.675) / 58.395, blue (0 - 103.53) / 57.375
    np.testing.assert_allclose(seen[0][0, 0], (255 - 123.675) / 58.395, rtol=1e-5)
    np.testing.assert_allclose(seen[0][0, 2], -103.53 / 57.375, rtol=1e-5)
