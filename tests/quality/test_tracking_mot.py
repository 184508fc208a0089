"""Tracking quality on MOTChallenge data (``benchmarks.tracking_mot``), against the references.

(a) the evaluation reproduces py-motmetrics' published MOTA/IDF1 for TUD-Campus's reference
    result, and TrackEval's own MOTChallenge evaluation (HOTA, DetA, AssA, MOTA, IDF1) of it
    and of MOT17 results (where the devkit's preprocessing matters);
(b) parity: each tracker, configured like its reference implementation, reproduces the
    reference's own output (``tests/data/tracking_reference``, made by running the authors'
    code, as PyPI packages it, on the same detections): within 0.005 MOTA/IDF1 against ground
    truth on TUD-Campus and MOT17-mini, and agreeing with the reference's output (>= 0.995
    MOTA/IDF1 with it as ground truth) over the five MOT17 sequences at full length;
(c) as a Pipeline runs them (TrackerStage defaults) each tracker scores at least its reference;
(d) the chain with the catalog's detectors: ByteTrack with the detector's own thresholds
    (``spec.tracking``) tracks far better than with the reference's and stays within its
    recorded distance of SORT on the same detections, and the catalog's thresholds are what
    the calibration tool measures;
(e) the re-id embedder: batched = one by one, dynamic-batch export = the shipped one, and
    people are recognised in the next frame with either re-id model.

Figures: ``make bench-tracking`` -> benchmarks/results/tracking_mot.{json,md}; raise a baseline
in ``tracking_baselines.json`` when a change improves it.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import hota
from benchmarks import tracking_mot as bench
from kubevision.api.modelvariant import TrackingThresholds
from kubevision.api.pipeline import TrackerStage
from kubevision.worker.detections import FloatArray
from kubevision.worker.trackers import ByteTrack, ByteTrackSettings, ByteTrackTable, track_batch
from kubevision.worker.trackers.base import iou
from kubevision.worker.trackers.reid import ReidEmbedder
from tests.assets import assets_dir, require

# py-motmetrics 1.4.0's MOT loader does `df[["X", "Y"]] -= (1, 1)`, which pandas deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")
log = logging.getLogger(__name__)
BASELINES = json.loads(Path(__file__).with_name("tracking_baselines.json").read_text())
TOLERANCE = BASELINES["tolerance"]
PARITY = 0.005
"""The issue's bound on |ours - reference| in MOTA and IDF1."""
MOTION: list[bench.TrackerType] = ["sort", "bytetrack"]
SEQUENCES = ["TUD-Campus", *bench.MOT17_SEQUENCES]


@pytest.fixture(scope="module")
def public() -> dict[str, bench.PublicSequence]:
    require(bench.TUD_CAMPUS)
    require(bench.MOT17_MINI)
    return {seq.name: seq for seq in bench.public_sequences(assets_dir())}


@pytest.fixture(scope="module")
def embedder() -> ReidEmbedder:
    return ReidEmbedder(require(bench.REID_MODEL), ("CPUExecutionProvider",))


def check_baseline(dataset: str, kind: str, metrics: dict[str, float]) -> None:
    """Fail when MOTA or IDF1 dropped more than the tolerance below the stored baseline."""
    log.info("%s %s: %s", dataset, kind, metrics)
    baseline = BASELINES[dataset][kind]
    for metric in ("mota", "idf1"):
        assert metrics[metric] >= baseline[metric] - TOLERANCE, (
            f"{kind} {metric} on {dataset} fell to {metrics[metric]:.4f} "
            f"from the baseline {baseline[metric]:.4f} (tolerance {TOLERANCE})"
        )


def test_evaluation_reproduces_published_figures() -> None:
    require(bench.REFERENCE_RESULT)
    measured = bench.reference_check(assets_dir())
    for metric, published in bench.PUBLISHED_REFERENCE.items():
        assert measured[metric] == pytest.approx(published, abs=5e-4), metric
    trackeval = bench.trackeval_check(assets_dir())
    for metric in ("hota", "deta", "assa", "mota", "idf1"):
        assert measured[metric] == pytest.approx(trackeval[metric], abs=5e-4), metric


