"""Benchmark: SORT, ByteTrack and DeepSORT on MOTChallenge data, scored with py-motmetrics.

* MOT15 TUD-Campus (71 frames, 640x480, no images in our assets): SORT and ByteTrack on the
  public detections ``det/det.txt``. Before that, the evaluation itself is checked: scoring the
  reference tracker result shipped with the sequence must give py-motmetrics' published IDF1
  0.5577 and MOTA 0.5265.
* MOT17-mini (the first 4-8 real frames of five MOT17 sequences, FRCNN public detections):
  all three trackers, DeepSORT with the person-reid-retail-0288 embedder on the frames. Ground
  truth is trimmed to those frames, so these figures are a smoke test, not comparable with
  published MOT17 results.

Trackers run with the Pipeline defaults (``TrackerStage``: max_age 30, min_hits 3) and each
algorithm's default thresholds. SORT and DeepSORT have no score logic of their own and get
detections scoring at least ``MIN_SCORE`` (what the detector stage's ``confidence`` does in the
product); ByteTrack gets every detection, since using low-score ones is its point. Per-frame
time is ``Tracker.update`` alone (DeepSORT's includes running the re-id model), in one Python
thread on the CPU of whatever machine runs this (ONNX Runtime uses its default thread pool).

    python -m benchmarks.tracking_mot

writes benchmarks/results/tracking_mot.{json,md}. Assets come from ``$KUBEVISION_ASSETS`` or
``../shared/assets`` next to the repository.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from benchmarks.common import machine
from kubevision.api.pipeline import TrackerStage
from kubevision.worker.detections import Detections, FloatArray
from kubevision.worker.trackers import Embedder, Tracker, create_tracker
from kubevision.worker.trackers.base import Image
from kubevision.worker.trackers.reid import ReidEmbedder

RESULTS = Path(__file__).parent / "results"
TUD_CAMPUS = "mot/MOT15/TUD-Campus"
REFERENCE_RESULT = f"{TUD_CAMPUS}/motmetrics_reference_result.txt"
MOT17_MINI = "mot/MOT17-mini"
MOT17_SEQUENCES = tuple(f"MOT17-{n}-FRCNN" for n in ("02", "04", "05", "09", "10"))
REID_MODEL = "models/person_reid_retail_0288.onnx"
PUBLISHED_REFERENCE = {"idf1": 0.5577, "mota": 0.5265}
"""py-motmetrics' own test expects these for the reference result on TUD-Campus."""
MIN_SCORE = 0.5
"""Least detection score SORT and DeepSORT are given (ByteTrack gets all)."""
METRICS = ("mota", "idf1", "num_switches", "num_false_positives", "num_misses", "motp")

TrackerType = Literal["sort", "bytetrack", "deepsort"]


