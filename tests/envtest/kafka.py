"""A real Apache Kafka broker (KRaft mode: broker and controller in one JVM, no ZooKeeper) on
127.0.0.1, for the Kafka output's tests; it can be stopped or killed and started again on the
same ports with its log kept, as a broker restart in production.

The jars come from Maven Central (``tests/toolchain/kafka.sh``, cached by version) and run on
the machine's Java: ``java -cp 'libs/*' kafka.Kafka server.properties``.
"""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import wait_for
from tests.envtest.processes import Service, spawn

TOOLCHAIN_SCRIPT = REPO_ROOT / "tests" / "toolchain" / "kafka.sh"
_LOG4J = """Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
"""


def kafka_libs() -> Path | None:
    """The broker's jar folder, fetched on first use; None without Java or Maven."""
    if shutil.which("java") is None:
        return None
    out = subprocess.run(
        ["bash", str(TOOLCHAIN_SCRIPT)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return None
    return Path(out.stdout.strip()) / "libs"


class KafkaBroker(Service):
    """One broker+controller node: ``bootstrap`` is what clients connect to."""

    def __init__(self, workdir: Path, libs: Path, partitions: int = 4) -> None:
        self.libs = libs
        self.workdir = workdir
        self.port, controller = free_port(), free_port()
        self.log_path = workdir / "kafka.log"
        self._proc: subprocess.Popen[bytes] | None = None
        data = workdir / "data"
        self.config = workdir / "server.properties"
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={partitions}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # a produce request is acknowledged once the broker's log has it: flush it
                    # too, so that a SIGKILL loses nothing acknowledged (one node, no replicas)
                    "log.flush.interval.messages=1",
                ]
            )
            + "\n"
        )
        (workdir / "log4j2.yaml").write_text(_LOG4J)
        # Kafka's cluster ids are 16 random bytes in URL-safe base64 (`kafka-storage random-uuid`)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # joined to its option: an id starting with "-" (1 in 64) would read as another option
        self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(self.config),
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._proc = spawn(self._argv("kafka.Kafka", str(self.config)), self.log_path)
        wait_for(self._accepting, timeout=60, what=f"kafka on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: the broker shuts down cleanly (it flushes and closes its log)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker dies as in a crash."""
        self._end(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> None:
        """Down (SIGKILL with ``kill``) and up again on the same ports, with the same log."""
        self.kill() if kill else self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        # the listening socket may linger a moment after the JVM is gone
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._port_open():
            time.sleep(0.1)

    def _argv(self, main: str, *args: str) -> list[str]:
        log4j = f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}"
        jvm = ["-Xmx512m", "-XX:+UseSerialGC", log4j]
        return ["java", *jvm, "-cp", f"{self.libs}/*", main, *args]

    def _java(self, main: str, *args: str) -> None:
        subprocess.run(self._argv(main, *args), check=True, capture_output=True, timeout=120)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"kafka exited: {self.log_path.read_text()[-3000:]}")
        return self._port_open()


class TopicReader:
    """Reads a topic from the beginning in a thread: every message's key and value, in the
    order each partition delivered them (a consumer group of its own, earliest offsets)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "log_level": 2,
            }
        )
        self._consumer.subscribe([topic])
        self._messages: list[tuple[int, bytes, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-reader", daemon=True)
        self._thread.start()

    def messages(self) -> list[tuple[int, bytes, bytes]]:
        """``(partition, key, value)`` of everything read so far."""
        with self._lock:
            return list(self._messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.2)
            if message is None or message.error():
                continue
            with self._lock:
                self._messages.append(
                    (message.partition() or 0, message.key() or b"", message.value() or b"")
                )
