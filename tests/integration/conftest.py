"""Fixtures shared by the integration tests of the Kafka output and the cascade's Kafka source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.envtest.kafka import KafkaBroker, kafka_libs


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Apache Kafka broker (KRaft) on a free loopback port, per test module."""
    libs = kafka_libs()
    assert libs is not None, "the Kafka broker's jars: run tests/toolchain/kafka.sh (Java, Maven)"
    with KafkaBroker(tmp_path_factory.mktemp("kafka"), libs) as broker:
        yield broker
