"""A minimal faust worker for the pipeline smoke test (test code, not product code).

Run as ``python -m tests.support.smoke_worker`` from the repository root, configured
only by environment variables, exactly like a service: KAFKA_BOOTSTRAP_SERVERS,
RESIDUALS_TOPIC_PREFIX, DATABASE_URL, OTEL_SERVICE_NAME, plus SMOKE_DATA_DIR for faust's
data directory. It consumes protobuf ``UsageEvent`` records from the (prefixed) usage
topic with a faust agent built by ``make_faust_app`` and stores each one in
``usage_events`` with the record's exact bytes, idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC
from typing import Any

from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings, load
from residuals.platform.faust_app import make_faust_app, run_worker
from residuals.platform.kafka import topic_name
from residuals.platform.postgres import Database
from residuals.platform.telemetry import extract_kafka_headers, init_telemetry
from residuals.platform.topics import USAGE
from residuals.v1 import common_pb2, usage_pb2

log = logging.getLogger("smoke_worker")

INSERT = """
INSERT INTO usage_events (vendor_id, event_id, licence_id, kind, occurred_at, payload)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (vendor_id, event_id) DO NOTHING
"""


def main() -> int:
    telemetry = init_telemetry(load(TelemetrySettings))
    kafka = load(KafkaSettings)
    tracer = telemetry.tracer("smoke_worker")
    # Fail fast (non-zero exit) when the database is unreachable.
    db = Database(load(PostgresSettings), application_name="smoke-worker").open(timeout=10)
    app = make_faust_app(
        "smoke-worker", kafka, data_dir=os.environ.get("SMOKE_DATA_DIR", "/tmp/smoke-worker")
    )
    source = app.topic(
        topic_name(kafka, USAGE),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    def store(payload: bytes) -> None:
        event = usage_pb2.UsageEvent.FromString(payload)
        kind = common_pb2.UsageKind.Name(event.kind).removeprefix("USAGE_KIND_")
        with db.connection() as conn:
            conn.execute(
                INSERT,
                (
                    event.vendor_id,
                    event.event_id,
                    event.licence_id,
                    kind,
                    event.occurred_at.ToDatetime(tzinfo=UTC),
                    payload,
                ),
            )

    @app.agent(source)
    async def usage(stream: Any) -> None:
        async for record in stream.events():
            parent = extract_kafka_headers(record.headers)
            with tracer.start_as_current_span("smoke.store", context=parent):
                await asyncio.to_thread(store, record.value)
                log.info("stored", extra={"offset": record.message.offset})

    log.info("smoke worker starting", extra={"topic": source.get_topic_name()})
    try:
        run_worker(app, loglevel="INFO")
    finally:
        db.close()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
