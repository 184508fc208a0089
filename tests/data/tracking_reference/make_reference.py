"""Run the reference trackers on our detections and store their output (the parity golden files).

The references are the authors' code as packaged on PyPI, unpacked outside this repository (we
do not copy it in, nor depend on it): ``sort-track`` 0.0.8 (abewley/sort's ``sort.py``),
``bytetrack`` 0.0.1 (ifzhang/ByteTrack's ``yolox/tracker``, renamed ``bytetrack``) and
``deepsort`` 0.0.5 (nwojke/deep_sort's ``deep_sort/``); README.md beside this file says what
each package changes and how that is handled here. Each runs with its published configuration
on exactly the detections (and, for DeepSORT, the appearance features) that
``tests/quality/test_tracking_mot.py`` gives ours:

    REF=$(mktemp -d)
    pip download --no-deps --no-build-isolation -d $REF \
        sort-track==0.0.8 bytetrack==0.0.1 deepsort==0.0.5
    for f in $REF/*.tar.gz; do tar xzf $f -C $REF; done
    pip install --no-deps --target $REF/lib lap==0.5.13 cython-bbox==0.1.5
    PYTHONPATH=. python tests/data/tracking_reference/make_reference.py --packages $REF

(``--no-build-isolation``: bytetrack's setup.py imports torch just to be read.)
(ByteTrack's ``matching`` imports ``lap`` and ``cython_bbox``; ``byte_tracker`` imports torch
and ``matching`` cv2, which the dev install has.) ``--features`` first recomputes the
DeepSORT input features with our re-id embedder; ``--out`` writes somewhere else, to compare.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks import tracking_mot as bench

HERE = Path(__file__).parent
FEATURES = HERE / "mot17_mini_reid.npz"
SORT_CONFIG = {"max_age": 1, "min_hits": 3, "iou_threshold": 0.3}
"""sort.py's command-line defaults, the configuration of the SORT paper's results."""
BYTETRACK_CONFIG = {"track_thresh": 0.6, "track_buffer": 30, "match_thresh": 0.9, "mot20": False}
"""tools/track.py's defaults for MOT17 (the tracker alone: its output filter on box area and
aspect ratio belongs to the evaluation script, not the tracker, and is not applied)."""
DEEPSORT_CONFIG = {
    "min_confidence": 0.3,
    "nms_max_overlap": 1.0,
    "min_detection_height": 0,
    "max_cosine_distance": 0.2,
    "nn_budget": 100,
}
"""evaluate_motchallenge.py's defaults ("0.3 to reproduce results in the paper")."""
DEEPSORT_TRACKER = {"max_age": 70, "n_init": 3, "max_iou_distance": 0.7}
"""deep_sort's ``Tracker`` defaults (the packaged ``DeepSortTracker`` defaults max_age to 30)."""
PACKAGES = {
    "sort": "sort-track-0.0.8",
    "bytetrack": "bytetrack-0.0.1",
    "deepsort": "deepsort-0.0.5",
}
"""The reference packages' unpacked sdist folders."""

Rows = npt.NDArray[np.float64]


def sequences(assets: Path) -> dict[str, tuple[Path, int, float]]:
    """name -> (det.txt, last frame, frame rate) for every sequence the motion trackers run on."""
    out = {"TUD-Campus": (assets / bench.TUD_CAMPUS / "det/det.txt", 71, 25.0)}
    for name in bench.MOT17_SEQUENCES:
        seq = assets / bench.MOT17_MINI / name
        info = bench.seqinfo(seq)
        out[name] = (seq / "det/det.txt", int(info["seqLength"]), float(info["frameRate"]))
    return out


def frames_of(rows: Rows, last: int) -> list[Rows]:
    """det.txt rows per frame 1..last (empty arrays for frames without detections)."""
    return [rows[rows[:, 0] == frame] for frame in range(1, last + 1)]


def line(frame: int, track_id: int, x: float, y: float, w: float, h: float) -> str:
    return f"{frame},{track_id},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,-1,-1,-1"


def run_sort(module: ModuleType, rows: Rows, last: int) -> list[str]:
    """sort.py's main loop: [x1, y1, x2, y2, score] per frame (sort-track also wants a class
    column), the Kalman boxes it returns."""
    tracker = module.SortTracker(**SORT_CONFIG)
    out = []
    for frame, part in enumerate(frames_of(rows, last), start=1):
        dets = np.column_stack([part[:, 2:7], np.zeros(len(part))])
        dets[:, 2:4] += dets[:, 0:2]
        for d in tracker.update(dets, None):
            out.append(line(frame, int(d[4]), d[0], d[1], d[2] - d[0], d[3] - d[1]))
    return out


def run_bytetrack(module: ModuleType, rows: Rows, last: int, frame_rate: float) -> list[str]:
    """BYTETracker as its MOT evaluator drives it, scale 1 (boxes are already in pixels)."""
    tracker = module.BYTETracker(argparse.Namespace(**BYTETRACK_CONFIG), frame_rate=frame_rate)
    out = []
    for frame, part in enumerate(frames_of(rows, last), start=1):
        dets = np.column_stack([part[:, 2:4], part[:, 2:4] + part[:, 4:6], part[:, 6]])
        for track in tracker.update(dets.reshape(-1, 5), (1, 1), (1, 1)):
            x, y, w, h = track.tlwh
            out.append(line(frame, track.track_id, x, y, w, h))
    return out


