"""The HTTP/JSON gateway in front of the real ingest and alerts services.

The gateway runs in-process on a real socket and forwards over real gRPC to the ingest
service (real Kafka, real PostgreSQL keys) and the alerts service (real consumer, feed
and database). Each HTTP answer is compared with what a gRPC client gets for the same
request: results, statuses and refusals are the services' own.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import json_format
from residuals_sdk import uuid7

from residuals.alerts.app import AlertsApp
from residuals.alerts.settings import AlertsSettings
from residuals.gateway.app import GatewayApp
from residuals.gateway.openapi import OPENAPI_PATH, openapi_document
from residuals.gateway.openapi import render as render_openapi
from residuals.gateway.routes import load_routes
from residuals.gateway.settings import BackendSettings, GatewaySettings
from residuals.ingest.app import IngestApp
from residuals.platform.auth import Principal, Role, StaticAuthenticator
from residuals.platform.config import PostgresSettings, TelemetrySettings
from residuals.platform.grpc_server import GrpcSettings
from residuals.platform.roles import database_role
from residuals.stack.settings import StackSettings
from residuals.v1 import alert_service_pb2, alert_service_pb2_grpc, ingest_pb2, usage_pb2
from tests.support import alerts as alert_support
from tests.support.gateway import EventStream, call
from tests.support.ingest import Gateway, Registry, Tenant, Topics, envelope, render, start_ingest

PUBLISH = "/v1/ingest:publishBatch"
#: A small body limit, so "too large" is cheap to send.
MAX_BODY = 64 * 1024


@dataclass
class World:
    ingest: IngestApp
    alerts: AlertsApp
    gateway: GatewayApp
    #: A gateway whose services all sit on a closed port: anything that reaches them is 503.
    dead: GatewayApp
    grpc_ingest: Gateway
    alert_stub: alert_service_pb2_grpc.AlertServiceStub
    alert_auth: StaticAuthenticator
    producer: alert_support.AlertProducer
    pixel: Tenant
    orbit: Tenant


def _gateway(**backends: str) -> GatewayApp:
    settings = GatewaySettings(
        telemetry=TelemetrySettings(service_name="gateway"),
        backends=BackendSettings(**backends),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY,
        timeout_seconds=20,
        stream_open_seconds=0.5,
    )
    return GatewayApp(settings).start()


@pytest.fixture(scope="module")
def world(stack: StackSettings) -> Iterator[World]:
    run_id = uuid.uuid4().hex[:8]
    registry = Registry(stack.dsn, run_id)
    topics = Topics(stack, f"gateway-{run_id}.").create()
    ingest = start_ingest(stack, topics)
    kafka = alert_support.isolated_kafka(stack, "gateway-alerts")
    alert_auth = StaticAuthenticator()
    alerts = AlertsApp(
        AlertsSettings(
            kafka=kafka,
            postgres=PostgresSettings(
                dsn=stack.dsn, pool_min=1, pool_max=8, user=database_role("alerts")
            ),
            telemetry=TelemetrySettings(service_name="alerts"),
            grpc=GrpcSettings(host="127.0.0.1", port=0, max_workers=32),
            consumer_group=f"alerts-gw-{kafka.topic_prefix}",
            heartbeat_seconds=1.0,
            window_size=200,
        ),
        authenticator=alert_auth,
    ).start()
    assert alerts.sink is not None and alerts.sink.assigned.wait(30), "no partitions assigned"
    gateway = _gateway(ingest=f"127.0.0.1:{ingest.port}", alerts=f"127.0.0.1:{alerts.port}")
    dead = _gateway(ingest="127.0.0.1:1", alerts="127.0.0.1:1", licensing="127.0.0.1:1")
    alert_channel = grpc.insecure_channel(f"127.0.0.1:{alerts.port}")
    grpc_ingest = Gateway(ingest.port)
    try:
        yield World(
            ingest=ingest,
            alerts=alerts,
            gateway=gateway,
            dead=dead,
            grpc_ingest=grpc_ingest,
            alert_stub=alert_service_pb2_grpc.AlertServiceStub(alert_channel),
            alert_auth=alert_auth,
            producer=alert_support.AlertProducer(kafka),
            pixel=registry.vendor("PIXEL"),
            orbit=registry.vendor("ORBIT"),
        )
    finally:
        gateway.stop()
        dead.stop()
        grpc_ingest.channel.close()
        alert_channel.close()
        alerts.stop()
        ingest.stop()
        alert_support.delete_topics(kafka)
        topics.delete()


def _events_json(envelopes: list[bytes]) -> dict[str, object]:
    return {
        "events": [
            json_format.MessageToDict(usage_pb2.SignedUsageEvent.FromString(e)) for e in envelopes
        ]
    }


def _publish_http(
    world: World, key: str, envelopes: list[bytes]
) -> ingest_pb2.PublishBatchResponse:
    answer = call(world.gateway.port, "POST", PUBLISH, _events_json(envelopes), key=key)
    assert answer.status == 200, answer.body
    assert answer.content_type.startswith("application/json")
    return json_format.ParseDict(answer.json, ingest_pb2.PublishBatchResponse())


# --- publishing: the same answers as gRPC ------------------------------------------------


def test_publish_over_http_answers_exactly_as_grpc(world: World) -> None:
    pixel = world.pixel
    first = envelope(render(pixel), pixel.signing_key)
    second = envelope(render(pixel), pixel.signing_key)
    forged = usage_pb2.SignedUsageEvent.FromString(envelope(render(pixel), pixel.signing_key))
    forged.signature = bytes(64)  # a signature over nothing: BAD_SIGNATURE both ways
    bad = forged.SerializeToString()

    over_http = _publish_http(world, pixel.api_key, [first, bad])
    over_grpc = world.grpc_ingest.publish(pixel.api_key, [second, bad])
    statuses = [ingest_pb2.PublishStatus.Name(r.status) for r in over_http.results]
    assert statuses == ["PUBLISH_STATUS_ACCEPTED", "PUBLISH_STATUS_REJECTED"]
    # The same answer, field for field, for the same bytes (the event id aside).
    for http_result, grpc_result in zip(over_http.results, over_grpc, strict=True):
        assert http_result.status == grpc_result.status
        assert http_result.reason == grpc_result.reason
        assert http_result.detail == grpc_result.detail
        assert http_result.index == grpc_result.index
    assert over_http.results[1] == over_grpc[1]

    # Each accepted event sent again the other way is a duplicate, answered identically.
    again_http = _publish_http(world, pixel.api_key, [second])
    again_grpc = world.grpc_ingest.publish(pixel.api_key, [first])
    assert again_http.results[0].status == ingest_pb2.PUBLISH_STATUS_DUPLICATE
    assert again_grpc[0].status == ingest_pb2.PUBLISH_STATUS_DUPLICATE
    assert (
        again_http.results[0].event_id
        == usage_pb2.UsageEvent.FromString(
            usage_pb2.SignedUsageEvent.FromString(second).payload
        ).event_id
    )


def test_publish_json_is_proto3_json(world: World) -> None:
    """lowerCamelCase, enums by name, every field present (index 0 included)."""
    pixel = world.pixel
    event = render(pixel, event_id=uuid7())
    answer = call(
        world.gateway.port,
        "POST",
        PUBLISH,
        _events_json([envelope(event, pixel.signing_key)]),
        key=pixel.api_key,
    )
    assert answer.status == 200
    (result,) = answer.json["results"]
    assert result == {
        "index": 0,
        "eventId": event.event_id,
        "status": "PUBLISH_STATUS_ACCEPTED",
        "reason": "REJECT_REASON_UNSPECIFIED",
        "detail": "",
    }


def test_vendor_from_the_key_not_the_payload(world: World) -> None:
    """ORBIT's key with PIXEL's events: rejected the way gRPC rejects it."""
    pixel, orbit = world.pixel, world.orbit
    events = [envelope(render(pixel), pixel.signing_key)]
    over_http = _publish_http(world, orbit.api_key, events)
    over_grpc = world.grpc_ingest.publish(orbit.api_key, events)
    assert over_http.results[0].status == ingest_pb2.PUBLISH_STATUS_REJECTED
    assert over_http.results[0].reason == over_grpc[0].reason
    assert over_http.results[0].detail == over_grpc[0].detail


# --- authentication ------------------------------------------------------------------------


def test_an_unknown_key_is_the_services_401(world: World) -> None:
    unknown = "rsd_" + uuid.uuid4().hex[:12] + "_" + "x" * 32
    answer = call(world.gateway.port, "POST", PUBLISH, {"events": []}, key=unknown)
    assert answer.status == 401
    assert answer.content_type.startswith("application/problem+json")
    assert answer.json["code"] == "UNAUTHENTICATED"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(grpc.RpcError) as refused:
        world.grpc_ingest.publish(unknown, [])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert answer.json["detail"] == refused.value.details()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}],
    ids=["missing", "basic", "empty"],
)
def test_no_bearer_key_is_401_without_calling_the_service(
    world: World, headers: dict[str, str]
) -> None:
    answer = call(world.dead.port, "POST", PUBLISH, {"events": []}, headers=headers)
    assert answer.status == 401, answer.body
    assert answer.json["code"] == "UNAUTHENTICATED"
    assert answer.json["status"] == 401


# --- bad input never reaches a service -------------------------------------------------------


def _problem(answer: object, status: int, code: str) -> dict[str, object]:
    from tests.support.gateway import Answer

    assert isinstance(answer, Answer)
    assert answer.status == status, answer.body
    assert answer.content_type.startswith("application/problem+json")
    body = answer.json
    assert body["status"] == status and body["code"] == code
    assert body["type"].startswith("tag:") and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


def test_the_dead_gateway_does_call_services(world: World) -> None:
    """The control: a well-formed request on the dead gateway reaches for its service (503),
    so the 4xx answers below are the gateway's own."""
    answer = call(world.dead.port, "POST", PUBLISH, {"events": []}, key=world.pixel.api_key)
    _problem(answer, 503, "UNAVAILABLE")


