"""Sinks down (issue 13 part 6, issue 17 part 2), at the test suite's size: the scenarios of
:mod:`benchmarks.reliability.sinks_down` against the real webhook receiver and mosquitto, and
a real ``kubevision-worker`` killed with SIGKILL while its webhook is unreachable.

What they hold the sinks to is the README's "Delivery semantics": at least once, in order per
sink (and per camera for MQTT), spooled up to the bound while a destination is down, beyond
it the oldest dropped and counted exactly, and a disk spool resumed by a restarted worker.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from benchmarks.reliability import sinks_down
from benchmarks.reliability.sinks_down import spooled
from kubevision.api.pipeline import Output
from kubevision.api.worker_config import CONFIG_FILE
from kubevision.worker.sinks import spool_path
from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.podrunner import PodRunner
from tests.envtest.poll import wait_for
from tests.envtest.sinks import MOSQUITTO, WebhookReceiver
from tests.integration.helpers import Namespace
from tests.integration.test_podrunner import CATALOG, GROUP, POD, ready_pod
from tests.integration.test_podrunner import PIPELINE as PODRUNNER_PIPELINE
from tests.integration.test_podrunner import camera as pod_camera

BATCH = 100
"""Events per webhook request, and MQTT messages in flight: the most an interruption may
deliver twice."""


def test_a_webhook_down_longer_than_the_old_retry_budget_loses_nothing(tmp_path: Path) -> None:
    """20 s of connection refused at 50 events/s (the old sink gave up after about 15 s):
    with the default bound every event arrives in order; with a 100-event spool exactly the
    oldest events beyond the bound are dropped, and the counter says how many."""
    figures = sinks_down.webhook_outage(sinks_down.SMALL, tmp_path)
    default, small = figures["default_bound"], figures["small_bound"]

    assert default["published"] > 1000
    assert default["lost"] == 0, default
    assert default["dropped"] == default["failed"] == 0, default
    assert default["delivered"] == default["published"]
    assert default["in_order"], "first arrivals in publish order"
    assert default["duplicates"] <= BATCH, "at most the batch in flight when it went away"
    assert default["max_spool_depth"] >= 0.8 * sinks_down.SMALL.rate * 20, "it was spooled"

    # the dropped counter equals exactly the number of events that never arrived ...
    assert small["lost"] == 0, small
    assert small["dropped_by_reason"]["dropped_spool_full"] == small["dropped"] > 0
    assert small["delivered"] + small["dropped"] == small["published"]
    # ... and they are one run of the oldest: the batch being sent and the newest are kept
    assert small["missing_contiguous"], small
    assert small["max_spool_depth"] <= small["spool_bound"]
    assert small["in_order"]


def test_mqtt_broker_restarts_mid_run_deliver_every_event_in_order_per_camera(
    tmp_path: Path,
) -> None:
    """mosquitto stopped and started again on its port 3 times while 50 events/s flow: QoS 1
    delivers every event, first arrivals in publish order per camera, repeats only of what
    was in flight at each restart."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    figures = sinks_down.mqtt_restarts(sinks_down.SMALL, tmp_path)
    assert figures["published"] > 500
    assert figures["lost"] == figures["dropped"] == figures["failed"] == 0, figures
    assert figures["delivered"] == figures["published"]
    assert figures["in_order_per_camera"], figures
    assert figures["duplicates"] <= BATCH * figures["restarts"]


