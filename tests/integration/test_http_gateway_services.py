"""The HTTP/JSON gateway in front of the real licensing (approvals), payouts and notify
services, the trace context through it, and the ingest service's real rate limit.

Each service runs in-process on a real socket with its real database (and Kafka where it
has a consumer or relay), started as its own integration tests start it; the gateway runs
in-process too and forwards over real gRPC. What the tests compare is what a gRPC client
gets for the same request: the HTTP answer is the service's, in proto3 JSON.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka.admin import NewTopic
from google.protobuf import json_format
from google.protobuf.message import Message

from residuals.gateway.app import GatewayApp
from residuals.gateway.settings import BackendSettings, GatewaySettings
from residuals.ingest.app import IngestApp
from residuals.notify.app import NotifyApp
from residuals.payouts.app import PayoutsApp
from residuals.platform.auth import Principal, Role, StaticAuthenticator, bearer_metadata
from residuals.platform.config import KafkaSettings, TelemetrySettings
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.topics import USAGE_DLQ
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2 as aps
from residuals.v1 import approvals_pb2, notification_service_pb2_grpc, payout_service_pb2_grpc
from residuals.v1 import notification_service_pb2 as ns
from residuals.v1 import payout_service_pb2 as ps
from tests.support import approvals as approval_support
from tests.support.alerts import unique
from tests.support.gateway import Answer, EventStream, call
from tests.support.ingest import Registry, Tenant, Topics, envelope, render, start_ingest
from tests.support.notify import SOURCE_TOPICS, dead_letter, notify_settings, start_notify
from tests.support.payouts import case_sources, migrated_database, running_payouts

CASE = Path(__file__).parents[1] / "data" / "royalty-cases" / "07-advance-and-threshold.yaml"
HOOK = "http://127.0.0.1:9/hook"


def _gateway(**backends: str) -> GatewayApp:
    settings = GatewaySettings(
        telemetry=TelemetrySettings(service_name="gateway"),
        backends=BackendSettings(**backends),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        timeout_seconds=20,
        stream_open_seconds=0.5,
    )
    return GatewayApp(settings).start()


def as_json(message: Message) -> Any:
    """What the gateway answers for ``message``: proto3 JSON, defaults included."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def ok(answer: Answer) -> Any:
    assert answer.status == 200, answer.body
    assert answer.content_type.startswith("application/json")
    return answer.json