@pytest.mark.parametrize("kind", ["sort", "deepsort"])
@pytest.mark.parametrize("sequence", bench.MOT17_SEQUENCES)
def test_evaluation_equals_trackevals_on_mot17(kind: str, sequence: str) -> None:
    """MOT17 ground truth has distractors (static people, reflections) whose matches are dropped
    before scoring; py-motmetrics' preprocessing plus TrackEval's HOTA must give TrackEval's."""
    seq = require(f"{bench.MOT17_MINI}/{sequence}")
    frames = len(bench.mot17_frames(seq))
    lines = bench.reference_output(kind, sequence).splitlines()
    result = "".join(f"{line}\n" for line in lines if int(line.split(",")[0]) <= frames)
    ours = bench.evaluate([(sequence, seq / "gt/gt.txt", result, seq / "seqinfo.ini")])[sequence]
    theirs = hota.mot_challenge(seq / "gt/gt.txt", result, frames, "MOT17")
    for metric in ("hota", "deta", "assa", "mota", "idf1"):
        assert ours[metric] == pytest.approx(theirs[metric], abs=5e-4), metric


@pytest.mark.parametrize("sequence", SEQUENCES)
@pytest.mark.parametrize("kind", MOTION)
def test_motion_tracker_reproduces_its_reference(
    kind: bench.TrackerType, sequence: str, public: dict[str, bench.PublicSequence]
) -> None:
    seq = public[sequence]
    ours = bench.public_run(kind, seq, "reference").result
    agreement = bench.agreement(kind, sequence, ours)
    log.info("%s on %s agrees with the reference: %s", kind, sequence, agreement)
    assert agreement["mota"] >= 1 - PARITY
    assert agreement["idf1"] >= 1 - PARITY
    if seq.gt is not None:
        ref = bench.evaluate([(sequence, seq.gt, bench.reference_output(kind, sequence), None)])
        mine = bench.evaluate([(sequence, seq.gt, ours, None)])
        for metric in ("mota", "idf1"):
            assert mine[sequence][metric] == pytest.approx(ref[sequence][metric], abs=PARITY)


def test_a_worker_batch_of_cameras_tracks_each_as_its_reference_does(
    public: dict[str, bench.PublicSequence],
) -> None:
    """The six public sequences as six cameras of one worker, batched as frames arrive (each
    camera missing a batch now and then, in varying order): cameras of equal settings share a
    ByteTrack table (the 30 FPS ones; max_age follows the frame rate) and every camera's output
    equals the reference's for its sequence."""
    tables: dict[ByteTrackSettings, ByteTrackTable] = {}
    cams = {}
    for name, seq in public.items():
        settings = bench.bytetrack_reference(seq.fps)
        cams[name] = ByteTrack(tables.setdefault(settings, ByteTrackTable(settings)))
    assert len(tables) < len(cams)
    frames = {name: bench.per_frame(seq.detections, seq.frames) for name, seq in public.items()}
    lines: dict[str, list[str]] = {name: [] for name in frames}
    rng = np.random.default_rng(3)
    position = dict.fromkeys(frames, 0)
    while any(position[n] < len(frames[n]) for n in frames):
        due = [n for n in rng.permutation(list(frames)) if position[n] < len(frames[n])]
        due = [n for n in due if rng.random() < 0.8] or due[:1]
        work = [(cams[n], frames[n][position[n]], None) for n in due]
        for name, tracked in zip(due, track_batch(work), strict=True):
            position[name] += 1
            lines[name] += bench.mot_lines(position[name], tracked)
    for name in frames:
        agreement = bench.agreement("bytetrack", name, "\n".join(lines[name]) + "\n")
        assert (agreement["mota"], agreement["idf1"]) == (1.0, 1.0), (name, agreement)


def deepsort_runs(configured: str, **stage: int) -> list[tuple[str, Path, str, Path]]:
    """DeepSORT over MOT17-mini's frames with the stored features: (name, gt, result, seqinfo);
    ``stage`` overrides TrackerStage fields of the Pipeline-configured one."""
    out = []
    for name, matrix in bench.reid_features().items():
        seq = require(f"{bench.MOT17_MINI}/{name}")
        frames = bench.per_frame(matrix, len(bench.mot17_frames(seq)), bench.DEEPSORT_MIN_SCORE)
        tracker = (
            bench.reference_configured("deepsort")
            if configured == "reference"
            else bench.pipeline_configured("deepsort", None, None, **stage)
        )
        result = bench.run_tracker(tracker, frames).result
        out.append((name, seq / "gt/gt.txt", result, seq / "seqinfo.ini"))
    return out


