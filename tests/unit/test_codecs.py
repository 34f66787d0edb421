"""Wire contracts round-trip the domain exactly: licences and usage events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.codecs import licences as licence_codec
from residuals.codecs import usage as usage_codec
from residuals.codecs.timestamps import set_timestamp, to_datetime
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.v1 import common_pb2, licence_pb2, usage_pb2

CASES = sorted((Path(__file__).parents[1] / "data" / "royalty-cases").glob("*.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_every_case_licence_survives_the_wire(case: Path) -> None:
    for spec in yaml.safe_load(case.read_text())["licences"]:
        licence = parse_licence(spec)
        wire = licence_pb2.Licence.FromString(licence_codec.to_proto(licence).SerializeToString())
        assert licence_codec.from_proto(wire) == licence


def test_suspensions_and_reinstatements_survive_the_wire() -> None:
    spec = yaml.safe_load(CASES[0].read_text())["licences"][0]
    spec["suspensions"] = [{"from": "2026-10-03T00:00:00Z", "until": "2026-10-04T00:00:00Z"}]
    spec["reinstatements"] = ["2026-10-20T00:00:00Z"]
    licence = parse_licence(spec)
    wire = licence_codec.from_proto(licence_codec.to_proto(licence))
    assert wire.suspensions[0] == licence.suspensions[0]
    # the reinstatement travels as an automatic window that ended where it began
    assert wire.reinstated_between(
        datetime(2026, 10, 19, tzinfo=UTC), datetime(2026, 10, 21, tzinfo=UTC)
    )
    assert not wire.suspended_at(datetime(2026, 10, 20, tzinfo=UTC))


def test_automatic_suspension_counts_by_the_period_being_computed() -> None:
    spec = yaml.safe_load(CASES[0].read_text())["licences"][0]
    message = licence_codec.to_proto(parse_licence(spec))
    auto = message.suspensions.add(automatic=True)
    auto.starts_at.FromDatetime(datetime(2026, 9, 20, tzinfo=UTC))
    licence = licence_codec.from_proto(message)
    october, september = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC)
    # begun before October: carried into October's statement like any window
    assert licence.suspended_at(october, period_start=october)
    # begun inside September: the rules re-derive it from September's events
    assert not licence.suspended_at(datetime(2026, 9, 25, tzinfo=UTC), period_start=september)
    # the real-time meter follows the registry
    assert licence.suspended_at(datetime(2026, 9, 25, tzinfo=UTC))


RAW_EVENTS = [
    {"event_id": "r1", "vendor_id": "V", "kind": "RENDER", "licence_id": "L", "avatar_id": "A",
     "render_id": "x", "category": "c", "territory": "US",
     "occurred_at": "2026-10-01T10:00:00.123456Z"},
    {"event_id": "v1", "vendor_id": "V", "kind": "VIEW", "licence_id": "L", "avatar_id": "A",
     "render_id": "x", "category": "c", "territory": "US", "channel": "web", "quantity": 250,
     "viewable": False, "ivt": True, "occurred_at": "2026-10-01T10:00:00Z"},
    {"event_id": "a1", "vendor_id": "V", "kind": "AD_IMPRESSION", "licence_id": "L",
     "avatar_id": "A",
     "render_id": "x", "category": "c", "territory": "US", "channel": "web", "quantity": 9,
     "ad_revenue": "0.0300", "ad_revenue_currency": "EUR", "occurred_at": "2026-10-01T10:00:00Z"},
    {"event_id": "x1", "vendor_id": "V", "kind": "RETRACTION", "original_event_id": "a1",
     "occurred_at": "2026-10-02T00:00:00Z"},
]  # fmt: skip


@pytest.mark.parametrize("raw", RAW_EVENTS, ids=[r["event_id"] for r in RAW_EVENTS])
def test_usage_events_round_trip_through_protobuf(raw: dict[str, object]) -> None:
    event = parse_event(raw)
    assert isinstance(event, UsageEvent)
    payload = usage_codec.payload_bytes(usage_codec.from_domain(event))
    assert parse_event(usage_codec.to_raw(usage_pb2.UsageEvent.FromString(payload))) == event


def test_decoding_leaves_judgement_to_the_rules() -> None:
    unset_kind = usage_pb2.UsageEvent(event_id="e", vendor_id="V")
    assert usage_codec.to_raw(unset_kind)["kind"] == ""
    rejected = parse_event(usage_codec.to_raw(unset_kind))
    assert isinstance(rejected, Rejection) and rejected.reason.value == "MALFORMED"
    zero = usage_pb2.UsageEvent(
        event_id="e", vendor_id="V", kind=common_pb2.USAGE_KIND_VIEW, licence_id="L", avatar_id="A",
        render_id="r", category="c", territory="US", channel="web", quantity=0,
    )  # fmt: skip
    zero.occurred_at.GetCurrentTime()
    assert usage_codec.to_raw(zero)["quantity"] == 0
    rejected = parse_event(usage_codec.to_raw(zero))
    assert isinstance(rejected, Rejection) and rejected.reason.value == "INVALID_QUANTITY"
    assert usage_codec.kind_name(99) == ""


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 10, 5, 10, 0, 0, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, 1, 5, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_timestamps_round_trip_exactly_and_match_the_float_free_definition(
    value: datetime,
) -> None:
    stamp = Timestamp()
    set_timestamp(stamp, value)
    assert 0 <= stamp.nanos < 1_000_000_000
    assert stamp.seconds == int(value.replace(microsecond=0).timestamp())
    assert stamp.nanos == value.microsecond * 1000
    assert to_datetime(stamp) == value


def test_one_usage_kind_mapping_covers_every_domain_kind() -> None:
    from residuals.codecs.usage import kind_name, kind_value
    from residuals.domain.events import Kind

    for kind in Kind:
        assert kind_name(kind_value(kind.value)) == kind.value
    assert kind_name(0) == "" and kind_name(99) == ""
    with pytest.raises(ValueError):
        kind_value("SUBSCRIPTION")


# --- parse_message: parse_event(to_raw(...)) without the mapping, for plain events ---------

_TEXTS = st.one_of(
    st.sampled_from(["", "e-1", "VEN-1", "LIC-1", "web", "US", "EUR", "A" * 128, "A" * 129]),
    st.sampled_from([" e-1", "e-1 ", "e 1", "\te-1", "e-\x001", "e-\x1b[31m", "\u00a0x", "é-ü"]),
    st.text(max_size=6),
)
_REVENUES = st.one_of(
    st.sampled_from(["12.40", "0.35", "1000"]),
    st.sampled_from(
        ["12.40", "0", "-1", "1e5", "9e999999", "NaN", "Infinity", " 3.5 ", "12.40 EUR",
         "1_000", "abc", "0.0000000001", "", "1" * 19, "3.50  US D", "7 \x00"]
    ),
    st.text(max_size=8),
)  # fmt: skip


@st.composite
def _messages(draw: st.DrawFn) -> usage_pb2.UsageEvent:
    kind = draw(st.one_of(st.integers(1, 3), st.integers(0, 5)))
    message = usage_pb2.UsageEvent(kind=kind)  # type: ignore[arg-type]
    for name in usage_codec.TEXT_FIELDS:
        plain = draw(st.integers(0, 5)) > 0
        setattr(message, name, f"{name[:3]}-1" if plain else draw(_TEXTS))
    if draw(st.integers(0, 9)):
        wild = draw(st.integers(0, 3)) == 0
        message.occurred_at.seconds = draw(st.integers(-(2**40), 2**40)) if wild else 1_790_000_000
        message.occurred_at.nanos = draw(st.integers(-5, 10**9 + 5)) if wild else 999_999_999
    if draw(st.booleans()):
        message.quantity = draw(st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        message.viewable = draw(st.booleans())
    if draw(st.booleans()):
        message.ivt = draw(st.booleans())
    if draw(st.booleans()):
        message.ad_revenue = draw(_REVENUES)
    return message


def _general(message: usage_pb2.UsageEvent) -> str:
    try:
        return repr(parse_event(usage_codec.to_raw(message)))
    except usage_codec.PayloadError as error:
        return f"PayloadError({error})"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_parse_message_decides_exactly_as_parse_event_of_to_raw(
    message: usage_pb2.UsageEvent,
) -> None:
    try:
        fast = repr(usage_codec.parse_message(message))
    except usage_codec.PayloadError as error:
        fast = f"PayloadError({error})"
    assert fast == _general(message)  # repr: Decimal('1.0') == Decimal('1.00') otherwise


def test_parse_message_builds_plain_events_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    message = usage_pb2.UsageEvent(
        event_id="e-1",
        vendor_id="VEN-1",
        kind=common_pb2.USAGE_KIND_AD_IMPRESSION,
        licence_id="LIC-1",
        avatar_id="AVA-1",
        render_id="r-1",
        category="education",
        territory="US",
        channel="web",
        quantity=3,
        ad_revenue="12.40",
        ad_revenue_currency="EUR",
    )
    message.occurred_at.seconds = 1_790_000_000
    general = parse_event(usage_codec.to_raw(message))
    monkeypatch.setattr(usage_codec, "to_raw", None)  # the general path is not taken
    event = usage_codec.parse_message(message)
    assert isinstance(event, UsageEvent) and repr(event) == repr(general)