def run_deepsort(modules: dict[str, ModuleType], matrix: Rows, last: int) -> list[str]:
    """deep_sort_app.run's frame loop over a detection matrix in its .npy layout.

    deep_sort_app also runs non-maximum suppression at ``nms_max_overlap``; at the published
    1.0 it removes nothing (a box's overlap ratio with another is at most 1), so it is left out.
    """
    tracker = modules["tracker"].DeepSortTracker(
        metric_name="cosine",
        max_dist=DEEPSORT_CONFIG["max_cosine_distance"],
        nn_budget=DEEPSORT_CONFIG["nn_budget"],
        **DEEPSORT_TRACKER,
    )
    detection = modules["detection"].Detection
    out = []
    for frame in range(1, last + 1):
        part = matrix[matrix[:, 0].astype(np.int64) == frame]
        dets = [detection(r[2:6], r[6], r[10:]) for r in part]
        dets = [d for d in dets if d.confidence >= DEEPSORT_CONFIG["min_confidence"]]
        tracker.predict()
        tracker.update(dets)
        for track in tracker.tracks:
            if track.is_confirmed() and track.time_since_update <= 1:
                x, y, w, h = track.to_tlwh()
                out.append(line(frame, track.track_id, x, y, w, h))
    return out


def make_features(assets: Path) -> None:
    """Our re-id embeddings of every detection in MOT17-mini's image frames (DeepSORT's input)."""
    from kubevision.worker.trackers.reid import ReidEmbedder

    embedder = ReidEmbedder(assets / bench.REID_MODEL)
    arrays: dict[str, Any] = {}
    for name in bench.MOT17_SEQUENCES:
        seq = assets / bench.MOT17_MINI / name
        rows = np.loadtxt(seq / "det/det.txt", delimiter=",", ndmin=2)
        frames = bench.mot17_frames(seq)
        rows = rows[rows[:, 0] <= frames[-1]]
        read = bench.read_frame(seq)
        parts = []
        for frame in frames:
            part = rows[rows[:, 0] == frame]
            xyxy = np.column_stack([part[:, 2:4], part[:, 2:4] + part[:, 4:6]])
            parts.append(np.hstack([part, embedder(read(frame), xyxy.astype(np.float32))]))
        arrays[name] = np.concatenate(parts).astype(np.float32)
    np.savez_compressed(FEATURES, **arrays)


def load_features() -> dict[str, Rows]:
    """Sequence -> deep_sort .npy-style matrix: det.txt columns 0-9, then the embedding."""
    with np.load(FEATURES) as data:
        return {name: data[name].astype(np.float64) for name in data.files}


def import_packaged(packages: Path) -> dict[str, ModuleType]:
    """The three references' tracker modules from the unpacked sdists under ``packages``."""
    sys.path[:0] = [str(packages / d) for d in ("lib", *PACKAGES.values())]
    # bytetrack/__init__.py sets up YOLOX training (loguru, thop, ...); only its tracker runs
    # here, so the package is entered without its __init__
    shell = ModuleType("bytetrack")
    shell.__path__ = [str(packages / PACKAGES["bytetrack"] / "bytetrack")]
    sys.modules["bytetrack"] = shell
    names = {
        "sort": "sort.tracker",
        "bytetrack": "bytetrack.tracker.byte_tracker",
        "tracker": "deepsort.tracker",
        "detection": "deepsort.detection",
    }
    modules = {key: importlib.import_module(name) for key, name in names.items()}
    assignment = importlib.import_module("deepsort.linear_assignment")
    assignment.linear_assignment = pairs_assignment  # type: ignore[attr-defined]
    return modules


def pairs_assignment(cost: Rows) -> npt.NDArray[np.int64]:
    """deep_sort's ``linear_assignment``: matched (row, column) pairs as a (K, 2) array.

    deep_sort was written against sklearn's ``linear_assignment_.linear_assignment``, which
    returned that; sklearn removed it, and the ``deepsort`` 0.0.5 package imports scipy's
    ``linear_sum_assignment`` under the old name but still indexes its (rows, columns) tuple as
    the old array (a TypeError at the first match). This restores the original's contract:
    the same Hungarian solution, in the shape the calling code reads.
    """
    from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

    pairs: npt.NDArray[np.int64] = np.transpose(np.asarray(linear_sum_assignment(cost)))
    return pairs


def write(out_dir: Path, tracker: str, sequence: str, lines: list[str]) -> None:
    (out_dir / tracker).mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / tracker / f"{sequence}.txt.gz", "wt") as out:
        out.write("\n".join(lines) + "\n")


def numpy_aliases() -> None:
    """2021 code under NumPy 2: ByteTrack spells float64 ``np.float``, removed in NumPy 1.24."""
    aliases: dict[str, Any] = {"float": float, "int": int}
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--packages", type=Path, required=True, help="folder of the unpacked reference sdists"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    parser.add_argument("--features", action="store_true", help="recompute DeepSORT's input")
    args = parser.parse_args()
    assets = bench.default_assets()
    if args.features:
        make_features(assets)
    numpy_aliases()
    modules = import_packaged(args.packages)
    for name, (det_file, last, fps) in sequences(assets).items():
        rows = np.loadtxt(det_file, delimiter=",", ndmin=2)
        write(args.out, "sort", name, run_sort(modules["sort"], rows, last))
        write(args.out, "bytetrack", name, run_bytetrack(modules["bytetrack"], rows, last, fps))
    for name, matrix in load_features().items():
        last = len(bench.mot17_frames(assets / bench.MOT17_MINI / name))
        write(args.out, "deepsort", name, run_deepsort(modules, matrix, last))


if __name__ == "__main__":
    main()
