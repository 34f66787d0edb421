"""The alerts service against the real local Kafka and PostgreSQL, over a real gRPC socket.

Alerts are produced to an isolated alerts topic exactly as the meter does (protobuf
``residuals.v1.Alert``, key = licence id, W3C trace headers); the service runs in-process
with its real consumer, database, change feed and gRPC server. Callers authenticate with
API keys of a StaticAuthenticator through the real AuthInterceptor.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from residuals.alerts.app import AlertsApp
from residuals.alerts.settings import AlertsSettings, LicensingClientSettings
from residuals.alerts.suspension import GrpcLicenceRegistry
from residuals.platform.auth import Principal, Role, StaticAuthenticator
from residuals.platform.config import PostgresSettings, TelemetrySettings
from residuals.platform.grpc_server import GrpcSettings
from residuals.platform.roles import database_role
from residuals.platform.telemetry import inject_kafka_headers
from residuals.stack.settings import StackSettings
from residuals.v1 import alert_service_pb2, alert_service_pb2_grpc, alerts_pb2, common_pb2
from tests.support.alerts import (
    AlertProducer,
    FakeLicenceService,
    StreamReader,
    Tenant,
    bearer,
    delete_topics,
    fake_licence_service,
    isolated_kafka,
)
from tests.support.bad_request import INJECTIONS, UNSTORABLE, bad_field, rpc_error

CRITICAL = common_pb2.SEVERITY_CRITICAL
FORBIDDEN = common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY
TERRITORY = common_pb2.VIOLATION_KIND_TERRITORY_NOT_LICENSED


@dataclass
class Env:
    app: AlertsApp
    producer: AlertProducer
    channel: grpc.Channel
    stub: alert_service_pb2_grpc.AlertServiceStub
    auth: StaticAuthenticator
    licensing: FakeLicenceService
    dsn: str

    def key_for(self, principal: Principal) -> str:
        return self.auth.add(principal)

    def talent_key(self, tenant: Tenant) -> str:
        return self.key_for(
            Principal(f"p-{tenant.talent_id}", Role.TALENT, talent_id=tenant.talent_id)
        )

    def vendor_key(self, tenant: Tenant) -> str:
        return self.key_for(
            Principal(f"p-{tenant.vendor_id}", Role.VENDOR, vendor_id=tenant.vendor_id)
        )

    def watch(self, key: str, **fields: object) -> StreamReader:
        return StreamReader(self.channel, key, alert_service_pb2.WatchAlertsRequest(**fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(stack: StackSettings) -> Iterator[Env]:
    kafka = isolated_kafka(stack, "alerts")
    auth = StaticAuthenticator()
    service_key = auth.add(Principal("svc-alerts", Role.SUSPENDER))
    with fake_licence_service() as (licensing, licensing_port):
        settings = AlertsSettings(
            kafka=kafka,
            postgres=PostgresSettings(
                dsn=stack.dsn, pool_min=1, pool_max=8, user=database_role("alerts")
            ),
            telemetry=TelemetrySettings(service_name="alerts"),
            grpc=GrpcSettings(host="127.0.0.1", port=0, max_workers=32),
            licensing=LicensingClientSettings(
                address=f"127.0.0.1:{licensing_port}", api_key=service_key
            ),
            consumer_group=f"alerts-test-{kafka.topic_prefix}",
            heartbeat_seconds=1.0,
            window_size=200,
            suspension_poll_seconds=0.2,
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{licensing_port}")
        registry = GrpcLicenceRegistry(channel, service_key, timeout=5)
        app = AlertsApp(settings, authenticator=auth, registry=registry).start()
        assert app.sink is not None and app.sink.assigned.wait(30), "no partitions assigned"
        client = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        try:
            yield Env(
                app=app,
                producer=AlertProducer(kafka),
                channel=client,
                stub=alert_service_pb2_grpc.AlertServiceStub(client),
                auth=auth,
                licensing=licensing,
                dsn=stack.dsn,
            )
        finally:
            client.close()
            app.stop()
            channel.close()
            delete_topics(kafka)


def _list(env: Env, key: str, **filter_fields: object) -> list[alerts_pb2.Alert]:
    request = alert_service_pb2.ListAlertsRequest(filter=alerts_pb2.AlertFilter(**filter_fields))  # type: ignore[arg-type]
    return list(env.stub.ListAlerts(request, metadata=bearer(key)).alerts)


def _wait_listed(
    env: Env, key: str, count: int, timeout: float = 15.0, **f: object
) -> list[alerts_pb2.Alert]:
    deadline = time.monotonic() + timeout
    while True:
        found = _list(env, key, **f)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# --- the "done when" criteria ------------------------------------------------------------


def test_political_render_reaches_the_talent_as_critical_within_a_second(env: Env) -> None:
    tenant = Tenant()
    env.licensing.add(tenant, auto_suspend=False)
    reader = env.watch(env.talent_key(tenant), live_only=True, heartbeat_seconds=1)
    try:
        # The stream is open once its first heartbeat arrives.
        _, first = reader.next(timeout=10)
        assert first.HasField("heartbeat")
        alert = tenant.alert(kind=FORBIDDEN)  # severity left to the service (CRITICAL by §9)
        sent = time.monotonic()
        env.producer.send(alert)
        (got,) = reader.alerts(1, timeout=5)
        elapsed = time.monotonic() - sent
    finally:
        reader.cancel()
    assert got.alert_id == alert.alert_id
    assert got.severity == CRITICAL
    assert got.kind == FORBIDDEN
    assert got.change == alerts_pb2.ALERT_CHANGE_RAISED
    assert got.state == alerts_pb2.ALERT_STATE_OPEN
    assert got.detail == "category political is forbidden"
    assert got.sequence > 0
    assert elapsed < 1.0, f"alert took {elapsed:.3f} s from produce to the subscriber"


def test_resume_after_disconnect_has_no_gaps_and_no_repeats(env: Env) -> None:
    mine, other = Tenant(), Tenant()
    key = env.talent_key(mine)
    first = [mine.alert(kind=TERRITORY) for _ in range(5)]
    env.producer.send(*first)
    # Another talent's alerts interleave in the global sequence; they must not show up.
    env.producer.send(*[other.alert(kind=TERRITORY) for _ in range(3)])
    reader = env.watch(key)
    got = reader.alerts(5)
    reader.cancel()
    cursor = got[-1].sequence
    second = [mine.alert(kind=TERRITORY) for _ in range(7)]
    env.producer.send(*second[:4])
    env.producer.send(*[other.alert(kind=TERRITORY) for _ in range(3)])
    env.producer.send(*second[4:])
    reader = env.watch(key, after_sequence=cursor)
    got_after = reader.alerts(7)
    # Nothing more for this talent: the next item is a heartbeat, not a repeat.
    _, item = reader.next(timeout=5)
    reader.cancel()
    assert item.HasField("heartbeat") and item.heartbeat.latest_sequence >= got_after[-1].sequence
    ids = [a.alert_id for a in got + got_after]
    assert sorted(ids) == sorted(a.alert_id for a in first + second)
    assert len(set(ids)) == len(ids), "an alert was delivered twice"
    sequences = [a.sequence for a in got + got_after]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert {a.talent_id for a in got + got_after} == {mine.talent_id}


def test_resume_from_far_back_reads_the_backlog_then_goes_live(env: Env) -> None:
    """A cursor older than the in-memory window is served from PostgreSQL first."""
    tenant = Tenant()
    key = env.talent_key(tenant)
    # More changes than the window (200) holds, so the start is only in the database.
    env.producer.send(*[tenant.alert(kind=TERRITORY) for _ in range(260)])
    listed = _wait_listed(env, key, 260)
    assert len(listed) == 100  # default page size
    reader = env.watch(
        key, after_sequence=0, filter=alerts_pb2.AlertFilter(talent_id=tenant.talent_id)
    )
    backlog = reader.alerts(260, timeout=30)
    live = tenant.alert(kind=TERRITORY)
    env.producer.send(live)
    (got_live,) = reader.alerts(1)
    reader.cancel()
    assert len({a.alert_id for a in backlog}) == 260
    assert got_live.alert_id == live.alert_id
    assert [a.sequence for a in backlog] == sorted(a.sequence for a in backlog)


def test_heartbeats_carry_the_stream_position(env: Env) -> None:
    tenant = Tenant()
    reader = env.watch(env.talent_key(tenant), live_only=True, heartbeat_seconds=1)
    try:
        stamps = []
        for _ in range(3):
            at, item = reader.next(timeout=5)
            assert item.HasField("heartbeat")
            stamps.append((at, item.heartbeat.latest_sequence))
    finally:
        reader.cancel()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    assert all(0.5 < g < 2.5 for g in gaps), gaps
    positions = [s[1] for s in stamps]
    assert positions == sorted(positions), "the stream position went backwards"


# --- storage ------------------------------------------------------------------------------


def test_a_redelivered_alert_is_stored_once(env: Env) -> None:
    tenant = Tenant()
    alert = tenant.alert(kind=TERRITORY)
    env.producer.send(alert, alert)
    env.producer.send(alert)
    key = env.talent_key(tenant)
    listed = _wait_listed(env, key, 1)
    time.sleep(1.0)  # let every copy be consumed
    listed = _list(env, key)
    assert [a.alert_id for a in listed] == [alert.alert_id]
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM alert_changes WHERE alert_id = %s", (alert.alert_id,)
        ).fetchone()
    assert rows == (1,)


def test_poison_on_the_alerts_topic_is_quarantined_and_the_line_moves_on(env: Env) -> None:
    tenant = Tenant()
    key = env.talent_key(tenant)
    before, after = tenant.alert(kind=TERRITORY), tenant.alert(kind=TERRITORY)
    escaped = tenant.alert(kind=TERRITORY)
    escaped.event_ids[:] = ["evt\x00\x1b[31m\u202e"]  # stored, escaped: a vendor's event id
    foreign = tenant.alert(kind=TERRITORY)
    foreign.talent_id = tenant.talent_id + "\x00"  # an id matched by access rules: refused
    severity = tenant.alert(kind=TERRITORY, severity=42)
    amount = tenant.alert(kind=TERRITORY, held_amount="9e999999")
    moment = tenant.alert(kind=TERRITORY)
    moment.occurred_at.nanos = -1
    env.producer.send(before)
    for raw in (None, b"\xff\xffnot an alert"):  # a tombstone, undecodable bytes
        env.producer.producer.produce(env.producer.topic, value=raw, key=tenant.licence_id)
    env.producer.send(escaped, foreign, severity, amount, moment, after)

    listed = _wait_listed(env, key, 3)
    assert {a.alert_id for a in listed} == {before.alert_id, escaped.alert_id, after.alert_id}
    stored = next(a for a in listed if a.alert_id == escaped.alert_id)
    assert list(stored.event_ids) == ["evt\\x00\\x1b[31m\\u202e"]

    def quarantined() -> list[tuple[str, str]]:
        with psycopg.connect(env.dsn) as conn:
            rows = conn.execute(
                "SELECT consumer, error FROM quarantine WHERE source_topic = %s ORDER BY id",
                (env.producer.topic,),
            ).fetchall()
        return [(str(c), str(e)) for c, e in rows]

    _wait(lambda: len(quarantined()) == 6)
    rows = quarantined()
    assert {consumer for consumer, _ in rows} == {"alerts"}
    errors = " | ".join(error for _, error in rows)
    for fragment in (
        "tombstone",
        "DecodeError",
        "talent_id contains the non-printable character U+0000",
        "unknown severity 42",
        "held_amount has more than 18 integer digits",
        "occurred_at is out of bounds",
    ):
        assert fragment in errors, errors
    with psycopg.connect(env.dsn) as conn:
        conn.execute("DELETE FROM quarantine WHERE source_topic = %s", (env.producer.topic,))


def test_list_alerts_pages_newest_first_and_filters(env: Env) -> None:
    tenant = Tenant()
    key = env.talent_key(tenant)
    alerts = [tenant.alert(kind=TERRITORY) for _ in range(5)] + [tenant.alert(kind=FORBIDDEN)]
    env.producer.send(*alerts)
    assert len(_wait_listed(env, key, 6)) == 6
    pages: list[alerts_pb2.Alert] = []
    token = ""
    while True:
        response = env.stub.ListAlerts(
            alert_service_pb2.ListAlertsRequest(page_size=4, page_token=token), metadata=bearer(key)
        )
        pages.extend(response.alerts)
        token = response.next_page_token
        if not token:
            break
    assert [a.alert_id for a in pages] == [a.alert_id for a in reversed(alerts)]
    critical = _list(env, key, min_severity=CRITICAL)
    assert [a.alert_id for a in critical] == [alerts[-1].alert_id]
    with pytest.raises(grpc.RpcError) as bad:
        env.stub.ListAlerts(
            alert_service_pb2.ListAlertsRequest(page_token="nonsense"), metadata=bearer(key)
        )
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# --- roles --------------------------------------------------------------------------------


def test_callers_see_only_their_own_alerts(env: Env) -> None:
    a, b = Tenant(), Tenant()
    env.producer.send(a.alert(kind=TERRITORY), b.alert(kind=TERRITORY))
    finance = env.key_for(Principal("p-fin", Role.FINANCE))
    assert len(_wait_listed(env, finance, 1, talent_id=a.talent_id)) == 1
    assert len(_wait_listed(env, finance, 1, talent_id=b.talent_id)) == 1
    a_talent, a_vendor = env.talent_key(a), env.vendor_key(a)
    assert {x.talent_id for x in _list(env, a_talent)} == {a.talent_id}
    assert {x.vendor_id for x in _list(env, a_vendor)} == {a.vendor_id}
    for key, field, value in (
        (a_talent, "talent_id", b.talent_id),
        (a_vendor, "vendor_id", b.vendor_id),
    ):
        with pytest.raises(grpc.RpcError) as denied:
            _list(env, key, **{field: value})
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    reader = env.watch(a_talent, filter=alerts_pb2.AlertFilter(talent_id=b.talent_id))
    with pytest.raises(grpc.RpcError) as denied:
        reader.alerts(1)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as anonymous:
        env.stub.ListAlerts(alert_service_pb2.ListAlertsRequest())
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --- acknowledge and resolve -----------------------------------------------------------------


def _resolve(
    env: Env, key: str, alert_id: str, resolution: int, note: str = ""
) -> alerts_pb2.Alert:
    return env.stub.ResolveAlert(
        alert_service_pb2.ResolveAlertRequest(alert_id=alert_id, resolution=resolution, note=note),  # type: ignore[arg-type]
        metadata=bearer(key),
    ).alert


def test_acknowledge_and_resolve_appear_on_the_stream_and_record_the_resolution(env: Env) -> None:
    tenant = Tenant()
    talent, vendor = env.talent_key(tenant), env.vendor_key(tenant)
    alert = tenant.alert(kind=TERRITORY, held_amount="2.50")
    reader = env.watch(talent, live_only=True)
    time.sleep(0.3)
    env.producer.send(alert)
    (raised,) = reader.alerts(1)

    acked = env.stub.AcknowledgeAlert(
        alert_service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id), metadata=bearer(vendor)
    ).alert
    assert acked.state == alerts_pb2.ALERT_STATE_ACKNOWLEDGED and acked.sequence > raised.sequence
    again = env.stub.AcknowledgeAlert(
        alert_service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id), metadata=bearer(talent)
    ).alert
    assert again.sequence == acked.sequence  # idempotent: no new change

    with pytest.raises(grpc.RpcError) as denied:
        _resolve(env, vendor, alert.alert_id, alerts_pb2.RESOLUTION_WAIVE)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    disputed = _resolve(env, vendor, alert.alert_id, alerts_pb2.RESOLUTION_DISPUTE, "not ours")
    assert disputed.resolution == alerts_pb2.RESOLUTION_DISPUTE
    settled = _resolve(env, talent, alert.alert_id, alerts_pb2.RESOLUTION_SETTLE, "pay it")
    assert settled.state == alerts_pb2.ALERT_STATE_RESOLVED
    assert settled.resolution == alerts_pb2.RESOLUTION_SETTLE
    assert settled.resolved_by == f"p-{tenant.talent_id}"
    with pytest.raises(grpc.RpcError) as final:
        _resolve(env, talent, alert.alert_id, alerts_pb2.RESOLUTION_WAIVE)
    assert final.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert (
        _resolve(env, talent, alert.alert_id, alerts_pb2.RESOLUTION_SETTLE).sequence
        == settled.sequence
    )

    changes = reader.alerts(3)
    reader.cancel()
    assert [c.change for c in changes] == [
        alerts_pb2.ALERT_CHANGE_ACKNOWLEDGED,
        alerts_pb2.ALERT_CHANGE_RESOLVED,
        alerts_pb2.ALERT_CHANGE_RESOLVED,
    ]
    assert [c.resolution for c in changes[1:]] == [
        alerts_pb2.RESOLUTION_DISPUTE,
        alerts_pb2.RESOLUTION_SETTLE,
    ]
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute(
            "SELECT resolution, held_amount::text, currency_code, note, resolved_by, event_ids "
            "FROM alert_resolutions WHERE alert_id = %s",
            (alert.alert_id,),
        ).fetchone()
        held = conn.execute(
            "SELECT vendor_id, event_id, resolution FROM held_event_resolutions "
            "WHERE alert_id = %s",
            (alert.alert_id,),
        ).fetchall()
    assert row == (
        "settle",
        "2.50",
        "USD",
        "pay it",
        f"p-{tenant.talent_id}",
        list(alert.event_ids),
    )
    assert held == [(tenant.vendor_id, alert.event_ids[0], "settle")]

    stranger = env.talent_key(Tenant())
    with pytest.raises(grpc.RpcError) as hidden:
        env.stub.AcknowledgeAlert(
            alert_service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id),
            metadata=bearer(stranger),
        )
    assert hidden.value.code() is grpc.StatusCode.NOT_FOUND


# --- automatic suspension ----------------------------------------------------------------------


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_critical_misuse_suspends_the_licence_once_and_tells_the_talent(env: Env) -> None:
    tenant = Tenant()
    env.licensing.add(tenant)  # auto_suspend_on_critical unset = true
    reader = env.watch(env.talent_key(tenant), live_only=True)
    time.sleep(0.3)
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    headers = inject_kafka_headers(
        context=trace.set_span_in_context(NonRecordingSpan(parent), Context())
    )
    alert = tenant.alert(kind=FORBIDDEN, suspended_licence=True)
    env.producer.send(alert, headers=headers)
    env.producer.send(alert, headers=headers)  # re-delivery: still one suspension
    raised, suspended = reader.alerts(2)
    reader.cancel()
    assert raised.change == alerts_pb2.ALERT_CHANGE_RAISED
    assert suspended.change == alerts_pb2.ALERT_CHANGE_LICENCE_SUSPENDED
    assert suspended.alert_id == alert.alert_id
    assert suspended.suspended_licence and suspended.HasField("licence_suspended_at")
    assert suspended.suspension_id.startswith("SUS-")
    time.sleep(0.5)
    calls = [c for c in env.licensing.suspend_calls if c[0].licence_id == tenant.licence_id]
    assert len(calls) == 1
    request, trace_id, auth = calls[0]
    assert alert.alert_id in request.reason
    assert trace_id == parent.trace_id, "the registry call did not continue the alert's trace"
    assert auth.startswith("Bearer rsd_")


def test_no_suspension_when_the_licence_opts_out(env: Env) -> None:
    tenant = Tenant()
    env.licensing.add(tenant, auto_suspend=False)
    alert = tenant.alert(kind=FORBIDDEN)
    env.producer.send(alert)
    with psycopg.connect(env.dsn, autocommit=True) as conn:

        def settled() -> bool:
            row = conn.execute(
                "SELECT state FROM alert_suspensions WHERE alert_id = %s", (alert.alert_id,)
            ).fetchone()
            return row is not None and row[0] != "pending"

        _wait(settled)
        state = conn.execute(
            "SELECT state FROM alert_suspensions WHERE alert_id = %s", (alert.alert_id,)
        ).fetchone()
    assert state == ("skipped",)
    assert not env.licensing.licences[tenant.licence_id].suspensions


def test_a_failing_registry_is_retried(env: Env) -> None:
    tenant = Tenant()  # not added to the fake registry yet: SuspendLicence says NOT_FOUND
    alert = tenant.alert(kind=common_pb2.VIOLATION_KIND_USE_AFTER_REVOCATION)
    env.producer.send(alert)
    with psycopg.connect(env.dsn, autocommit=True) as conn:

        def attempted() -> bool:
            row = conn.execute(
                "SELECT attempts FROM alert_suspensions WHERE alert_id = %s", (alert.alert_id,)
            ).fetchone()
            return row is not None and row[0] >= 1

        _wait(attempted)
        env.licensing.add(tenant)
        conn.execute(
            "UPDATE alert_suspensions SET next_attempt_at = now() WHERE alert_id = %s",
            (alert.alert_id,),
        )
        env.app.suspender.poke()  # type: ignore[union-attr]

        def done() -> bool:
            row = conn.execute(
                "SELECT state, last_error FROM alert_suspensions WHERE alert_id = %s",
                (alert.alert_id,),
            ).fetchone()
            return row is not None and row[0] == "done"

        _wait(done)
    assert (
        len([c for c in env.licensing.suspend_calls if c[0].licence_id == tenant.licence_id]) == 1
    )


# --- hostile callers -------------------------------------------------------------------------


def test_one_tenant_past_its_stream_cap_does_not_starve_another(env: Env) -> None:
    """Each principal holds at most GRPC_MAX_STREAMS_PER_PRINCIPAL (4) streams: the fifth
    is refused at once, and another tenant's stream and every unary call are served."""
    greedy, patient = Tenant(), Tenant()
    greedy_key, patient_key = env.talent_key(greedy), env.talent_key(patient)
    readers = [env.watch(greedy_key, live_only=True, heartbeat_seconds=1) for _ in range(4)]
    others: list[StreamReader] = []
    try:
        for reader in readers:  # each open on the server: its first heartbeat arrived
            _, first = reader.next(timeout=10)
            assert not isinstance(first, grpc.RpcError), first
        refused = env.watch(greedy_key, live_only=True, heartbeat_seconds=1)
        _, error = refused.next(timeout=10)
        assert isinstance(error, grpc.RpcError)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "GRPC_MAX_STREAMS_PER_PRINCIPAL=4" in (error.details() or "")
        served = env.watch(patient_key, live_only=True, heartbeat_seconds=1)
        others.append(served)
        _, beat = served.next(timeout=10)
        assert not isinstance(beat, grpc.RpcError) and beat.HasField("heartbeat")
        alert = patient.alert(kind=TERRITORY)
        env.producer.send(alert)
        (got,) = served.alerts(1)
        assert got.alert_id == alert.alert_id
        assert _wait_listed(env, greedy_key, 0) == []  # the greedy tenant's unary calls work
        readers.pop().cancel()  # a closed stream gives its slot back (within a second)
        deadline = time.monotonic() + 10
        while True:
            again = env.watch(greedy_key, live_only=True, heartbeat_seconds=1)
            others.append(again)
            _, item = again.next(timeout=10)
            if not isinstance(item, grpc.RpcError):
                break
            assert item.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "the slot of a cancelled stream never came back"
            time.sleep(0.2)
    finally:
        for reader in readers + others:
            reader.cancel()