def test_a_worker_killed_while_its_sinks_are_down_sends_its_spools_after_restart(
    tmp_path: Path, record_property: Any
) -> None:
    """The real worker process with disk spools, its webhook refusing connections and its
    MQTT broker down for 30 s: SIGKILLed halfway, started again on the same spool folder while
    both are still away, it keeps spooling; once they are back every event either process
    spooled (and every one the restarted worker made afterwards) arrives, in spool order for
    the webhook and per camera for MQTT, and nothing twice: nothing can have been in flight at
    the kill, the only moment the README lets a duplicate come from."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    figures = sinks_down.worker_killed(sinks_down.SMALL, tmp_path)
    record_property("figures", figures)
    assert figures["killed_after_s"] >= sinks_down.SMALL.worker_down_s / 2
    for name in ("webhook", "mqtt"):
        output = figures[name]
        assert output["spooled_by_first"] >= 5, (name, output)
        assert output["spooled_by_second_while_down"] > 0, (name, "the restart spooled on")
        assert output["spool_survived_kill"], (name, "the restart kept what the kill left")
        assert output["logged_before_kill_all_spooled"], (name, output)
        assert output["lost"] == output["unexpected"] == 0, (name, output)
        assert output["delivered"] + output["left_in_spool_at_stop"] == output["produced"]
        assert output["duplicates"] == 0, (name, output)
        assert output["in_order_per_camera"], (name, output)
    assert figures["webhook"]["in_order_of_spool"], figures["webhook"]
    assert sinks_down.worker_kept_its_promise(figures)


def spool_dir_of(pid: int) -> Path:
    """The ``--spool-dir`` a worker process runs with (the pod's spool volume, as mapped)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    (arg,) = [a for a in argv if a.startswith("--spool-dir=")]
    return Path(arg.removeprefix("--spool-dir="))


def test_an_operator_rendered_worker_pod_keeps_its_spool_across_a_container_restart(
    cluster: LocalCluster, runner: PodRunner, namespace: str
) -> None:
    """The real operator renders the Pipeline's ``spec.spool`` (a disk spool: an emptyDir,
    ``--spool-dir`` and the bounds in the worker config); its worker pod, run by the
    PodRunner, spools while the webhook is unreachable; its process is SIGKILLed and restarted
    in the same pod (an emptyDir outlives a container): once the receiver is back, what the
    spool held arrives first, in order, and nothing twice."""
    ns = Namespace(cluster, namespace)
    receiver = WebhookReceiver([(200, {})])  # not listening yet: connection refused
    pipeline = json.loads(json.dumps(PODRUNNER_PIPELINE))
    pipeline["spec"]["outputs"] = [{"type": "webhook", "url": receiver.url}]
    pipeline["spec"]["spool"] = {"storage": "disk", "maxEvents": 50_000, "maxBytes": 2**25}
    ns.apply(
        CATALOG / "yolox-nano.yaml",
        docs=[pod_camera("shelf", require("videos/bottle-detection.mp4")), pipeline],
    )
    pod = wait_for(lambda: ready_pod(ns), timeout=90, what="the worker pod Running and Ready")
    assert {"name": "spool", "emptyDir": {}} in pod["spec"]["volumes"]
    rendered = json.loads(ns.get("configmap", GROUP)["data"][CONFIG_FILE])
    assert rendered["spool"] == {"storage": "disk", "maxEvents": 50_000, "maxBytes": 2**25}
    pid = runner.running(namespace)[POD]
    spool_file = spool_path(spool_dir_of(pid), 0, Output(type="webhook", url=receiver.url))
    wait_for(lambda: len(spooled(spool_file)) >= 5, timeout=120, what="5 events spooled")

    os.kill(pid, signal.SIGKILL)
    before_kill = spooled(spool_file)
    wait_for(
        lambda: runner.running(namespace).get(POD, pid) != pid,
        timeout=60,
        what="the PodRunner to restart the worker in the same pod",
    )
    try:
        receiver.start()
        wait_for(
            lambda: len(receiver.delivered()) >= len(before_kill),
            timeout=90,
            what=f"the {len(before_kill)} events spooled before the kill",
        )
    finally:
        receiver.stop()
    delivered = receiver.delivered()
    assert delivered[: len(before_kill)] == before_kill, "all of them first, in spool order"
    keys = [(e.camera, e.kind, e.track_id, e.capture_time) for e in delivered]
    assert len(set(keys)) == len(keys), "nothing was delivered twice"
    (container,) = ns.get("pod", POD)["status"]["containerStatuses"]
    assert container["restartCount"] >= 1, "the same pod, its container restarted"
