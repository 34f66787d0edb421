"""The ingest gateway's pure parts: admission checks and their order, request framing,
rate limiting, duplicate cache, TTL cache; and a fuzz of the whole decoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from residuals_sdk import SigningKey
from residuals_sdk import events as build
from residuals_sdk.signing import sign_batch, sign_event
from residuals_sdk.transports.grpc import encode_batch

from residuals.codecs.signed import SigningKeyRecord
from residuals.domain.vocabulary import RejectReason
from residuals.ingest.admission import Admission, Status, Verdict
from residuals.ingest.cache import TtlCache
from residuals.ingest.dedupe import RecentEvents
from residuals.ingest.directory import StaticDirectory, identity_licence
from residuals.ingest.ratelimit import VendorRateLimiter
from residuals.ingest.wire import split_events
from residuals.v1 import common_pb2, usage_pb2

NOW = datetime(2026, 10, 7, 12, 0, tzinfo=UTC)
VENDOR = "VEN-PIXEL"
KEY = SigningKey.from_private_bytes("k-pixel", bytes(range(32)))
OTHER_KEY = SigningKey.from_private_bytes("k-orbit", bytes(range(1, 33)))


def directory() -> StaticDirectory:
    d = StaticDirectory()
    d.keys["k-pixel"] = SigningKeyRecord("k-pixel", VENDOR, KEY.public_key_bytes())
    d.keys["k-orbit"] = SigningKeyRecord("k-orbit", "VEN-ORBIT", OTHER_KEY.public_key_bytes())
    d.keys["k-old"] = SigningKeyRecord(
        "k-old", VENDOR, KEY.public_key_bytes(), revoked_at=NOW - timedelta(days=1)
    )
    d.licences["LIC-1"] = identity_licence("LIC-1", "TAL", "AVA-1", VENDOR, "USD")
    d.licences["LIC-O"] = identity_licence("LIC-O", "TAL", "AVA-O", "VEN-ORBIT", "USD")
    return d


def admission(**kwargs: Any) -> Admission:
    d = directory()
    return Admission(d, d, RecentEvents(100), **kwargs)


def render(**overrides: Any) -> usage_pb2.UsageEvent:
    fields: dict[str, Any] = {
        "event_id": "e-1",
        "vendor_id": VENDOR,
        "licence_id": "LIC-1",
        "avatar_id": "AVA-1",
        "render_id": "vid-1",
        "category": "product_demo",
        "territory": "GB",
        "occurred_at": NOW - timedelta(minutes=1),
    }
    fields.update(overrides)
    return build.render(**fields)


def blank(event: usage_pb2.UsageEvent, name: str) -> usage_pb2.UsageEvent:
    """The event with a field set to whitespace (the SDK's builders refuse that)."""
    setattr(event, name, " ")
    return event


def judge(raw: bytes, gate: Admission | None = None) -> Verdict:
    return (gate or admission()).judge(raw, VENDOR, NOW)


def signed(event: usage_pb2.UsageEvent, key: SigningKey = KEY) -> bytes:
    return sign_event(event, key).SerializeToString()


def envelope_of(payload: bytes, key: SigningKey = KEY, key_id: str | None = None) -> bytes:
    return usage_pb2.SignedUsageEvent(
        payload=payload, signature=key.sign(payload), key_id=key_id or key.key_id
    ).SerializeToString()


# --- admission ---------------------------------------------------------------------------


def test_a_good_event_is_accepted_with_its_routing() -> None:
    verdict = judge(signed(render()))
    assert verdict.status is Status.ACCEPTED
    assert (verdict.event_id, verdict.licence_id, verdict.routing_key) == ("e-1", "LIC-1", "LIC-1")


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"\x0a" * 70_000, RejectReason.OVERSIZED, "70,000 bytes"),
        (b"\xff\xff", RejectReason.MALFORMED, "not a SignedUsageEvent"),
        (signed(render(), OTHER_KEY), RejectReason.BAD_SIGNATURE, "not registered to vendor"),
        (envelope_of(b"\x0a\x01x", key_id="k-missing"), RejectReason.BAD_SIGNATURE, "unknown"),
        (
            envelope_of(render().SerializeToString(), key_id="k-old"),
            RejectReason.BAD_SIGNATURE,
            "revoked",
        ),
        (
            envelope_of(b"\x0a\x03abc", OTHER_KEY, "k-pixel"),
            RejectReason.BAD_SIGNATURE,
            "does not match",
        ),
        (envelope_of(b"\x0a\x05ab"), RejectReason.MALFORMED, "payload is not a UsageEvent"),
        (
            envelope_of(render().SerializeToString() + b"\x5a\x01x"),
            RejectReason.MALFORMED,
            "quantity (11) has the wrong wire type",
        ),
        (
            envelope_of(render().SerializeToString() + b"\x52\x03\x0a\x01x"),
            RejectReason.MALFORMED,
            "occurred_at: field seconds (1) has the wrong wire type",
        ),
        (signed(blank(render(), "territory")), RejectReason.MALFORMED, "without territory"),
        (
            envelope_of(render().SerializeToString() + b"\x58\x00"),
            RejectReason.INVALID_QUANTITY,
            "quantity 0",
        ),
        (signed(render(occurred_at=NOW - timedelta(days=36))), RejectReason.TOO_LATE, "35 days"),
        (
            signed(render(occurred_at=NOW + timedelta(minutes=6))),
            RejectReason.IN_FUTURE,
            "5 minutes",
        ),
        (signed(render(licence_id="LIC-X")), RejectReason.UNKNOWN_LICENCE, "LIC-X"),
        (signed(render(licence_id="LIC-O")), RejectReason.VENDOR_MISMATCH, "licensee"),
        (signed(render(vendor_id="VEN-ORBIT")), RejectReason.VENDOR_MISMATCH, "signed by"),
        (signed(render(avatar_id="AVA-O")), RejectReason.AVATAR_MISMATCH, "AVA-O"),
    ],
)
def test_each_bad_event_gets_its_reason(raw: bytes, reason: RejectReason, detail: str) -> None:
    verdict = judge(raw)
    assert verdict.status is Status.REJECTED
    assert verdict.reason is reason
    assert detail in verdict.detail
    assert verdict.raw == raw