def default_assets() -> Path:
    """``$KUBEVISION_ASSETS``, else ``../shared/assets`` beside the repository."""
    override = os.environ.get("KUBEVISION_ASSETS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared/assets"


def motmetrics() -> ModuleType:
    """py-motmetrics, importable under NumPy 2.

    motmetrics 1.4.0 calls ``np.asfarray`` (in ``distances.iou_matrix``), which NumPy 2.0
    removed; newer motmetrics releases drop the call. Until we can move to one, put back the
    old behaviour, ``asarray`` with a float64 default dtype, only if it is missing.
    """
    if not hasattr(np, "asfarray"):

        def asfarray(a: npt.ArrayLike, dtype: npt.DTypeLike = np.float64) -> npt.NDArray[Any]:
            return np.asarray(a, dtype=dtype)

        np.asfarray = asfarray  # type: ignore[attr-defined]
    import motmetrics as mm  # type: ignore[import-untyped]

    return mm


def load_detections(path: Path) -> dict[int, Detections]:
    """MOT ``det.txt`` (frame, -1, x, y, w, h, score, ...) -> Detections per frame, class 0."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    frames, starts = np.unique(rows[:, 0].astype(np.int64), return_index=True)
    out = {}
    for frame, part in zip(frames, np.split(rows, starts[1:]), strict=True):
        xyxy = np.column_stack([part[:, 2:4], part[:, 2:4] + part[:, 4:6]])
        out[int(frame)] = Detections(
            xyxy.astype(np.float32), part[:, 6].astype(np.float32), np.zeros(len(part), np.int64)
        )
    return out


@dataclass
class TrackerRun:
    """A tracker's output over one sequence, in MOT result format, and its timings."""

    result: str
    frame_seconds: list[float] = field(default_factory=list)
    embed_seconds: list[float] = field(default_factory=list)


class _TimedEmbedder:
    """Wraps an embedder to tell the re-id model's share of DeepSORT's time apart."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def __call__(self, frame: Image, xyxy: FloatArray) -> FloatArray:
        start = time.perf_counter()
        out = self.inner(frame, xyxy)
        self.seconds.append(time.perf_counter() - start)
        return out


def run_tracker(
    tracker: Tracker,
    detections: dict[int, Detections],
    frames: Iterable[int],
    image: Callable[[int], Image] | None = None,
) -> TrackerRun:
    """Feed the frames in order; images are read outside the timed part."""
    lines, seconds = [], []
    for frame in frames:
        picture = image(frame) if image is not None else None
        dets = detections.get(frame, Detections.empty())
        start = time.perf_counter()
        tracked = tracker.update(dets, picture)
        seconds.append(time.perf_counter() - start)
        for box, score, _, track_id in tracked:
            x1, y1, x2, y2 = (float(v) for v in box)
            lines.append(
                f"{frame},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f}"
            )
    return TrackerRun("\n".join(lines) + "\n", seconds)


def make_tracker(kind: TrackerType, embedder: Embedder | None = None, **stage: int) -> Tracker:
    """A tracker as a Pipeline would configure it (``stage`` overrides TrackerStage fields)."""
    reid = {"reid": {"variant": "person-reid-retail-0288"}} if kind == "deepsort" else {}
    return create_tracker(TrackerStage.model_validate({"type": kind, **reid, **stage}), embedder)


def given(kind: TrackerType, detections: dict[int, Detections]) -> dict[int, Detections]:
    """What each tracker is fed: see ``MIN_SCORE``."""
    if kind == "bytetrack":
        return detections
    return {f: d[d.scores >= MIN_SCORE] for f, d in detections.items()}


def accumulate(gt_path: Path, result: str | Path, seqinfo: Path | None = None) -> Any:
    """motmetrics accumulator, matching at IoU >= 0.5 as the MOTChallenge devkit does.

    With ``seqinfo`` (MOT16/17 ground truth), only pedestrians flagged for evaluation count
    and hypotheses on distractors (static people, reflections, ...) are dropped first, as the
    MOTChallenge devkit does.
    """
    mm = motmetrics()
    gt = mm.io.loadtxt(gt_path, fmt="mot15-2D")
    hyp = mm.io.loadtxt(io.StringIO(result) if isinstance(result, str) else result)
    if seqinfo is not None:
        hyp = mm.preprocess.preprocessResult(hyp, gt, str(seqinfo))
        gt = gt[(gt["Confidence"] == 1) & (gt["ClassId"] == 1)]
    return mm.utils.compare_to_groundtruth(gt, hyp, "iou", distth=0.5)


def scores(accumulators: list[Any], names: list[str]) -> dict[str, dict[str, float]]:
    """METRICS per sequence and, with several, 'OVERALL' over all of them."""
    mm = motmetrics()
    summary = mm.metrics.create().compute_many(
        accumulators, metrics=list(METRICS), names=names, generate_overall=len(names) > 1
    )
    return {
        name: {metric: round(float(row[metric]), 4) for metric in METRICS}
        for name, row in summary.iterrows()
    }


def reference_check(assets: Path) -> dict[str, float]:
    """MOTA and IDF1 of the TUD-Campus reference result: checks the evaluation itself."""
    acc = accumulate(assets / TUD_CAMPUS / "gt/gt.txt", assets / REFERENCE_RESULT)
    return scores([acc], ["TUD-Campus"])["TUD-Campus"]


def timing(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "mean_ms": round(statistics.fmean(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
    }


def tud_campus(assets: Path, kind: TrackerType) -> tuple[dict[str, float], TrackerRun]:
    """SORT or ByteTrack on TUD-Campus public detections (the sequence has no images here)."""
    seq = assets / TUD_CAMPUS
    detections = load_detections(seq / "det/det.txt")
    gt_frames = np.loadtxt(seq / "gt/gt.txt", delimiter=",", ndmin=2)[:, 0]
    frames = range(1, int(gt_frames.max()) + 1)
    run = run_tracker(make_tracker(kind), given(kind, detections), frames)
    metrics = scores([accumulate(seq / "gt/gt.txt", run.result)], ["TUD-Campus"])["TUD-Campus"]
    return metrics, run


def mot17_frames(seq: Path) -> range:
    """The frames MOT17-mini ships images (and trimmed ground truth) for."""
    return range(1, len(list((seq / "img1").glob("*.jpg"))) + 1)


def read_frame(seq: Path) -> Callable[[int], Image]:
    def read(frame: int) -> Image:
        image = cv2.imread(str(seq / "img1" / f"{frame:06d}.jpg"))
        if image is None:
            raise FileNotFoundError(seq / "img1" / f"{frame:06d}.jpg")
        return image.astype(np.uint8)

    return read


def mot17_sequence(
    assets: Path, sequence: str, kind: TrackerType, embedder: Embedder | None = None, **stage: int
) -> TrackerRun:
    """One tracker over one MOT17-mini sequence (frames are read only for DeepSORT)."""
    seq = assets / MOT17_MINI / sequence
    timed = _TimedEmbedder(embedder) if embedder is not None else None
    run = run_tracker(
        make_tracker(kind, timed, **stage),
        given(kind, load_detections(seq / "det/det.txt")),
        mot17_frames(seq),
        read_frame(seq) if kind == "deepsort" else None,
    )
    run.embed_seconds = timed.seconds if timed is not None else []
    return run


def mot17_mini(
    assets: Path, kind: TrackerType, embedder: Embedder | None = None
) -> tuple[dict[str, dict[str, float]], list[TrackerRun]]:
    """A tracker over every MOT17-mini sequence: scores per sequence and overall."""
    runs, accs = [], []
    for sequence in MOT17_SEQUENCES:
        seq = assets / MOT17_MINI / sequence
        run = mot17_sequence(assets, sequence, kind, embedder)
        runs.append(run)
        accs.append(accumulate(seq / "gt/gt.txt", run.result, seq / "seqinfo.ini"))
    return scores(accs, list(MOT17_SEQUENCES)), runs


def benchmark(assets: Path) -> dict[str, Any]:
    """Every figure the results files report."""
    import onnxruntime  # type: ignore[import-untyped]

    result: dict[str, Any] = {
        "hardware": machine(),
        "software": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__,
            "motmetrics": motmetrics().__version__,
        },
        "tracker_settings": "TrackerStage defaults (max_age_frames 30, min_hits 3), each "
        f"algorithm's default thresholds; SORT/DeepSORT fed detections with score >= {MIN_SCORE}",
        "evaluation_check": {
            "dataset": "MOT15 TUD-Campus",
            "result": REFERENCE_RESULT,
            "published": PUBLISHED_REFERENCE,
            "measured": reference_check(assets),
        },
    }
    tud: dict[str, Any] = {}
    for kind in ("sort", "bytetrack"):
        metrics, run = tud_campus(assets, kind)
        tud[kind] = metrics | timing(run.frame_seconds)
    result["tud_campus"] = {
        "dataset": "MOT15 TUD-Campus, 71 frames, 640x480, 8 people",
        "detections": "MOT15 public detections det/det.txt (scores 0.50-1.00)",
        "notes": "Our copy of this sequence has no images, so DeepSORT cannot run on it. "
        "Detection scores start at 0.50: ByteTrack's low-score stage only sees the few below 0.6.",
        "trackers": tud,
    }
    embedder = ReidEmbedder(assets / REID_MODEL)
    mot17: dict[str, Any] = {}
    kinds: tuple[TrackerType, ...] = ("sort", "bytetrack", "deepsort")
    for kind in kinds:
        per_sequence, runs = mot17_mini(assets, kind, embedder if kind == "deepsort" else None)
        seconds = [s for run in runs for s in run.frame_seconds]
        entry: dict[str, Any] = per_sequence.pop("OVERALL") | timing(seconds)
        entry["per_sequence"] = per_sequence
        if kind == "deepsort":
            entry["reid"] = timing([s for run in runs for s in run.embed_seconds])
        mot17[kind] = entry
    result["mot17_mini"] = {
        "dataset": "MOT17-mini: frames 1-4..8 of MOT17-02/04/05/09/10 (FRCNN), 27 frames, "
        "ground truth trimmed to them",
        "detections": "MOT17 public FRCNN detections det/det.txt",
        "reid": "person_reid_retail_0288.onnx, ONNX Runtime CPU, one run per crop (batch 1 export)",
        "notes": "A smoke test: with min_hits 3 each person is missed in the first two of only "
        "4-8 frames, which dominates FN and MOTA; not comparable with published MOT17 figures.",
        "trackers": mot17,
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    """The human-readable version of ``benchmark``'s figures."""
    check = result["evaluation_check"]
    lines = [
        "# Tracking on MOTChallenge data",
        "",
        f"Hardware: {result['hardware']}. Trackers run on the CPU in one Python thread; "
        f"re-id with ONNX Runtime {result['software']['onnxruntime']} on the CPU. Scored with "
        f"py-motmetrics {result['software']['motmetrics']} (IoU >= 0.5).",
        f"Settings: {result['tracker_settings']}.",
        "",
        f"Evaluation check ({check['dataset']}, `{check['result']}`): IDF1 "
        f"{check['measured']['idf1']:.4f} (published {check['published']['idf1']}), MOTA "
        f"{check['measured']['mota']:.4f} (published {check['published']['mota']}).",
    ]
    for key in ("tud_campus", "mot17_mini"):
        block = result[key]
        lines += [
            "",
            f"## {block['dataset']}",
            "",
            f"Detections: {block['detections']}."
            + (f" Re-id: {block['reid']}." if "reid" in block else ""),
            "",
            block["notes"],
            "",
            "| tracker | MOTA | IDF1 | ID switches | FP | FN | ms/frame mean | ms/frame p95 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, m in block["trackers"].items():
            lines.append(
                f"| {kind} | {m['mota']:.4f} | {m['idf1']:.4f} | {int(m['num_switches'])} | "
                f"{int(m['num_false_positives'])} | {int(m['num_misses'])} | {m['mean_ms']:.3f} | "
                f"{m['p95_ms']:.3f} |"
            )
        lines += [
            f"\n{kind}'s time includes re-id: {m['reid']['mean_ms']:.1f} ms/frame mean, "
            f"{m['reid']['p95_ms']:.1f} ms p95."
            for kind, m in block["trackers"].items()
            if "reid" in m
        ]
    lines += ["", "Reproduce: `python -m benchmarks.tracking_mot`.", ""]
    return "\n".join(lines)


def main() -> None:
    result = benchmark(default_assets())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracking_mot.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "tracking_mot.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
