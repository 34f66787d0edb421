"""The ingest gateway over a real socket, with real Kafka and PostgreSQL.

Every bad input gets its own reason, lands in the dead-letter topic with its original
bytes, and costs nothing to the good events sent with it; an accepted answer means the
record is on the usage topic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from residuals_sdk import (
    DeliveryReport,
    DeliveryStatus,
    RetryPolicy,
    SigningKey,
    UsageClient,
    uuid7,
)
from residuals_sdk import events as build
from residuals_sdk.signing import verify_signature
from residuals_sdk.transports.grpc import encode_batch

from residuals.codecs import receipt
from residuals.codecs.receipt import RECEIPT_HEADER
from residuals.demo.hostile import Identity, corpus
from residuals.ingest.app import IngestApp
from residuals.ingest.settings import IngestSettings
from residuals.platform.config import load
from residuals.platform.roles import role_env
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, ingest_pb2, usage_pb2
from tests.support.ingest import (
    Gateway,
    Registry,
    Tenant,
    Topics,
    auth,
    envelope,
    headers_of,
    mutate,
    read_topic,
    render,
    signed_payload,
)

REPO = Path(__file__).resolve().parents[2]


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def registry(stack: StackSettings, run_id: str) -> Registry:
    return Registry(stack.dsn, run_id)


@pytest.fixture(scope="module")
def topics(stack: StackSettings, run_id: str) -> Iterator[Topics]:
    t = Topics(stack, f"ingest-{run_id}.").create()
    yield t
    t.delete()


#: The receipt-stamp key the test gateways share with a meter (RESIDUALS_RECEIPT_KEY).
RECEIPT_KEY = bytes(range(32))


def gateway_env(stack: StackSettings, topics: Topics, **extra: str) -> dict[str, str]:
    return {
        **topics.env(),
        "DATABASE_URL": stack.dsn,
        "RESIDUALS_RECEIPT_KEY": RECEIPT_KEY.hex(),
        **role_env("ingest"),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "INGEST_ACK_TIMEOUT_SECONDS": "10",
        **extra,
    }


@pytest.fixture(scope="module")
def start_gateway(stack: StackSettings, topics: Topics) -> Iterator[Callable[..., IngestApp]]:
    apps: list[IngestApp] = []

    def start(**extra: str) -> IngestApp:
        settings = load(IngestSettings, gateway_env(stack, topics, **extra))
        app = IngestApp(settings).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[..., IngestApp]) -> IngestApp:
    return start_gateway()


@pytest.fixture(scope="module")
def pixel(registry: Registry) -> Tenant:
    return registry.vendor("PIXEL", currencies=("USD", "EUR"))


@pytest.fixture(scope="module")
def orbit(registry: Registry) -> Tenant:
    return registry.vendor("ORBIT")


@pytest.fixture(scope="module")
def raw(gateway: IngestApp) -> Iterator[Gateway]:
    client = Gateway(gateway.port)
    yield client
    client.channel.close()


def reason(result: ingest_pb2.PublishResult) -> str:
    return common_pb2.RejectReason.Name(result.reason).removeprefix("REJECT_REASON_")


def dead_letters(topics: Topics, vendor_id: str, expect: int) -> list[usage_pb2.DeadLetter]:
    deadline = time.monotonic() + 30
    letters: list[usage_pb2.DeadLetter] = []
    while time.monotonic() < deadline:
        records = read_topic(topics.kafka, topics.dlq, expect=1, timeout=5, settle=1)
        letters = [
            usage_pb2.DeadLetter.FromString(r.value())
            for r in records
            if headers_of(r).get("residuals-vendor") == vendor_id.encode()
        ]
        if len(letters) >= expect:
            break
    return letters


def usage_records(topics: Topics, event_ids: set[str], *, settle: float = 1.0) -> list[Any]:
    """Usage records whose payload has one of ``event_ids`` (all of them, with repeats)."""
    deadline = time.monotonic() + 30
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = [
            r
            for r in read_topic(topics.kafka, topics.usage, expect=1, timeout=5, settle=settle)
            if usage_pb2.UsageEvent.FromString(
                usage_pb2.SignedUsageEvent.FromString(r.value()).payload
            ).event_id
            in event_ids
        ]
        if {
            usage_pb2.UsageEvent.FromString(
                usage_pb2.SignedUsageEvent.FromString(r.value()).payload
            ).event_id
            for r in found
        } >= event_ids:
            break
    return found


def event_id_of(record: Any) -> str:
    return usage_pb2.UsageEvent.FromString(
        usage_pb2.SignedUsageEvent.FromString(record.value()).payload
    ).event_id


# --- the happy path: the SDK through the gateway ---------------------------------------


def test_sdk_publishes_every_kind_through_the_gateway(
    gateway: IngestApp, topics: Topics, pixel: Tenant, tmp_path: Path
) -> None:
    reports: list[DeliveryReport] = []
    eur_licence = next(lid for lid, (_, cur) in pixel.licences.items() if cur == "EUR")
    with UsageClient.grpc(
        vendor_id=pixel.vendor_id,
        signing_key=pixel.signing_key,
        target=f"127.0.0.1:{gateway.port}",
        api_key=pixel.api_key,
        spool_dir=tmp_path / "spool",
        on_delivery=reports.append,
    ) as client:
        common = {
            "licence_id": pixel.licence_id,
            "avatar_id": pixel.avatar_id,
            "render_id": "vid-1",
            "category": "product_demo",
            "territory": "GB",
        }
        ids = [
            client.render(**common, quantity=3),
            client.view(**common, channel="social", quantity=1200),
            client.ad_impression(
                **common, channel="web", ad_revenue=Decimal("12.40"), quantity=1000
            ),
        ]
        ids.append(client.retract(original_event_id=ids[0], licence_id=pixel.licence_id))
        ids.append(
            client.ad_impression(
                licence_id=eur_licence,
                avatar_id=pixel.licences[eur_licence][0],
                render_id="vid-2",
                category="product_demo",
                territory="FR",
                channel="web",
                ad_revenue="3.10",
                ad_revenue_currency="EUR",
            )
        )
        assert client.flush(timeout=30) == 0
    assert [r.status for r in reports] == [DeliveryStatus.DELIVERED] * 5
    assert sorted(r.event_id for r in reports) == sorted(ids)

    records = usage_records(topics, set(ids))
    assert sorted(event_id_of(r) for r in records) == sorted(ids)  # each exactly once
    for record in records:
        signed = usage_pb2.SignedUsageEvent.FromString(record.value())
        event = usage_pb2.UsageEvent.FromString(signed.payload)
        headers = headers_of(record)
        assert headers["residuals-vendor"] == pixel.vendor_id.encode()
        # The gateway's receipt time, authenticated and bound to these very bytes.
        assert "residuals-received-at" not in headers
        received = receipt.verify(RECEIPT_KEY, headers[RECEIPT_HEADER], record.value())
        assert received is not None
        assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
        assert receipt.verify(RECEIPT_KEY, headers[RECEIPT_HEADER], record.value() + b"x") is None
        assert record.key().decode() == event.licence_id  # retraction: the original's licence
        assert verify_signature(
            pixel.signing_key.public_key_bytes(), signed.payload, signed.signature
        )


def test_exact_repeat_is_duplicate_and_written_once(
    raw: Gateway, topics: Topics, pixel: Tenant
) -> None:
    event = render(pixel)
    sent = envelope(event, pixel.signing_key)
    first = raw.publish(pixel.api_key, [sent, sent])
    again = raw.publish(pixel.api_key, [sent])
    statuses = [r.status for r in [*first, *again]]
    assert statuses == [
        ingest_pb2.PUBLISH_STATUS_ACCEPTED,
        ingest_pb2.PUBLISH_STATUS_DUPLICATE,
        ingest_pb2.PUBLISH_STATUS_DUPLICATE,
    ]
    assert len(usage_records(topics, {event.event_id})) == 1

    # Same id, different payload: not a duplicate; the meter raises DUPLICATE_CONFLICT.
    conflicting = render(pixel, event_id=event.event_id, quantity=2)
    (result,) = raw.publish(pixel.api_key, [envelope(conflicting, pixel.signing_key)])
    assert result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED


# --- bad input: each gets its reason, nothing else is lost -----------------------------


def test_every_bad_event_gets_its_reason_and_good_ones_pass(
    raw: Gateway, topics: Topics, pixel: Tenant, orbit: Tenant, registry: Registry
) -> None:
    now = datetime.now(UTC)
    key = pixel.signing_key
    good = [render(pixel) for _ in range(3)]
    tampered = bytearray(envelope(render(pixel), key))
    tampered[12] ^= 0x01  # inside the signed payload
    stranger = SigningKey.generate(f"unregistered-{uuid.uuid4().hex[:6]}")
    revoked = SigningKey.generate(f"revoked-{uuid.uuid4().hex[:6]}")
    registry.add_signing_key(pixel, revoked)
    registry.revoke_signing_key(revoked.key_id)
    mistyped_quantity = (
        render(pixel).SerializeToString(deterministic=True) + b"\x5a\x03ten"
    )  # field 11 (quantity) sent as a string
    bad_utf8 = b"\x0a\x04\xff\xfe\xfd\xfc"  # event_id is not UTF-8
    cases: list[tuple[bytes, str]] = [
        (bytes(tampered), "BAD_SIGNATURE"),
        (envelope(render(pixel), stranger), "BAD_SIGNATURE"),  # unknown key
        (envelope(render(pixel), orbit.signing_key), "BAD_SIGNATURE"),  # another vendor's key
        (envelope(render(pixel), revoked), "BAD_SIGNATURE"),
        (b"\x12\x40" + b"\x00" * 64, "BAD_SIGNATURE"),  # signature but no key id
        (b"\xff\xff\xff", "MALFORMED"),  # not an envelope at all
        (signed_payload(b"\x0a\x05abc", key), "MALFORMED"),  # truncated payload
        (signed_payload(mistyped_quantity, key), "MALFORMED"),
        (signed_payload(bad_utf8, key), "MALFORMED"),
        (envelope(mutate(render(pixel), render_id=" "), key), "MALFORMED"),
        (
            signed_payload(
                usage_pb2.UsageEvent(
                    event_id="e", vendor_id=pixel.vendor_id, kind=common_pb2.USAGE_KIND_RENDER
                ).SerializeToString(),
                key,
            ),
            "MALFORMED",
        ),
        (envelope(render(pixel, quantity=1_000_000), key), "ACCEPTED"),
        (
            signed_payload(render(pixel).SerializeToString() + b"\x58\x00", key),
            "INVALID_QUANTITY",
        ),  # quantity explicitly 0
        (envelope(render(pixel, occurred_at=now - timedelta(days=40)), key), "TOO_LATE"),
        (envelope(render(pixel, occurred_at=now + timedelta(minutes=10)), key), "IN_FUTURE"),
        (envelope(render(pixel, licence_id="LIC-NOPE"), key), "UNKNOWN_LICENCE"),
        (envelope(render(pixel, licence_id=orbit.licence_id), key), "VENDOR_MISMATCH"),
        (envelope(render(pixel, vendor_id=orbit.vendor_id), key), "VENDOR_MISMATCH"),
        (envelope(render(pixel, avatar_id=orbit.avatar_id), key), "AVATAR_MISMATCH"),
        (
            envelope(
                build.ad_impression(
                    event_id=uuid7(),
                    vendor_id=pixel.vendor_id,
                    licence_id=pixel.licence_id,
                    avatar_id=pixel.avatar_id,
                    render_id="vid",
                    category="product_demo",
                    territory="GB",
                    channel="web",
                    ad_revenue="1.00",
                    ad_revenue_currency="JPY",
                ),
                key,
            ),
            "CURRENCY_MISMATCH",
        ),
        (
            envelope(
                mutate(render(pixel), category="x" * (70 * 1024)),  # the SDK refuses it
                key,
            ),
            "OVERSIZED",
        ),
    ]
    batch = [envelope(good[0], key), *[c[0] for c in cases], envelope(good[1], key)]
    results = raw.publish(pixel.api_key, batch)
    assert [r.index for r in results] == list(range(len(batch)))
    assert results[0].status == results[-1].status == ingest_pb2.PUBLISH_STATUS_ACCEPTED
    got = [
        "ACCEPTED" if r.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED else reason(r)
        for r in results[1:-1]
    ]
    assert got == [c[1] for c in cases]
    for result in results[1:-1]:
        if result.status == ingest_pb2.PUBLISH_STATUS_REJECTED:
            assert result.detail  # every rejection says why

    rejected = [c for c in cases if c[1] != "ACCEPTED"]
    letters = dead_letters(topics, pixel.vendor_id, len(rejected))
    by_original = {bytes(letter.original): letter for letter in letters}
    for original, want in rejected:
        if want == "OVERSIZED":
            letter = next(
                x for x in letters if common_pb2.RejectReason.Name(x.reason).endswith("OVERSIZED")
            )
            assert bytes(letter.original) == original[: 64 * 1024]
            assert "truncated" in letter.detail
            continue
        letter = by_original[original]
        assert common_pb2.RejectReason.Name(letter.reason) == f"REJECT_REASON_{want}"
        assert letter.vendor_id == pixel.vendor_id  # the authenticated vendor, always
        assert letter.detail
        assert letter.HasField("received_at")
    # The payload claiming another vendor is recorded under the vendor that sent it.
    assert not dead_letters(topics, orbit.vendor_id, 0)

    accepted = {good[0].event_id, good[1].event_id}
    assert {event_id_of(r) for r in usage_records(topics, accepted)} == accepted


def test_the_hostile_corpus_gets_its_verdict_over_grpc_and_harms_nothing_else(
    raw: Gateway, topics: Topics, pixel: Tenant, orbit: Tenant, registry: Registry
) -> None:
    """Every record of tests/hostile.py that a gRPC client can send, in one batch with a
    good event, through the real gateway: each gets the reason the unit tier proves the
    meter gives too, the good event is accepted, and every rejection is dead-lettered with
    safe text."""
    revoked = SigningKey.generate(f"sk-revoked-{uuid.uuid4().hex[:6]}")
    registry.add_signing_key(pixel, revoked)
    registry.revoke_signing_key(revoked.key_id)
    who = Identity(
        vendor=pixel.vendor_id,
        key_id=pixel.signing_key.key_id,
        key=pixel.signing_key.private_key,
        licence_id=pixel.licence_id,
        avatar_id=pixel.avatar_id,
        other_vendor=orbit.vendor_id,
        other_key_id=orbit.signing_key.key_id,
        other_key=orbit.signing_key.private_key,
        other_licence=orbit.licence_id,
        revoked_key_id=revoked.key_id,
        revoked_key=revoked.private_key,
        prefix=f"{uuid.uuid4().hex[:8]}-",
    )
    cases = [c for c in corpus(who, datetime.now(UTC)) if not c.kafka_only]
    good = envelope(render(pixel), pixel.signing_key)
    values = [c.value for c in cases]
    assert all(v is not None for v in values)
    # The oversized record alone would exceed the batch byte limit with the rest: its own call.
    small = [(c, v) for c, v in zip(cases, values, strict=True) if len(v or b"") < 64 * 1024]
    big = [(c, v) for c, v in zip(cases, values, strict=True) if len(v or b"") >= 64 * 1024]
    results = raw.publish(pixel.api_key, [v for _c, v in small if v is not None] + [good])
    results += raw.publish(pixel.api_key, [v for _c, v in big if v is not None])
    judged = [c for c, _v in small] + [None] + [c for c, _v in big]
    rejected = 0
    for case, result in zip(judged, results, strict=True):
        if case is None or case.reason is None:
            assert result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED, (case, result.detail)
            continue
        rejected += 1
        assert result.status == ingest_pb2.PUBLISH_STATUS_REJECTED, case.name
        assert reason(result) == case.reason.value, (case.name, result.detail)
        assert result.detail.isprintable()
    letters = dead_letters(topics, pixel.vendor_id, rejected)
    mine = [d for d in letters if d.event_id.startswith(who.prefix) or not d.event_id]
    assert len(mine) >= rejected
    for letter in mine:
        assert letter.detail.isprintable() and "\x00" not in letter.event_id


def test_truncated_request_keeps_the_events_before_the_damage(
    raw: Gateway, topics: Topics, pixel: Tenant
) -> None:
    events = [render(pixel) for _ in range(3)]
    request = encode_batch([envelope(e, pixel.signing_key) for e in events])
    cut = request[: len(request) - 20]  # the third event loses its tail
    results = raw.publish_raw(pixel.api_key, cut)
    assert [r.status for r in results] == [
        ingest_pb2.PUBLISH_STATUS_ACCEPTED,
        ingest_pb2.PUBLISH_STATUS_ACCEPTED,
        ingest_pb2.PUBLISH_STATUS_REJECTED,
    ]
    assert reason(results[2]) == "MALFORMED"
    assert "framing" in results[2].detail
    kept = {events[0].event_id, events[1].event_id}
    assert {event_id_of(r) for r in usage_records(topics, kept)} == kept
    damaged = request[len(encode_batch([envelope(e, pixel.signing_key) for e in events[:2]])) :]
    letters = dead_letters(topics, pixel.vendor_id, 1)
    assert any(bytes(letter.original) == damaged[:-20] for letter in letters)


def test_retraction_without_licence_is_keyed_by_vendor(
    raw: Gateway, topics: Topics, pixel: Tenant
) -> None:
    retraction = build.retraction(
        event_id=uuid7(), vendor_id=pixel.vendor_id, original_event_id="whatever"
    )
    (result,) = raw.publish(pixel.api_key, [envelope(retraction, pixel.signing_key)])
    assert result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED
    (record,) = usage_records(topics, {retraction.event_id})
    assert record.key() == pixel.vendor_id.encode()


# --- request-level refusals --------------------------------------------------------------


def test_batch_limits_refuse_the_whole_request(
    start_gateway: Callable[..., IngestApp], topics: Topics, pixel: Tenant
) -> None:
    app = start_gateway(INGEST_MAX_BATCH_EVENTS="5", INGEST_MAX_BATCH_BYTES="65536")
    client = Gateway(app.port)
    events = [render(pixel) for _ in range(6)]
    with pytest.raises(grpc.RpcError) as too_many:
        client.publish(pixel.api_key, [envelope(e, pixel.signing_key) for e in events])
    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "6 events exceeds the limit of 5" in too_many.value.details()

    big = [envelope(mutate(render(pixel), category="c" * 30_000), pixel.signing_key)] * 3
    with pytest.raises(grpc.RpcError) as too_big:
        client.publish(pixel.api_key, big)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "byte batch limit" in too_big.value.details()
    assert not usage_records(topics, {e.event_id for e in events}, settle=0.5)


def test_rate_limit_answers_resource_exhausted_with_retry_info(
    start_gateway: Callable[..., IngestApp], pixel: Tenant, orbit: Tenant
) -> None:
    app = start_gateway(
        INGEST_VENDOR_RATE="5", INGEST_VENDOR_BURST="10", INGEST_MAX_BATCH_EVENTS="10"
    )
    client = Gateway(app.port)
    batch = [envelope(render(pixel), pixel.signing_key) for _ in range(10)]
    assert len(client.publish(pixel.api_key, batch)) == 10
    with pytest.raises(grpc.RpcError) as limited:
        client.publish(
            pixel.api_key, [envelope(render(pixel), pixel.signing_key) for _ in range(5)]
        )
    error = limited.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert 0 < float(trailers["retry-after"]) <= 1.1
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToTimedelta() > timedelta(0)
    # Buckets are per vendor: another vendor is unaffected.
    assert len(client.publish(orbit.api_key, [envelope(render(orbit), orbit.signing_key)])) == 1
    time.sleep(float(trailers["retry-after"]))
    assert len(client.publish(pixel.api_key, [envelope(render(pixel), pixel.signing_key)] * 5)) == 5


def test_callers_must_be_vendors_with_valid_keys(
    raw: Gateway, pixel: Tenant, registry: Registry
) -> None:
    sent = [envelope(render(pixel), pixel.signing_key)]
    with pytest.raises(grpc.RpcError) as missing:
        raw.batch(encode_batch(sent), timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        raw.publish(pixel.api_key[:-3] + "xyz", sent)
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as finance:
        raw.publish(registry.finance_api_key(), sent)
    assert finance.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_kafka_unreachable_is_unavailable_and_the_sdk_keeps_the_events(
    stack: StackSettings, topics: Topics, pixel: Tenant, tmp_path: Path
) -> None:
    settings = load(
        IngestSettings,
        gateway_env(
            stack,
            topics,
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            INGEST_ACK_TIMEOUT_SECONDS="2",
        ),
    )
    app = IngestApp(settings).start()
    try:
        client = Gateway(app.port)
        with pytest.raises(grpc.RpcError) as down:
            client.publish(pixel.api_key, [envelope(render(pixel), pixel.signing_key)])
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        sdk = UsageClient.grpc(
            vendor_id=pixel.vendor_id,
            signing_key=pixel.signing_key,
            target=f"127.0.0.1:{app.port}",
            api_key=pixel.api_key,
            spool_dir=tmp_path,
        )
        sdk.render(
            licence_id=pixel.licence_id,
            avatar_id=pixel.avatar_id,
            render_id="r",
            category="c",
            territory="GB",
        )
        assert sdk.flush(timeout=5) == 1  # still spooled, not lost
        assert sdk.close(timeout=0) == 1
    finally:
        app.stop()


def test_publish_stream_totals_and_rejections(raw: Gateway, topics: Topics, pixel: Tenant) -> None:
    key = pixel.signing_key
    good = [render(pixel) for _ in range(4)]
    bad = envelope(render(pixel, licence_id="LIC-NOPE"), key)
    messages = [
        encode_batch([envelope(good[0], key), envelope(good[1], key)]),
        encode_batch([bad, envelope(good[2], key)]),
        encode_batch([envelope(good[3], key), envelope(good[3], key)]),
    ]
    response = raw.stream(iter(messages), metadata=auth(pixel.api_key), timeout=30)
    assert (response.accepted, response.duplicates, response.rejected) == (4, 1, 1)
    (rejection,) = response.rejections
    assert rejection.index == 2
    assert reason(rejection) == "UNKNOWN_LICENCE"
    ids = {e.event_id for e in good}
    assert {event_id_of(r) for r in usage_records(topics, ids)} == ids


# --- operators: residuals dlq ------------------------------------------------------------


def test_dlq_command_lists_filters_and_shows(
    raw: Gateway, topics: Topics, orbit: Tenant, stack: StackSettings
) -> None:
    from confluent_kafka import Producer

    bad = render(orbit, quantity=1, licence_id="LIC-GONE")
    raw.publish(orbit.api_key, [envelope(bad, orbit.signing_key), b"\x01\x02\x03"])
    poison = Producer({"bootstrap.servers": stack.bootstrap_servers})
    poison.produce(topics.dlq, value=b"\xde\xad\xbe\xef", key=b"?")
    assert poison.flush(10) == 0
    dead_letters(topics, orbit.vendor_id, 2)

    env = {**os.environ, **topics.env()}

    def dlq(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "residuals", "dlq", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = [
        json.loads(line) for line in dlq("list", "--vendor", orbit.vendor_id, "--json").splitlines()
    ]
    assert sorted(e["reason"] for e in listed) == ["MALFORMED", "UNKNOWN_LICENCE"]
    only = [
        json.loads(line)
        for line in dlq(
            "list", "--vendor", orbit.vendor_id, "--reason", "unknown_licence", "--json"
        ).splitlines()
    ]
    assert [e["event_id"] for e in only] == [bad.event_id]
    assert "UNDECODABLE" in dlq("list", "--reason", "UNDECODABLE")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert dlq("list", "--vendor", orbit.vendor_id, "--since", future, "--json") == ""

    shown = json.loads(dlq("show", only[0]["position"]))
    assert shown["reason"] == "UNKNOWN_LICENCE"
    assert shown["source"] == "ingest gateway"
    assert shown["original"]["key_id"] == orbit.signing_key.key_id
    assert shown["original"]["event"]["eventId"] == bad.event_id
    assert shown["original"]["event"]["licenceId"] == "LIC-GONE"


def test_sdk_waits_for_a_late_gateway_and_reports_rejections(
    start_gateway: Callable[..., IngestApp], pixel: Tenant, topics: Topics, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reports: list[DeliveryReport] = []
    client = UsageClient.grpc(
        vendor_id=pixel.vendor_id,
        signing_key=pixel.signing_key,
        target=f"127.0.0.1:{port}",
        api_key=pixel.api_key,
        spool_dir=tmp_path,
        on_delivery=reports.append,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=0.5),
    )
    try:
        good = client.render(
            licence_id=pixel.licence_id,
            avatar_id=pixel.avatar_id,
            render_id="late",
            category="product_demo",
            territory="GB",
        )
        bad = client.render(
            licence_id="LIC-UNKNOWN",
            avatar_id=pixel.avatar_id,
            render_id="late",
            category="product_demo",
            territory="GB",
        )
        assert client.flush(timeout=2) == 2  # nobody listening yet: kept
        start_gateway(GRPC_PORT=str(port))
        assert client.flush(timeout=30) == 0
    finally:
        client.close()
    by_id = {r.event_id: r for r in reports}
    assert by_id[good].status is DeliveryStatus.DELIVERED
    assert by_id[good].attempts >= 2
    assert by_id[bad].status is DeliveryStatus.REJECTED
    assert by_id[bad].reason == "UNKNOWN_LICENCE"
    assert not by_id[bad].ok
    assert [event_id_of(r) for r in usage_records(topics, {good})] == [good]


# --- the SDK README works as written -----------------------------------------------------


def test_sdk_readme_examples_publish_by_both_transports(
    gateway: IngestApp,
    topics: Topics,
    registry: Registry,
    stack: StackSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run the README's code blocks with only the placeholders replaced."""
    import re

    from residuals.platform.config import KafkaSettings

    tenant = registry.vendor("README")
    key_id = f"sk-readme-{uuid.uuid4().hex[:8]}"
    readme = (REPO / "sdk" / "python" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 4  # the fourth (approvals) runs in tests/e2e/test_approvals_e2e.py
    replacements = {
        "sk-pixel-2026": key_id,
        "VEN-PIXEL": tenant.vendor_id,
        "LIC-BO-PIXEL": tenant.licence_id,
        "AVA-BO-1": tenant.avatar_id,
        "kafka-1.residuals.example:9093": stack.bootstrap_servers,
        "ingest.residuals.example:443": f"127.0.0.1:{gateway.port}",
        "rsd_0123456789abcdef_...": tenant.api_key,
        "/var/lib/my-renderer/": f"{tmp_path}/",
    }

    def run(block: str) -> None:
        for old, new in replacements.items():
            block = block.replace(old, new)
        # The local broker has no SASL listener (loopback: the SDK allows plaintext).
        block = re.sub(r"producer_config=\{.*?\n    \},", "producer_config={},", block, flags=re.S)
        exec(compile(block, "README.md", "exec"), {})

    monkeypatch.chdir(tmp_path)
    run(blocks[0])  # make a key pair; now "register" its public half
    from residuals_sdk import SigningKey as Key

    generated = Key.from_pem_file(key_id, tmp_path / "residuals-signing.pem")
    registry.add_signing_key(tenant, generated)
    run(blocks[1])  # Kafka
    run(blocks[2])  # gateway
    assert "rejected" not in capsys.readouterr().out

    def mine(kafka: KafkaSettings, topic: str, expect: int) -> list[Any]:
        deadline = time.monotonic() + 30
        while True:
            records = [
                r
                for r in read_topic(kafka, topic, expect=1, timeout=5, settle=1)
                if headers_of(r).get("residuals-vendor") == tenant.vendor_id.encode()
            ]
            if len(records) >= expect or time.monotonic() > deadline:
                return records

    unprefixed = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    kinds = sorted(event_of_kind(r) for r in mine(unprefixed, "residuals.usage.v1", 4))
    assert kinds == [
        "USAGE_KIND_AD_IMPRESSION",
        "USAGE_KIND_RENDER",
        "USAGE_KIND_RETRACTION",
        "USAGE_KIND_VIEW",
    ]
    # Through the gateway: the render (its own signature) and publish_many's 300 views,
    # signed in two batches of 150 (one signature each, an inclusion proof per envelope).
    through_gateway = mine(topics.kafka, topics.usage, 301)
    kinds = [event_of_kind(r) for r in through_gateway]
    assert sorted(kinds) == ["USAGE_KIND_RENDER"] + ["USAGE_KIND_VIEW"] * 300
    views = [
        usage_pb2.SignedUsageEvent.FromString(r.value())
        for r, kind in zip(through_gateway, kinds, strict=True)
        if kind == "USAGE_KIND_VIEW"
    ]
    assert {v.batch.leaf_count for v in views} == {150}
    assert len({v.signature for v in views}) == 2


def event_of_kind(record: Any) -> str:
    event = usage_pb2.UsageEvent.FromString(
        usage_pb2.SignedUsageEvent.FromString(record.value()).payload
    )
    return common_pb2.UsageKind.Name(event.kind)


# --- the service process -----------------------------------------------------------------


def test_service_process_serves_health_metrics_and_stops_cleanly(
    stack: StackSettings, topics: Topics, pixel: Tenant, tmp_path: Path
) -> None:
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from residuals.platform.processes import ServiceProcess

    # The launcher picks the gRPC and metrics ports (gateway_env's GRPC_PORT=0 would not do).
    env = {k: v for k, v in gateway_env(stack, topics).items() if k != "GRPC_PORT"}
    service = ServiceProcess(
        "ingest", "residuals", env, tmp_path, args=("ingest", "run"), unset=("OTEL_SERVICE_NAME",)
    ).start()
    grpc_port, metrics_port = service.grpc_port, service.metrics_port
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="residuals.v1.IngestService"), timeout=10
        ).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        client = Gateway(grpc_port)
        (result,) = client.publish(pixel.api_key, [envelope(render(pixel), pixel.signing_key)])
        assert result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        assert b'residuals_ingest_events_total{reason="",status="ACCEPTED"} 1.0' in metrics
        assert b'grpc_method="PublishBatch"' in metrics
        channel.close()
        client.channel.close()
    finally:
        code = service.stop(grace=60)
    logged = (tmp_path / "ingest.log").read_text()
    assert code == 0, logged
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert lines and all(line.get("service") == "ingest" for line in lines)