def test_batch_signed_events_are_accepted_one_by_one_and_tampered_ones_refused() -> None:
    """The SDK's publish_many envelopes: one signature over a Merkle root, a proof each."""
    gate = admission()
    envelopes = sign_batch([render(event_id=f"b-{i}", render_id=f"v-{i}") for i in range(9)], KEY)
    assert {e.batch.leaf_count for e in envelopes} == {9}
    verdicts = [judge(e.SerializeToString(), gate) for e in envelopes]
    assert [v.status for v in verdicts] == [Status.ACCEPTED] * 9
    assert [v.event_id for v in verdicts] == [f"b-{i}" for i in range(9)]

    moved = usage_pb2.SignedUsageEvent()
    moved.CopyFrom(envelopes[3])
    moved.batch.leaf_index = 2
    verdict = judge(moved.SerializeToString(), gate)
    assert verdict.reason is RejectReason.BAD_SIGNATURE
    assert "batch signature does not match the root proven for leaf 2 of 9" in verdict.detail
    short = usage_pb2.SignedUsageEvent()
    short.CopyFrom(envelopes[4])
    del short.batch.audit_path[-1]
    verdict = judge(short.SerializeToString(), gate)
    assert verdict.reason is RejectReason.BAD_SIGNATURE
    assert "batch audit_path has 3 hashes, leaf 4 of 9 needs 4" in verdict.detail
    # Another vendor's key signing the batch: refused like a per-event signature.
    foreign = sign_batch([render(event_id="f-1"), render(event_id="f-2")], OTHER_KEY)
    assert "not registered to vendor" in judge(foreign[0].SerializeToString(), gate).detail


def test_currency_mismatch_uses_the_licence_currency() -> None:
    impression = build.ad_impression(
        event_id="e",
        vendor_id=VENDOR,
        licence_id="LIC-1",
        avatar_id="AVA-1",
        render_id="r",
        category="c",
        territory="GB",
        channel="web",
        ad_revenue="1",
        ad_revenue_currency="EUR",
        occurred_at=NOW,
    )
    assert judge(signed(impression)).reason is RejectReason.CURRENCY_MISMATCH


