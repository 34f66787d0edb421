"""End-to-end smoke of the shared adapters against the real local stack:

protobuf UsageEvent -> confluent-kafka producer (make_producer) -> Kafka topic ->
faust agent (make_faust_app, in a worker subprocess) -> PostgreSQL (usage_events).

No mocks and no skips: if the broker or the database is down (and the ``stack`` fixture
cannot bring it up) the produce, the worker or the wait for the row fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import NewTopic
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.processes import ServiceProcess
from residuals.platform.telemetry import inject_kafka_headers
from residuals.platform.topics import USAGE
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, usage_pb2

REPO = Path(__file__).resolve().parents[2]
ROW_TIMEOUT = 120.0


class Run:
    """One isolated run: unique topic prefix (so topic, consumer group and faust internal
    topics are new) and a unique vendor id (so rows never collide with other tests)."""

    def __init__(self, stack: StackSettings) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.kafka = KafkaSettings(
            bootstrap_servers=stack.bootstrap_servers,
            topic_prefix=f"smoke-{self.id}.",
            topic_partitions=stack.topic_partitions,
        )
        self.topic = topic_name(self.kafka, USAGE)
        self.vendor_id = f"VEN-SMOKE-{self.id}"
        self.dsn = stack.dsn

    def create_topic(self) -> None:
        admin = make_admin(self.kafka)
        futures = admin.create_topics(
            [NewTopic(self.topic, num_partitions=self.kafka.topic_partitions)],
            operation_timeout=30,
        )
        futures[self.topic].result(timeout=60)

    def delete_kafka_state(self) -> None:
        admin = make_admin(self.kafka)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.topic_prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):  # best-effort cleanup
                    future.result(timeout=60)

    @property
    def topic_prefix(self) -> str:
        return self.kafka.topic_prefix

    def worker_env(self, base: dict[str, str], data_dir: Path) -> dict[str, str]:
        return {
            **base,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "RESIDUALS_TOPIC_PREFIX": self.kafka.topic_prefix,
            "RESIDUALS_TOPIC_PARTITIONS": str(self.kafka.topic_partitions),
            "DATABASE_URL": self.dsn,
            "OTEL_SERVICE_NAME": "smoke-worker",
            "LOG_FORMAT": "json",
            "METRICS_PORT": "0",
            "SMOKE_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }

    def rows(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            return conn.execute(
                "SELECT event_id, licence_id, kind, occurred_at, payload FROM usage_events"
                " WHERE vendor_id = %s ORDER BY event_id",
                (self.vendor_id,),
            ).fetchall()

    def delete_rows(self) -> None:
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            conn.execute("DELETE FROM usage_events WHERE vendor_id = %s", (self.vendor_id,))


@pytest.fixture
def run(stack: StackSettings) -> Iterator[Run]:
    r = Run(stack)
    r.create_topic()
    try:
        yield r
    finally:
        r.delete_rows()
        r.delete_kafka_state()


def start_worker(env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """The smoke worker subprocess; its combined output goes to ``log_dir/worker.log``."""
    return ServiceProcess("worker", "tests.support.smoke_worker", env, log_dir, cwd=REPO).start()


def _event(run: Run, event_id: str) -> bytes:
    occurred = Timestamp()
    occurred.FromJsonString("2026-10-04T10:00:00Z")
    event = usage_pb2.UsageEvent(
        event_id=event_id,
        vendor_id=run.vendor_id,
        kind=common_pb2.USAGE_KIND_RENDER,
        licence_id=f"LIC-SMOKE-{run.id}",
        avatar_id="AVA-SMOKE-1",
        render_id=f"render-{event_id}",
        category="product_demo",
        territory="GB",
        occurred_at=occurred,
    )
    return event.SerializeToString(deterministic=True)


def _trace_context() -> Context:
    """A sampled remote parent with a fresh trace id, as an SDK publish span would be."""
    span = NonRecordingSpan(
        SpanContext(
            trace_id=uuid.uuid4().int >> 64 << 64 | 1,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    )
    return trace.set_span_in_context(span)


def _produce(run: Run, records: list[tuple[str, bytes]], context: Context) -> None:
    producer = make_producer(run.kafka, client_id="smoke-test", **{"message.timeout.ms": 30_000})
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for key, value in records:
        producer.produce(
            run.topic,
            key=key.encode(),
            value=value,
            headers=inject_kafka_headers(
                [("content-type", b"application/x-protobuf")], context=context
            ),
            on_delivery=delivered,
        )
    remaining = producer.flush(45)
    assert remaining == 0 and errors == [], f"produce failed: {errors or remaining}"


def test_usage_event_flows_from_kafka_through_faust_into_postgres(
    run: Run, stack_env: dict[str, str], tmp_path: Path
) -> None:
    payloads = {f"e{i}": _event(run, f"e{i}") for i in range(3)}
    licence = f"LIC-SMOKE-{run.id}"
    # e1 twice: at-least-once delivery must still give one row (idempotent sink).
    parent = _trace_context()
    records = [(licence, p) for p in payloads.values()] + [(licence, payloads["e1"])]
    _produce(run, records, parent)

    worker = start_worker(run.worker_env(stack_env, tmp_path / "faust"), tmp_path)
    try:
        deadline = time.monotonic() + ROW_TIMEOUT
        rows: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            assert worker.alive(), f"worker exited:\n{worker.log_tail(6000)}"
            rows = run.rows()
            if len(rows) == len(payloads):
                break
            time.sleep(0.5)
        assert len(rows) == len(payloads), (
            f"rows {rows!r} after {ROW_TIMEOUT}s:\n{worker.log_tail(6000)}"
        )
    finally:
        worker.stop()

    for event_id, licence_id, kind, occurred_at, payload in rows:
        assert bytes(payload) == payloads[event_id]  # the exact bytes that were produced
        assert licence_id == licence and kind == "RENDER"
        assert occurred_at.isoformat() == "2026-10-04T10:00:00+00:00"
    # The producer's trace continued across the Kafka hop into the faust agent's span.
    trace_id = format(trace.get_current_span(parent).get_span_context().trace_id, "032x")
    stored = [json.loads(line) for line in worker.log_text().splitlines() if '"stored"' in line]
    assert len(stored) == len(records)
    assert {line["trace_id"] for line in stored} == {trace_id}
    assert all(line.startswith("{") for line in worker.log_text().splitlines()), "non-JSON output"


def test_worker_fails_when_database_is_unreachable(
    run: Run, stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = run.worker_env(stack_env, tmp_path / "faust")
    env["DATABASE_URL"] = "postgresql://residuals@127.0.0.1:1/residuals"
    worker = start_worker(env, tmp_path)
    try:
        code = worker.wait(timeout=60)
    finally:
        worker.stop()
    assert code != 0
    assert "PoolTimeout" in worker.log_text() or "connection" in worker.log_text().lower()
    assert os.path.exists(tmp_path / "worker.log")
