"""Helpers for the sink tests on the real stack: topics under a test's own prefix, a
producer that returns where each record landed, the ledger writer on a thread, and a TCP
proxy in front of PostgreSQL that a test can cut to make the database unreachable."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from confluent_kafka.admin import NewTopic

from residuals.ledger.app import LedgerWriter
from residuals.ledger.settings import LedgerSettings
from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.sink import SinkSettings
from residuals.platform.topics import QUARANTINE, USAGE_DLQ, USAGE_RATED, Topic
from residuals.stack.settings import StackSettings

LEDGER_TOPICS = (USAGE_RATED, USAGE_DLQ, QUARANTINE)


def isolated_kafka(stack: StackSettings, label: str, partitions: int = 2) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=f"{label}-{uuid.uuid4().hex[:10]}.",
        topic_partitions=partitions,
    )


def create_topics(kafka: KafkaSettings, topics: Sequence[Topic]) -> None:
    admin = make_admin(kafka)
    new = [
        NewTopic(topic_name(kafka, t), num_partitions=kafka.topic_partitions, config=t.config())
        for t in topics
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=60)


@dataclass(frozen=True)
class Landed:
    """Where Kafka put a produced record, and what it was."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


def produce(
    kafka: KafkaSettings,
    records: Sequence[tuple[str, int, bytes | None, list[tuple[str, bytes]] | None]],
) -> list[Landed]:
    """Produce ``(topic, partition, value, headers)`` records in order; wait for every
    acknowledgement and return where each landed."""
    producer = make_producer(kafka, **{"linger.ms": 5})
    landed: list[Landed | None] = [None] * len(records)

    def report(index: int) -> Callable[[Any, Any], None]:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, f"record {index} not delivered: {err}"
            landed[index] = Landed(msg.topic(), msg.partition(), msg.offset(), msg.value())

        return delivered

    for index, (topic, partition, value, headers) in enumerate(records):
        producer.produce(
            topic,
            value=value,
            key=b"k",
            partition=partition,
            headers=headers or [],
            on_delivery=report(index),
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "records not acknowledged"
    assert all(item is not None for item in landed)
    return [item for item in landed if item is not None]


def ledger_settings(kafka: KafkaSettings, dsn: str, group: str, **sink: Any) -> LedgerSettings:
    return LedgerSettings(
        kafka=kafka,
        postgres=PostgresSettings(dsn=dsn, pool_min=1, pool_max=4),
        telemetry=TelemetrySettings(service_name="ledger"),
        sink=replace(SinkSettings(), **sink),
        consumer_group=group,
        batch_size=500,
        poll_timeout=0.5,
    )


@contextlib.contextmanager
def running_writer(settings: LedgerSettings) -> Iterator[LedgerWriter]:
    """The ledger writer on a thread, its partitions assigned; stopped at the end."""
    writer = LedgerWriter(settings)
    sink = writer.build()
    thread = threading.Thread(target=writer.run, name="ledger-under-test", daemon=True)
    thread.start()
    try:
        assert sink.assigned.wait(60), "no partitions assigned to the ledger writer"
        yield writer
    finally:
        writer.stop_event.set()
        thread.join(60)
        assert not thread.is_alive(), "the ledger writer did not stop"


def stored_positions(dsn: str, group: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = %s",
            (group,),
        ).fetchall()
    return {(str(t), int(p)): int(o) for t, p, o in rows}


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that can be cut (every connection dropped, new ones
    refused: the server is unreachable) and restored on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [*([listener] if listener else []), *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def read_at(kafka: KafkaSettings, topic: str, partition: int, offset: int) -> Any:
    """The record at ``topic[partition]@offset`` (a confluent-kafka Message)."""
    from confluent_kafka import TopicPartition

    from residuals.platform.kafka import make_consumer

    consumer = make_consumer(kafka, f"read-at-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                assert message.offset() == offset, "the record at that offset is missing"
                return message
        raise AssertionError(f"nothing read at {topic}[{partition}]@{offset}")
    finally:
        consumer.close()