def test_malformed_json_is_400(world: World) -> None:
    for body in (b'{"events": [', b"\xff\xfe", b'{"events": [], "events": []}', b"NaN"):
        answer = call(world.dead.port, "POST", PUBLISH, body, key=world.pixel.api_key)
        problem = _problem(answer, 400, "INVALID_ARGUMENT")
        assert problem["violations"][0]["field"] == "(body)"  # type: ignore[index]


def test_wrong_content_type_is_415(world: World) -> None:
    answer = call(
        world.dead.port,
        "POST",
        PUBLISH,
        b"events=1",
        key=world.pixel.api_key,
        content_type="application/x-www-form-urlencoded",
    )
    _problem(answer, 415, "INVALID_ARGUMENT")


def test_an_oversized_body_is_413(world: World) -> None:
    big = {"events": [{"payload": base64.b64encode(bytes(MAX_BODY)).decode()}]}
    answer = call(world.dead.port, "POST", PUBLISH, big, key=world.pixel.api_key)
    _problem(answer, 413, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"evnts": []}, "evnts"),
        ({"events": [{"payload": "", "kid": "k"}]}, "events[0].kid"),
        ({"events": [{"keyId": 7}]}, "events[0].keyId"),
        ({"events": [{"payload": "not base64!"}]}, "events[0].payload"),
        ({"events": {"payload": ""}}, "events"),
        ([1, 2], "(body)"),
    ],
    ids=[
        "unknown-field",
        "unknown-nested",
        "number-for-string",
        "bad-base64",
        "not-array",
        "not-object",
    ],
)
def test_a_bad_field_is_400_naming_it(world: World, body: object, field: str) -> None:
    answer = call(world.dead.port, "POST", PUBLISH, body, key=world.pixel.api_key)
    problem = _problem(answer, 400, "INVALID_ARGUMENT")
    assert problem["violations"] == [  # type: ignore[comparison-overlap]
        {"field": field, "description": problem["violations"][0]["description"]}  # type: ignore[index]
    ]


