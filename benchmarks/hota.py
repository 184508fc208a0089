"""HOTA, DetA and AssA (Luiten et al., IJCV 2021), computed by TrackEval.

TrackEval is the MOTChallenge's own evaluation code (``trackeval`` on PyPI, installed by
``make install`` without its dependencies: it requires opencv-python, a second owner of ``cv2``
beside the worker's opencv-python-headless, and its metrics need only numpy and scipy). Here
its ``HOTA`` metric is fed the ground truth and hypotheses py-motmetrics has already loaded and,
for MOT16/17, preprocessed (distractors removed, as the devkit does), with TrackEval's own box
IoU; ``tests/quality/test_tracking_mot.py`` checks that this gives the figures of TrackEval's
full MOTChallenge evaluation of the same files.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
Result = dict[str, Any]
"""TrackEval's HOTA fields of one sequence (or several combined): arrays over alpha."""


def trackeval() -> Any:
    """The ``trackeval`` package; its import prints which optional datasets it cannot load."""
    with contextlib.redirect_stdout(io.StringIO()):
        import trackeval as module  # type: ignore[import-untyped]
    return module


@dataclass(frozen=True)
class Frame:
    """One frame's ids and (x, y, w, h) boxes of ground truth and hypotheses."""

    gt_ids: npt.NDArray[np.int64]
    gt_boxes: Array
    hyp_ids: npt.NDArray[np.int64]
    hyp_boxes: Array


def _dense(ids: Iterable[npt.NDArray[np.int64]]) -> dict[int, int]:
    """Id -> 0..n-1 over a whole sequence (TrackEval's input numbering)."""
    return {int(v): i for i, v in enumerate(np.unique(np.concatenate([[], *ids])))}


def sequence_data(frames: Sequence[Frame]) -> dict[str, Any]:
    """The per-sequence input of TrackEval's metrics, as its datasets build it."""
    gt_map = _dense(f.gt_ids for f in frames)
    hyp_map = _dense(f.hyp_ids for f in frames)
    box_ious = trackeval().datasets._base_dataset._BaseDataset._calculate_box_ious
    return {
        "num_timesteps": len(frames),
        "num_gt_ids": len(gt_map),
        "num_tracker_ids": len(hyp_map),
        "num_gt_dets": sum(len(f.gt_ids) for f in frames),
        "num_tracker_dets": sum(len(f.hyp_ids) for f in frames),
        "gt_ids": [np.array([gt_map[int(i)] for i in f.gt_ids], np.int64) for f in frames],
        "tracker_ids": [np.array([hyp_map[int(i)] for i in f.hyp_ids], np.int64) for f in frames],
        "similarity_scores": [box_ious(f.gt_boxes, f.hyp_boxes, box_format="xywh") for f in frames],
    }


def evaluate(frames: Sequence[Frame]) -> Result:
    """TrackEval's HOTA fields for one sequence."""
    result: Result = trackeval().metrics.HOTA().eval_sequence(sequence_data(frames))
    return result


def combine(results: Sequence[Result]) -> Result:
    """Several sequences' results as one, the way TrackEval combines a benchmark's."""
    combined: Result = trackeval().metrics.HOTA().combine_sequences(dict(enumerate(results)))
    return combined


def scores(result: Result) -> dict[str, float]:
    """HOTA, DetA and AssA: each the mean over the 19 localisation thresholds alpha."""
    return {key.lower(): float(np.mean(result[key])) for key in ("HOTA", "DetA", "AssA")}


def frames_from_mot(gt: Array, hyp: Array, frame_numbers: Iterable[int]) -> list[Frame]:
    """Frames from MOT rows (frame, id, x, y, w, h, ...) of ground truth and hypotheses."""

    def part(rows: Array, frame: int) -> tuple[npt.NDArray[np.int64], Array]:
        sel = rows[rows[:, 0] == frame]
        return sel[:, 1].astype(np.int64), sel[:, 2:6].astype(np.float64)

    return [Frame(*part(gt, f), *part(hyp, f)) for f in frame_numbers]


def mot_challenge(gt: Path, result: str, frames: int, benchmark: str = "MOT15") -> dict[str, float]:
    """TrackEval's whole MOTChallenge evaluation of one result (its loader, its preprocessing
    for MOT16/17, its HOTA, CLEAR and Identity metrics) over frames 1..``frames``: what the
    figures of this module and py-motmetrics are checked against."""
    module = trackeval()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "gt/seq/gt").mkdir(parents=True)
        shutil.copy(gt, root / "gt/seq/gt/gt.txt")
        (root / "trackers/ours/data").mkdir(parents=True)
        (root / "trackers/ours/data/seq.txt").write_text(result)
        dataset = module.datasets.MotChallenge2DBox(
            {
                "GT_FOLDER": str(root / "gt"),
                "TRACKERS_FOLDER": str(root / "trackers"),
                "TRACKERS_TO_EVAL": ["ours"],
                "BENCHMARK": benchmark,
                "SKIP_SPLIT_FOL": True,
                "SEQ_INFO": {"seq": frames},
                "PRINT_CONFIG": False,
            }
        )
        quiet = {"PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False}
        files = {"OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False}
        evaluator = module.Evaluator({**quiet, **files, "LOG_ON_ERROR": None})
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = [
                module.metrics.HOTA(),
                module.metrics.CLEAR({"PRINT_CONFIG": False}),
                module.metrics.Identity({"PRINT_CONFIG": False}),
            ]
            output, _ = evaluator.evaluate([dataset], metrics)
    row = output["MotChallenge2DBox"]["ours"]["seq"]["pedestrian"]
    return scores(row["HOTA"]) | {
        "mota": float(row["CLEAR"]["MOTA"]),
        "idf1": float(row["Identity"]["IDF1"]),
    }
