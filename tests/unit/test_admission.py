"""The one admission path: the gateway and the meter give every hostile record the same
verdict, the event model's bounds, trusted receipt time, and a fuzz of the judgement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.admission import Admitted, Refused, admit, trusted_trace
from residuals.codecs import receipt
from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.signing import public_key_bytes, sign_event
from residuals.demo.hostile import Hostile, Identity, corpus
from residuals.domain.bounds import decimal_problem, printable, text_problem, timestamp_problem
from residuals.domain.events import Rejection, parse_event
from residuals.domain.vocabulary import RejectReason
from residuals.ingest.admission import Admission, Status
from residuals.ingest.dedupe import RecentEvents
from residuals.ingest.directory import StaticDirectory, identity_licence
from residuals.meter.core import CREATE_TIME, Meter, Record
from residuals.v1 import common_pb2, usage_pb2
from tests.support.builders import licence

NOW = datetime(2026, 10, 7, 12, 0, tzinfo=UTC)
WHO = Identity(
    vendor="VEN-PIXEL",
    key_id="k-pixel",
    key=Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
    licence_id="LIC-1",
    avatar_id="AVA-1",
    other_vendor="VEN-ORBIT",
    other_key_id="k-orbit",
    other_key=Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))),
    other_licence="LIC-O",
    revoked_key_id="k-old",
    revoked_key=Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34))),
)
CORPUS = corpus(WHO, NOW)


def keys() -> dict[str, SigningKeyRecord]:
    return {
        WHO.key_id: SigningKeyRecord(WHO.key_id, WHO.vendor, public_key_bytes(WHO.key)),
        WHO.other_key_id: SigningKeyRecord(
            WHO.other_key_id, WHO.other_vendor, public_key_bytes(WHO.other_key)
        ),
        WHO.revoked_key_id: SigningKeyRecord(
            WHO.revoked_key_id,
            WHO.vendor,
            public_key_bytes(WHO.revoked_key),
            revoked_at=NOW - timedelta(days=1),
        ),
    }


def gateway() -> Admission:
    directory = StaticDirectory()
    directory.keys.update(keys())
    directory.licences[WHO.licence_id] = identity_licence(
        WHO.licence_id, "TAL-1", WHO.avatar_id, WHO.vendor, "USD"
    )
    directory.licences[WHO.other_licence] = identity_licence(
        WHO.other_licence, "TAL-2", "AVA-O", WHO.other_vendor, "USD"
    )
    return Admission(directory, directory, RecentEvents(1000))


class Keys:
    def __init__(self) -> None:
        self.keys = keys()

    def verifying_key(self, key_id: str) -> SigningKeyRecord | None:
        return self.keys.get(key_id)


def meter(**kwargs: object) -> Meter:
    mine = licence(licence_id=WHO.licence_id, vendor_id=WHO.vendor, avatar_id=WHO.avatar_id)
    theirs = licence(licence_id=WHO.other_licence, vendor_id=WHO.other_vendor, avatar_id="AVA-O")
    return Meter({mine.licence_id: mine, theirs.licence_id: theirs}, Keys(), **kwargs)  # type: ignore[arg-type]


class State:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.data[key] = value


def kafka_record(case: Hostile, offset: int = 0, timestamp: datetime = NOW) -> Record:
    headers = {"residuals-vendor": WHO.vendor.encode(), **dict(case.headers)}
    return Record(
        topic="usage",
        partition=0,
        offset=offset,
        key=case.key or WHO.licence_id.encode(),
        value=case.value,
        timestamp=timestamp,
        headers=headers,
    )


def meter_reason(case: Hostile) -> RejectReason | None:
    decision = meter().process(kafka_record(case), State())
    if decision.dead is None:
        return None
    name = common_pb2.RejectReason.Name(decision.dead.reason).removeprefix("REJECT_REASON_")
    return RejectReason(name)


def test_the_corpus_covers_at_least_thirty_kinds_of_bad_input() -> None:
    assert len({c.name for c in CORPUS}) == len(CORPUS) >= 40
    assert len({c.reason for c in CORPUS if c.reason}) >= 10


@pytest.mark.parametrize("case", [c for c in CORPUS if not c.kafka_only], ids=lambda c: c.name)
def test_gateway_and_meter_give_the_same_verdict(case: Hostile) -> None:
    assert case.value is not None
    verdict = gateway().judge(case.value, WHO.vendor, NOW)
    gateway_reason = verdict.reason if verdict.status is Status.REJECTED else None
    assert gateway_reason == case.reason, verdict.detail
    assert meter_reason(case) == case.reason


@pytest.mark.parametrize("case", [c for c in CORPUS if c.kafka_only], ids=lambda c: c.name)
def test_the_meter_judges_kafka_level_tricks(case: Hostile) -> None:
    assert meter_reason(case) == case.reason


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_every_refusal_is_safe_to_log_show_and_store(case: Hostile) -> None:
    decision = meter().process(kafka_record(case), State())
    if decision.dead is None:
        return
    dead = decision.dead
    for text in (dead.detail, dead.vendor_id, dead.event_id, dead.licence_id):
        assert text.isprintable() and "\x00" not in text, text[:80]
        assert len(text) <= 400
    assert dead.original == (case.value or b"")[: 64 * 1024]
    assert len(dead.SerializeToString()) < 80 * 1024


def test_a_forged_time_header_is_ignored_and_a_real_receipt_stamp_is_trusted() -> None:
    old = Record(
        "usage",
        0,
        0,
        WHO.licence_id.encode(),
        sign_event(_render(NOW - timedelta(days=40)), WHO.key_id, WHO.key).SerializeToString(),
        NOW,
        {"residuals-received-at": (NOW - timedelta(days=39)).isoformat().encode()},
    )
    assert meter().received_at(old) == NOW  # the broker's append time
    key = bytes(range(32))
    assert old.value is not None
    stamped = Record(
        old.topic,
        0,
        1,
        old.key,
        old.value,
        NOW,
        {receipt.RECEIPT_HEADER: receipt.stamp(key, NOW - timedelta(days=39), old.value)},
    )
    assert meter(receipt_key=key).received_at(stamped) == NOW - timedelta(days=39)
    assert meter(receipt_key=bytes(32)).received_at(stamped) == NOW  # not our key
    decision = meter(receipt_key=key).process(stamped, State())
    assert decision.dead is None  # judged at the stamped receipt: in the window
    assert meter().process(old, State()).dead is not None  # TOO_LATE at broker time


def test_a_stamp_cannot_move_to_other_bytes_or_be_malformed() -> None:
    key = bytes(range(32))
    stamp = receipt.stamp(key, NOW, b"event-a")
    assert receipt.verify(key, stamp, b"event-a") == NOW
    assert receipt.verify(key, stamp, b"event-b") is None
    assert receipt.verify(key, stamp.replace(b"2026", b"2027", 1), b"event-a") is None
    for junk in (b"", b";", b"\xff\xfe;00", b"x" * 5000, b"2026-10-07T12:00:00.000000Z;zz"):
        assert receipt.verify(key, junk, b"event-a") is None
    with pytest.raises(ValueError, match="32 to 64 bytes"):
        receipt.parse_key("00" * 16)


def test_producer_timestamps_are_not_trusted_on_a_create_time_topic() -> None:
    m = meter(clock=_Clock)
    record = Record("usage", 0, 0, b"LIC-1", b"", NOW - timedelta(days=300), {}, CREATE_TIME)
    assert m.received_at(record) == _Clock.fixed
    assert m.untrusted_timestamps == 1


class _Clock(datetime):
    fixed = NOW + timedelta(hours=1)

    @classmethod
    def now(cls, tz: object = None) -> _Clock:  # type: ignore[override]
        return cls.fixed  # type: ignore[return-value]


def _render(occurred: datetime) -> usage_pb2.UsageEvent:
    message = usage_pb2.UsageEvent(
        event_id=f"ev-{occurred.timestamp()}",
        vendor_id=WHO.vendor,
        kind=common_pb2.USAGE_KIND_RENDER,
        licence_id=WHO.licence_id,
        avatar_id=WHO.avatar_id,
        render_id="vid-1",
        category="product_demo",
        territory="GB",
    )
    message.occurred_at.FromDatetime(occurred)
    return message


# --- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("LIC-1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("a\x00b", False),
        ("a\x1b[31m", False),
        ("abc\u202e", False),
        ("zero\u200bwidth", False),
        ("café-Ω-日本", True),
        ("with space", True),
    ],
)
def test_ids_are_printable_and_bounded(value: str, ok: bool) -> None:
    assert (text_problem(value) is None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("12.40", True),
        ("999999999999999999.999999999", True),
        ("1000000000000000000", False),
        ("0.0000000001", False),
        ("1E+17", True),
        ("1E+18", False),
        ("NaN", False),
        ("Infinity", False),
        ("-1", False),
        ("9e999999", False),
    ],
)
def test_amounts_are_finite_and_bounded(text: str, ok: bool) -> None:
    assert (decimal_problem(Decimal(text)) is None) is ok


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [
        (946_684_800, 0, True),
        (946_684_799, 999_999_999, False),
        (253_402_300_799, 999_999_999, True),
        (253_402_300_800, 0, False),
        (1_790_000_000, -1, False),
        (1_790_000_000, 1_000_000_000, False),
        (2**62, 0, False),
        (-(2**62), 0, False),
    ],
)
def test_timestamps_are_checked_before_conversion(seconds: int, nanos: int, ok: bool) -> None:
    assert (timestamp_problem(seconds, nanos) is None) is ok


def test_case_files_get_the_same_bounds() -> None:
    base = {
        "event_id": "e",
        "vendor_id": "V",
        "kind": "AD_IMPRESSION",
        "licence_id": "L",
        "avatar_id": "A",
        "render_id": "r",
        "category": "c",
        "territory": "GB",
        "channel": "web",
        "occurred_at": "2026-10-01T00:00:00Z",
        "ad_revenue": "1.00",
    }
    assert not isinstance(parse_event(base), Rejection)
    for field, value, detail in [
        ("event_id", "e\x00", "event_id"),
        ("render_id", "r" * 200, "render_id is 200 characters"),
        ("ad_revenue", "1e40", "ad_revenue has more than 18 integer digits"),
        ("occurred_at", "1970-01-01T00:00:00Z", "occurred_at is outside"),
        ("channel", "web\u202e", "channel"),
    ]:
        parsed = parse_event({**base, field: value})
        assert isinstance(parsed, Rejection)
        assert parsed.reason is RejectReason.MALFORMED
        assert detail in parsed.detail
        assert parsed.detail.isprintable()


def test_printable_escapes_and_bounds_vendor_text() -> None:
    assert printable("ok") == "ok"
    assert printable("a\x1b[2Jb\x00\u202e") == "a\\x1b[2Jb\\x00\\u202e"
    assert printable(b"\xff\xfeok") == "\\xff\\xfeok"
    long = printable("x" * 1000, 10)
    assert long.startswith("x" * 10) and "990 more" in long


def test_trace_contexts_are_passed_on_only_when_well_formed() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert trusted_trace(good) == common_pb2.TraceContext(traceparent=good)
    assert trusted_trace(good, "\x00bad").tracestate == ""  # type: ignore[union-attr]
    for bad in ("", "00-zz", good.upper(), good + "0", "\x00" * 55, b"\xff" * 55):
        assert trusted_trace(bad) is None


# --- fuzz -----------------------------------------------------------------------------------


def _judge(raw: bytes) -> Admitted | Refused:
    directory = keys()
    return admit(
        raw,
        keys=directory.get,
        licences=lambda _id: None,
        received_at=NOW,
        vendor_id=WHO.vendor,
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_admission_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    verdict = _judge(raw)
    assert isinstance(verdict, Refused)
    assert verdict.detail.isprintable()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=512),
    position=st.integers(min_value=0, max_value=511),
    byte=st.integers(min_value=0, max_value=255),
)
def test_admission_never_raises_on_signed_mutated_payloads(
    payload: bytes, position: int, byte: int
) -> None:
    """Payloads the vendor really signed (so they reach the payload decoder), built from a
    valid event with one byte changed, or random."""
    valid = _render(NOW - timedelta(minutes=1)).SerializeToString()
    mutated = bytearray(valid)
    mutated[position % len(mutated)] = byte
    for body in (bytes(mutated), payload, valid + payload):
        envelope = usage_pb2.SignedUsageEvent(
            payload=body, signature=WHO.key.sign(body), key_id=WHO.key_id
        )
        verdict = _judge(envelope.SerializeToString())
        assert isinstance(verdict, Refused | Admitted)
        if isinstance(verdict, Refused):
            assert verdict.detail.isprintable()
            assert verdict.event_id == "" or text_problem(verdict.event_id) is None


# --- the SDK applies the same bounds before signing -------------------------------------------

_SDK_FIELDS = {
    "event_id": ["e-1", "x" * 128, "x" * 129, "e\x00", "e\x1b[0m", "e\u202e", "  e-1  "],
    "render_id": ["vid-1", "v" * 200, "vid\n2"],
    "territory": ["GB", "G\x7f"],
    "ad_revenue": ["1.25", "0.000000001", "0.0000000001", "1e17", "1e18", "123456789012345678"],
    "occurred_at": [
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    ],
}


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in _SDK_FIELDS.items() for v in values]
)
def test_the_sdk_refuses_exactly_what_the_platform_would(name: str, value: object) -> None:
    from residuals_sdk import events as build

    from residuals.codecs.usage import to_raw

    fields: dict[str, object] = {
        "event_id": "e-1",
        "vendor_id": WHO.vendor,
        "licence_id": WHO.licence_id,
        "avatar_id": WHO.avatar_id,
        "render_id": "vid-1",
        "category": "product_demo",
        "territory": "GB",
        "channel": "web",
        "ad_revenue": "1.00",
        "occurred_at": NOW,
        name: value,
    }
    try:
        message = build.ad_impression(**fields)  # type: ignore[arg-type]
    except ValueError:
        sdk_accepts = False
    else:
        sdk_accepts = True
        platform = parse_event(to_raw(usage_pb2.UsageEvent.FromString(message.SerializeToString())))
        assert not isinstance(platform, Rejection), platform
    if not sdk_accepts:  # the platform refuses it too, as MALFORMED
        raw = {**fields, "kind": "AD_IMPRESSION"}
        if isinstance(value, datetime):
            raw["occurred_at"] = value
        platform = parse_event(raw)
        assert isinstance(platform, Rejection)
        assert platform.reason is RejectReason.MALFORMED


def test_a_redriven_dead_letter_keeps_its_receipt_time_for_holders_of_the_key() -> None:
    from residuals.cli.dlq import redrive_headers
    from residuals.codecs.timestamps import set_timestamp

    letter = usage_pb2.DeadLetter(vendor_id=WHO.vendor, original=b"the original bytes")
    set_timestamp(letter.received_at, NOW - timedelta(days=30))
    key = bytes(range(32))
    headers = dict(redrive_headers(letter, key))
    assert headers[b"residuals-vendor"] == WHO.vendor.encode()
    stamp = headers[receipt.RECEIPT_HEADER.encode()]
    assert receipt.verify(key, stamp, b"the original bytes") == NOW - timedelta(days=30)
    assert dict(redrive_headers(letter, None)) == {b"residuals-vendor": WHO.vendor.encode()}