def test_deepsort_reproduces_its_reference() -> None:
    runs = deepsort_runs("reference")
    for name, _, result, _ in runs:
        agreement = bench.agreement("deepsort", name, result)
        assert agreement["mota"] >= 1 - PARITY, name
        assert agreement["idf1"] >= 1 - PARITY, name
    reference = [(n, gt, bench.reference_output("deepsort", n), i) for n, gt, _, i in runs]
    ref, mine = bench.evaluate(reference)["OVERALL"], bench.evaluate(runs)["OVERALL"]
    for metric in ("mota", "idf1"):
        assert mine[metric] == pytest.approx(ref[metric], abs=PARITY)


@pytest.mark.parametrize("kind", MOTION)
def test_pipeline_defaults_score_at_least_the_reference_on_tud_campus(
    kind: bench.TrackerType, public: dict[str, bench.PublicSequence]
) -> None:
    seq = public["TUD-Campus"]
    assert seq.gt is not None
    ref = bench.evaluate([("tud", seq.gt, bench.reference_output(kind, "TUD-Campus"), None)])
    ours = bench.evaluate([("tud", seq.gt, bench.public_run(kind, seq, "pipeline").result, None)])
    check_baseline("MOT15/TUD-Campus", kind, ours["tud"])
    for metric in ("mota", "idf1"):
        assert ours["tud"][metric] >= ref["tud"][metric], metric


def test_deepsort_pipeline_defaults_score_at_least_the_reference() -> None:
    ours = bench.evaluate(deepsort_runs("pipeline"))["OVERALL"]
    check_baseline("MOT17-mini", "deepsort", ours)
    reference = [
        (n, gt, bench.reference_output("deepsort", n), i)
        for n, gt, _, i in deepsort_runs("pipeline")
    ]
    ref = bench.evaluate(reference)["OVERALL"]
    for metric in ("mota", "idf1"):
        assert ours[metric] >= ref[metric], metric


def test_deepsort_embeds_a_third_of_mot17s_detections_with_the_same_scores() -> None:
    """reidRefreshFrames' point: on MOT17's full-length public detections the default embeds
    under 35 % of them (every one at 1), and on MOT17-mini, with its stored features, it scores
    what embedding every detection scores."""
    require(bench.MOT17_MINI)
    share = bench.reid_share(assets_dir(), (1, TrackerStage().reid_refresh_frames))
    assert share["1"]["share"] == 1.0
    assert share[str(TrackerStage().reid_refresh_frames)]["share"] < 0.35
    every = bench.evaluate(deepsort_runs("pipeline", reidRefreshFrames=1))["OVERALL"]
    default = bench.evaluate(deepsort_runs("pipeline"))["OVERALL"]
    for metric in ("mota", "idf1", "hota"):
        assert default[metric] >= every[metric] - PARITY, metric


def detector_thresholds(name: str) -> TrackingThresholds:
    """YOLOX-nano's from the catalog manifest; YOLOv8n's (not in the catalog: AGPL) as the
    calibration tool measured them."""
    if name == "yolox-nano":
        return bench.catalog_thresholds()
    return TrackingThresholds.model_validate(BASELINES["detector thresholds"][name])


@pytest.mark.parametrize("name", list(bench.DETECTORS))
def test_chain_with_the_detectors_thresholds(name: str) -> None:
    """The issue's failure, ByteTrack's 0.6/0.7 start few tracks from a nano detector, is gone:
    with the detector's own thresholds it tracks far better, and against SORT on the same
    detections it is not further behind than ``tracking_baselines.json`` records (MOT17-mini's
    4-8 annotated frames mostly measure how fast tracks start, where SORT reports every
    detection of a stream's first frames)."""
    require(bench.DETECTORS[name][0])
    detections = bench.chain_detections(assets_dir(), name)
    thresholds = detector_thresholds(name)

    def chain(kind: bench.TrackerType, variant: TrackingThresholds | None) -> dict[str, float]:
        make = partial(bench.pipeline_configured, kind, None, variant)
        return bench.chain_scores(assets_dir(), detections, make)

    fitted, reference = chain("bytetrack", thresholds), chain("bytetrack", None)
    sort = chain("sort", thresholds)
    log.info("%s chain: fitted %s, reference thresholds %s, sort %s", name, fitted, reference, sort)
    check_baseline("MOT17-mini full chain", name, fitted)
    for metric in ("mota", "idf1"):
        assert fitted[metric] >= 1.5 * reference[metric], metric
    assert fitted["hota"] >= reference["hota"] + 0.05
    behind = BASELINES["MOT17-mini full chain"]["bytetrack minus sort"][name]
    for metric in ("mota", "idf1", "hota"):
        assert fitted[metric] - sort[metric] >= behind[metric] - TOLERANCE, (
            f"{name}: ByteTrack {metric} {fitted[metric]:.4f} vs SORT {sort[metric]:.4f}, "
            f"more behind than the baseline {behind[metric]:+.4f}"
        )


