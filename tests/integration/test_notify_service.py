"""The notify service's intake and API against the real local Kafka and PostgreSQL.

Records are produced to isolated source topics exactly as the meter, the licence
registry, the approvals relay, the payouts relay and the gateway publish them; the
service runs in-process with its real consumer, database and gRPC server, connecting as
its own role (residuals_notify). Callers authenticate with API keys of a
StaticAuthenticator through the real AuthInterceptor. No dispatcher is needed: what is
checked is what was stored and queued (deliveries are rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from confluent_kafka.admin import NewTopic

from residuals.codecs.timestamps import set_timestamp
from residuals.domain.notifications import message_id
from residuals.notify.app import NotifyApp
from residuals.notify.settings import NotifySettings
from residuals.platform.auth import Principal, Role, StaticAuthenticator
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.topics import ALERTS, APPROVALS, LICENCES, PAYOUTS, USAGE_DLQ
from residuals.stack.settings import StackSettings
from residuals.v1 import (
    alerts_pb2,
    approvals_pb2,
    common_pb2,
    licence_pb2,
    notification_service_pb2,
    notification_service_pb2_grpc,
    notifications_pb2,
    payouts_pb2,
)
from tests.support.bad_request import bad_field, rpc_error
from tests.support.notify import (
    SOURCE_TOPICS,
    dead_letter,
    notify_settings,
    start_notify,
)
from tests.support.payouts import migrated_database

HOOK = "http://127.0.0.1:9/hook"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@dataclass
class Party:
    talent_id: str = field(default_factory=lambda: unique("TAL"))
    vendor_id: str = field(default_factory=lambda: unique("VEN"))
    licence_id: str = field(default_factory=lambda: unique("LIC"))


@dataclass
class Env:
    kafka: KafkaSettings
    settings: NotifySettings
    auth: StaticAuthenticator
    dsn: str
    app: NotifyApp
    channel: grpc.Channel
    producer: Any
    created: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stub(self) -> notification_service_pb2_grpc.NotificationServiceStub:
        return notification_service_pb2_grpc.NotificationServiceStub(self.channel)

    def key(self, role: Role, tenant: str = "") -> str:
        kwargs: dict[str, Any] = {}
        if role is Role.VENDOR:
            kwargs["vendor_id"] = tenant
        if role is Role.TALENT:
            kwargs["talent_id"] = tenant
        return self.auth.add(Principal(unique("p"), role, **kwargs))

    def create(self, key: str, **fields: Any) -> notification_service_pb2.CreateEndpointResponse:
        request = notification_service_pb2.CreateEndpointRequest(url=HOOK, **fields)
        response = self.stub.CreateEndpoint(request, metadata=bearer(key))
        self.created.append((key, response.endpoint.endpoint_id))
        return response

    def produce(self, topic: Any, value: bytes | None, key: bytes = b"k", **kw: Any) -> None:
        self.producer.produce(
            topic_name(self.kafka, topic), key=key, value=value, headers=kw.get("headers")
        )
        assert self.producer.flush(30) == 0

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def delivered_to(self, event_id: str) -> set[str]:
        rows = self.sql(
            "SELECT d.endpoint_id FROM notify_deliveries d JOIN notify_events e"
            " ON e.sequence = d.event_sequence WHERE e.event_id = %s",
            event_id,
        )
        return {r[0] for r in rows}

    def wait_event(self, event_id: str, timeout: float = 20.0) -> None:
        wait_for(lambda: self.sql("SELECT 1 FROM notify_events WHERE event_id = %s", event_id))


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env(stack: StackSettings) -> Iterator[Env]:
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=f"{unique('notify')}.",
        topic_partitions=1,
    )
    admin = make_admin(kafka)
    names = [topic_name(kafka, t) for t in SOURCE_TOPICS]
    futures = admin.create_topics([NewTopic(n, num_partitions=1) for n in names])
    for future in futures.values():
        future.result(60)
    auth = StaticAuthenticator()
    # A database of this module's own: statements are append-only and one per period, and
    # notify_rejections is unique on the dead letter's position alone (a fresh topic's
    # offsets 0, 1, ... would meet earlier runs' rows in a shared database).
    with migrated_database(stack) as dsn:
        settings = notify_settings(kafka, dsn, "notify-test")
        app = start_notify(settings, auth)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        env = Env(kafka, settings, auth, dsn, app, channel, make_producer(kafka))
        try:
            yield env
        finally:
            env.channel.close()
            env.app.stop()
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(60)


# --- builders ----------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def alert(party: Party, kind: int = common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY) -> bytes:
    message = alerts_pb2.Alert(
        alert_id=uuid.uuid4().hex,
        kind=kind,
        licence_id=party.licence_id,
        talent_id=party.talent_id,
        vendor_id=party.vendor_id,
        avatar_id="AVA-1",
        event_ids=[f"EVT-{i}" for i in range(30)],
        held_units=3,
        held_amount="1.50",
        currency_code="USD",
        detail="category political is forbidden\x1b[31m",
    )
    set_timestamp(message.occurred_at, now())
    set_timestamp(message.raised_at, now())
    return message.SerializeToString()


# --- intake and routing -------------------------------------------------------------------


def test_an_alert_reaches_its_talent_its_vendor_and_finance_only(env: Env) -> None:
    mine, other = Party(), Party()
    talent = env.create(env.key(Role.TALENT, mine.talent_id)).endpoint.endpoint_id
    other_talent = env.create(env.key(Role.TALENT, other.talent_id)).endpoint.endpoint_id
    vendor = env.create(env.key(Role.VENDOR, mine.vendor_id)).endpoint.endpoint_id
    other_vendor = env.create(env.key(Role.VENDOR, other.vendor_id)).endpoint.endpoint_id
    finance = env.create(env.key(Role.FINANCE)).endpoint.endpoint_id
    high_only = env.create(
        env.key(Role.TALENT, mine.talent_id), min_severity=common_pb2.SEVERITY_CRITICAL
    ).endpoint.endpoint_id
    quota_only = env.create(
        env.key(Role.TALENT, mine.talent_id), event_types=["quota.exceeded"]
    ).endpoint.endpoint_id
    raw = alert(mine)
    alert_id = alerts_pb2.Alert.FromString(raw).alert_id
    env.produce(ALERTS, raw, headers=[("residuals-published-at", b"1700000000000")])
    event_id = message_id("alert.raised", alert_id)
    env.wait_event(event_id)
    got = env.delivered_to(event_id)
    assert {talent, vendor, finance, high_only} <= got
    assert not {other_talent, other_vendor, quota_only} & got
    ((body, severity, origin),) = env.sql(
        "SELECT body, severity, origin_at FROM notify_events WHERE event_id = %s", event_id
    )
    text = bytes(body).decode("ascii")
    assert '"type":"alert.raised"' in text
    assert "\x1b" not in text and "\\\\x1b[31m" in text  # escaped, never raw
    assert severity == common_pb2.SEVERITY_CRITICAL  # the kind's default, filled in
    assert origin == datetime.fromtimestamp(1_700_000_000, UTC)
    assert text.count("EVT-") == 20  # bounded

    # A quota breach is its own type; the quota-only endpoint gets it.
    quota = alert(mine, common_pb2.VIOLATION_KIND_QUOTA_EXCEEDED)
    env.produce(ALERTS, quota)
    quota_event = message_id("quota.exceeded", alerts_pb2.Alert.FromString(quota).alert_id)
    env.wait_event(quota_event)
    assert quota_only in env.delivered_to(quota_event)


def test_licence_snapshots_announce_each_change_once(env: Env) -> None:
    party = Party()
    talent = env.create(env.key(Role.TALENT, party.talent_id)).endpoint.endpoint_id
    licence = licence_pb2.Licence(
        licence_id=party.licence_id,
        talent_id=party.talent_id,
        vendor_id=party.vendor_id,
        avatar_id="AVA-1",
        revision=2,
    )
    window = licence.suspensions.add(suspension_id=unique("SUS"), reason="misuse")
    set_timestamp(window.starts_at, now() - timedelta(hours=2))
    licence.versions.add(version=1)
    env.produce(LICENCES, licence.SerializeToString(), key=party.licence_id.encode())
    suspended = message_id("licence.suspended", window.suspension_id)
    env.wait_event(suspended)
    # The next snapshot: reinstated by a person, then revoked. Earlier windows repeat.
    window.reinstated_by = "p-talent"
    set_timestamp(window.ends_at, now() - timedelta(hours=1))
    latest = licence.versions.add(version=2, wind_down_days=7)
    set_timestamp(latest.revoked_at, now())
    licence.revision = 4
    env.produce(LICENCES, licence.SerializeToString(), key=party.licence_id.encode())
    env.produce(LICENCES, None, key=party.licence_id.encode())  # a tombstone: skipped
    revoked = message_id("licence.revoked", party.licence_id)
    env.wait_event(revoked)
    reinstated = message_id("licence.reinstated", window.suspension_id)
    rows = env.sql(
        "SELECT event_id FROM notify_events WHERE event_id = ANY(%s)",
        [suspended, reinstated, revoked],
    )
    assert len(rows) == 3
    for event_id in (suspended, reinstated, revoked):
        assert env.delivered_to(event_id) >= {talent}


def test_approvals_are_requested_then_decided(env: Env) -> None:
    party = Party()
    vendor = env.create(env.key(Role.VENDOR, party.vendor_id)).endpoint.endpoint_id
    talent = env.create(env.key(Role.TALENT, party.talent_id)).endpoint.endpoint_id
    approval = approvals_pb2.Approval(
        approval_id=unique("APR"),
        licence_id=party.licence_id,
        talent_id=party.talent_id,
        vendor_id=party.vendor_id,
        category="political_ad",
        status=approvals_pb2.APPROVAL_STATUS_PENDING,
        revision=1,
    )
    set_timestamp(approval.requested_at, now())
    env.produce(APPROVALS, approval.SerializeToString())
    approval.status = approvals_pb2.APPROVAL_STATUS_APPROVED
    approval.revision = 2
    set_timestamp(approval.decided_at, now())
    env.produce(APPROVALS, approval.SerializeToString())
    decided = message_id("approval.decided", f"{approval.approval_id}:2")
    env.wait_event(decided)
    requested = message_id("approval.requested", approval.approval_id)
    assert env.delivered_to(requested) >= {vendor, talent}
    assert env.delivered_to(decided) >= {vendor, talent}


def test_payouts_reach_their_payee_only_never_its_clients_or_a_vendor(env: Env) -> None:
    agent, client, stranger = unique("PAY"), unique("TAL"), unique("TAL")
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for talent in (client, stranger):
            conn.execute(
                "INSERT INTO talents (talent_id, created_by) VALUES (%s, 'test')", (talent,)
            )
        conn.execute(
            "INSERT INTO payees (payee_id, kind, created_by) VALUES (%s, 'agent', 'test')",
            (agent,),
        )
        conn.execute(
            "INSERT INTO payee_talents (payee_id, talent_id) VALUES (%s, %s)", (agent, client)
        )
    client_ep = env.create(env.key(Role.TALENT, client)).endpoint.endpoint_id
    agent_ep = env.create(env.key(Role.TALENT, agent)).endpoint.endpoint_id
    stranger_ep = env.create(env.key(Role.TALENT, stranger)).endpoint.endpoint_id
    vendor_key = env.key(Role.VENDOR, unique("VEN"))
    assert bad_field(lambda: env.create(vendor_key, event_types=["payout.paid"])) == "event_types"
    payout_id = unique("PO")
    for sequence, state in (
        (7, payouts_pb2.PAYOUT_STATE_PENDING),
        (8, payouts_pb2.PAYOUT_STATE_PAID),
    ):
        event = payouts_pb2.PayoutEvent(
            payout=payouts_pb2.Payout(
                payout_id=payout_id,
                payee_id=agent,
                state=state,
                period="2026-01",
                amount=common_pb2.Money(currency_code="USD", units=12, nanos=340_000_000),
                sequence=sequence,
            ),
            sequence=sequence,
        )
        set_timestamp(event.payout.updated_at, now())
        env.produce(PAYOUTS, event.SerializeToString(), key=agent.encode())
    paid = message_id("payout.paid", f"{payout_id}:8")
    env.wait_event(paid)
    got = env.delivered_to(paid)
    # The agent's payout sums several clients' money: its clients see their own statements,
    # not the agency's payouts (as PayoutService shows them).
    assert agent_ep in got and client_ep not in got and stranger_ep not in got
    assert not env.sql(
        "SELECT 1 FROM notify_events WHERE event_id = %s",
        message_id("payout.paid", f"{payout_id}:7"),
    )
    ((body,),) = env.sql("SELECT body FROM notify_events WHERE event_id = %s", paid)
    assert b'"amount":"12.34"' in bytes(body)


def test_dead_letters_reach_their_vendor_as_rejections(env: Env) -> None:
    party = Party()
    vendor = env.create(env.key(Role.VENDOR, party.vendor_id)).endpoint.endpoint_id
    other = env.create(env.key(Role.VENDOR, unique("VEN"))).endpoint.endpoint_id
    talent_key = env.key(Role.TALENT, party.talent_id)
    assert bad_field(lambda: env.create(talent_key, event_types=["usage.rejected"])) == (
        "event_types"
    )
    talent = env.create(talent_key).endpoint.endpoint_id  # every type it may: not rejections
    event_id = unique("EVT")
    env.produce(USAGE_DLQ, dead_letter(party.vendor_id, event_id).SerializeToString())
    rows = wait_for(
        lambda: env.sql(
            "SELECT sequence, message_id, original_bytes, original_sha256, dlq_offset"
            " FROM notify_rejections WHERE event_id = %s",
            event_id,
        )
    )
    ((_sequence, msg, size, digest, dlq_offset),) = rows
    assert size == len(b"secret payload bytes")
    assert digest == hashlib.sha256(b"secret payload bytes").hexdigest()
    (partition_offset,) = env.sql(
        "SELECT event_id FROM notify_events WHERE event_id = %s",
        message_id("usage.rejected", f"{topic_name(env.kafka, USAGE_DLQ)}:0:{dlq_offset}"),
    )
    assert partition_offset[0] == msg
    got = env.delivered_to(msg)
    assert vendor in got and other not in got and talent not in got
    ((body,),) = env.sql("SELECT body FROM notify_events WHERE event_id = %s", msg)
    assert b"secret payload" not in bytes(body) and b"INVALID_QUANTITY" in bytes(body)


def test_statements_are_announced_to_their_talents_and_vendors_once(env: Env) -> None:
    party, other = Party(), Party()
    talent = env.create(env.key(Role.TALENT, party.talent_id)).endpoint.endpoint_id
    vendor = env.create(env.key(Role.VENDOR, party.vendor_id)).endpoint.endpoint_id
    stranger = env.create(env.key(Role.TALENT, other.talent_id)).endpoint.endpoint_id
    statement_id = unique("ST")
    period = "2026-03"
    digest = "a" * 64
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO statements (statement_id, period, content_hash, canonical_json,"
            " adjustments_hash, inputs, event_count, closed_by)"
            " VALUES (%s, %s, %s, '{}', %s, '{}', 0, 'test')",
            (statement_id, period, digest, digest),
        )
        conn.execute(
            "INSERT INTO statement_licences (statement_id, licence_id, talent_id, vendor_id,"
            " currency, earned, minimum_guarantee_topup, gross, platform_fee, net,"
            " advance_recouped, vendor_invoice) VALUES (%s, %s, %s, %s, 'USD', 0, 0, 0, 0, 0,"
            " 0, 0)",
            (statement_id, party.licence_id, party.talent_id, party.vendor_id),
        )
    for_talent = message_id("statement.ready", f"{statement_id}:talent:{party.talent_id}")
    for_vendor = message_id("statement.ready", f"{statement_id}:vendor:{party.vendor_id}")
    env.wait_event(for_vendor)
    env.wait_event(for_talent)
    assert talent in env.delivered_to(for_talent)
    assert vendor in env.delivered_to(for_vendor)
    assert stranger not in env.delivered_to(for_talent) | env.delivered_to(for_vendor)
    assert env.sql("SELECT 1 FROM notify_statements_seen WHERE statement_id = %s", statement_id)
    ((body,),) = env.sql("SELECT body FROM notify_events WHERE event_id = %s", for_vendor)
    assert f'"licence_ids":["{party.licence_id}"]'.encode() in bytes(body)


def test_undecodable_records_are_set_aside_and_the_line_moves_on(env: Env) -> None:
    party = Party()
    vendor = env.create(env.key(Role.VENDOR, party.vendor_id)).endpoint.endpoint_id
    env.produce(ALERTS, b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage")
    env.produce(APPROVALS, approvals_pb2.Approval(status=1).SerializeToString())  # no id
    raw = alert(party)
    env.produce(ALERTS, raw)
    event_id = message_id("alert.raised", alerts_pb2.Alert.FromString(raw).alert_id)
    env.wait_event(event_id)
    assert vendor in env.delivered_to(event_id)
    set_aside = env.sql(
        "SELECT source_topic FROM quarantine WHERE consumer = 'notify' AND source_topic = ANY(%s)",
        [topic_name(env.kafka, ALERTS), topic_name(env.kafka, APPROVALS)],
    )
    assert len(set_aside) == 2


# --- the API ------------------------------------------------------------------------------


def test_endpoints_are_their_owners_only(env: Env) -> None:
    party = Party()
    vendor_key = env.key(Role.VENDOR, party.vendor_id)
    other_vendor_key = env.key(Role.VENDOR, unique("VEN"))
    talent_key = env.key(Role.TALENT, party.talent_id)
    admin_key = env.key(Role.ADMIN)
    created = env.create(vendor_key, description="orders", event_types=["alert.raised"])
    endpoint = created.endpoint
    assert created.secret.startswith("whsec_")
    assert endpoint.owner_role == "vendor" and endpoint.vendor_id == party.vendor_id
    assert endpoint.state == notifications_pb2.ENDPOINT_STATE_ENABLED
    # Stored sealed: the plain secret is nowhere in the row.
    ((stored,),) = env.sql(
        "SELECT secret FROM notify_endpoints WHERE endpoint_id = %s", endpoint.endpoint_id
    )
    assert stored.startswith("v1:") and created.secret not in stored
    assert env.app.box.open(stored) == created.secret
    ident = notification_service_pb2.GetEndpointRequest(endpoint_id=endpoint.endpoint_id)
    for key in (other_vendor_key, talent_key):
        error = rpc_error(lambda key=key: env.stub.GetEndpoint(ident, metadata=bearer(key)))
        assert error.code() is grpc.StatusCode.NOT_FOUND
        error = rpc_error(
            lambda key=key: env.stub.DeleteEndpoint(
                notification_service_pb2.DeleteEndpointRequest(endpoint_id=endpoint.endpoint_id),
                metadata=bearer(key),
            )
        )
        assert error.code() is grpc.StatusCode.NOT_FOUND
        listed = env.stub.ListEndpoints(
            notification_service_pb2.ListEndpointsRequest(), metadata=bearer(key)
        )
        assert endpoint.endpoint_id not in {e.endpoint_id for e in listed.endpoints}
    got = env.stub.GetEndpoint(ident, metadata=bearer(admin_key)).endpoint
    assert got.endpoint_id == endpoint.endpoint_id
    # Rotation returns a new secret; the response of Get has no secret at all.
    rotated = env.stub.RotateEndpointSecret(
        notification_service_pb2.RotateEndpointSecretRequest(endpoint_id=endpoint.endpoint_id),
        metadata=bearer(vendor_key),
    )
    assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
    assert rotated.endpoint.HasField("secret_rotated_at")
    ((previous, until),) = env.sql(
        "SELECT previous_secret, previous_until - now() FROM notify_endpoints"
        " WHERE endpoint_id = %s",
        endpoint.endpoint_id,
    )
    assert env.app.box.open(previous) == created.secret
    assert timedelta(hours=23) < until <= timedelta(hours=24)
    assert bad_field(
        lambda: env.stub.RotateEndpointSecret(
            notification_service_pb2.RotateEndpointSecretRequest(
                endpoint_id=endpoint.endpoint_id, previous_secret_seconds=604_801
            ),
            metadata=bearer(vendor_key),
        )
    ) == ("previous_secret_seconds")
    # Disable / enable.
    update = env.stub.UpdateEndpoint(
        notification_service_pb2.UpdateEndpointRequest(
            endpoint_id=endpoint.endpoint_id, enabled=False, description="paused"
        ),
        metadata=bearer(vendor_key),
    ).endpoint
    assert update.state == notifications_pb2.ENDPOINT_STATE_DISABLED
    assert update.disabled_reason == "by its owner" and update.description == "paused"
    update = env.stub.UpdateEndpoint(
        notification_service_pb2.UpdateEndpointRequest(
            endpoint_id=endpoint.endpoint_id,
            enabled=True,
            replace_event_types=True,
            event_types=["usage.rejected", "quota.near"],
        ),
        metadata=bearer(vendor_key),
    ).endpoint
    assert update.state == notifications_pb2.ENDPOINT_STATE_ENABLED and not update.disabled_reason
    assert list(update.event_types) == ["usage.rejected", "quota.near"]
    # Test event, deliveries, redelivery.
    delivery = env.stub.SendTestEvent(
        notification_service_pb2.SendTestEventRequest(endpoint_id=endpoint.endpoint_id),
        metadata=bearer(vendor_key),
    ).delivery
    assert delivery.event_type == "webhook.test" and '"message":"test event"' in delivery.body
    assert delivery.state == notifications_pb2.DELIVERY_STATE_PENDING
    again = env.stub.Redeliver(
        notification_service_pb2.RedeliverRequest(delivery_id=delivery.delivery_id),
        metadata=bearer(vendor_key),
    ).delivery
    assert again.redelivery_of == delivery.delivery_id and again.message_id == delivery.message_id
    error = rpc_error(
        lambda: env.stub.Redeliver(
            notification_service_pb2.RedeliverRequest(delivery_id=delivery.delivery_id),
            metadata=bearer(other_vendor_key),
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    page = env.stub.ListDeliveries(
        notification_service_pb2.ListDeliveriesRequest(
            endpoint_id=endpoint.endpoint_id, page_size=1
        ),
        metadata=bearer(vendor_key),
    )
    assert [d.delivery_id for d in page.deliveries] == [again.delivery_id]
    rest = env.stub.ListDeliveries(
        notification_service_pb2.ListDeliveriesRequest(
            endpoint_id=endpoint.endpoint_id, page_size=1, page_token=page.next_page_token
        ),
        metadata=bearer(vendor_key),
    )
    assert [d.delivery_id for d in rest.deliveries] == [delivery.delivery_id]
    assert not rest.next_page_token
    got = env.stub.GetEndpoint(ident, metadata=bearer(vendor_key)).endpoint
    assert got.pending_deliveries == 2
    types = env.stub.ListEventTypes(
        notification_service_pb2.ListEventTypesRequest(), metadata=bearer(talent_key)
    ).event_types
    available = {t.name: t.available for t in types}
    assert available["payout.paid"] and not available["usage.rejected"]
    env.stub.DeleteEndpoint(
        notification_service_pb2.DeleteEndpointRequest(endpoint_id=endpoint.endpoint_id),
        metadata=bearer(vendor_key),
    )
    error = rpc_error(lambda: env.stub.GetEndpoint(ident, metadata=bearer(vendor_key)))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_bad_requests_name_their_field(env: Env) -> None:
    key = env.key(Role.VENDOR, unique("VEN"))

    def create(**fields: Any) -> Callable[[], Any]:
        request = notification_service_pb2.CreateEndpointRequest(**{"url": HOOK, **fields})
        return lambda: env.stub.CreateEndpoint(request, metadata=bearer(key))

    assert bad_field(create(url="")) == "url"
    assert bad_field(create(url="ftp://example.com/x")) == "url"
    assert bad_field(create(url="https://" + "a" * 2100 + ".com")) == "url"
    assert bad_field(create(description="x" * 501)) == "description"
    assert bad_field(create(description="\x1b]0;pwned\x07")) == "description"
    assert bad_field(create(event_types=["no.such"])) == "event_types"
    assert bad_field(create(event_types=["alert.raised", "alert.raised"])) == "event_types"
    assert bad_field(create(min_severity=99)) == "min_severity"  # type: ignore[arg-type]
    list_request = notification_service_pb2.ListEndpointsRequest
    assert (
        bad_field(
            lambda: env.stub.ListEndpoints(list_request(page_size=1001), metadata=bearer(key))
        )
        == "page_size"
    )
    assert (
        bad_field(
            lambda: env.stub.ListEndpoints(list_request(page_token="zz!"), metadata=bearer(key))
        )
        == "page_token"
    )
    assert (
        bad_field(
            lambda: env.stub.GetEndpoint(
                notification_service_pb2.GetEndpointRequest(endpoint_id="a\x00b"),
                metadata=bearer(key),
            )
        )
        == "endpoint_id"
    )


# --- WatchRejections ----------------------------------------------------------------------


class Reader:
    """A WatchRejections stream read on a thread into a queue."""

    def __init__(self, env: Env, key: str, **fields: Any) -> None:
        request = notification_service_pb2.WatchRejectionsRequest(**fields)
        self.call = env.stub.WatchRejections(request, metadata=bearer(key))
        self.items: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for item in self.call:
                self.items.put(item)
        except grpc.RpcError as error:
            self.items.put(error)

    def rejections(self, count: int, timeout: float = 20.0) -> list[notifications_pb2.Rejection]:
        found: list[notifications_pb2.Rejection] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            item = self.items.get(timeout=max(0.01, deadline - time.monotonic()))
            assert not isinstance(item, grpc.RpcError), item
            if item.HasField("rejection"):
                found.append(item.rejection)
        return found

    def heartbeat(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            item = self.items.get(timeout=max(0.01, deadline - time.monotonic()))
            assert not isinstance(item, grpc.RpcError), item
            if item.HasField("heartbeat"):
                return int(item.heartbeat.latest_sequence)

    def cancel(self) -> None:
        self.call.cancel()


def test_watch_rejections_backlog_live_and_resume(env: Env) -> None:
    mine, theirs = unique("VEN"), unique("VEN")
    key = env.key(Role.VENDOR, mine)
    first = [unique("EVT") for _ in range(3)]
    for event_id in first:
        env.produce(USAGE_DLQ, dead_letter(mine, event_id).SerializeToString())
    env.produce(USAGE_DLQ, dead_letter(theirs, unique("EVT")).SerializeToString())
    wait_for(lambda: len(env.sql("SELECT 1 FROM notify_rejections WHERE vendor_id = %s", theirs)))
    reader = Reader(env, key, heartbeat_seconds=1)
    got = reader.rejections(3)
    assert [r.event_id for r in got] == first
    assert {r.vendor_id for r in got} == {mine}
    beat = reader.heartbeat()
    assert beat > got[-1].sequence  # moved past the other vendor's rejection
    live = unique("EVT")
    env.produce(USAGE_DLQ, dead_letter(mine, live).SerializeToString())
    (got_live,) = reader.rejections(1)
    assert got_live.event_id == live and got_live.message_id.startswith("msg_")
    assert got_live.original_bytes == len(b"secret payload bytes")
    reader.cancel()
    # Resume across a reconnect: nothing lost, nothing repeated.
    cursor = got_live.sequence
    later = [unique("EVT") for _ in range(2)]
    for event_id in later:
        env.produce(USAGE_DLQ, dead_letter(mine, event_id).SerializeToString())
    reader = Reader(env, key, after_sequence=cursor, heartbeat_seconds=1)
    assert [r.event_id for r in reader.rejections(2)] == later
    reader.heartbeat()
    reader.cancel()
    # Role rules.
    other = Reader(env, key, vendor_id=theirs)
    error = other.items.get(timeout=10)
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    talent = Reader(env, env.key(Role.TALENT, unique("TAL")))
    error = talent.items.get(timeout=10)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    finance = Reader(env, env.key(Role.FINANCE), vendor_id=mine, heartbeat_seconds=1)
    assert [r.event_id for r in finance.rejections(6)] == [*first, live, *later]
    finance.cancel()
    live_only = Reader(env, key, live_only=True, heartbeat_seconds=1)
    head = live_only.heartbeat()
    assert head >= cursor
    live_only.cancel()


def test_a_restart_rereads_everything_and_stores_nothing_twice(env: Env) -> None:
    party = Party()
    key = env.key(Role.VENDOR, party.vendor_id)
    vendor = env.create(key).endpoint.endpoint_id
    raw = alert(party)
    env.produce(ALERTS, raw)
    event_id = unique("EVT")
    env.produce(USAGE_DLQ, dead_letter(party.vendor_id, event_id).SerializeToString())
    alert_event = message_id("alert.raised", alerts_pb2.Alert.FromString(raw).alert_id)
    env.wait_event(alert_event)
    wait_for(lambda: env.sql("SELECT 1 FROM notify_rejections WHERE event_id = %s", event_id))
    before = counts(env)
    reader = Reader(env, key, heartbeat_seconds=1)
    (seen,) = reader.rejections(1)
    resume = max(seen.sequence, reader.heartbeat())
    reader.cancel()
    # Stop the app; a new one with a fresh consumer group re-reads every topic from the start.
    env.app.stop()
    settings = notify_settings(env.kafka, env.dsn, "notify-test-reread")
    env.app = start_notify(settings, env.auth)
    env.channel.close()
    env.channel = grpc.insecure_channel(f"127.0.0.1:{env.app.port}")
    topics = [topic_name(env.kafka, t) for t in SOURCE_TOPICS]
    group = env.kafka.topic_prefix + "notify-test-reread"

    def caught_up() -> bool:
        ends = {t: end_offset(env.kafka, t) for t in topics}
        rows = env.sql("SELECT topic, next_offset FROM consumer_offsets WHERE group_id = %s", group)
        stored = dict(rows)
        return all(stored.get(t, 0) >= end for t, end in ends.items())

    wait_for(caught_up, timeout=120)
    assert counts(env) == before
    assert len(env.delivered_to(alert_event) & {vendor}) == 1
    # The stream resumes on the new app where the old one stopped.
    later = unique("EVT")
    env.produce(USAGE_DLQ, dead_letter(party.vendor_id, later).SerializeToString())
    reader = Reader(env, key, after_sequence=resume, heartbeat_seconds=1)
    (got,) = reader.rejections(1)
    assert got.event_id == later
    reader.cancel()


def counts(env: Env) -> tuple[int, ...]:
    prefix = env.kafka.topic_prefix
    ((events, deliveries, rejections, quarantined),) = env.sql(
        "SELECT (SELECT count(*) FROM notify_events),"
        " (SELECT count(*) FROM notify_deliveries),"
        " (SELECT count(*) FROM notify_rejections),"
        " (SELECT count(*) FROM quarantine WHERE consumer = 'notify'"
        "  AND starts_with(source_topic, %s))",
        prefix,
    )
    return events, deliveries, rejections, quarantined


def end_offset(kafka: KafkaSettings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "probe"})
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high)
    finally:
        consumer.close()


def test_the_sdk_manages_endpoints_and_follows_rejections(env: Env) -> None:
    from residuals_sdk import NotificationsClient, RequestRefusedError

    vendor_id = unique("VEN")
    key = env.key(Role.VENDOR, vendor_id)
    with NotificationsClient(target=f"127.0.0.1:{env.app.port}", api_key=key) as client:
        created = client.create_endpoint(HOOK, description="sdk", event_types=["usage.rejected"])
        endpoint_id = created.endpoint.endpoint_id
        assert created.secret.startswith("whsec_")
        assert [e.endpoint_id for e in client.list_endpoints(page_size=1)] == [endpoint_id]
        paused = client.update_endpoint(endpoint_id, enabled=False)
        assert paused.state == notifications_pb2.ENDPOINT_STATE_DISABLED
        client.update_endpoint(endpoint_id, enabled=True, event_types=[])
        rotated = client.rotate_secret(endpoint_id, previous_secret_seconds=60)
        assert rotated.secret != created.secret
        test = client.send_test_event(endpoint_id)
        again = client.redeliver(test.delivery_id)
        listed = [d.delivery_id for d in client.list_deliveries(endpoint_id, page_size=1)]
        assert listed == [again.delivery_id, test.delivery_id]
        with pytest.raises(RequestRefusedError) as refused:
            client.create_endpoint(HOOK, event_types=["payout.paid"])
        assert refused.value.code == "INVALID_ARGUMENT"
        ids = [unique("EVT") for _ in range(3)]
        for event_id in ids:
            env.produce(USAGE_DLQ, dead_letter(vendor_id, event_id).SerializeToString())
        stream = client.watch_rejections(heartbeat_seconds=1)
        first = next(stream)
        assert first.event_id == ids[0]
        stream.close()
        resumed = client.watch_rejections(after_sequence=first.sequence, heartbeat_seconds=1)
        assert [next(resumed).event_id for _ in range(2)] == ids[1:]
        resumed.close()
        client.delete_endpoint(endpoint_id)


def test_an_owner_may_have_only_so_many_endpoints(env: Env) -> None:
    """Each endpoint costs a lane, a lease and deliveries: a tenant cannot make unbounded
    work. The cap is per owner; deleting one makes room; another vendor is unaffected."""
    vendor_key = env.key(Role.VENDOR, unique("VEN"))
    cap = env.app.settings.max_endpoints_per_owner
    made = [env.create(vendor_key).endpoint.endpoint_id for _ in range(cap)]
    error = rpc_error(lambda: env.create(vendor_key))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({cap})" in (error.details() or "")
    assert env.create(env.key(Role.VENDOR, unique("VEN"))).endpoint.endpoint_id
    env.stub.DeleteEndpoint(
        notification_service_pb2.DeleteEndpointRequest(endpoint_id=made[0]),
        metadata=bearer(vendor_key),
    )
    assert env.create(vendor_key).endpoint.endpoint_id