def test_bad_query_parameters_are_400(world: World) -> None:
    key = world.pixel.api_key
    for path, field in (
        ("/v1/alerts?pageSize=ten", "pageSize"),
        ("/v1/alerts?nope=1", "nope"),
        ("/v1/alerts?filter.states=ALERT_STATE_NOPE", "filter.states"),
        ("/v1/alerts:watch?liveOnly=yes", "liveOnly"),
    ):
        answer = call(world.dead.port, "GET", path, key=key)
        problem = _problem(answer, 400, "INVALID_ARGUMENT")
        assert problem["violations"][0]["field"] == field  # type: ignore[index]


def test_unknown_route_is_404_and_wrong_method_405(world: World) -> None:
    key = world.pixel.api_key
    _problem(call(world.dead.port, "GET", "/v1/nothing", key=key), 404, "NOT_FOUND")
    answer = call(world.dead.port, "GET", PUBLISH, key=key)
    _problem(answer, 405, "UNIMPLEMENTED")
    assert answer.headers["allow"] == "POST"
    # A verb path is never taken for an id: GET on :acknowledge is 405, not a lookup.
    answer = call(world.dead.port, "GET", "/v1/alerts/A1:acknowledge", key=key)
    _problem(answer, 405, "UNIMPLEMENTED")


# --- alerts: roles, the services' own refusals, server-sent events --------------------------


def _talent_key(world: World, tenant: alert_support.Tenant) -> str:
    principal = Principal(f"p-{tenant.talent_id}", Role.TALENT, talent_id=tenant.talent_id)
    return world.alert_auth.add(principal)


def _vendor_key(world: World, tenant: alert_support.Tenant) -> str:
    principal = Principal(f"p-{tenant.vendor_id}", Role.VENDOR, vendor_id=tenant.vendor_id)
    return world.alert_auth.add(principal)


