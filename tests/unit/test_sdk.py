"""The vendor SDK without servers: ids, signing, event building, spool, retry, framing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from residuals_sdk import (
    SigningKey,
    SpoolFullError,
    SpoolLockedError,
    UsageClient,
    uuid7,
    verify_signature,
)
from residuals_sdk import events as build
from residuals_sdk._proto import usage_pb2 as sdk_usage_pb2
from residuals_sdk.ids import UUIDv7Generator, uuid7_millis
from residuals_sdk.report import DeliveryStatus
from residuals_sdk.retry import RetryPolicy
from residuals_sdk.signing import payload_bytes, sign_event
from residuals_sdk.spool import Spool, SpooledEvent
from residuals_sdk.transports.base import Outcome
from residuals_sdk.transports.grpc import encode_batch, reason_name

from residuals.codecs import usage as usage_codec
from residuals.codecs.signed import SigningKeyRecord, signature_problem
from residuals.codecs.signing import sign_in_batches
from residuals.domain.events import UsageEvent, parse_event
from residuals.platform import protogen
from residuals.v1 import common_pb2, ingest_pb2, usage_pb2

REPO = Path(__file__).resolve().parents[2]


# --- ids ---------------------------------------------------------------------------------


def test_uuid7_is_version_7_time_ordered_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 for p in parsed)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # strictly increasing within a process, even within a ms
    assert before <= uuid7_millis(ids[0]) <= uuid7_millis(ids[-1]) <= after + 1


def test_uuid7_counter_overflow_borrows_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen = 1_700_000_000_000 * 1_000_000
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    generator = UUIDv7Generator()
    values = [generator.new() for _ in range(5000)]  # more than the 12-bit counter holds
    assert [v.int for v in values] == sorted(v.int for v in values)
    assert len({v.int for v in values}) == 5000
    assert (values[-1].int >> 80) > (values[0].int >> 80)


# --- signing and events ------------------------------------------------------------------


def _render(**overrides: object) -> sdk_usage_pb2.UsageEvent:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "vendor_id": "VEN-PIXEL",
        "licence_id": "LIC-1",
        "avatar_id": "AVA-1",
        "render_id": "vid-1",
        "category": "product_demo",
        "territory": "GB",
        "occurred_at": datetime(2026, 10, 7, 12, 0, 0, 250_000, tzinfo=UTC),
    }
    fields.update(overrides)
    return build.render(**fields)  # type: ignore[arg-type]


def test_sdk_and_server_agree_on_the_signed_bytes() -> None:
    """The SDK's vendored classes are the server's; payload bytes are the codec's."""
    event = _render(quantity=3)
    assert sdk_usage_pb2.UsageEvent is usage_pb2.UsageEvent
    assert payload_bytes(event) == usage_codec.payload_bytes(event)
    parsed = parse_event(usage_codec.to_raw(event))
    assert isinstance(parsed, UsageEvent)
    assert usage_codec.payload_bytes(usage_codec.from_domain(parsed)) == payload_bytes(event)


def test_signature_covers_exactly_the_payload() -> None:
    key = SigningKey.generate("k-1")
    signed = sign_event(_render(), key)
    assert signed.key_id == "k-1" and len(signed.signature) == 64
    assert verify_signature(key.public_key_bytes(), signed.payload, signed.signature)
    tampered = bytearray(signed.payload)
    tampered[-1] ^= 1
    assert not verify_signature(key.public_key_bytes(), bytes(tampered), signed.signature)
    other = SigningKey.generate("k-2")
    assert not verify_signature(other.public_key_bytes(), signed.payload, signed.signature)


def test_signing_key_round_trips_through_pem_and_raw_bytes() -> None:
    key = SigningKey.generate("k")
    again = SigningKey.from_pem("k", key.private_pem())
    assert again.public_key_bytes() == key.public_key_bytes()
    with pytest.raises(ValueError, match="key_id"):
        SigningKey.generate("")