def test_rules_order_decides_between_several_failures() -> None:
    # Unknown licence AND another vendor named in the payload: UNKNOWN_LICENCE first (§2).
    both = judge(signed(render(licence_id="LIC-X", vendor_id="VEN-ORBIT")))
    assert both.reason is RejectReason.UNKNOWN_LICENCE
    # Spoofed vendor on that vendor's own licence, wrong avatar too: VENDOR before AVATAR.
    spoof = judge(signed(render(licence_id="LIC-O", vendor_id="VEN-ORBIT", avatar_id="AVA-1")))
    assert spoof.reason is RejectReason.VENDOR_MISMATCH
    # Bad quantity beats everything after the structure check.
    early = judge(envelope_of(render(licence_id="LIC-X").SerializeToString() + b"\x58\x00"))
    assert early.reason is RejectReason.INVALID_QUANTITY
    # Nothing in an unverified payload is read: a bad signature hides the bad licence.
    hidden = judge(signed(render(licence_id="LIC-X"), OTHER_KEY))
    assert hidden.reason is RejectReason.BAD_SIGNATURE
    assert hidden.event_id == ""


def test_retractions_skip_licence_checks_but_not_the_vendor() -> None:
    retract = build.retraction(
        event_id="r", vendor_id=VENDOR, original_event_id="e-1", licence_id="LIC-X", occurred_at=NOW
    )
    verdict = judge(signed(retract))
    assert verdict.status is Status.ACCEPTED
    assert verdict.routing_key == "LIC-X"
    bare = build.retraction(event_id="r2", vendor_id=VENDOR, original_event_id="e", occurred_at=NOW)
    assert judge(signed(bare)).routing_key == VENDOR
    spoof = build.retraction(
        event_id="r3", vendor_id="VEN-ORBIT", original_event_id="e", occurred_at=NOW
    )
    assert judge(signed(spoof)).reason is RejectReason.VENDOR_MISMATCH


def test_licence_checks_can_be_left_to_the_meter() -> None:
    d = directory()
    gate = Admission(d, None, RecentEvents(10))
    assert judge(signed(render(licence_id="LIC-X")), gate).status is Status.ACCEPTED


def test_duplicates_are_exact_repeats_only() -> None:
    gate = admission()
    first = judge(signed(render()), gate)
    gate.recent.remember(VENDOR, first.event_id, first.digest)
    assert judge(signed(render()), gate).status is Status.DUPLICATE
    assert judge(signed(render(quantity=2)), gate).status is Status.ACCEPTED  # conflict: meter's
    assert gate.recent.is_duplicate("VEN-OTHER", "e-1", first.digest) is False


# --- framing -----------------------------------------------------------------------------


def test_split_events_returns_exact_bytes_and_skips_unknown_fields() -> None:
    envelopes = [signed(render(event_id=f"e{i}")) for i in range(3)]
    request = b"\x10\x07" + encode_batch(envelopes) + b"\x1d\x00\x00\x00\x00"
    split = split_events(request)
    assert split.events == envelopes and split.damaged == b"" and split.error == ""
    assert split_events(b"").events == []


@pytest.mark.parametrize("cut", [1, 2, 10, 50])
def test_split_events_keeps_what_precedes_damage(cut: int) -> None:
    envelopes = [signed(render(event_id=f"e{i}")) for i in range(3)]
    request = encode_batch(envelopes)
    split = split_events(request[:-cut])
    assert split.events == envelopes[:2]
    assert split.damaged == request[len(encode_batch(envelopes[:2])) : -cut]
    assert "at byte" in split.error


def test_split_events_rejects_events_with_the_wrong_wire_type() -> None:
    split = split_events(b"\x08\x01")
    assert split.events == [] and split.damaged == b"\x08\x01" and "wire type 0" in split.error


# --- rate limit, caches --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_per_vendor() -> None:
    clock = Clock()
    limiter = VendorRateLimiter(rate=10, burst=20, clock=clock)
    assert limiter.acquire("a", 20).allowed
    refused = limiter.acquire("a", 5)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    assert limiter.acquire("b", 20).allowed  # its own bucket
    clock.now = 0.5
    assert limiter.acquire("a", 5).allowed
    assert limiter.acquire("a", 21).retry_after == float("inf")
    clock.now = 100
    assert limiter.acquire("a", 20).allowed  # refills to the burst, not beyond
    assert not limiter.acquire("a", 1).allowed


