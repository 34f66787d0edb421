"""Trace context through the meter (residuals.meter.core), without Kafka.

With a tracer, each record gets a CONSUMER span ``meter.rate``, a child of the record's
``traceparent`` header (else of the envelope's ``trace``), and every output carries that
span. Without one (nothing exported), the incoming context is passed on unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from residuals.codecs.signing import sign_event
from residuals.codecs.usage import from_domain
from residuals.meter.core import Meter, Record
from residuals.v1 import common_pb2
from tests.support.builders import ev, licence, parsed
from tests.support.meter_core import KEY, Keys, State, record

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ENVELOPE_PARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"


def traced(raw: dict[str, Any], **headers: str) -> Record:
    base = record(raw)
    return replace(base, headers={**base.headers, **{k: v.encode() for k, v in headers.items()}})


def with_envelope_trace(raw: dict[str, Any]) -> Record:
    signed = sign_event(from_domain(parsed(raw)), "k1", KEY)
    signed.trace.CopyFrom(common_pb2.TraceContext(traceparent=ENVELOPE_PARENT))
    return replace(record(raw), value=signed.SerializeToString())


def tracing_meter() -> tuple[Meter, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lic = licence()
    return Meter({lic.licence_id: lic}, Keys(), tracer=provider.get_tracer("test")), exporter


def plain_meter() -> Meter:
    lic = licence()
    return Meter({lic.licence_id: lic}, Keys())


def test_without_a_tracer_the_incoming_context_is_passed_on_unchanged() -> None:
    decision = plain_meter().process(
        traced(ev("RENDER", category="political"), traceparent=PARENT, tracestate="k=v"), State()
    )
    assert decision.rated is not None and decision.alerts
    for carried in (decision.rated.trace, *(a.trace for a in decision.alerts)):
        assert (carried.traceparent, carried.tracestate) == (PARENT, "k=v")


def test_without_a_tracer_or_a_header_the_envelope_trace_is_passed_on() -> None:
    decision = plain_meter().process(with_envelope_trace(ev("RENDER")), State())
    assert decision.rated is not None
    assert decision.rated.trace.traceparent == ENVELOPE_PARENT


def test_without_any_context_nothing_is_carried() -> None:
    decision = plain_meter().process(record(ev("RENDER")), State())
    assert decision.rated is not None and not decision.rated.HasField("trace")


def test_the_span_is_a_child_of_the_header_and_the_parent_of_every_output() -> None:
    meter, exporter = tracing_meter()
    decision = meter.process(
        traced(ev("RENDER", category="political"), traceparent=PARENT), State()
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "meter.rate" and span.kind is SpanKind.CONSUMER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.attributes is not None
    assert span.attributes["residuals.outcome"] == "held"
    assert span.attributes["residuals.kind"] == "RENDER"
    assert span.attributes["residuals.licence_id"] == decision.rated.event.licence_id  # type: ignore[union-attr]
    mine = f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert decision.rated is not None and decision.rated.trace.traceparent == mine
    assert decision.alerts and all(a.trace.traceparent == mine for a in decision.alerts)


def test_the_envelope_trace_is_the_parent_when_the_record_has_no_header() -> None:
    meter, exporter = tracing_meter()
    meter.process(with_envelope_trace(ev("RENDER")), State())
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == "ab" * 16


def test_a_dead_letter_carries_the_span() -> None:
    meter, exporter = tracing_meter()
    bad = traced(ev("RENDER"), traceparent=PARENT)
    decision = meter.process(replace(bad, value=b"\xff not a proto"), State())
    (span,) = exporter.get_finished_spans()
    assert decision.dead is not None
    assert decision.dead.trace.traceparent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert span.attributes is not None and span.attributes["residuals.outcome"] == "dead"