def problem(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    assert answer.content_type.startswith("application/problem+json")
    body: dict[str, Any] = answer.json
    assert body["status"] == status and body["code"] == code
    return body


# --- approvals through the real licensing service ------------------------------------------


@dataclass
class Approvals:
    world: approval_support.World
    gateway: GatewayApp

    def key(self, role: str, tenant: str = "A") -> str:
        return self.world.keys[tenant][role]

    def http(self, method: str, path: str, body: Any = None, *, role: str, **kw: Any) -> Answer:
        return call(self.gateway.port, method, path, body, key=self.key(role), **kw)


@pytest.fixture(scope="module")
def approvals(stack: StackSettings) -> Iterator[Approvals]:
    for world in approval_support.start_world(stack):
        gateway = _gateway(licensing=f"127.0.0.1:{world.port}")
        try:
            yield Approvals(world, gateway)
        finally:
            gateway.stop()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_review_before_use_over_http(approvals: Approvals) -> None:
    """CheckUse says NEEDS_APPROVAL; the vendor asks, the talent approves, CheckUse with
    the approval says ALLOW; every answer is the one gRPC gives."""
    world = approvals.world
    use = {
        "licenceId": "LIC-APR-A",
        "avatarId": "AVA-A",
        "kind": "USAGE_KIND_RENDER",
        "category": "political",
        "territory": "US",
    }
    checked = ok(approvals.http("POST", "/v1/approvals:checkUse", use, role="vendor"))
    assert checked["verdict"] == "USE_VERDICT_NEEDS_APPROVAL"
    by_grpc = world.call("CheckUse", json_format.ParseDict(use, aps.CheckUseRequest()))
    assert checked == as_json(by_grpc)

    now = datetime.now(UTC)
    asked = {
        "requestId": f"req-{uuid.uuid4().hex[:12]}",
        "licenceId": "LIC-APR-A",
        "category": "political",
        "use": {"brief": "Get out the vote", "territories": ["US"], "channels": ["web"]},
        "rendersRequested": 2,
        "requestedFrom": _rfc3339(now - timedelta(minutes=1)),
        "requestedUntil": _rfc3339(now + timedelta(days=1)),
    }
    requested = ok(approvals.http("POST", "/v1/approvals", asked, role="vendor"))["approval"]
    approval_id = requested["approvalId"]
    assert requested["status"] == "APPROVAL_STATUS_PENDING"
    assert requested["rendersRequested"] == 2 and requested["revision"] == "1"
    # The same request again is the same approval (idempotent on requestId), as over gRPC.
    again = ok(approvals.http("POST", "/v1/approvals", asked, role="vendor"))["approval"]
    assert again == requested

    # The talent's inbox lists it; the vendor of tenant B may not read it.
    listed = ok(
        approvals.http("GET", "/v1/approvals?statuses=APPROVAL_STATUS_PENDING", role="talent")
    )
    assert approval_id in [a["approvalId"] for a in listed["approvals"]]
    pending = aps.ListApprovalsRequest(statuses=[approvals_pb2.APPROVAL_STATUS_PENDING])
    grpc_listed = world.call("ListApprovals", pending, "talent")
    assert listed == as_json(grpc_listed)
    other = call(
        approvals.gateway.port,
        "GET",
        f"/v1/approvals/{approval_id}",
        key=approvals.key("vendor", "B"),
    )
    assert "not an approval of vendor VEN-B" in problem(other, 403, "PERMISSION_DENIED")["detail"]

    # The vendor cannot approve its own request: the service's refusal, as a problem.
    refused = approvals.http(
        "POST", f"/v1/approvals/{approval_id}:approve", {"maxRenders": 1}, role="vendor"
    )
    problem(refused, 403, "PERMISSION_DENIED")

    decided = ok(
        approvals.http(
            "POST",
            f"/v1/approvals/{approval_id}:approve",
            {"maxRenders": 1, "note": "one cut"},
            role="talent",
        )
    )["approval"]
    assert decided["status"] == "APPROVAL_STATUS_APPROVED"
    assert (decided["maxRenders"], decided["reason"], decided["revision"]) == (1, "one cut", "2")
    got = ok(approvals.http("GET", f"/v1/approvals/{approval_id}", role="vendor"))["approval"]
    assert got == decided
    grpc_got = world.call("GetApproval", aps.GetApprovalRequest(approval_id=approval_id))
    assert got == as_json(grpc_got.approval)
    # A different decision now is FAILED_PRECONDITION: 400 with the gRPC code named.
    changed = approvals.http(
        "POST", f"/v1/approvals/{approval_id}:deny", {"reason": "no"}, role="talent"
    )
    assert "already approved" in problem(changed, 400, "FAILED_PRECONDITION")["detail"]

    approved_use = {**use, "approvalId": approval_id}
    checked = ok(approvals.http("POST", "/v1/approvals:checkUse", approved_use, role="vendor"))
    assert checked["verdict"] == "USE_VERDICT_ALLOW"
    assert checked["approvedRendersRemaining"] == "1"  # uint64: a string in proto3 JSON


def test_approval_field_violations_are_the_services(approvals: Approvals) -> None:
    body = {"requestId": "", "licenceId": "LIC-APR-A", "category": "political"}
    answer = approvals.http("POST", "/v1/approvals", body, role="vendor")
    found = problem(answer, 400, "INVALID_ARGUMENT")
    assert "request_id" in [v["field"] for v in found["violations"]]


def test_traceparent_reaches_the_service(approvals: Approvals) -> None:
    """The caller's W3C trace context continues in the service: its SERVER span (recorded
    by the licensing service's tracer) is in the caller's trace."""
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    spans = approvals.world.started.service.spans
    spans.clear()
    answer = approvals.http(
        "GET",
        "/v1/approvals",
        role="talent",
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "rsd=gw"},
    )
    ok(answer)
    deadline = time.monotonic() + 10
    while True:
        served = [
            s
            for s in spans.get_finished_spans()
            if s.name.endswith("ApprovalService/ListApprovals")
        ]
        if served or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert served, [s.name for s in spans.get_finished_spans()]
    (span,) = served
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.trace_id:032x}" == trace_id
    assert span.context.trace_state.get("rsd") == "gw"
    # Without a traceparent, the service starts a trace of its own (none is invented).
    spans.clear()
    ok(approvals.http("GET", "/v1/approvals", role="talent"))
    time.sleep(0.2)
    others = [s for s in spans.get_finished_spans() if s.name.endswith("ListApprovals")]
    assert others and all(f"{s.context.trace_id:032x}" != trace_id for s in others)


# --- the ingest service's rate limit: a real 429 with Retry-After ----------------------------


@dataclass
class Limited:
    ingest: IngestApp
    gateway: GatewayApp
    tenant: Tenant