def _wait_listed(world: World, key: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        answer = call(world.gateway.port, "GET", "/v1/alerts", key=key)
        assert answer.status == 200, answer.body
        alerts = answer.json["alerts"]
        if len(alerts) >= count or time.monotonic() > deadline:
            return alerts  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_role_rules_are_the_services(world: World) -> None:
    mine, other = alert_support.Tenant(), alert_support.Tenant()
    alert = other.alert()
    world.producer.send(alert)
    assert len(_wait_listed(world, _talent_key(world, other), 1)) == 1
    vendor_key = _vendor_key(world, mine)

    # Another vendor's alerts by filter: PERMISSION_DENIED over gRPC, 403 over HTTP.
    path = f"/v1/alerts?filter.vendorId={other.vendor_id}"
    answer = call(world.gateway.port, "GET", path, key=vendor_key)
    problem = _problem(answer, 403, "PERMISSION_DENIED")
    with pytest.raises(grpc.RpcError) as refused:
        world.alert_stub.ListAlerts(
            alert_service_pb2.ListAlertsRequest(
                filter=alert_support.alerts_pb2.AlertFilter(vendor_id=other.vendor_id)
            ),
            metadata=alert_support.bearer(vendor_key),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert problem["detail"] == refused.value.details()

    # Unfiltered, the vendor sees none of them.
    answer = call(world.gateway.port, "GET", "/v1/alerts", key=vendor_key)
    assert answer.status == 200 and answer.json["alerts"] == []

    # Working another's alert: NOT_FOUND both ways (its existence is not revealed).
    path = f"/v1/alerts/{alert.alert_id}:acknowledge"
    answer = call(world.gateway.port, "POST", path, {"note": "mine?"}, key=vendor_key)
    _problem(answer, 404, "NOT_FOUND")
    with pytest.raises(grpc.RpcError) as refused:
        world.alert_stub.AcknowledgeAlert(
            alert_service_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id),
            metadata=alert_support.bearer(vendor_key),
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    # Its own talent may: the path variable fills alert_id, the body the rest.
    answer = call(world.gateway.port, "POST", path, {"note": "seen"}, key=_talent_key(world, other))
    assert answer.status == 200, answer.body
    assert answer.json["alert"]["alertId"] == alert.alert_id
    assert answer.json["alert"]["state"] == "ALERT_STATE_ACKNOWLEDGED"


def test_service_field_violations_become_problem_violations(world: World) -> None:
    """INVALID_ARGUMENT with google.rpc.BadRequest from the service: the same fields."""
    key = _talent_key(world, alert_support.Tenant())
    answer = call(world.gateway.port, "GET", "/v1/alerts?pageToken=%00garbage", key=key)
    problem = _problem(answer, 400, "INVALID_ARGUMENT")
    fields = [v["field"] for v in problem["violations"]]  # type: ignore[attr-defined]
    assert fields == ["page_token"]


def test_watch_alerts_streams_events_and_resumes_from_last_event_id(world: World) -> None:
    tenant = alert_support.Tenant()
    key = _talent_key(world, tenant)
    path = "/v1/alerts:watch?heartbeatSeconds=1"
    stream = EventStream(world.gateway.port, path, key)
    try:
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        heartbeat = stream.next_of("heartbeat")
        assert "latestSequence" in heartbeat.json["heartbeat"]
        first = tenant.alert()
        world.producer.send(first)
        event = stream.next_of("alert")
        assert event.json["alert"]["alertId"] == first.alert_id
        assert event.id == event.json["alert"]["sequence"]  # uint64: a string in JSON
        cursor = event.id
    finally:
        stream.close()

    second = tenant.alert()
    world.producer.send(second)
    resumed = EventStream(world.gateway.port, path, key, headers={"Last-Event-ID": cursor})
    try:
        assert resumed.status == 200
        event = resumed.next_of("alert")
        assert event.json["alert"]["alertId"] == second.alert_id, "resumed with a repeat"
        assert int(event.id or 0) > int(cursor)
    finally:
        resumed.close()


def test_watch_refusals_are_plain_problems(world: World) -> None:
    tenant = alert_support.Tenant()
    stream = EventStream(
        world.gateway.port,
        f"/v1/alerts:watch?filter.vendorId={tenant.vendor_id}",
        _vendor_key(world, alert_support.Tenant()),
    )
    assert stream.status == 403
    stream.close()
    bad = EventStream(
        world.gateway.port, "/v1/alerts:watch", "rsd_x", headers={"Last-Event-ID": "abc"}
    )
    assert bad.status == 400
    bad.close()


# --- the contract document ---------------------------------------------------------------------


def test_the_served_openapi_is_the_committed_one(world: World) -> None:
    from pathlib import Path

    answer = call(world.gateway.port, "GET", "/openapi.json")
    assert answer.status == 200
    committed = (Path(__file__).resolve().parents[2] / OPENAPI_PATH).read_text()
    assert render_openapi(answer.json) == committed
    assert render_openapi(openapi_document(load_routes())) == committed
