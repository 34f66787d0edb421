"""Wiring of the ledger writer: the shared Kafka -> PostgreSQL sink around LedgerStore.

:class:`~residuals.platform.sink.KafkaPostgresSink` gives the transaction per batch, the
offsets stored with the rows (fenced against zombies, only forward), the seek to those
offsets on assignment, poison isolation into the quarantine table, stall reporting, and
Kafka commits for lag tools only. The consumer reads ``read_committed`` with auto-commit
off (``make_consumer``). Besides rated usage and dead letters the writer stores the
records other consumers publish to ``residuals.quarantine.v1``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from opentelemetry import trace
from psycopg import Connection

from residuals.ledger.records import published_at
from residuals.ledger.settings import LedgerSettings
from residuals.ledger.store import BatchResult, LedgerStore
from residuals.platform.grpc_server import GrpcServer, make_grpc_server
from residuals.platform.kafka import topic_name
from residuals.platform.pipeline_metrics import pipeline_metrics
from residuals.platform.postgres import Database
from residuals.platform.quarantine import Pending
from residuals.platform.sink import KafkaPostgresSink, make_sink_consumer
from residuals.platform.topics import QUARANTINE, USAGE, USAGE_DLQ, USAGE_RATED

log = logging.getLogger(__name__)

#: The sink's name in metrics and the ``consumer`` of the quarantine rows it makes.
SINK_NAME = "ledger"


class LedgerWriter:
    def __init__(self, settings: LedgerSettings) -> None:
        self.settings = settings
        kafka = settings.kafka
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        self.group_id = f"{kafka.topic_prefix}{settings.consumer_group}"
        self.rated_topic = topic_name(kafka, USAGE_RATED)
        self.dlq_topic = topic_name(kafka, USAGE_DLQ)
        self.quarantine_topic = topic_name(kafka, QUARANTINE)
        #: Quarantine rows of the open transaction, shared by the store and the sink.
        self.quarantine = Pending()
        self.store = LedgerStore(
            usage_topic=topic_name(kafka, USAGE),
            rated_topic=self.rated_topic,
            dlq_topic=self.dlq_topic,
            quarantine_topic=self.quarantine_topic,
            consumer=SINK_NAME,
            quarantine=self.quarantine,
            # Spans only when exported (as in the meter): none is made for nothing.
            tracer=trace.get_tracer(__name__) if settings.telemetry.otlp_endpoint else None,
        )
        self.metrics = pipeline_metrics()
        self.sink: KafkaPostgresSink[BatchResult] | None = None
        self.health: GrpcServer | None = None
        self.stop_event = threading.Event()
        #: Told when the sink stalls (True) or advances again (False): the health.
        self.on_stalled: Callable[[bool], None] | None = None

    def _apply(self, conn: Connection[Any], records: Sequence[Any]) -> BatchResult:
        return self.store.apply(conn, records)

    def _after_commit(self, records: Sequence[Any], results: Sequence[BatchResult]) -> None:
        # Accrued royalties by avatar are counted here, from the uses stored exactly once,
        # and not in the meter: it is the pipeline's CPU bottleneck, and re-rates a batch
        # after a crash.
        for result in results:
            for rated in result.inserted:
                if rated.estimated_amount and rated.event.avatar_id:
                    self.metrics.accrue(
                        rated.currency, rated.event.avatar_id, rated.estimated_amount
                    )
        now = datetime.now(UTC)
        # PipelineMetrics.observe_latency's observation, its child looked up once a batch
        # (labels() costs about a microsecond, once per record otherwise).
        latency = self.metrics.latency.labels("ledger")
        quarantine_topic = self.quarantine_topic
        for record in records:
            if record.topic() == quarantine_topic:
                continue  # set aside elsewhere: not usage reaching the ledger
            published = published_at(record.headers(), record.timestamp())
            if published is not None:
                latency.observe(max(0.0, (now - published).total_seconds()))

    def _stalled(self, stalled: bool) -> None:
        if self.on_stalled is not None:
            self.on_stalled(stalled)

    def build(self) -> KafkaPostgresSink[BatchResult]:
        consumer = make_sink_consumer(
            self.settings.kafka,
            self.group_id,
            client_id=self.settings.telemetry.service_name,
            group_instance_id=self.settings.sink.group_instance_id,
        )
        self.sink = KafkaPostgresSink(
            name=SINK_NAME,
            consumer=consumer,
            db=self.db,
            group_id=self.group_id,
            topics=[self.rated_topic, self.dlq_topic, self.quarantine_topic],
            apply=self._apply,
            after_commit=self._after_commit,
            batch_size=self.settings.batch_size,
            poll_timeout=self.settings.poll_timeout,
            settings=self.settings.sink,
            on_stalled=self._stalled,
            quarantine=self.quarantine,
        )
        return self.sink

    def start(self) -> LedgerWriter:
        """Health (SERVING once partitions are assigned and while the sink is not stalled)
        and SIGTERM/SIGINT handlers that end :meth:`run` after the batch in hand."""
        self.health = make_grpc_server(self.settings.grpc).start()
        self.health.set_serving(False)

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", extra={"signal": signum})
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        sink = self.build()
        self.on_stalled = self._serving
        threading.Thread(target=self._ready, args=(sink,), name="ledger-ready", daemon=True).start()
        return self

    def _serving(self, _stalled: bool = False) -> None:
        if self.health is not None and self.sink is not None:
            self.health.set_serving(self.sink.assigned.is_set() and not self.sink.stalled)

    def _ready(self, sink: KafkaPostgresSink[BatchResult]) -> None:
        if sink.assigned.wait(timeout=None) and not self.stop_event.is_set():
            self._serving()

    def stop(self) -> None:
        self.stop_event.set()
        if self.health is not None:
            self.health.stop(1.0)

    def run(self) -> None:
        """Open the pool, then write batches until :attr:`stop_event` is set. However it
        ends, the consumer is closed (the group left) and the pool released."""
        sink = self.sink or self.build()
        try:
            self.db.open()
            sink.run(self.stop_event)
        finally:
            sink.close()
            self.db.close()
