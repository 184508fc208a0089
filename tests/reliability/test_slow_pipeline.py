"""A 30 FPS camera into a 5 FPS pipeline (benchmarks/reliability/slow_pipeline.py, small size):
latency stays near one processing time, queues stay bounded, and every frame is accounted for."""

from __future__ import annotations

from benchmarks.reliability import slow_pipeline


def test_slow_pipeline_keeps_latency_bounded_and_accounts_for_every_frame() -> None:
    report = slow_pipeline.run(full=False)
    figures = report.figures
    counts = figures["accounting"]
    # nothing lost: each decoded frame was processed, dropped (with a reason) or skipped
    assert figures["accounted_exactly"], counts
    assert counts["dropped_buffer_full"] > 0, "the camera outran the model: drops are counted"
    assert counts["processed"] > 0
    # freshest frame wins: a queueing pipeline would be ~25 s behind by the end, not < 2 s
    processing = slow_pipeline.PROCESSING_SECONDS * 1000
    first, last = figures["latency_by_third"][0], figures["latency_by_third"][-1]
    assert last["max_ms"] < 10 * processing, figures["latency_by_third"]
    assert last["p99_ms"] < first["p99_ms"] + 5 * processing, figures["latency_by_third"]
    # at most one frame in the capture buffer and one in the batcher's slot
    assert figures["queue_depth_max"] <= 2
    # a queue of 640x360 frames growing at 25 FPS would add ~500 MiB in 30 s
    assert figures["rss_mib"]["last"] - figures["rss_mib"]["first"] < 100, figures["rss_mib"]
