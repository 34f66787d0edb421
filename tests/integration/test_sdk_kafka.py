"""The vendor SDK's Kafka transport against the real broker.

The outage test is the SDK's core promise: an event the SDK accepted survives a broker
outage AND the death of the vendor's process, and arrives on the usage topic exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from residuals_sdk import (
    DeliveryReport,
    DeliveryStatus,
    SigningKey,
    SpoolFullError,
    UsageClient,
    verify_signature,
)

from residuals.stack import kafka as stack_kafka
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from residuals.v1 import usage_pb2
from tests.support.ingest import Topics, headers_of, read_topic

WORKER = Path(__file__).parents[1] / "support" / "sdk_outage_worker.py"


@pytest.fixture
def topics(stack: StackSettings) -> Iterator[Topics]:
    t = Topics(stack, f"sdk-{uuid.uuid4().hex[:8]}.").create()
    yield t
    t.delete()


def event_of(record: Any) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent.FromString(
        usage_pb2.SignedUsageEvent.FromString(record.value()).payload
    )


def test_kafka_transport_writes_the_wire_convention(topics: Topics, tmp_path: Path) -> None:
    key = SigningKey.generate("sk-wire")
    reports: list[DeliveryReport] = []
    tracer = TracerProvider().get_tracer("test")
    with UsageClient.kafka(
        vendor_id="VEN-WIRE",
        signing_key=key,
        bootstrap_servers=topics.kafka.bootstrap_servers,
        topic=topics.usage,
        spool_dir=tmp_path,
        on_delivery=reports.append,
    ) as client:
        with tracer.start_as_current_span("vendor request") as span:
            rendered = client.render(
                licence_id="LIC-W",
                avatar_id="AVA-W",
                render_id="vid-1",
                category="product_demo",
                territory="GB",
            )
            trace_id = format(span.get_span_context().trace_id, "032x")
        retraction = client.retract(original_event_id=rendered, licence_id="LIC-W")
        orphan = client.retract(original_event_id="unknown", licence_id=None)
        assert client.flush(timeout=30) == 0
        assert client.pending == 0
    assert {r.status for r in reports} == {DeliveryStatus.DELIVERED}
    assert all(r.partition is not None and r.offset is not None for r in reports)

    records = {event_of(r).event_id: r for r in read_topic(topics.kafka, topics.usage, expect=3)}
    assert set(records) == {rendered, retraction, orphan}
    assert records[rendered].key() == b"LIC-W"
    assert records[retraction].key() == b"LIC-W"  # routed with the original
    assert records[orphan].key() == b"VEN-WIRE"  # no licence given: the vendor id
    headers = headers_of(records[rendered])
    assert headers["residuals-vendor"] == b"VEN-WIRE"
    assert headers["traceparent"].decode().split("-")[1] == trace_id
    signed = usage_pb2.SignedUsageEvent.FromString(records[rendered].value())
    assert signed.key_id == "sk-wire"
    assert signed.trace.traceparent == headers["traceparent"].decode()
    assert verify_signature(key.public_key_bytes(), signed.payload, signed.signature)
    assert "traceparent" not in headers_of(records[orphan])  # no span active: none invented


def test_spool_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    key = SigningKey.generate("sk-bound")
    unreachable = "127.0.0.1:9"  # nothing listens: nothing is ever delivered

    def client() -> UsageClient:
        return UsageClient.kafka(
            vendor_id="VEN-B",
            signing_key=key,
            bootstrap_servers=unreachable,
            spool_dir=tmp_path,
            spool_max_events=5,
        )

    first = client()
    ids = [
        first.render(licence_id="L", avatar_id="A", render_id=f"r{i}", category="c", territory="GB")
        for i in range(5)
    ]
    with pytest.raises(SpoolFullError, match="spool full"):
        first.render(licence_id="L", avatar_id="A", render_id="r6", category="c", territory="GB")
    assert first.close(timeout=0.5) == 5
    second = client()
    assert second.pending == 5  # nothing lost by the restart
    with pytest.raises(SpoolFullError):
        second.render(licence_id="L", avatar_id="A", render_id="r7", category="c", territory="GB")
    assert second.close(timeout=0.5) == 5
    assert len(set(ids)) == 5


class Worker:
    def __init__(self, args: list[str], env: dict[str, str], log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def expect(self, prefix: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(prefix):
                return line.strip()
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"worker never printed {prefix!r} (exit {self.proc.poll()})")


def test_outage_and_process_kill_lose_and_duplicate_nothing(
    stack: StackSettings, topics: Topics, tmp_path: Path
) -> None:
    spool, ids_file = tmp_path / "spool", tmp_path / "ids.txt"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "TOPIC": topics.usage,
        "VENDOR_ID": "VEN-OUTAGE",
        "LICENCE_ID": "LIC-OUTAGE",
        "SIGNING_SEED": os.urandom(32).hex(),
        "DRAIN_TIMEOUT": "240",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "workers.log").open("w")
    lifecycle.down(stack, only=("kafka",))
    try:
        first = Worker([str(spool), "300", str(ids_file), "hang"], env, log)
        first.expect("PUBLISHED", 120)
        time.sleep(4)  # let its producer time out and retry against the dead broker
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)

        second = Worker([str(spool), "200", str(ids_file), "drain"], env, log)
        second.expect("PUBLISHED", 120)
        time.sleep(4)
    finally:
        # The broker comes back (and stays up for later tests). Kafka only: this test
        # must not depend on migrations, which lifecycle.up() would also apply.
        stack_kafka.start(stack, lifecycle.stderr_log)
    done = second.expect("LEFT", 300)
    assert second.proc.wait(30) == 0, (tmp_path / "workers.log").read_text()
    left, reports, attempts = done.split()[1::2]
    assert (left, reports) == ("0", "500")
    assert int(attempts) >= 2  # the SDK's own retry loop re-sent timed-out records

    accepted = ids_file.read_text().split()
    assert len(accepted) == 500
    records = read_topic(topics.kafka, topics.usage, expect=500, timeout=120, settle=5)
    seen = Counter(event_of(r).event_id for r in records)
    assert set(seen) == set(accepted)
    assert [eid for eid, n in seen.items() if n != 1] == []
    assert len(records) == 500