def test_sdk_adapts_to_batch_limits_and_honours_the_rate_limit(
    start_gateway: Callable[..., IngestApp], topics: Topics, orbit: Tenant, tmp_path: Path
) -> None:
    app = start_gateway(
        INGEST_MAX_BATCH_EVENTS="10", INGEST_VENDOR_RATE="40", INGEST_VENDOR_BURST="20"
    )
    reports: list[DeliveryReport] = []
    with UsageClient.grpc(
        vendor_id=orbit.vendor_id,
        signing_key=orbit.signing_key,
        target=f"127.0.0.1:{app.port}",
        api_key=orbit.api_key,
        spool_dir=tmp_path,
        on_delivery=reports.append,
        max_batch_events=50,  # more than the gateway takes: the SDK must split
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5),
    ) as client:
        started = time.monotonic()
        ids = {
            client.render(
                licence_id=orbit.licence_id,
                avatar_id=orbit.avatar_id,
                render_id=f"r{i}",
                category="product_demo",
                territory="GB",
            )
            for i in range(60)
        }
        assert client.flush(timeout=60) == 0
        elapsed = time.monotonic() - started
    assert {r.event_id for r in reports} == ids
    assert {r.status for r in reports} == {DeliveryStatus.DELIVERED}
    assert max(r.attempts for r in reports) >= 2
    assert elapsed >= 0.9  # 60 events at 40/s with a burst of 20 take at least a second
    assert len(usage_records(topics, ids)) == 60
