"""Tracking quality on MOTChallenge data, scored with py-motmetrics (``benchmarks.tracking_mot``).

(a) the evaluation reproduces py-motmetrics' published figures for TUD-Campus's reference result;
(b) SORT and ByteTrack on TUD-Campus public detections hold their MOTA/IDF1 baselines
    (``tracking_baselines.json``);
(c) DeepSORT with the person-reid-retail-0288 embedder: our TUD-Campus copy has no images, so it
    runs on the MOT17-mini frames and FRCNN public detections, where it must hold its baseline
    and keep one id per well-separated person.

Regenerate the figures in ``benchmarks/results/tracking_mot.{json,md}`` with
``python -m benchmarks.tracking_mot``; raise a baseline here when a change improves it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import tracking_mot as bench
from kubevision.worker.detections import FloatArray, box_iou
from kubevision.worker.trackers.reid import ReidEmbedder
from tests.assets import assets_dir, require

# py-motmetrics 1.4.0's MOT loader does `df[["X", "Y"]] -= (1, 1)`, which pandas deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")
log = logging.getLogger(__name__)
BASELINES = json.loads(Path(__file__).with_name("tracking_baselines.json").read_text())
TOLERANCE = BASELINES["tolerance"]


@pytest.fixture(scope="module")
def embedder() -> ReidEmbedder:
    return ReidEmbedder(require(bench.REID_MODEL))


def check_baseline(dataset: str, kind: str, metrics: dict[str, float]) -> None:
    """Fail when MOTA or IDF1 dropped more than the tolerance below the stored baseline."""
    log.info("%s %s: %s", dataset, kind, metrics)
    baseline = BASELINES[dataset][kind]
    for metric in ("mota", "idf1"):
        assert metrics[metric] >= baseline[metric] - TOLERANCE, (
            f"{kind} {metric} on {dataset} fell to {metrics[metric]:.4f} "
            f"from the baseline {baseline[metric]:.4f} (tolerance {TOLERANCE})"
        )


def test_evaluation_reproduces_published_motmetrics_figures() -> None:
    require(bench.REFERENCE_RESULT)
    require(f"{bench.TUD_CAMPUS}/gt/gt.txt")
    measured = bench.reference_check(assets_dir())
    for metric, published in bench.PUBLISHED_REFERENCE.items():
        assert measured[metric] == pytest.approx(published, abs=5e-4), metric


@pytest.mark.parametrize("kind", ["sort", "bytetrack"])
def test_tud_campus_public_detections_hold_baseline(kind: bench.TrackerType) -> None:
    require(f"{bench.TUD_CAMPUS}/det/det.txt")
    require(f"{bench.TUD_CAMPUS}/gt/gt.txt")
    metrics, run = bench.tud_campus(assets_dir(), kind)
    log.info("%s per-frame time: %s", kind, bench.timing(run.frame_seconds))
    check_baseline("MOT15/TUD-Campus", kind, metrics)


def mot17_sequences() -> list[str]:
    for sequence in bench.MOT17_SEQUENCES:
        require(f"{bench.MOT17_MINI}/{sequence}")
    return list(bench.MOT17_SEQUENCES)


@pytest.mark.parametrize("kind", ["sort", "bytetrack", "deepsort"])
def test_mot17_mini_holds_baseline(kind: bench.TrackerType, request: pytest.FixtureRequest) -> None:
    mot17_sequences()
    reid = request.getfixturevalue("embedder") if kind == "deepsort" else None
    per_sequence, _ = bench.mot17_mini(assets_dir(), kind, reid)
    check_baseline("MOT17-mini", kind, per_sequence["OVERALL"])


def separated_people(gt: np.ndarray[Any, Any], frames: int) -> set[int]:
    """Pedestrians in every frame whose box never touches another evaluated pedestrian's."""
    people = gt[(gt[:, 6] == 1) & (gt[:, 7] == 1)]
    xyxy = np.column_stack([people[:, 2:4], people[:, 2:4] + people[:, 4:6]]).astype(np.float32)
    touching: set[int] = set()
    for frame in np.unique(people[:, 0]):
        rows = np.flatnonzero(people[:, 0] == frame)
        iou = box_iou(xyxy[rows], xyxy[rows])
        np.fill_diagonal(iou, 0)
        touching |= set(people[rows[iou.max(axis=1) > 0], 1].astype(int))
    ids, counts = np.unique(people[:, 1].astype(int), return_counts=True)
    return {int(i) for i in ids[counts == frames]} - touching


