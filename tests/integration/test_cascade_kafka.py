"""The cascade's Kafka source against a real Apache Kafka broker (KRaft): edge events with
real JPEG crops (cut from the shared parking-lot video) produced by the Kafka output, the
cascade consuming them as a consumer group and classifying with MobileNetV2. Stopped and
started again, it resumes from its group's committed offsets: nothing is lost, nothing is read
twice."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.cascade_bandwidth import CLASSIFIER, LABELS, _model
from kubevision.api.worker_config import CascadeConfig
from kubevision.worker.cascade import Cascade, CascadeMetrics, build_classifier
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.events import TrackEvent
from kubevision.worker.health import Health
from kubevision.worker.kafka_sink import KafkaSink
from kubevision.worker.sinks import SinkMetrics, build_sinks
from tests.assets import require
from tests.envtest.kafka import KafkaBroker, TopicReader
from tests.envtest.poll import wait_for
from tests.integration.helpers import edge_events

EDGE, CLOUD = "edge-events", "cloud-events"


def cascade(kafka_broker: KafkaBroker, classifier: CropClassifier) -> Cascade:
    config = CascadeConfig.model_validate(
        {
            "pipeline": "cloud",
            "source": {"url": f"kafka://{kafka_broker.bootstrap}", "topic": EDGE, "group": "cloud"},
            "classifier": _model(
                require(CLASSIFIER),
                task="classify",
                inputSize={"width": 224, "height": 224},
                batchMax=16,
            ),
            "outputs": [
                {"type": "kafka", "url": f"kafka://{kafka_broker.bootstrap}", "topic": CLOUD}
            ],
        }
    )
    registry = CollectorRegistry()
    sink = build_sinks(config.outputs, "cloud", registry)
    worker = Cascade(config, classifier, sink, CascadeMetrics(registry, "cloud"), Health())
    worker.start()
    return worker


def test_a_kafka_source_resumes_from_its_committed_offsets(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    config = CascadeConfig.model_validate(
        {
            "pipeline": "cloud",
            "source": {"url": "kafka://x:1", "topic": EDGE},
            "classifier": _model(
                require(CLASSIFIER),
                task="classify",
                inputSize={"width": 224, "height": 224},
                batchMax=16,
            ),
        }
    )
    classifier = build_classifier(config, threads=1, labels_file=require(LABELS))
    counters = SinkMetrics.on(CollectorRegistry()).bind("edge", "kafka")
    edge = KafkaSink(f"kafka://{kafka_broker.bootstrap}", EDGE, counters)
    reader = TopicReader(kafka_broker.bootstrap, CLOUD)
    try:
        first, second = edge_events(0, 20), edge_events(20, 20)
        edge.publish(first)
        wait_for(lambda: edge.pending == 0, timeout=60, what="the edge events in Kafka")
        worker = cascade(kafka_broker, classifier)
        wait_for(lambda: len(reader.messages()) >= 20, timeout=90, what="the first 20 enriched")
        worker.stop()  # commits the offsets it stored
        edge.publish(second)
        worker = cascade(kafka_broker, classifier)
        try:
            wait_for(lambda: len(reader.messages()) >= 40, timeout=90, what="the next 20")
        finally:
            worker.stop()
        out = [TrackEvent.model_validate_json(value) for _, _, value in reader.messages()]
    finally:
        reader.close()
        edge.close()
    assert len(out) == 40, "nothing read twice after the restart"
    sent = {(e.camera, e.track_id): e for e in first + second}
    for camera in ("gate-0", "gate-1"):
        ids = [e.track_id for e in out if e.camera == camera]
        assert ids == sorted(ids), "in order per camera (keyed by camera)"
        assert len(ids) == 20
    for event in out:
        original = sent[(event.camera, event.track_id)]
        assert (event.classification is not None) == (original.snapshot is not None)
        assert event.snapshot is None, "inline crops are not forwarded"
    assert json.loads(reader.messages()[0][2])["pipeline"] == "edge"
