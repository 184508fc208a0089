"""Camera outages at CI size: the RTSP server SIGKILLed and restarted under a real worker.

What a user relies on: every camera comes back by itself after each outage, the worker never
crashes, nothing goes down while the server is up, what the worker reports for Camera status
(its ``/status``) is true at every look, and the worker's file descriptors, threads and memory
do not grow from outage to outage. (How fast they come back is the benchmark's
figure, not an assert: see ``python -m benchmarks.reliability --only camera_outages``.)
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.reliability.camera_outages import SMALL, figures, leak_free, measure


def test_every_camera_returns_after_each_rtsp_server_kill_and_nothing_leaks(tmp_path: Path) -> None:
    outcome = measure(SMALL, tmp_path)
    fig = figures(SMALL, outcome)

    assert not outcome.worker_crashed, (tmp_path / "worker.log").read_text()[-4000:]
    assert outcome.not_back == 0, fig
    assert fig["camera_recoveries"] == SMALL.cameras * SMALL.restarts
    assert outcome.drops_while_up == 0, fig
    assert outcome.status_samples > 0
    assert outcome.status_untrue == 0, fig
    assert leak_free(fig), fig