@pytest.fixture(scope="module")
def limited(stack: StackSettings, approvals: Approvals) -> Iterator[Limited]:
    # (After ``approvals``: its start empties the licensing tables this vendor lives in.)
    run_id = uuid.uuid4().hex[:8]
    tenant = Registry(stack.dsn, run_id).vendor("LIMIT")
    topics = Topics(stack, f"gateway-limit-{run_id}.").create()
    ingest = start_ingest(
        stack,
        topics,
        # Three events at once, then one a second.
        INGEST_VENDOR_RATE="1",
        INGEST_VENDOR_BURST="3",
        INGEST_MAX_BATCH_EVENTS="3",
    )
    gateway = _gateway(ingest=f"127.0.0.1:{ingest.port}")
    try:
        yield Limited(ingest, gateway, tenant)
    finally:
        gateway.stop()
        ingest.stop()
        topics.delete()


def test_the_ingest_rate_limit_is_a_429_with_retry_after(limited: Limited) -> None:
    tenant = limited.tenant

    def batch(count: int) -> dict[str, Any]:
        from residuals.v1 import usage_pb2

        return {
            "events": [
                json_format.MessageToDict(
                    usage_pb2.SignedUsageEvent.FromString(
                        envelope(render(tenant), tenant.signing_key)
                    )
                )
                for _ in range(count)
            ]
        }

    first = ok(
        call(limited.gateway.port, "POST", "/v1/ingest:publishBatch", batch(3), key=tenant.api_key)
    )
    assert [r["status"] for r in first["results"]] == ["PUBLISH_STATUS_ACCEPTED"] * 3
    answer = call(
        limited.gateway.port, "POST", "/v1/ingest:publishBatch", batch(3), key=tenant.api_key
    )
    body = problem(answer, 429, "RESOURCE_EXHAUSTED")
    assert body["title"] == "Too Many Requests"
    retry_after = int(answer.headers["retry-after"])
    # Three tokens at 1/s: about 3 s (rounded up to whole seconds).
    assert 2 <= retry_after <= 3, retry_after
    # After waiting that long, the same batch goes through.
    time.sleep(retry_after)
    again = call(
        limited.gateway.port, "POST", "/v1/ingest:publishBatch", batch(3), key=tenant.api_key
    )
    assert [r["status"] for r in ok(again)["results"]] == ["PUBLISH_STATUS_ACCEPTED"] * 3


# --- statements and payouts through the real payouts service --------------------------------


@dataclass
class Payouts:
    app: PayoutsApp
    stub: payout_service_pb2_grpc.PayoutServiceStub
    gateway: GatewayApp
    keys: dict[str, str]

    def md(self, who: str) -> Any:
        return bearer_metadata(self.keys[who])

    def http(self, path: str, who: str) -> Answer:
        return call(self.gateway.port, "GET", path, key=self.keys[who])


@pytest.fixture(scope="module")
def payouts(stack: StackSettings) -> Iterator[Payouts]:
    sources, _events = case_sources(CASE)
    auth = StaticAuthenticator()
    keys = {
        "finance": auth.add(Principal("p-fin", Role.FINANCE)),
        "gus": auth.add(Principal("p-gus", Role.TALENT, talent_id="TAL-GUS")),
        "acme": auth.add(Principal("p-acme", Role.VENDOR, vendor_id="VEN-ACME")),
    }
    with (
        migrated_database(stack) as dsn,
        running_payouts(
            stack,
            dsn,
            "gwpay",
            sources=sources,
            authenticator=auth,
            thresholds_text="USD=25.00",
            poll_seconds=0.05,
            heartbeat_seconds=5.0,
        ) as app,
    ):
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        gateway = _gateway(payouts=f"127.0.0.1:{app.port}")
        try:
            yield Payouts(app, payout_service_pb2_grpc.PayoutServiceStub(channel), gateway, keys)
        finally:
            gateway.stop()
            channel.close()