def test_deepsort_keeps_one_id_per_well_separated_person(embedder: ReidEmbedder) -> None:
    """min_hits=1 so every frame counts; a separated person may be missed, never re-labelled."""
    tracked = separated = 0
    for sequence in mot17_sequences():
        seq = assets_dir() / bench.MOT17_MINI / sequence
        run = bench.mot17_sequence(assets_dir(), sequence, "deepsort", embedder, min_hits=1)
        events = bench.accumulate(seq / "gt/gt.txt", run.result, seq / "seqinfo.ini").mot_events
        matched = events[events["Type"].isin(["MATCH", "SWITCH"])]
        people = separated_people(
            np.loadtxt(seq / "gt/gt.txt", delimiter=","), len(bench.mot17_frames(seq))
        )
        for person in people:
            ids = set(matched.loc[matched["OId"] == person, "HId"])
            assert len(ids) <= 1, f"{sequence}: person {person} got track ids {sorted(ids)}"
            tracked += len(ids)
        separated += len(people)
    log.info("DeepSORT tracked %d of %d well-separated people", tracked, separated)
    assert separated >= 20
    assert tracked >= 0.6 * separated


def visible_people(seq: Path, frame: int) -> tuple[np.ndarray[Any, Any], FloatArray]:
    """Ids and xyxy boxes of the evaluated pedestrians at least 70% visible in a frame."""
    gt = np.loadtxt(seq / "gt/gt.txt", delimiter=",")
    gt = gt[(gt[:, 0] == frame) & (gt[:, 6] == 1) & (gt[:, 7] == 1) & (gt[:, 8] > 0.7)]
    return gt[:, 1], np.column_stack([gt[:, 2:4], gt[:, 2:4] + gt[:, 4:6]]).astype(np.float32)


def test_reid_embedder_batch_equals_one_by_one_and_is_normalised(embedder: ReidEmbedder) -> None:
    seq = require(f"{bench.MOT17_MINI}/MOT17-02-FRCNN")
    _, boxes = visible_people(seq, 1)
    frame = bench.read_frame(seq)(1)
    batch = embedder(frame, boxes)
    assert batch.shape == (len(boxes), 256)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.concatenate([embedder(frame, boxes[i : i + 1]) for i in range(len(boxes))])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


def test_reid_embedder_recognises_people_in_the_next_frame(embedder: ReidEmbedder) -> None:
    """Each mostly visible person in frame 1 is nearest to themself in frame 2 (all MOT17-mini)."""
    people = 0
    for sequence in mot17_sequences():
        seq = assets_dir() / bench.MOT17_MINI / sequence
        (ids_1, boxes_1), (ids_2, boxes_2) = visible_people(seq, 1), visible_people(seq, 2)
        both_1, both_2 = np.isin(ids_1, ids_2), np.isin(ids_2, ids_1)
        emb_1 = embedder(bench.read_frame(seq)(1), boxes_1[both_1])
        emb_2 = embedder(bench.read_frame(seq)(2), boxes_2[both_2])
        nearest = ids_2[both_2][np.argmax(emb_1 @ emb_2.T, axis=1)]
        np.testing.assert_array_equal(nearest, ids_1[both_1], err_msg=sequence)
        people += int(both_1.sum())
    log.info("re-id: each of %d people is nearest to themself in the next frame", people)
    assert people >= 40
