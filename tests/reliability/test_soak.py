"""Eight streams with camera churn (benchmarks/reliability/soak.py, small size): threads and
FDs return to the baseline, and removed cameras leave no state and no metric series."""

from __future__ import annotations

from benchmarks.reliability import soak


def test_soak_with_camera_churn_leaks_no_threads_fds_state_or_series() -> None:
    figures = soak.measure(soak.SMALL)
    baseline, end = figures["baseline"], figures["end"]
    assert figures["churn_steps"] >= 5, "the camera set changed under load"
    assert figures["events"].get("track.started", 0) > 0
    assert figures["events"].get("track.ended", 0) > 0, "tracks ended as well as started"
    # measured once retired streams wound down (soak._settled polls with a deadline)
    assert end["threads"] <= baseline["threads"], (baseline, end)
    assert end["fds"] <= baseline["fds"], (baseline, end)
    # only the 8 current cameras hold state; every label series names a current camera
    assert end["cameras"] == soak.STREAMS
    assert end["batcher_streams"] <= soak.STREAMS
    assert end["tracker_cameras"] == soak.STREAMS, "removed cameras left tracks in a table"
    assert figures["series_cameras_max"] <= soak.STREAMS + 2, "removed cameras' series linger"
    assert figures["camera_series"]["max"] <= 2 * figures["camera_series"]["first"], figures[
        "camera_series"
    ]
