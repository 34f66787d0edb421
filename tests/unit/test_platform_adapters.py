"""Pure parts of the platform adapters: log format, trace propagation, client configs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from mode import Service
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from residuals.platform import faust_app, kafka, logs, postgres, telemetry
from residuals.platform.config import KafkaSettings, PostgresSettings, load
from residuals.platform.topics import USAGE

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _context(trace_state: str = "") -> Context:
    span = NonRecordingSpan(
        SpanContext(
            trace_id=TRACE_ID,
            span_id=SPAN_ID,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState.from_header([trace_state]) if trace_state else None,
        )
    )
    return trace.set_span_in_context(span)


def _span_of(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


# --- logging ------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("residuals.test.logs")
    handler = logs.make_handler("meter", stream=stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_line_shape(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("rated %d events", 3, extra={"licence_id": "LIC-1", "units": 3})
    (entry,) = _lines(stream)
    assert list(entry)[:5] == ["ts", "level", "service", "logger", "message"]
    assert entry["level"] == "INFO"
    assert entry["service"] == "meter"
    assert entry["logger"] == "residuals.test.logs"
    assert entry["message"] == "rated 3 events"
    assert entry["licence_id"] == "LIC-1" and entry["units"] == 3
    assert str(entry["ts"]).endswith("Z")
    assert "trace_id" not in entry


def test_json_log_line_carries_active_span(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    token = otel_context.attach(_context())
    try:
        logger.warning("held")
    finally:
        otel_context.detach(token)
    (entry,) = _lines(stream)
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry["span_id"] == "00f067aa0ba902b7"


def test_json_log_exception_and_unserialisable_extra(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("failed", extra={"thing": object()})
    assert len(stream.getvalue().splitlines()) == 1  # one line, even with a traceback
    (entry,) = _lines(stream)
    assert "ValueError: boom" in str(entry["exception"])
    assert str(entry["thing"]).startswith("<object object")


def test_text_format_and_bad_format() -> None:
    stream = io.StringIO()
    handler = logs.make_handler("ledger", log_format="text", stream=stream)
    record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "disk %s", ("full",), None)
    handler.emit(record)
    assert " ERROR   ledger x.y: disk full" in stream.getvalue()
    with pytest.raises(ValueError):
        logs.make_handler("ledger", log_format="xml")


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = logs.configure_logging("svc", level="DEBUG", stream=io.StringIO())
        second = logs.configure_logging("svc", level="INFO", stream=io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert [h for h in root.handlers if h.get_name() == "residuals"] == [second]
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


# --- trace propagation --------------------------------------------------------------------


def test_kafka_headers_round_trip() -> None:
    headers = telemetry.inject_kafka_headers(
        [("content-type", b"application/x-protobuf")], context=_context("vendor=abc")
    )
    assert ("content-type", b"application/x-protobuf") in headers
    assert ("traceparent", TRACEPARENT.encode()) in headers
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    extracted = _span_of(telemetry.extract_kafka_headers(headers))
    assert extracted.trace_id == TRACE_ID and extracted.span_id == SPAN_ID
    assert extracted.is_remote and extracted.trace_state.get("vendor") == "abc"


def test_kafka_headers_replace_stale_trace_and_accept_mappings() -> None:
    stale = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("k", b"v")]
    headers = telemetry.inject_kafka_headers(stale, context=_context())
    assert [k for k, _ in headers].count("traceparent") == 1
    assert _span_of(telemetry.extract_kafka_headers(dict(headers))).trace_id == TRACE_ID


def test_trace_headers_continue_the_trace_a_message_carries() -> None:
    from residuals.v1 import common_pb2

    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert kafka.trace_headers(None) == []
    assert kafka.trace_headers(common_pb2.TraceContext()) == []
    assert kafka.trace_headers(common_pb2.TraceContext(traceparent=parent)) == [
        ("traceparent", parent.encode())
    ]
    both = kafka.trace_headers(common_pb2.TraceContext(traceparent=parent, tracestate="a=b"))
    assert both == [("traceparent", parent.encode()), ("tracestate", b"a=b")]
    # Extracted again, the headers give the same trace.
    span = trace.get_current_span(telemetry.extract_kafka_headers(both)).get_span_context()
    assert f"{span.trace_id:032x}" == "1" * 32


class _Landed:
    def __init__(self, partition: int, offset: int) -> None:
        self._at = (partition, offset)

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._at[0]

    def offset(self) -> int:
        return self._at[1]


def test_a_receipt_completes_when_every_record_is_reported() -> None:
    receipt = kafka.Receipt(3)
    assert not receipt.wait(0)
    receipt.reporter(0)(None, _Landed(2, 40))
    receipt.report(2, "local producer queue full")
    assert not receipt.wait(0) and not receipt.ok
    receipt.reporter(1)(None, _Landed(0, 7))
    assert receipt.wait(0)
    assert receipt.landed == {0: ("t", 2, 40), 1: ("t", 0, 7)}
    assert receipt.errors == [(2, "local producer queue full")] and not receipt.ok
    assert kafka.Receipt(0).ok  # nothing to wait for


def test_delivery_failed_says_what_is_missing() -> None:
    failed = kafka.DeliveryFailed(2, ["MSG_SIZE_TOO_LARGE", "x", "y", "z", "w", "v"])
    assert failed.unacknowledged == 2 and len(failed.errors) == 6
    assert "2 records unacknowledged" in str(failed) and "'v'" not in str(failed)


def test_extract_without_headers_is_invalid_context() -> None:
    for empty in (None, [], {}):
        assert not _span_of(telemetry.extract_kafka_headers(empty)).is_valid
    assert telemetry.inject_kafka_headers(None) == []  # no active span: nothing injected


def test_grpc_metadata_round_trip() -> None:
    metadata = telemetry.inject_grpc_metadata([("authorization", "Bearer x")], context=_context())
    assert ("traceparent", TRACEPARENT) in metadata and ("authorization", "Bearer x") in metadata
    assert _span_of(telemetry.extract_grpc_metadata(tuple(metadata))).trace_id == TRACE_ID


def test_spans_are_exported_only_with_a_span_processor() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    assert not telemetry.spans_exported(tracer)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert telemetry.spans_exported(tracer)  # a processor added later is seen
    # Not the SDK's tracer: it cannot tell, so spans take the tracer's own path.
    assert telemetry.spans_exported(trace.NoOpTracer())


@pytest.mark.parametrize(
    "parent",
    [
        Context(),
        _context(),
        _context("vendor=a1"),
        trace.set_span_in_context(
            NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(TraceFlags.DEFAULT)))
        ),
    ],
    ids=["root", "sampled", "trace-state", "not-sampled"],
)
def test_an_unexported_span_carries_the_context_the_sdk_span_would(parent: Context) -> None:
    """The shortcut for spans nobody receives must propagate exactly what the SDK's span
    propagates: same trace id (new when there is no parent), flags and trace state."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    kind, attributes = trace.SpanKind.SERVER, {"rpc.system": "grpc"}
    sdk = tracer.start_span("s/m", context=parent, kind=kind, attributes=attributes)
    lean = telemetry.unexported_span(tracer, parent, "s/m", kind, attributes)
    ours, theirs = lean.get_span_context(), sdk.get_span_context()
    assert not lean.is_recording()
    assert ours.is_valid and not ours.is_remote and ours.span_id != SPAN_ID
    assert ours.trace_flags == theirs.trace_flags
    assert ours.trace_state == theirs.trace_state
    if trace.get_current_span(parent).get_span_context().is_valid:
        assert ours.trace_id == theirs.trace_id == TRACE_ID
    else:
        assert ours.trace_id != theirs.trace_id  # each a new random trace
    # Both travel on as the same traceparent, but for the span id.
    ours_header = telemetry.inject_grpc_metadata(context=trace.set_span_in_context(lean))
    theirs_header = telemetry.inject_grpc_metadata(context=trace.set_span_in_context(sdk))
    assert [k for k, _ in ours_header] == [k for k, _ in theirs_header]
    assert dict(ours_header)["traceparent"][-2:] == dict(theirs_header)["traceparent"][-2:]