def test_recent_events_is_bounded() -> None:
    recent = RecentEvents(2)
    for name in ("a", "b", "c"):
        recent.remember("v", name, b"d")
    assert len(recent) == 2 and not recent.is_duplicate("v", "a", b"d")
    assert recent.is_duplicate("v", "c", b"d")
    assert not RecentEvents(0).is_duplicate("v", "c", b"d")


def test_ttl_cache_expires_hits_and_misses_separately() -> None:
    clock = Clock()
    cache: TtlCache[str, str] = TtlCache(
        max_entries=2, ttl_seconds=10, negative_ttl_seconds=1, clock=clock
    )
    calls: list[str] = []

    def load(key: str) -> str | None:
        calls.append(key)
        return None if key == "missing" else key.upper()

    assert cache.get_or_load("a", load) == "A"
    assert cache.get_or_load("missing", load) is None
    clock.now = 2
    assert cache.get_or_load("a", load) == "A"
    assert cache.get_or_load("missing", load) is None
    assert calls == ["a", "missing", "missing"]
    cache.get_or_load("b", load)
    assert len(cache) == 2


# --- fuzz --------------------------------------------------------------------------------

_REASONS = set(RejectReason)
_texts = st.text(max_size=12)
_events = st.builds(
    usage_pb2.UsageEvent,
    event_id=_texts,
    vendor_id=st.sampled_from([VENDOR, "", "VEN-ORBIT", " "]),
    kind=st.integers(min_value=0, max_value=6),
    licence_id=st.sampled_from(["LIC-1", "LIC-O", "", "LIC-X"]),
    avatar_id=st.sampled_from(["AVA-1", "AVA-O", ""]),
    render_id=_texts,
    category=_texts,
    territory=_texts,
    channel=_texts,
    quantity=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32 - 1)),
    viewable=st.one_of(st.none(), st.booleans()),
    ivt=st.one_of(st.none(), st.booleans()),
    ad_revenue=st.one_of(
        st.none(), st.text(max_size=8), st.sampled_from(["1.5", "-1", "NaN", "1e99"])
    ),
    ad_revenue_currency=st.sampled_from(["", "USD", "EUR", "x"]),
    original_event_id=_texts,
)


def _timestamped(event: usage_pb2.UsageEvent, seconds: int, nanos: int) -> usage_pb2.UsageEvent:
    event.occurred_at.seconds = seconds
    event.occurred_at.nanos = nanos
    return event


def _assert_sane(verdict: Verdict) -> None:
    assert verdict.status in set(Status)
    if verdict.status is Status.REJECTED:
        assert verdict.reason in _REASONS and verdict.detail
    else:
        assert verdict.reason is None and verdict.routing_key


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_envelope_bytes_never_crash(raw: bytes) -> None:
    _assert_sane(judge(raw))
    split = split_events(raw)
    assert b"".join(split.events) == b"" or len(split.events) >= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_signed_payloads_never_crash(payload: bytes) -> None:
    """Past the signature check: bytes -> UsageEvent -> to_raw -> parse_event -> rules."""
    _assert_sane(judge(envelope_of(payload)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _events,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_fuzz_structured_events_never_crash(
    event: usage_pb2.UsageEvent, seconds: int, nanos: int
) -> None:
    _assert_sane(judge(envelope_of(_timestamped(event, seconds, nanos).SerializeToString())))


def test_fuzz_found_cases_stay_fixed() -> None:
    extreme = _timestamped(render(), 2**62, 0)
    assert judge(envelope_of(extreme.SerializeToString())).reason is RejectReason.MALFORMED
    bad_nanos = _timestamped(render(), int(NOW.timestamp()), -5)
    assert judge(envelope_of(bad_nanos.SerializeToString())).reason is RejectReason.MALFORMED
    assert common_pb2.REJECT_REASON_MALFORMED  # enum stays importable for reason names
