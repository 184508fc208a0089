"""Crops of several frames (a detected batch's cameras) go through the classifier in one
backend call and come back per frame, as if each frame had been classified alone."""

from __future__ import annotations

import numpy as np

from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.classifier import CropClassifier, FloatArray
from tests.assets import read_image, require
from tests.unit.test_decoders import model_config


class CountingBackend:
    """The real ONNX Runtime backend, counting its calls."""

    def __init__(self, backend: OrtBackend) -> None:
        self._backend = backend
        self.calls = 0
        self.name = backend.name
        self.max_batch = backend.max_batch

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        self.calls += 1
        return self._backend.infer(batch)


def classifier(backend: CountingBackend | OrtBackend) -> CropClassifier:
    return CropClassifier(
        model_config(None, task="classify", size=224, batch_max=16),
        backend,  # type: ignore[arg-type]
        top_k=3,
        labels_file=require("models/imagenet_classes.txt"),
    )


def test_crops_of_several_frames_are_classified_in_one_call_and_returned_per_frame() -> None:
    path = require("models/mobilenetv2_12_int8.onnx")
    images = sorted(require("coco128/images/val2017").glob("*.jpg"))[:3]
    frames = [read_image(p) for p in images]
    boxes = [
        np.array([[10, 20, 200, 220], [50, 60, 300, 400]], np.float32),
        np.empty((0, 4), np.float32),  # a frame with nothing due
        np.array([[0, 0, 120, 90]], np.float32),
    ]
    counting = CountingBackend(OrtBackend(path, max_batch=16))
    together = classifier(counting).classify_many(list(zip(frames, boxes, strict=True)))
    assert counting.calls == 1
    alone = classifier(OrtBackend(path, max_batch=16))
    for frame, frame_boxes, (class_ids, scores) in zip(frames, boxes, together, strict=True):
        assert class_ids.shape == scores.shape == (len(frame_boxes), 3)
        expected_ids, expected_scores = alone(frame, frame_boxes)
        np.testing.assert_array_equal(class_ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_nothing_due_anywhere_calls_no_model() -> None:
    path = require("models/mobilenetv2_12_int8.onnx")
    counting = CountingBackend(OrtBackend(path, max_batch=16))
    frame = np.zeros((100, 100, 3), np.uint8)
    results = classifier(counting).classify_many([(frame, np.empty((0, 4), np.float32))] * 2)
    assert counting.calls == 0
    assert [r[0].shape for r in results] == [(0, 3), (0, 3)]