def test_trace_context_message_round_trip() -> None:
    message = telemetry.trace_context_message(context=_context())
    assert message.traceparent == TRACEPARENT
    span = _span_of(telemetry.extract_trace_context_message(message))
    assert span.trace_id == TRACE_ID and span.span_id == SPAN_ID
    assert not _span_of(telemetry.extract_trace_context_message(None)).is_valid


# --- kafka ----------------------------------------------------------------------------------


def test_producer_config_is_idempotent_acks_all() -> None:
    config = kafka.producer_config(KafkaSettings(bootstrap_servers="k1:9092,k2:9092"))
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["linger.ms"] > 0
    assert "transactional.id" not in config


def test_producer_config_transactional_and_overrides() -> None:
    config = kafka.producer_config(
        KafkaSettings(), transactional_id="meter-0", client_id="meter", **{"linger.ms": 50}
    )
    assert config["transactional.id"] == "meter-0"
    assert config["client.id"] == "meter"
    assert config["linger.ms"] == 50
    with pytest.raises(ValueError):
        kafka.producer_config(
            KafkaSettings(), transactional_id="t", **{"enable.idempotence": False}
        )


def test_consumer_config_manual_commits_read_committed() -> None:
    config = kafka.consumer_config(KafkaSettings(), "ledger-writer")
    assert config["group.id"] == "ledger-writer"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["isolation.level"] == "read_committed"
    assert config["auto.offset.reset"] == "earliest"
    loose = kafka.consumer_config(KafkaSettings(), "g", read_committed=False)
    assert loose["isolation.level"] == "read_uncommitted"
    with pytest.raises(ValueError):
        kafka.consumer_config(KafkaSettings(), "")


