"""The rule that fits a detector's tracker thresholds (``model_catalog.tools.tracking_thresholds``)
on labelled calibration boxes: matching, the F1-best cut and the thresholds derived from it."""

from __future__ import annotations

import numpy as np
import pytest

from model_catalog.tools.tracking_thresholds import f1_best_score, fit, true_positives


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float64).reshape(-1, 4)


@pytest.mark.parametrize(
    ("found", "scores", "labels", "expected"),
    [
        # the higher-scoring of two boxes on one person takes the label, the other is false
        (
            boxes((0, 0, 10, 20), (1, 0, 11, 20)),
            [0.4, 0.9],
            boxes((0, 0, 10, 20)),
            [False, True],
        ),
        # IoU 0.5 exactly matches; 0.48 does not
        (
            boxes((0, 0, 10, 20), (20, 0, 30, 21)),
            [0.8, 0.7],
            boxes((0, 0, 10, 10), (20, 0, 30, 10)),
            [True, False],
        ),
        # each label at most once; a box takes the label it overlaps best among the free ones
        (
            boxes((0, 0, 10, 10), (20, 0, 30, 10)),
            [0.5, 0.6],
            boxes((20, 0, 30, 10), (0, 0, 10, 10)),
            [True, True],
        ),
        (boxes((0, 0, 10, 10)), [0.5], boxes(), [False]),
    ],
    ids=["duplicate", "iou-half", "one-label-each", "no-labels"],
)
def test_true_positives(
    found: np.ndarray, scores: list[float], labels: np.ndarray, expected: list[bool]
) -> None:
    hit = true_positives(found, np.array(scores, np.float32), labels)
    assert hit.tolist() == expected


@pytest.mark.parametrize(
    ("true", "false", "expected"),
    [
        ([0.9, 0.8, 0.7], [0.2, 0.1], 0.21),  # every cut in (0.2, 0.7] is perfect: the lowest
        ([0.9, 0.8, 0.3], [0.5, 0.4, 0.35], 0.51),  # losing one person beats three false boxes
        ([0.9, 0.3], [], 0.05),  # nothing false: keep everything
    ],
)
def test_f1_best_score(true: list[float], false: list[float], expected: float) -> None:
    best = f1_best_score(np.array(true, np.float32), np.array(false, np.float32))
    assert best == pytest.approx(expected)


def test_f1_best_score_needs_true_positives() -> None:
    with pytest.raises(ValueError, match="no true positives"):
        f1_best_score(np.empty(0, np.float32), np.array([0.5], np.float32))


@pytest.mark.parametrize(
    ("true", "false", "high", "low"),
    [
        ([0.9, 0.8, 0.7, 0.4], [0.3, 0.1], 0.31, 0.1),
        ([0.3, 0.2, 0.15], [0.1, 0.05], 0.11, 0.055),  # a low-scoring detector: low = high / 2
    ],
)
def test_fit_derives_the_thresholds_from_the_f1_best_cut(
    true: list[float], false: list[float], high: float, low: float
) -> None:
    fitted = fit(np.array(true, np.float32), np.array(false, np.float32), "unit data")
    assert fitted.high_score == pytest.approx(high)
    assert fitted.new_track_score == fitted.high_score
    assert fitted.low_score == pytest.approx(low)
    assert fitted.match_iou == 0.3
    assert fitted.calibration.startswith(f"unit data: {len(true)} true / {len(false)} false")