def test_bad_filters_and_page_tokens_are_invalid_argument(env: Env) -> None:
    tenant = Tenant()
    finance = env.key_for(Principal("p-finance", Role.FINANCE))
    env.producer.send(tenant.alert(kind=TERRITORY))
    (stored,) = _wait_listed(env, finance, 1, licence_ids=[tenant.licence_id])

    def listing(**request: object) -> Any:
        return lambda: env.stub.ListAlerts(
            alert_service_pb2.ListAlertsRequest(**request),  # type: ignore[arg-type]
            metadata=bearer(finance),
        )

    def watching(**request: object) -> Any:
        return lambda: env.stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(**request),  # type: ignore[arg-type]
            metadata=bearer(finance),
            timeout=5,
        )

    text_filters = ("licence_ids", "talent_id", "vendor_id", "avatar_id")
    for value in INJECTIONS:  # bound as parameters: they match nothing
        for name in text_filters:
            given = [value] if name == "licence_ids" else value
            assert _list(env, finance, **{name: given}) == [], (name, value)
    for value in UNSTORABLE:
        for name in text_filters:
            given = [value] if name == "licence_ids" else value
            expected = f"filter.{name}[0]" if name == "licence_ids" else f"filter.{name}"
            for call in (listing, watching):
                assert bad_field(call(filter=alerts_pb2.AlertFilter(**{name: given}))) == expected
    for bad, expected in (
        (alerts_pb2.AlertFilter(kinds=[999]), "filter.kinds[0]"),  # type: ignore[list-item]
        (alerts_pb2.AlertFilter(states=[1, 9]), "filter.states[1]"),  # type: ignore[list-item]
        (alerts_pb2.AlertFilter(severities=[77]), "filter.severities[0]"),  # type: ignore[list-item]
        (alerts_pb2.AlertFilter(min_severity=77), "filter.min_severity"),  # type: ignore[arg-type]
        (alerts_pb2.AlertFilter(period="2026-13"), "filter.period"),
        (alerts_pb2.AlertFilter(licence_ids=["L"] * 1001), "filter.licence_ids"),
    ):
        assert bad_field(listing(filter=bad)) == expected
        assert bad_field(watching(filter=bad)) == expected

    def forged(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    for token in (
        "nonsense",
        "x" * 10_000,
        forged("alerts:-1"),
        forged("alerts:99999999999999999999"),
        forged("alerts:1 OR 1=1"),
        forged("alerts:1\x00"),
    ):
        assert bad_field(listing(page_token=token)) == "page_token"
    assert bad_field(listing(page_size=1001)) == "page_size"
    assert bad_field(watching(after_sequence=2**64 - 1)) == "after_sequence"
    for request, expected in (
        (alert_service_pb2.AcknowledgeAlertRequest(alert_id="a\x00b"), "alert_id"),
        (alert_service_pb2.AcknowledgeAlertRequest(alert_id="' OR 1=1 --"), None),
        (
            alert_service_pb2.AcknowledgeAlertRequest(alert_id=stored.alert_id, note="\x1b[2J"),
            "note",
        ),
    ):
        call = lambda r=request: env.stub.AcknowledgeAlert(r, metadata=bearer(finance))  # noqa: E731
        if expected is None:
            assert rpc_error(call).code() is grpc.StatusCode.NOT_FOUND
        else:
            assert bad_field(call) == expected
    # Nothing was harmed: the alert is still there, still open.
    (after,) = _list(env, finance, licence_ids=[tenant.licence_id])
    assert (after.alert_id, after.state) == (stored.alert_id, alerts_pb2.ALERT_STATE_OPEN)