def test_topic_names_take_the_prefix() -> None:
    prefixed = KafkaSettings(topic_prefix="test-42.")
    assert kafka.topic_name(prefixed, USAGE) == "test-42.residuals.usage.v1"
    assert kafka.topic_name(prefixed, "scratch") == "test-42.scratch"
    assert kafka.topic_name(KafkaSettings(), USAGE) == USAGE.name
    with pytest.raises(ValueError):
        kafka.topic_name(prefixed, "")


def test_kafka_settings_from_environment() -> None:
    settings = load(
        KafkaSettings,
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "RESIDUALS_TOPIC_PARTITIONS": "3"},
    )
    assert settings.topic_partitions == 3
    assert kafka.admin_config(settings) == {"bootstrap.servers": "b:1"}


# --- faust ----------------------------------------------------------------------------------


def test_faust_broker_urls() -> None:
    assert faust_app.broker_urls("127.0.0.1:19092") == ["kafka://127.0.0.1:19092"]
    assert faust_app.broker_urls("a:1, b:2,") == ["kafka://a:1", "kafka://b:2"]
    assert faust_app.broker_urls("kafka://a:1") == ["kafka://a:1"]
    with pytest.raises(ValueError):
        faust_app.broker_urls(" , ")


def test_faust_settings_at_least_once_no_web_memory_store() -> None:
    settings = faust_app.faust_settings(
        KafkaSettings(topic_partitions=4), data_dir="/tmp/x", web_port=None
    )
    assert settings["processing_guarantee"] == "at_least_once"
    assert settings["store"] == "memory://"
    assert settings["web_enabled"] is False
    assert settings["topic_partitions"] == 4
    assert settings["topic_replication_factor"] == 1
    assert settings["consumer_auto_offset_reset"] == "earliest"
    assert settings["env"] == {}
    with_web = faust_app.faust_settings(
        KafkaSettings(), data_dir="/tmp/x", web_port=6099, replication_factor=3
    )
    assert with_web["web_enabled"] is True and with_web["web_port"] == 6099
    assert with_web["topic_replication_factor"] == 3


def test_faust_app_ignores_faust_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORE", "rocksdb://")
    monkeypatch.setenv("WEB_PORT", "9999")
    monkeypatch.setenv("BROKER_URL", "kafka://elsewhere:1")
    app = faust_app.make_faust_app(
        "meter", KafkaSettings(bootstrap_servers="k:9", topic_prefix="t1."), data_dir="/tmp/x"
    )
    assert app.conf.id == "t1.meter"
    assert str(app.conf.store) == "memory:"
    assert [str(u) for u in app.conf.broker] == ["kafka://k:9"]
    assert app.conf.web_enabled is False


def test_faust_monitor_is_not_called_per_record() -> None:
    """The app's dependencies are what its worker starts; after they are built the
    per-record sensor calls reach no sensor (the monitor cost ~22 µs a record)."""
    app = faust_app.make_faust_app(
        "meter", KafkaSettings(bootstrap_servers="k:9", topic_prefix="t2."), data_dir="/tmp/x"
    )
    list(app.on_init_dependencies())
    list(app.on_init_dependencies())  # twice is harmless
    assert list(app.sensors) == []
    assert app.sensors.on_stream_event_in(None, 0, None, None) == {}  # type: ignore[arg-type]
    assert app.monitor is not None  # still there for faust's direct calls (commits)