def test_statement_and_payout_reads_over_http(payouts: Payouts) -> None:
    closed = payouts.stub.ClosePeriod(
        ps.ClosePeriodRequest(period="2026-10"), metadata=payouts.md("finance")
    )
    assert closed.statement.content_hash

    # ListStatements: the talent's own view, as gRPC gives it.
    listed = ok(payouts.http("/v1/statements", "gus"))
    assert [s["period"] for s in listed["statements"]] == ["2026-10"]
    grpc_listed = payouts.stub.ListStatements(
        ps.ListStatementsRequest(), metadata=payouts.md("gus")
    )
    assert listed == as_json(grpc_listed)
    ranged = ok(payouts.http("/v1/statements?fromPeriod=2026-11", "gus"))
    assert ranged["statements"] == []

    # GetStatement by role: the vendor sees its licences only.
    vendor = ok(payouts.http("/v1/statements/2026-10", "acme"))["statement"]
    assert [x["licenceId"] for x in vendor["licences"]] == ["LIC-GUS-ACME"]
    grpc_vendor = payouts.stub.GetStatement(
        ps.GetStatementRequest(period="2026-10"), metadata=payouts.md("acme")
    )
    assert vendor == as_json(grpc_vendor.statement)
    problem(payouts.http("/v1/statements/2030-01", "finance"), 404, "NOT_FOUND")

    # ListPayouts: finance sees the period's payouts; the answer is gRPC's.
    paid = ok(payouts.http("/v1/payouts?period=2026-10", "finance"))
    grpc_paid = payouts.stub.ListPayouts(
        ps.ListPayoutsRequest(period="2026-10"), metadata=payouts.md("finance")
    )
    assert paid == as_json(grpc_paid)
    assert paid["payouts"], "case 07 pays someone above the threshold"
    mine = ok(payouts.http("/v1/payouts?period=2026-10&payeeId=TAL-GUS", "gus"))
    assert {p["payeeId"] for p in mine["payouts"]} <= {"TAL-GUS"}
    # Another payee's payouts: the service's refusal, unchanged.
    other = payouts.http("/v1/payouts?payeeId=AGT-MO", "gus")
    assert other.status in (403, 404), other.body


# --- webhooks and WatchRejections through the real notify service ---------------------------


@dataclass
class Notify:
    app: NotifyApp
    stub: notification_service_pb2_grpc.NotificationServiceStub
    gateway: GatewayApp
    auth: StaticAuthenticator
    kafka: KafkaSettings
    producer: Any

    def key(self, role: Role, tenant: str = "") -> str:
        kwargs: dict[str, Any] = {}
        if role is Role.VENDOR:
            kwargs["vendor_id"] = tenant
        if role is Role.TALENT:
            kwargs["talent_id"] = tenant
        return self.auth.add(Principal(unique("p"), role, **kwargs))

    def http(self, method: str, path: str, body: Any = None, *, key: str) -> Answer:
        return call(self.gateway.port, method, path, body, key=key)

    def reject(self, vendor_id: str, event_id: str) -> None:
        self.producer.produce(
            topic_name(self.kafka, USAGE_DLQ),
            key=b"k",
            value=dead_letter(vendor_id, event_id).SerializeToString(),
        )
        assert self.producer.flush(30) == 0


@pytest.fixture(scope="module")
def notify(stack: StackSettings) -> Iterator[Notify]:
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=f"{unique('gwnotify')}.",
        topic_partitions=1,
    )
    admin = make_admin(kafka)
    names = [topic_name(kafka, t) for t in SOURCE_TOPICS]
    for future in admin.create_topics([NewTopic(n, num_partitions=1) for n in names]).values():
        future.result(60)
    auth = StaticAuthenticator()
    with migrated_database(stack) as dsn:
        app = start_notify(notify_settings(kafka, dsn, "notify-gw-test"), auth)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        gateway = _gateway(notify=f"127.0.0.1:{app.port}")
        try:
            yield Notify(
                app,
                notification_service_pb2_grpc.NotificationServiceStub(channel),
                gateway,
                auth,
                kafka,
                make_producer(kafka),
            )
        finally:
            gateway.stop()
            channel.close()
            app.stop()
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(60)


