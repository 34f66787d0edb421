"""The HTTP gateway's pure parts: path templates, routing, transcoding, status mapping and
the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from openapi_spec_validator import validate

from residuals.gateway.app import parse_json, sse_event
from residuals.gateway.openapi import OPENAPI_PATH, openapi_document, render
from residuals.gateway.problems import HTTP_STATUS, Problem, from_rpc
from residuals.gateway.routes import (
    BACKENDS,
    CONTRACTS,
    NoRoute,
    Router,
    TemplateError,
    load_routes,
    parse_template,
)
from residuals.gateway.transcode import Violation, build_request
from residuals.platform.errors import InvalidArgument
from residuals.v1 import alert_service_pb2, alerts_pb2

REPO = Path(__file__).resolve().parents[2]


# --- path templates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/approvals", "/v1/approvals", {}),
        ("/v1/approvals/{approval_id}", "/v1/approvals/APR-1", {"approval_id": "APR-1"}),
        ("/v1/approvals/{approval_id}", "/v1/approvals/a%2Fb", {"approval_id": "a/b"}),
        ("/v1/approvals/{approval_id}", "/v1/approvals/A/B", None),
        ("/v1/approvals/{approval_id}", "/v1/approvals/", None),
        ("/v1/approvals/{approval_id}:approve", "/v1/approvals/A1:approve", {"approval_id": "A1"}),
        ("/v1/approvals/{approval_id}:approve", "/v1/approvals/A1:deny", None),
        ("/v1/ingest:publishBatch", "/v1/ingest:publishBatch", {}),
        ("/v1/ingest:publishBatch", "/v1/ingest", None),
        (
            "/v1/{name=shelves/*/books/*}",
            "/v1/shelves/s1/books/b2",
            {"name": "shelves/s1/books/b2"},
        ),
        ("/v1/{name=shelves/*}/x", "/v1/shelves/a/b/x", None),
        ("/v1/files/{path=**}", "/v1/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/*/items", "/v1/any/items", {}),
        ("/v1/{a.b}", "/v1/x", {"a.b": "x"}),
    ],
)
def test_templates_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    "template",
    ["v1/no-slash", "/v1/{unclosed", "/v1/}x", "/v1/{1bad}", "/v1/**/x", "/v1/{a}/{a}", "/v1/a b"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_openapi_path_keeps_the_verb() -> None:
    template = parse_template("/v1/alerts/{alert_id}:acknowledge")
    assert template.openapi_path() == "/v1/alerts/{alert_id}:acknowledge"
    assert template.verb == "acknowledge"


# --- routing ------------------------------------------------------------------------------


def test_every_routed_service_has_a_backend_and_the_publish_route_is_fixed() -> None:
    routes = load_routes()
    assert {r.service for r in routes} <= set(BACKENDS)
    publish = [r for r in routes if r.name == "IngestService.PublishBatch"]
    assert [(r.http_method, r.template.text, r.body) for r in publish] == [
        ("POST", "/v1/ingest:publishBatch", "*")
    ]


def test_the_router_prefers_verbs_and_answers_405_with_allow() -> None:
    router = Router(load_routes())
    assert router.match("POST", "/v1/approvals/A1:approve").route.name == (
        "ApprovalService.ApproveUse"
    )
    assert router.match("GET", "/v1/approvals/A1").variables == {"approval_id": "A1"}
    assert router.match("GET", "/v1/approvals:watch").route.name == (
        "ApprovalService.WatchApprovals"
    )
    with pytest.raises(NoRoute) as wrong:
        router.match("GET", "/v1/approvals/A1:approve")
    assert wrong.value.allowed == ("POST",)
    with pytest.raises(NoRoute) as missing:
        router.match("GET", "/v2/nothing")
    assert missing.value.allowed == ()


NOTIFY_ROUTES = [
    ("POST", "/v1/webhooks/endpoints", "CreateEndpoint", "*"),
    ("GET", "/v1/webhooks/endpoints/{endpoint_id}", "GetEndpoint", ""),
    ("GET", "/v1/webhooks/endpoints", "ListEndpoints", ""),
    ("PATCH", "/v1/webhooks/endpoints/{endpoint_id}", "UpdateEndpoint", "*"),
    ("DELETE", "/v1/webhooks/endpoints/{endpoint_id}", "DeleteEndpoint", ""),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}:rotateSecret", "RotateEndpointSecret", "*"),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}:sendTest", "SendTestEvent", "*"),
    ("GET", "/v1/webhooks/deliveries", "ListDeliveries", ""),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}:redeliver", "Redeliver", "*"),
    ("GET", "/v1/webhooks/eventTypes", "ListEventTypes", ""),
    ("GET", "/v1/rejections:watch", "WatchRejections", ""),
]


def test_every_notification_method_has_its_route() -> None:
    routes = [r for r in load_routes() if r.service == "residuals.v1.NotificationService"]
    assert sorted((r.http_method, r.template.text, r.method.name, r.body) for r in routes) == (
        sorted(NOTIFY_ROUTES)
    )
    assert {r.backend for r in routes} == {"notify"}
    assert [r.name for r in routes if r.streaming] == ["NotificationService.WatchRejections"]


def test_patch_and_delete_route_and_share_a_path_with_get() -> None:
    router = Router(load_routes())
    path = "/v1/webhooks/endpoints/whe-1"
    for method, name in (
        ("GET", "GetEndpoint"),
        ("PATCH", "UpdateEndpoint"),
        ("DELETE", "DeleteEndpoint"),
    ):
        found = router.match(method, path)
        assert (found.route.method.name, found.variables) == (name, {"endpoint_id": "whe-1"})
    with pytest.raises(NoRoute) as wrong:
        router.match("PUT", path)
    assert wrong.value.allowed == ("DELETE", "GET", "PATCH")
    # A verb path is never an endpoint id, whatever the method.
    with pytest.raises(NoRoute) as verb:
        router.match("DELETE", f"{path}:rotateSecret")
    assert verb.value.allowed == ("POST",)


def test_update_endpoint_keeps_presence_of_optional_fields() -> None:
    route = _route("NotificationService.UpdateEndpoint")
    request = build_request(route, {"endpoint_id": "whe-1"}, [], {"enabled": False})
    assert request.endpoint_id == "whe-1"
    assert request.HasField("enabled") and request.enabled is False
    assert not request.HasField("url") and not request.HasField("min_severity")
    redeliver = build_request(
        _route("NotificationService.Redeliver"), {"delivery_id": "42"}, [], None
    )
    assert redeliver.delivery_id == 42
    with pytest.raises(Violation) as bad:
        build_request(_route("NotificationService.Redeliver"), {"delivery_id": "x"}, [], None)
    assert bad.value.field == "delivery_id"
    deliveries = build_request(
        _route("NotificationService.ListDeliveries"),
        {},
        [("endpointId", "whe-1"), ("states", "DELIVERY_STATE_PENDING")],
        None,
    )
    assert deliveries.endpoint_id == "whe-1" and len(deliveries.states) == 1


def test_duplicate_bindings_are_refused() -> None:
    routes = load_routes()
    from residuals.gateway import routes as routes_module

    twice = [alert_service_pb2.DESCRIPTOR, alert_service_pb2.DESCRIPTOR]
    with pytest.raises(TemplateError, match="bound by"):
        routes_module.load_routes(twice)
    assert routes


# --- transcoding -------------------------------------------------------------------------


def _route(name: str):  # type: ignore[no-untyped-def]
    return next(r for r in load_routes() if r.name == name)


def test_query_parameters_fill_nested_and_repeated_fields() -> None:
    route = _route("AlertService.ListAlerts")
    request = build_request(
        route,
        {},
        [
            ("pageSize", "10"),
            ("filter.states", "ALERT_STATE_OPEN"),
            ("filter.states", "ALERT_STATE_ACKNOWLEDGED"),
            ("filter.talent_id", "TAL-1"),
        ],
        None,
    )
    assert request == alert_service_pb2.ListAlertsRequest(
        page_size=10,
        filter=alerts_pb2.AlertFilter(
            states=[alerts_pb2.ALERT_STATE_OPEN, alerts_pb2.ALERT_STATE_ACKNOWLEDGED],
            talent_id="TAL-1",
        ),
    )


def test_path_variables_and_body_fill_the_request() -> None:
    route = _route("AlertService.AcknowledgeAlert")
    request = build_request(route, {"alert_id": "A1"}, [], {"note": "seen"})
    assert request == alert_service_pb2.AcknowledgeAlertRequest(alert_id="A1", note="seen")
    with pytest.raises(Violation) as clash:
        build_request(route, {"alert_id": "A1"}, [], {"alertId": "A2"})
    assert clash.value.field == "alert_id"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("pageSize", "x")], "pageSize"),
        ([("pageSize", "1"), ("pageSize", "2")], "pageSize"),
        ([("filter", "x")], "filter"),
        ([("filter.nope", "x")], "filter.nope"),
        ([("filter.minSeverity", "LOUD")], "filter.minSeverity"),
    ],
)
def test_bad_query_parameters_name_themselves(query: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(Violation) as bad:
        build_request(_route("AlertService.ListAlerts"), {}, query, None)
    assert bad.value.field == field


def test_body_star_routes_take_no_query() -> None:
    with pytest.raises(Violation) as bad:
        build_request(_route("IngestService.PublishBatch"), {}, [("x", "1")], {})
    assert bad.value.field == "x"


def test_strict_json() -> None:
    assert parse_json(b'{"a": [1, "x"]}') == {"a": [1, "x"]}
    for data in (b'{"a": 1, "a": 2}', b"NaN", b"[Infinity]", b"{", b"\xff"):
        with pytest.raises(Problem) as bad:
            parse_json(data)
        assert bad.value.status == 400


# --- statuses and problems -----------------------------------------------------------------


def test_every_grpc_code_has_its_aip_193_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    expected = {
        "INVALID_ARGUMENT": 400,
        "FAILED_PRECONDITION": 400,
        "OUT_OF_RANGE": 400,
        "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "ABORTED": 409,
        "RESOURCE_EXHAUSTED": 429,
        "CANCELLED": 499,
        "UNIMPLEMENTED": 501,
        "UNAVAILABLE": 503,
        "DEADLINE_EXCEEDED": 504,
        "INTERNAL": 500,
    }
    assert {code.name: HTTP_STATUS[code] for code in grpc.StatusCode if code.name in expected} == (
        expected
    )


def test_bad_request_details_become_violations() -> None:
    status = InvalidArgument.field("filter.period", "'x' is not a period").status()
    problem = from_rpc(status.code, status.details, status.trailing_metadata)
    assert problem.status == 400 and problem.code == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in problem.violations] == [
        ("filter.period", "'x' is not a period")
    ]
    body = problem.body()
    assert body["violations"] == [{"field": "filter.period", "description": "'x' is not a period"}]
    assert body["type"].endswith("invalid-argument")


def test_retry_info_becomes_retry_after() -> None:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=100))
    )
    metadata = (("grpc-status-details-bin", status.SerializeToString()),)
    problem = from_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", metadata)
    assert problem.status == 429 and problem.headers()["Retry-After"] == "3"
    plain = from_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", (("retry-after", "0.250"),))
    assert plain.headers()["Retry-After"] == "1"
    none = from_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "batch too big", ())
    assert "Retry-After" not in none.headers()


def test_sse_events_carry_the_kind_and_the_sequence() -> None:
    alert = alert_service_pb2.WatchAlertsResponse(
        alert=alerts_pb2.Alert(alert_id="A1", sequence=42)
    )
    text = sse_event(alert).decode()
    assert text.startswith("event: alert\nid: 42\ndata: {")
    assert text.endswith("\n\n")
    assert json.loads(text.split("data: ", 1)[1])["alert"]["sequence"] == "42"
    heartbeat = sse_event(alert_service_pb2.WatchAlertsResponse(heartbeat={})).decode()
    assert heartbeat.startswith("event: heartbeat\ndata: ")


# --- the OpenAPI document --------------------------------------------------------------------


def test_openapi_is_valid_and_committed_fresh() -> None:
    document = openapi_document(load_routes())
    validate(document)
    assert render(document) == (REPO / OPENAPI_PATH).read_text(encoding="utf-8"), (
        "stale: run `residuals protos gen`"
    )
    publish = document["paths"]["/v1/ingest:publishBatch"]["post"]
    assert publish["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/residuals.v1.PublishBatchRequest"
    }
    event = document["components"]["schemas"]["residuals.v1.SignedUsageEvent"]
    assert event["properties"]["keyId"] == {"type": "string"}
    assert event["properties"]["payload"]["contentEncoding"] == "base64"
    alert = document["components"]["schemas"]["residuals.v1.Alert"]["properties"]
    assert alert["sequence"]["type"] == "string"  # uint64 in proto3 JSON
    assert alert["raisedAt"] == {"type": "string", "format": "date-time"}


def test_the_gateway_reads_every_contract_with_services() -> None:
    names = {f.name for f in CONTRACTS}
    on_disk = {
        f"residuals/v1/{p.name}"
        for p in (REPO / "protos" / "residuals" / "v1").glob("*.proto")
        if "\nservice " in p.read_text()
    }
    assert names == on_disk