class _Drain(faust_app.PromptDelivery, Service):
    """faust's consumer as far as prompt delivery needs it: a mode Service with the
    consumer's ``suspend_flow`` event."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def test_faust_consumer_delivers_promptly() -> None:
    app = faust_app.make_faust_app(
        "meter", KafkaSettings(bootstrap_servers="k:9", topic_prefix="t3."), data_dir="/tmp/x"
    )
    assert issubclass(app.transport.Consumer, faust_app.PromptDelivery)
    faust_app.with_prompt_delivery(app)  # idempotent: not wrapped twice
    assert app.transport.Consumer.__mro__.count(faust_app.PromptDelivery) == 1


def test_prompt_delivery_runs_a_ready_delivery_without_tasks() -> None:
    async def scenario() -> None:
        drain = _Drain()
        delivered: list[int] = []

        async def deliver(n: int) -> int:
            delivered.append(n)
            return n * 2

        loop = asyncio.get_running_loop()
        made = 0
        create_task = loop.create_task

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal made
            made += 1
            return create_task(*args, **kwargs)

        loop.create_task = counting  # type: ignore[method-assign]
        try:
            result = await drain.wait_first(deliver(7), drain.suspend_flow.wait())
        finally:
            loop.create_task = create_task  # type: ignore[method-assign]
        assert delivered == [7] and made == 0
        assert result.results == [14] and not result.stopped

    asyncio.run(scenario())


def test_prompt_delivery_that_must_wait_races_the_flow_suspension() -> None:
    async def scenario() -> None:
        drain = _Drain()
        room = asyncio.get_running_loop().create_future()
        outcome: list[str] = []

        async def deliver() -> str:
            try:
                await room  # a full stream buffer
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("delivered")
            return "ok"

        # Room frees up: the delivery resumes where it stopped and wins.
        waiting = asyncio.ensure_future(drain.wait_first(deliver(), drain.suspend_flow.wait()))
        await asyncio.sleep(0)
        room.set_result(None)
        result = await waiting
        assert outcome == ["delivered"] and result.results == ["ok"]

        # The flow is suspended first (a rebalance): the delivery is cancelled, as in faust.
        room = asyncio.get_running_loop().create_future()
        outcome.clear()
        waiting = asyncio.ensure_future(drain.wait_first(deliver(), drain.suspend_flow.wait()))
        await asyncio.sleep(0)
        drain.suspend_flow.set()
        result = await waiting
        await asyncio.sleep(0)
        assert outcome == ["cancelled"] and result.results == [True]

    asyncio.run(scenario())


def test_prompt_delivery_leaves_other_waits_and_a_suspended_flow_to_faust() -> None:
    async def scenario() -> None:
        drain = _Drain()
        ran: list[str] = []

        async def deliver() -> None:
            ran.append("delivery")

        # Both finish in faust's race (two winners); the prompt path would report one.
        drain.suspend_flow.set()  # suspended: faust's race decides, as before
        result = await drain.wait_first(deliver(), drain.suspend_flow.wait())
        assert len(result.done) == 2 and not result.stopped
        other = asyncio.Event()
        other.set()
        result = await drain.wait_first(deliver(), other.wait())  # not the drain's call
        assert len(result.done) == 2
        assert ran == ["delivery", "delivery"]

    asyncio.run(scenario())


# --- postgres -------------------------------------------------------------------------------


def test_pool_is_configured_but_not_opened() -> None:
    settings = PostgresSettings(dsn="postgresql://u@127.0.0.1:1/db", pool_min=2, pool_max=5)
    pool = postgres.make_pool(settings, application_name="ledger-writer")
    try:
        assert pool.closed  # building a pool must not need the database
        assert pool.min_size == 2 and pool.max_size == 5
        assert pool.kwargs["application_name"] == "ledger-writer"
        assert pool.name == "ledger-writer"
    finally:
        pool.close()


def test_kafka_security_settings_reach_every_client() -> None:
    from residuals.platform.config import ConfigError, KafkaSettings, load
    from residuals.platform.faust_app import faust_settings
    from residuals.platform.kafka import consumer_config, producer_config

    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "meter",
        "KAFKA_SASL_PASSWORD": "s3cret",
    }
    kafka = load(KafkaSettings, env)
    for config in (producer_config(kafka), consumer_config(kafka, "g")):
        assert config["security.protocol"] == "sasl_ssl"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (config["sasl.username"], config["sasl.password"]) == ("meter", "s3cret")
    credentials = faust_settings(kafka, data_dir="/tmp/x")["broker_credentials"]
    assert credentials.username == "meter" and credentials.ssl_context is not None
    assert "security.protocol" not in producer_config(load(KafkaSettings, {}))
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD is required with SASL_PLAINTEXT"):
        load(
            KafkaSettings, {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}
        )
