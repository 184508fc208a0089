"""The edge→cloud cascade end to end (issue 17 part 4), with real parts: mosquitto as the
uplink, the edge worker process (motion sampling, YOLOX-nano, ByteTrack, inline JPEG crops, an
MQTT output) on the shared parking-lot video, and the cloud ``kubevision-worker cascade``
process (MobileNetV2 on the crops, an MQTT output). The cloud worker is SIGKILLed mid-run and
started again: every edge event still comes out of the cloud, in order, its crop classified.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cascade_bandwidth import LABELS, VIDEOS, key, rig
from kubevision.worker.classifier import read_labels
from kubevision.worker.events import TrackEvent
from tests.assets import require
from tests.envtest.poll import wait_for
from tests.envtest.sinks import MOSQUITTO


def first_arrivals(events: list[TrackEvent]) -> list[TrackEvent]:
    """Each event once, at its first arrival (QoS 1 and a kill may repeat a few)."""
    seen, out = set(), []
    for event in events:
        if key(event) not in seen:
            seen.add(key(event))
            out.append(event)
    return out


def test_edge_crops_are_classified_in_the_cloud_and_a_killed_cloud_worker_loses_nothing(
    tmp_path: Path,
) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    labels = set(read_labels(require(LABELS)))
    with rig(tmp_path, {"parking": require(VIDEOS["parking"])}) as setup:

        def cloud() -> list[TrackEvent]:
            return [e for _, e in setup.cloud_seen.received()]

        def edge() -> list[TrackEvent]:
            return [e for _, e in setup.edge_seen.received()]

        wait_for(lambda: any(e.classification for e in cloud()), timeout=120, what="a first crop")
        setup.cloud.kill()
        before = len(edge())
        wait_for(
            lambda: sum(e.snapshot is not None for e in edge()[before:]) >= 2,
            timeout=90,
            what="two more crops sent while the cloud worker is down",
        )
        sent = edge()
        setup.start_cloud()
        wait_for(
            lambda: {key(e) for e in sent} <= {key(e) for e in cloud()},
            timeout=90,
            what="every edge event out of the restarted cloud worker",
        )
        out = first_arrivals(cloud())
    enriched = {key(e): e for e in out}
    assert [key(e) for e in out[: len(sent)]] == [key(e) for e in sent], "in edge order"
    for event in sent:
        result = enriched[key(event)]
        if event.snapshot is None:
            assert result.classification is None, "nothing to classify: passed through"
        else:
            assert event.snapshot.uri.startswith("data:image/jpeg;base64,")
            assert result.classification is not None, "every crop is classified"
            assert result.classification.label in labels
            assert 0 < result.classification.score <= 1
            assert result.snapshot is None, "the crop itself does not go further"
        assert result.published_time >= event.published_time
        unchanged = {"classification", "snapshot", "published_time"}
        assert result.model_dump(exclude=unchanged) == event.model_dump(exclude=unchanged)
    assert sum(e.snapshot is not None for e in sent) >= 3
