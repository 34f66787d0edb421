"""The ledger writer's decoders never raise anything but their own error, a dead letter
counts in a period nobody can choose for it, and operator output is terminal-safe (pure
logic: bytes in, rows or text out)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.cli.dlq import Entry, redrive_problem
from residuals.cli.quarantine import decoded
from residuals.codecs.inspect import describe_message
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import TEXT_FIELDS, PayloadError, from_domain, to_raw
from residuals.domain.events import UsageEvent, parse_event
from residuals.ledger.records import (
    UndecodableRecord,
    decode_dead,
    decode_quarantined,
    decode_rated,
    event_period,
    normalised_event,
    published_at,
)
from residuals.platform.quarantine import Quarantined
from residuals.platform.redrive import safe, table
from residuals.v1 import common_pb2, usage_pb2

RECEIVED = datetime(2026, 10, 3, 12, 0, tzinfo=UTC)
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\x00"


def _original(seconds: int | None = None, nanos: int = 0) -> bytes:
    payload = usage_pb2.UsageEvent(event_id="e", vendor_id="v")
    if seconds is not None:
        payload.occurred_at.seconds = seconds
        payload.occurred_at.nanos = nanos
    return usage_pb2.SignedUsageEvent(payload=payload.SerializeToString()).SerializeToString()


def _at(moment: datetime) -> bytes:
    return _original(int(moment.timestamp()))


@pytest.mark.parametrize(
    ("original", "period", "why"),
    [
        (_at(RECEIVED - timedelta(days=3)), "2026-09", "in the window: the event's period"),
        (_at(RECEIVED + timedelta(minutes=4)), "2026-10", "a few minutes ahead is allowed"),
        (_at(RECEIVED - timedelta(days=40)), "2026-10", "older than the replay window"),
        (_at(datetime(2100, 1, 1, tzinfo=UTC)), "2026-10", "year 2100: a period nobody closes"),
        (_original(1_790_000_000, -1), "2026-10", "nanos -1"),
        (_original(2**62), "2026-10", "seconds 2^62"),
        (_original(-(2**62)), "2026-10", "seconds -2^62"),
        (_original(), "2026-10", "no occurred_at"),
        (b"\xff\xff junk", "2026-10", "not an envelope"),
        (b"", "2026-10", "nothing"),
    ],
)
def test_a_dead_letter_counts_in_its_events_period_only_when_that_is_believable(
    original: bytes, period: str, why: str
) -> None:
    assert event_period(original, RECEIVED) == period, why


def test_the_dead_letter_window_is_measured_from_its_receipt() -> None:
    received = datetime(2026, 10, 1, 0, 30, tzinfo=UTC)
    assert event_period(_at(received - timedelta(hours=1)), received) == "2026-09"


def _dead(**fields: object) -> bytes:
    letter = usage_pb2.DeadLetter(
        reason=common_pb2.REJECT_REASON_MALFORMED, detail="d", vendor_id="VEN", event_id="e"
    )
    for name, value in fields.items():
        setattr(letter, name, value)
    if "received_at" not in fields:
        set_timestamp(letter.received_at, RECEIVED)
    return letter.SerializeToString()


def test_dead_letter_text_is_escaped_and_absurd_times_fall_back() -> None:
    dead = decode_dead(_dead(detail=HOSTILE, vendor_id="V" * 500, event_id="a\x00b"), "dlq", 0, 7)
    assert dead.detail == "\\x1b]0;pwned\\x07\\x1b[2J\\u202egnp.exe\\x00"
    assert dead.vendor_id.startswith("V" * 128) and dead.vendor_id.endswith("…(+372 more)")
    assert dead.event_id == "a\\x00b"
    letter = usage_pb2.DeadLetter(reason=common_pb2.REJECT_REASON_MALFORMED)
    letter.received_at.nanos = -1
    fallback = decode_dead(letter.SerializeToString(), "dlq", 0, 7, None, (1, 1_790_000_000_000))
    assert fallback.received_at == datetime.fromtimestamp(1_790_000_000, UTC)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "tombstone"),
        (b"\xff\xff", "not a DeadLetter"),
        (_dead(reason=999), "unknown reject reason 999"),
        (_dead(reason=0), "unknown reject reason 0"),
    ],
)
def test_dead_letters_that_cannot_be_stored(value: bytes | None, fragment: str) -> None:
    with pytest.raises(UndecodableRecord, match=fragment):
        decode_dead(value, "dlq", 0, 1)


def test_published_at_never_raises() -> None:
    for header in (b"9" * 5000, b"-1", b"x", b"99999999999999999999", b""):
        published_at([("residuals-published-at", header)])
    assert published_at(None, (1, 2**62)) is None
    assert published_at(None, (1, 1_790_000_000_123)) == datetime(
        2026, 9, 21, 14, 13, 20, 123000, tzinfo=UTC
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.none(), st.binary(max_size=300)))
def test_decoders_raise_only_their_own_error_whatever_the_bytes(value: bytes | None) -> None:
    for decode in (
        lambda: decode_rated(value, "usage"),
        lambda: decode_dead(value, "dlq", 0, 1),
        lambda: decode_quarantined(value),
    ):
        with contextlib.suppress(UndecodableRecord):
            decode()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    seconds=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    nanos=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    text=st.text(max_size=200),
    enum=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_decoders_survive_hostile_fields(seconds: int, nanos: int, text: str, enum: int) -> None:
    rated = usage_pb2.RatedUsage(outcome=enum, estimated_amount=text, currency_code=text)  # type: ignore[arg-type]
    rated.event.event_id = text
    rated.event.occurred_at.seconds = seconds
    rated.event.occurred_at.nanos = nanos
    rated.received_at.seconds = seconds
    letter = usage_pb2.DeadLetter(reason=enum, detail=text, original=_original(seconds, nanos))  # type: ignore[arg-type]
    letter.received_at.seconds = seconds
    letter.received_at.nanos = nanos
    relayed = Quarantined("c", "t", 0, 0, None, None, text).to_proto()
    relayed.quarantined_at.seconds = seconds
    relayed.quarantined_at.nanos = nanos
    with contextlib.suppress(UndecodableRecord):
        decode_rated(rated.SerializeToString(), "usage")
    try:
        dead = decode_dead(letter.SerializeToString(), "dlq", 0, 1)
        assert "\x00" not in dead.detail + dead.event_id + dead.vendor_id
    except UndecodableRecord:
        pass
    assert decode_quarantined(relayed.SerializeToString()).consumer == "c"


# --- terminal-safe operator output --------------------------------------------------------


def test_tables_and_json_escape_ansi_control_and_bidi() -> None:
    rows = [{"vendor_id": f"VEN{HOSTILE}", "detail": "x" * 200 + HOSTILE}]
    text = table(rows, ("vendor_id", "detail"), wide="detail")
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text and "\x00" not in text
    assert "VEN\\x1b]0;pwned\\x07" in text and text.splitlines()[1].endswith("...")
    shown = safe({"a": [HOSTILE, {"k\x1b": b"\x00\xff"}], "n": 3, "none": None})
    assert shown == {
        "a": ["\\x1b]0;pwned\\x07\\x1b[2J\\u202egnp.exe\\x00", {"k\\x1b": "\\x00\\xff"}],
        "n": 3,
        "none": None,
    }


def test_quarantined_values_are_decoded_by_topic_as_far_as_they_go() -> None:
    def row(topic: str, value: bytes | None) -> Quarantined:
        return Quarantined("ledger", topic, 0, 0, None, value, "e")

    rated = usage_pb2.RatedUsage(currency_code="USD")
    rated.received_at.nanos = -1  # JSON cannot say this: shown as protobuf text
    shown = decoded(row("p.residuals.usage.rated.v1", rated.SerializeToString()), "p.")
    assert "nanos: -1" in shown["decoded"] and 'currency_code: "USD"' in shown["decoded"]
    assert decoded(row("p.residuals.usage.v1", None), "p.")["decoded"].startswith("tombstone")
    garbage = decoded(row("p.residuals.alerts.v1", b"\xff\xff"), "p.")
    assert garbage["hex"] == "ffff" and garbage["decoded"].startswith("not a residuals.v1.Alert")
    unknown = decoded(row("elsewhere", b"\x01"), "p.")
    assert unknown == {
        "decoded": "no known message type for topic elsewhere",
        "bytes": 1,
        "hex": "01",
    }
    assert describe_message(usage_pb2.DeadLetter, None)["decoded"].startswith("tombstone")


def test_only_unprocessable_dead_letters_from_the_usage_topic_are_redriven() -> None:
    def entry(reason: int, topic: str = "usage", original: bytes = b"x") -> Entry:
        letter = usage_pb2.DeadLetter(reason=reason, source_topic=topic, original=original)  # type: ignore[arg-type]
        return Entry(0, 1, RECEIVED, letter.SerializeToString(), letter)

    assert redrive_problem(entry(common_pb2.REJECT_REASON_UNPROCESSABLE), "usage") is None
    assert "verdict" in str(redrive_problem(entry(common_pb2.REJECT_REASON_BAD_SIGNATURE), "usage"))
    assert "not read from" in str(
        redrive_problem(entry(common_pb2.REJECT_REASON_UNPROCESSABLE, "other"), "usage")
    )
    assert "no original" in str(
        redrive_problem(entry(common_pb2.REJECT_REASON_UNPROCESSABLE, original=b""), "usage")
    )
    assert redrive_problem(Entry(0, 1, RECEIVED, b"\xff", None), "usage") == "not a DeadLetter"


# --- the rated record's event, read without parsing it again -------------------------------

_TEXTS = st.one_of(
    st.sampled_from(["", " ", "a", " a", "a ", "a b", "x" * 128, "x" * 129, "é", "\\", "\t"]),
    st.text(max_size=12),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([1, 2, 3, 4, 1, 2, 3, 4, 0, 5]),
    changes=st.lists(st.tuples(st.integers(min_value=0, max_value=10), _TEXTS), max_size=3),
    seconds=st.sampled_from(
        [1_790_000_000, 1_790_000_000, 946_684_800, 253_402_300_799, 946_684_799, 2**40]
    ),
    nanos=st.sampled_from([0, 0, 123_456_789, 999_999_999, -1, 1_000_000_000]),
    quantity=st.one_of(st.none(), st.sampled_from([0, 1, 2, 1_000_000, 1_000_001, 2**32 - 1])),
    viewable=st.one_of(st.none(), st.booleans()),
    ivt=st.one_of(st.none(), st.booleans()),
    revenue=st.one_of(
        st.none(),
        st.sampled_from(["0", "1.25", "0.000000001", "1e3", "1_0", "1.2345678901"]),
        st.sampled_from(["-1", "NaN", "Infinity", " 2", "3 EUR", "", "1e19", "x"]),
        st.text(max_size=8),
    ),
    stamped=st.sampled_from([True, True, True, False]),
)
def test_a_normalised_event_is_read_as_parse_event_reads_it(
    kind: int,
    changes: list[tuple[int, str]],
    seconds: int,
    nanos: int,
    quantity: int | None,
    viewable: bool | None,
    ivt: bool | None,
    revenue: str | None,
    stamped: bool,
) -> None:
    """The shortcut never decides differently from ``parse_event``: equal events (field
    by field, down to the digits of a decimal), or it declines and the parser decides.
    Texts are plain ids but for a few changed ones."""
    texts = [f"id-{i}" for i in range(11)]
    for index, text in changes:
        texts[index] = text
    event = usage_pb2.UsageEvent(kind=kind)  # type: ignore[arg-type]
    names = TEXT_FIELDS
    for name, text in zip(names, texts, strict=True):
        setattr(event, name, text)
    if stamped:
        event.occurred_at.seconds = seconds
        event.occurred_at.nanos = nanos
    for name, value in (("quantity", quantity), ("viewable", viewable), ("ivt", ivt)):
        if value is not None:
            setattr(event, name, value)
    if revenue is not None:
        event.ad_revenue = revenue
    try:
        expected: object = parse_event(to_raw(event))
    except PayloadError:
        expected = None
    fast = normalised_event(event)
    if fast is not None:
        assert isinstance(expected, UsageEvent)
        assert repr(tuple(fast)) == repr(tuple(expected))
        assert fast.occurred_at.tzinfo is expected.occurred_at.tzinfo
    else:  # plain ids of a render, view or retraction are declined only when invalid
        plain = not changes and stamped and kind in (1, 2, 4) and 0 <= nanos < 10**9
        valid_quantity = quantity is None or 1 <= quantity <= 1_000_000
        assert not (plain and valid_quantity and 946_684_800 <= seconds <= 253_402_300_799)


def test_what_the_meter_forwards_takes_the_shortcut() -> None:
    """Events as a vendor's SDK sends them (normal form) are not parsed twice."""
    when = datetime(2026, 10, 3, 12, 0, 0, 123456, tzinfo=UTC)
    for raw in (
        {"kind": "RENDER", "licence_id": "L", "avatar_id": "A", "render_id": "r"},
        {"kind": "VIEW", "channel": "web", "quantity": 3, "viewable": False, "ivt": True},
        {"kind": "AD_IMPRESSION", "channel": "web", "ad_revenue": "1.50", "currency": "EUR"},
        {"kind": "RETRACTION", "original_event_id": "e0"},
    ):
        base = {
            "event_id": "e1",
            "vendor_id": "v",
            "licence_id": "L",
            "avatar_id": "A",
            "render_id": "r",
            "category": "product_demo",
            "territory": "GB",
            "occurred_at": when,
            "approval_id": "apr-1",
        }
        parsed = parse_event({**base, **raw})
        assert isinstance(parsed, UsageEvent), parsed
        message = from_domain(parsed)
        assert normalised_event(message) == parsed == parse_event(to_raw(message))