def test_webhook_endpoints_over_http(notify: Notify) -> None:
    vendor = unique("VEN")
    key = notify.key(Role.VENDOR, vendor)
    created = ok(
        notify.http(
            "POST",
            "/v1/webhooks/endpoints",
            {"url": HOOK, "description": "mine", "eventTypes": ["usage.rejected"]},
            key=key,
        )
    )
    assert created["secret"].startswith("whsec_")
    endpoint = created["endpoint"]
    endpoint_id = endpoint["endpointId"]
    assert (endpoint["url"], endpoint["eventTypes"]) == (HOOK, ["usage.rejected"])

    got = ok(notify.http("GET", f"/v1/webhooks/endpoints/{endpoint_id}", key=key))
    assert got["endpoint"] == endpoint
    grpc_got = notify.stub.GetEndpoint(
        ns.GetEndpointRequest(endpoint_id=endpoint_id), metadata=bearer_metadata(key)
    )
    assert got == as_json(grpc_got)
    listed = ok(notify.http("GET", "/v1/webhooks/endpoints", key=key))
    assert [e["endpointId"] for e in listed["endpoints"]] == [endpoint_id]
    # Another vendor does not see it (NOT_FOUND, never 403).
    stranger = notify.key(Role.VENDOR, unique("VEN"))
    problem(
        notify.http("GET", f"/v1/webhooks/endpoints/{endpoint_id}", key=stranger), 404, "NOT_FOUND"
    )
    assert ok(notify.http("GET", "/v1/webhooks/endpoints", key=stranger))["endpoints"] == []

    # PATCH: only the fields sent change (proto3 optional keeps "false" apart from "unset").
    patched = ok(
        notify.http(
            "PATCH",
            f"/v1/webhooks/endpoints/{endpoint_id}",
            {"description": "renamed", "enabled": False},
            key=key,
        )
    )["endpoint"]
    assert (patched["description"], patched["state"], patched["url"]) == (
        "renamed",
        "ENDPOINT_STATE_DISABLED",
        HOOK,
    )
    patched = ok(
        notify.http("PATCH", f"/v1/webhooks/endpoints/{endpoint_id}", {"enabled": True}, key=key)
    )["endpoint"]
    assert (patched["description"], patched["state"]) == ("renamed", "ENDPOINT_STATE_ENABLED")

    # sendTest queues a webhook.test delivery; ListDeliveries (endpointId in the query) has it.
    sent = ok(notify.http("POST", f"/v1/webhooks/endpoints/{endpoint_id}:sendTest", key=key))
    delivery = sent["delivery"]
    deliveries = ok(
        notify.http("GET", f"/v1/webhooks/deliveries?endpointId={endpoint_id}", key=key)
    )
    assert delivery["deliveryId"] in [d["deliveryId"] for d in deliveries["deliveries"]]
    grpc_deliveries = notify.stub.ListDeliveries(
        ns.ListDeliveriesRequest(endpoint_id=endpoint_id), metadata=bearer_metadata(key)
    )
    assert {d["deliveryId"] for d in deliveries["deliveries"]} == {
        str(d.delivery_id) for d in grpc_deliveries.deliveries
    }
    redelivered = ok(
        notify.http("POST", f"/v1/webhooks/deliveries/{delivery['deliveryId']}:redeliver", key=key)
    )["delivery"]
    assert redelivered["deliveryId"] != delivery["deliveryId"]

    rotated = ok(
        notify.http(
            "POST",
            f"/v1/webhooks/endpoints/{endpoint_id}:rotateSecret",
            {"previousSecretSeconds": 60},
            key=key,
        )
    )
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]

    types = ok(notify.http("GET", "/v1/webhooks/eventTypes", key=key))["eventTypes"]
    assert "usage.rejected" in [t["name"] for t in types]

    assert ok(notify.http("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}", key=key)) == {}
    problem(notify.http("GET", f"/v1/webhooks/endpoints/{endpoint_id}", key=key), 404, "NOT_FOUND")
    # A bad URL is the service's own field violation.
    bad = notify.http("POST", "/v1/webhooks/endpoints", {"url": "ftp://x"}, key=key)
    assert [v["field"] for v in problem(bad, 400, "INVALID_ARGUMENT")["violations"]] == ["url"]


def test_watch_rejections_streams_and_resumes_from_last_event_id(notify: Notify) -> None:
    vendor = unique("VEN")
    key = notify.key(Role.VENDOR, vendor)
    path = "/v1/rejections:watch?heartbeatSeconds=1"
    first_id = unique("EVT")
    notify.reject(vendor, first_id)
    stream = EventStream(notify.gateway.port, path, key)
    try:
        assert stream.status == 200, stream.response.read()
        assert stream.content_type.startswith("text/event-stream")
        event = stream.next_of("rejection", timeout=30)
        rejection = event.json["rejection"]
        assert (rejection["eventId"], rejection["vendorId"]) == (first_id, vendor)
        assert rejection["reason"] == "REJECT_REASON_INVALID_QUANTITY"
        assert event.id == rejection["sequence"]
        live_id = unique("EVT")
        notify.reject(vendor, live_id)
        live = stream.next_of("rejection", timeout=30)
        assert live.json["rejection"]["eventId"] == live_id
        cursor = live.id
        assert cursor is not None
    finally:
        stream.close()

    later = [unique("EVT") for _ in range(2)]
    for event_id in later:
        notify.reject(vendor, event_id)
    resumed = EventStream(notify.gateway.port, path, key, headers={"Last-Event-ID": cursor})
    try:
        assert resumed.status == 200
        got = [resumed.next_of("rejection", timeout=30) for _ in later]
        assert [e.json["rejection"]["eventId"] for e in got] == later, "a gap or a repeat"
        assert all(int(e.id or 0) > int(cursor) for e in got)
    finally:
        resumed.close()