def test_builders_refuse_programming_mistakes() -> None:
    with pytest.raises(TypeError, match="float"):
        build.ad_impression(
            event_id="e",
            vendor_id="v",
            licence_id="l",
            avatar_id="a",
            render_id="r",
            category="c",
            territory="GB",
            channel="web",
            ad_revenue=1.5,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        _render(occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="quantity"):
        _render(quantity=0)
    with pytest.raises(ValueError, match="licence_id is required"):
        _render(licence_id="")


def test_builders_set_optional_fields_only_when_not_default() -> None:
    plain = _render()
    assert not plain.HasField("quantity")
    local = datetime(2026, 10, 7, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert _render(occurred_at=local).occurred_at.ToDatetime(UTC) == datetime(
        2026, 10, 7, 12, 0, tzinfo=UTC
    )
    view = build.view(
        event_id="e",
        vendor_id="v",
        licence_id="l",
        avatar_id="a",
        render_id="r",
        category="c",
        territory="GB",
        channel="web",
        viewable=False,
    )
    assert view.HasField("viewable") and not view.HasField("ivt")
    impression = build.ad_impression(
        event_id="e",
        vendor_id="v",
        licence_id="l",
        avatar_id="a",
        render_id="r",
        category="c",
        territory="GB",
        channel="web",
        ad_revenue=Decimal("1.2E+1"),
    )
    assert impression.ad_revenue == "12"
    retraction = build.retraction(
        event_id="x", vendor_id="v", original_event_id="e", licence_id="L"
    )
    assert build.routing_key(retraction) == "L"
    assert (
        build.routing_key(build.retraction(event_id="y", vendor_id="v", original_event_id="e"))
        == "v"
    )


# --- spool ---------------------------------------------------------------------------------


def test_spool_appends_reads_in_order_and_deletes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seqs = [spool.append(f"e{i}", "L", b"x" * 10) for i in range(5)]
    assert seqs == sorted(seqs) and spool.count == 5
    first = spool.read_after(0, 3)
    assert [e.event_id for e in first] == ["e0", "e1", "e2"]
    assert [e.event_id for e in spool.read_after(first[-1].seq, 10)] == ["e3", "e4"]
    spool.delete(first)
    assert spool.count == 2
    spool.close()
    reopened = Spool(tmp_path)
    assert [e.event_id for e in reopened.read_after(0, 10)] == ["e3", "e4"]
    assert reopened.size_bytes == sum(e.size for e in reopened.read_after(0, 10))
    reopened.close()


def test_spool_is_bounded_in_events_and_bytes(tmp_path: Path) -> None:
    by_count = Spool(None, max_events=2)
    by_count.append("a", "L", b"x")
    by_count.append("b", "L", b"x")
    with pytest.raises(SpoolFullError, match="not accepted"):
        by_count.append("c", "L", b"x")
    by_bytes = Spool(None, max_bytes=1000)
    with pytest.raises(SpoolFullError):
        by_bytes.append("a", "L", b"x" * 2000)
    assert by_bytes.count == 0
    from residuals_sdk.spool import NewEvent

    with pytest.raises(SpoolFullError):  # all or nothing
        by_count.append_many([NewEvent("d", "L", b"x")])
    assert by_count.count == 2


def test_one_spool_directory_serves_one_client(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()


# --- retry and framing -------------------------------------------------------------------


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=5.0)
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 5.0), (1000, 5.0)]:
        assert policy.ceiling(failures) == pytest.approx(ceiling)
        delays = [policy.delay(failures) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert policy.delay(1, at_least=3.0) == 3.0


def test_batch_framing_matches_protobuf() -> None:
    key = SigningKey.generate("k")
    envelopes = [sign_event(_render(event_id=f"e{i}"), key) for i in range(3)]
    framed = encode_batch([e.SerializeToString() for e in envelopes])
    assert framed == ingest_pb2.PublishBatchRequest(events=envelopes).SerializeToString()
    assert reason_name(common_pb2.REJECT_REASON_OVERSIZED) == "OVERSIZED"


# --- publish_many: batch signatures -------------------------------------------------------


class CapturingTransport:
    """Delivers everything at once and keeps what was sent."""

    name = "capture"

    def __init__(self) -> None:
        self.sent: list[SpooledEvent] = []
        self._waiting: list[SpooledEvent] = []
        self._lock = threading.Lock()

    def send(self, events: Sequence[SpooledEvent]) -> Sequence[SpooledEvent]:
        with self._lock:
            self.sent.extend(events)
            self._waiting.extend(events)
        return []

    def poll(self, timeout: float) -> list[Outcome]:
        with self._lock:
            done, self._waiting = self._waiting, []
        if not done:
            time.sleep(timeout)
        return [Outcome(e, DeliveryStatus.DELIVERED) for e in done]

    def close(self) -> None:
        pass


def _published(count: int, **options: int) -> list[usage_pb2.SignedUsageEvent]:
    key = SigningKey.from_private_bytes("k-batch", bytes(range(32)))
    transport = CapturingTransport()
    client = UsageClient(
        vendor_id="VEN-PIXEL",
        signing_key=key,
        transport=transport,
        spool=Spool(None),
        **options,  # type: ignore[arg-type]
    )
    with client:
        events = [_render(event_id=f"e-{i}", render_id=f"v-{i}") for i in range(count)]
        assert client.publish_many(events) == [f"e-{i}" for i in range(count)]
        assert client.flush(timeout=10) == 0
    envelopes = [usage_pb2.SignedUsageEvent.FromString(e.envelope) for e in transport.sent]
    assert [usage_pb2.UsageEvent.FromString(e.payload).event_id for e in envelopes] == [
        f"e-{i}" for i in range(count)
    ]
    # The services' helper (tests, benchmarks) makes exactly the SDK's envelopes.
    size = options.get("signature_batch_size", 256)
    assert [e.SerializeToString() for e in envelopes] == [
        e.SerializeToString() for e in sign_in_batches(events, "k-batch", key.private_key, size)
    ]
    record = SigningKeyRecord("k-batch", "VEN-PIXEL", key.public_key_bytes())
    at = datetime(2026, 10, 7, 12, tzinfo=UTC)
    for envelope in envelopes:  # what the gateway and the meter check
        assert signature_problem(envelope, record, vendor_id="VEN-PIXEL", at=at) is None
    return envelopes


def test_publish_many_signs_chunks_of_at_most_256_events_once_each() -> None:
    envelopes = _published(600)
    # 600 = 3 chunks of 200 (near-equal, never a lone straggler), one signature each.
    assert [e.batch.leaf_count for e in envelopes] == [200] * 600
    assert [e.batch.leaf_index for e in envelopes] == [i % 200 for i in range(600)]
    assert len({e.signature for e in envelopes}) == 3
    assert max(len(e.batch.audit_path) for e in envelopes) == 8  # ceil(log2(200))
    assert [e.batch.leaf_count for e in _published(257)] == [129] * 129 + [128] * 128


def test_publish_many_keeps_per_event_signatures_for_one_event_or_batch_size_1() -> None:
    key = SigningKey.from_private_bytes("k-batch", bytes(range(32))).public_key_bytes()
    for envelopes in (_published(1), _published(5, signature_batch_size=1)):
        for envelope in envelopes:
            assert not envelope.HasField("batch")
            assert verify_signature(key, envelope.payload, envelope.signature)
    assert [e.batch.leaf_count for e in _published(5, signature_batch_size=2)] == [
        2,
        2,
        2,
        2,
        0,
    ]
    with pytest.raises(ValueError, match="signature_batch_size"):
        _published(1, signature_batch_size=0)


# --- packaging ---------------------------------------------------------------------------


def test_sdk_never_imports_the_server_package() -> None:
    code = (
        "import sys, residuals_sdk\n"
        "from residuals_sdk import UsageClient, SigningKey\n"
        "c = UsageClient.kafka(vendor_id='v', signing_key=SigningKey.generate('k'),"
        " bootstrap_servers='127.0.0.1:9', spool_dir=None)\n"
        "c.render(licence_id='l', avatar_id='a', render_id='r', category='c', territory='GB')\n"
        "from residuals_sdk import events, uuid7\n"
        "c.publish_many([events.render(event_id=uuid7(), vendor_id='v', licence_id='l',"
        " avatar_id='a', render_id=str(i), category='c', territory='GB') for i in range(3)])\n"
        "c.close(timeout=0)\n"
        "import residuals_sdk.transports.grpc\n"
        "bad = [m for m in sys.modules if m == 'residuals' or m.startswith('residuals.')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_vendored_contracts_have_no_server_imports() -> None:
    proto_dir = REPO / protogen.SDK_OUTPUT
    for path in proto_dir.glob("*_pb2*.py*"):
        text = path.read_text()
        assert "from residuals.v1" not in text, path.name
        assert "'residuals.v1." not in text, path.name
    names = {p.name.split("_pb2")[0] for p in proto_dir.glob("*_pb2.py")}
    assert names == set(protogen.SDK_PROTOS)


def test_vendoring_refuses_a_contract_the_sdk_does_not_ship(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in protogen.SDK_PROTOS:
        for suffix in protogen.GENERATED_SUFFIXES:
            (fresh / f"{name}{suffix}").write_text("")
    (fresh / "usage_pb2.py").write_text("from residuals.v1 import licence_pb2 as x\n")
    with pytest.raises(protogen.ProtogenError, match="licence_pb2"):
        protogen.vendor_sdk(fresh, tmp_path / "out")


def test_an_approval_id_travels_from_the_sdk_to_the_rules() -> None:
    """§5a: the SDK puts the approval on the wire; the codec and the parser keep it, so it
    is part of the payload the rules de-duplicate and judge by."""
    from residuals.codecs.usage import to_raw
    from residuals.domain.events import UsageEvent, parse_event
    from residuals.v1 import usage_pb2

    fields = {
        "event_id": "e-1",
        "vendor_id": "VEN-1",
        "licence_id": "LIC-1",
        "avatar_id": "AVA-1",
        "render_id": "r-1",
        "category": "insurance",
        "territory": "GB",
    }
    sent = build.render(**fields, approval_id="APR-1")
    viewed = build.view(**fields, channel="web", approval_id="APR-1")
    plain = build.render(**fields)
    assert (sent.approval_id, viewed.approval_id, plain.approval_id) == ("APR-1", "APR-1", "")
    received = usage_pb2.UsageEvent.FromString(sent.SerializeToString())
    event = parse_event(to_raw(received))
    assert isinstance(event, UsageEvent) and event.approval_id == "APR-1"
    other = parse_event(to_raw(usage_pb2.UsageEvent.FromString(plain.SerializeToString())))
    assert isinstance(other, UsageEvent) and other.approval_id is None
    assert event != other  # same id, another payload: a conflict, not a duplicate
    with pytest.raises(ValueError):
        build.render(**fields, approval_id="APR\x00")