def test_catalog_thresholds_are_what_the_calibration_tool_measures() -> None:
    require("coco128/images/val2017")
    assert bench.fitted_thresholds(assets_dir(), "yolox-nano").model_dump(
        exclude={"calibration"}
    ) == bench.catalog_thresholds().model_dump(exclude={"calibration"})


def separated_people(gt: np.ndarray[Any, Any], frames: int) -> set[int]:
    """Pedestrians in every frame whose box never touches another evaluated pedestrian's."""
    people = gt[(gt[:, 6] == 1) & (gt[:, 7] == 1)]
    xyxy = np.column_stack([people[:, 2:4], people[:, 2:4] + people[:, 4:6]])
    touching: set[int] = set()
    for frame in np.unique(people[:, 0]):
        rows = np.flatnonzero(people[:, 0] == frame)
        overlap = iou(xyxy[rows], xyxy[rows])
        np.fill_diagonal(overlap, 0)
        touching |= set(people[rows[overlap.max(axis=1) > 0], 1].astype(int))
    ids, counts = np.unique(people[:, 1].astype(int), return_counts=True)
    return {int(i) for i in ids[counts == frames]} - touching


def test_deepsort_keeps_one_id_per_well_separated_person() -> None:
    """min_hits=1 so every frame counts; a separated person may be missed, never re-labelled."""
    tracked = separated = 0
    for name, matrix in bench.reid_features().items():
        seq = require(f"{bench.MOT17_MINI}/{name}")
        frames = bench.per_frame(matrix, len(bench.mot17_frames(seq)), bench.DEEPSORT_MIN_SCORE)
        result = bench.run_tracker(bench.pipeline_configured("deepsort", minHits=1), frames).result
        events = bench.accumulate(seq / "gt/gt.txt", result, seq / "seqinfo.ini").mot_events
        matched = events[events["Type"].isin(["MATCH", "SWITCH"])]
        people = separated_people(
            np.loadtxt(seq / "gt/gt.txt", delimiter=","), len(bench.mot17_frames(seq))
        )
        for person in people:
            ids = set(matched.loc[matched["OId"] == person, "HId"])
            assert len(ids) <= 1, f"{name}: person {person} got track ids {sorted(ids)}"
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


def test_reid_embedder_batch_equals_one_by_one_and_is_normalised(
    embedder: ReidEmbedder, tmp_path: Path
) -> None:
    seq = require(f"{bench.MOT17_MINI}/MOT17-02-FRCNN")
    _, boxes = visible_people(seq, 1)
    frame = bench.read_frame(seq)(1)
    batch = embedder(frame, boxes)
    assert batch.shape == (len(boxes), 256)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.concatenate([embedder(frame, boxes[i : i + 1]) for i in range(len(boxes))])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    dynamic = ReidEmbedder(bench.dynamic_reid(tmp_path, assets_dir()), ("CPUExecutionProvider",))
    assert dynamic._batch is None  # all crops of a frame in one call
    cosine = (dynamic(frame, boxes) * batch).sum(axis=1)
    assert cosine.min() > 0.999


@pytest.mark.parametrize("model", [bench.REID_MODEL, bench.OSNET_MODEL])
def test_reid_embedder_recognises_people_in_the_next_frame(model: str) -> None:
    """Each mostly visible person in frame 1 is nearest to themself in frame 2 (all MOT17-mini)."""
    embedder = ReidEmbedder(require(model), ("CPUExecutionProvider",))
    people = 0
    for sequence in bench.MOT17_SEQUENCES:
        seq = require(f"{bench.MOT17_MINI}/{sequence}")
        (ids_1, boxes_1), (ids_2, boxes_2) = visible_people(seq, 1), visible_people(seq, 2)
        both_1, both_2 = np.isin(ids_1, ids_2), np.isin(ids_2, ids_1)
        emb_1 = embedder(bench.read_frame(seq)(1), boxes_1[both_1])
        emb_2 = embedder(bench.read_frame(seq)(2), boxes_2[both_2])
        nearest = ids_2[both_2][np.argmax(emb_1 @ emb_2.T, axis=1)]
        np.testing.assert_array_equal(nearest, ids_1[both_1], err_msg=sequence)
        people += int(both_1.sum())
    log.info("re-id %s: each of %d people is nearest to themself in the next frame", model, people)
    assert people >= 40
