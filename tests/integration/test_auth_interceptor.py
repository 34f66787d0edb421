"""AuthInterceptor on a real gRPC server over a socket: every RPC kind, every outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from residuals.platform.auth import (
    MALFORMED_KEY_MESSAGE,
    MISSING_KEY_MESSAGE,
    REJECTED_KEY_MESSAGE,
    AuthInterceptor,
    Principal,
    Role,
    StaticAuthenticator,
    bearer_metadata,
    current_principal,
    parse_api_key,
    require_role,
)
from residuals.platform.grpc_server import GrpcMetrics, GrpcSettings, Servicer, make_grpc_server
from residuals.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
)

ADMIN = Principal("p-admin", Role.ADMIN)
VENDOR = Principal("p-acme", Role.VENDOR, vendor_id="acme")
INGEST = "residuals.v1.IngestService"


class Ingest(ingest_pb2_grpc.IngestServiceServicer):
    """Unary and client-streaming; vendors only; records who called."""

    def __init__(self) -> None:
        self.callers: list[Principal] = []

    def PublishBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.callers.append(require_role(Role.VENDOR))
        return ingest_pb2.PublishBatchResponse()

    def PublishStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        for _ in request_iterator:
            self.callers.append(current_principal())
        return ingest_pb2.PublishStreamResponse()


class Alerts(alert_service_pb2_grpc.AlertServiceServicer):
    """Server-streaming; admins only; the principal must be visible in every step."""

    def __init__(self) -> None:
        self.callers: list[Principal] = []

    def WatchAlerts(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        require_role(Role.ADMIN)
        for sequence in (1, 2, 3):
            self.callers.append(current_principal())
            yield alert_service_pb2.WatchAlertsResponse(
                heartbeat=common_pb2.Heartbeat(latest_sequence=sequence)
            )


class Failing:
    def authenticate(self, key_id: str, secret: str) -> Principal | None:
        raise ConnectionError("database down")


class Harness:
    def __init__(self, authenticator: Any, **limits: int) -> None:
        self.registry = CollectorRegistry()
        self.ingest, self.alerts = Ingest(), Alerts()
        settings = {"max_workers": 4, **limits}
        self.server = make_grpc_server(
            GrpcSettings(host="127.0.0.1", port=0, shutdown_grace_seconds=1, **settings),
            servicers=[
                Servicer(
                    self.ingest,
                    ingest_pb2_grpc.add_IngestServiceServicer_to_server,
                    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
                ),
                Servicer(
                    self.alerts,
                    alert_service_pb2_grpc.add_AlertServiceServicer_to_server,
                    alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"],
                ),
            ],
            interceptors=[AuthInterceptor(authenticator)],
            metrics=GrpcMetrics(self.registry),
        ).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.ingest_stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.alert_stub = alert_service_pb2_grpc.AlertServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=0)


@pytest.fixture
def keys() -> StaticAuthenticator:
    return StaticAuthenticator()


@pytest.fixture
def harness(keys: StaticAuthenticator) -> Iterator[Harness]:
    h = Harness(keys)
    try:
        yield h
    finally:
        h.close()


def _error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failed:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return failed.value


def test_unary_call_sees_its_principal(harness: Harness, keys: StaticAuthenticator) -> None:
    key = keys.add(VENDOR)
    harness.ingest_stub.PublishBatch(
        ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(key), timeout=5
    )
    assert harness.ingest.callers == [VENDOR]


def test_client_stream_sees_its_principal(harness: Harness, keys: StaticAuthenticator) -> None:
    key = keys.add(VENDOR)
    requests = iter([ingest_pb2.PublishStreamRequest()] * 3)
    harness.ingest_stub.PublishStream(requests, metadata=bearer_metadata(key), timeout=5)
    assert harness.ingest.callers == [VENDOR] * 3


def test_server_stream_sees_its_principal_in_every_step(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    key = keys.add(ADMIN)
    items = list(
        harness.alert_stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(), metadata=bearer_metadata(key), timeout=5
        )
    )
    assert [i.heartbeat.latest_sequence for i in items] == [1, 2, 3]
    assert harness.alerts.callers == [ADMIN] * 3


def test_concurrent_callers_do_not_see_each_other(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    vendors = [Principal(f"p-{n}", Role.VENDOR, vendor_id=f"v{n}") for n in range(8)]
    plain = {v: keys.add(v) for v in vendors}

    def call(v: Principal) -> None:
        for _ in range(10):
            harness.ingest_stub.PublishBatch(
                ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(plain[v]), timeout=5
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, vendors))
    assert sorted(p.principal_id for p in harness.ingest.callers) == sorted(
        v.principal_id for v in vendors for _ in range(10)
    )


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), MISSING_KEY_MESSAGE),
        ((("authorization", "Basic dXNlcjpwdw=="),), MALFORMED_KEY_MESSAGE),
        ((("authorization", "Bearer"),), MALFORMED_KEY_MESSAGE),
        ((("authorization", "Bearer not-a-key"),), MALFORMED_KEY_MESSAGE),
        ((("authorization", "Bearer rsd_k1_" + "x" * 43),), REJECTED_KEY_MESSAGE),
    ],
)
def test_unauthenticated_on_every_rpc_kind(
    harness: Harness, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    calls = [
        lambda: harness.ingest_stub.PublishBatch(
            ingest_pb2.PublishBatchRequest(), metadata=metadata, timeout=5
        ),
        lambda: harness.ingest_stub.PublishStream(
            iter([ingest_pb2.PublishStreamRequest()]), metadata=metadata, timeout=5
        ),
        lambda: harness.alert_stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(), metadata=metadata, timeout=5
        ),
    ]
    for call in calls:
        error = _error(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == message
    assert harness.ingest.callers == [] and harness.alerts.callers == []
    handled = harness.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": INGEST,
            "grpc_method": "PublishBatch",
            "grpc_type": "unary",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    assert handled == 1


def test_wrong_secret_and_revoked_key_are_unauthenticated(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    key = keys.add(VENDOR)
    parsed = parse_api_key(key)
    assert parsed is not None
    key_id, secret = parsed
    wrong = f"rsd_{key_id}_{'A' * len(secret)}"
    error = _error(
        lambda: harness.ingest_stub.PublishBatch(
            ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(wrong), timeout=5
        )
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        REJECTED_KEY_MESSAGE,
    )
    keys.revoke(key_id)
    error = _error(
        lambda: harness.ingest_stub.PublishBatch(
            ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(key), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_permission_denied_names_caller_and_role(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    vendor_key = keys.add(VENDOR)
    admin_key = keys.add(ADMIN)
    error = _error(
        lambda: harness.alert_stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(), metadata=bearer_metadata(vendor_key), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "vendor:acme (principal p-acme) may not call this method: it requires role admin"
    )
    error = _error(
        lambda: harness.ingest_stub.PublishBatch(
            ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(admin_key), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin (principal p-admin)" in (error.details() or "")


def test_health_and_reflection_are_public(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    assert INGEST in {s.name for s in response.list_services_response.service}


def test_authenticator_failure_is_unavailable_not_unauthenticated() -> None:
    harness = Harness(Failing())
    try:
        error = _error(
            lambda: harness.ingest_stub.PublishBatch(
                ingest_pb2.PublishBatchRequest(),
                metadata=bearer_metadata("rsd_k1_" + "x" * 43),
                timeout=5,
            )
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        harness.close()


def test_a_service_role_may_call_only_its_own_methods(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    key = keys.add(Principal("svc-alerts", Role.SUSPENDER))
    metadata = bearer_metadata(key)
    calls = {
        "/residuals.v1.IngestService/PublishBatch": lambda: harness.ingest_stub.PublishBatch(
            ingest_pb2.PublishBatchRequest(), metadata=metadata, timeout=5
        ),
        "/residuals.v1.IngestService/PublishStream": lambda: harness.ingest_stub.PublishStream(
            iter([ingest_pb2.PublishStreamRequest()]), metadata=metadata, timeout=5
        ),
        "/residuals.v1.AlertService/WatchAlerts": lambda: harness.alert_stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(), metadata=metadata, timeout=5
        ),
    }
    for method, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == (
            f"suspender (principal svc-alerts) may not call {method}: role suspender may call"
            " only /residuals.v1.LicenceService/SuspendLicence"
        )
    assert harness.ingest.callers == [] and harness.alerts.callers == []


def test_a_key_with_whitespace_around_it_is_malformed(
    harness: Harness, keys: StaticAuthenticator
) -> None:
    key = keys.add(VENDOR)
    # (grpc clients refuse control characters in metadata themselves; spaces get through)
    for text in (f"Bearer {key} ", f"Bearer {key[:12]} {key[12:]}", f"Bearer {key}  "):
        error = _error(
            lambda text=text: harness.ingest_stub.PublishBatch(
                ingest_pb2.PublishBatchRequest(), metadata=(("authorization", text),), timeout=5
            )
        )
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            MALFORMED_KEY_MESSAGE,
        ), repr(text)
    harness.ingest_stub.PublishBatch(
        ingest_pb2.PublishBatchRequest(), metadata=(("authorization", f"Bearer  {key}"),), timeout=5
    )
    assert harness.ingest.callers == [VENDOR]


# --- stream caps ------------------------------------------------------------------------------


class HeldStream:
    """A PublishStream whose client keeps its request side open until :meth:`close`: a
    long-lived stream holding one server thread, as a slow or hostile vendor would."""

    def __init__(self, harness: Harness, key: str) -> None:
        self.release = threading.Event()

        def requests() -> Iterator[Any]:
            yield ingest_pb2.PublishStreamRequest()
            self.release.wait(30)

        self.future = harness.ingest_stub.PublishStream.future(
            requests(), metadata=bearer_metadata(key), timeout=40
        )

    def close(self) -> None:
        self.release.set()
        self.future.result(timeout=10)


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _one_stream(harness: Harness, key: str) -> Any:
    return harness.ingest_stub.PublishStream(
        iter([ingest_pb2.PublishStreamRequest()]), metadata=bearer_metadata(key), timeout=5
    )


def test_a_caller_past_its_stream_cap_is_refused_and_others_are_served(
    keys: StaticAuthenticator,
) -> None:
    harness = Harness(keys, max_workers=8, max_streams_per_principal=2)  # 6 streams in all
    acme, other = keys.add(VENDOR), keys.add(Principal("p-other", Role.VENDOR, vendor_id="o"))
    held = [HeldStream(harness, acme) for _ in range(2)]
    try:
        _wait_for(lambda: len(harness.ingest.callers) == 2)
        error = _error(lambda: _one_stream(harness, acme))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            "p-acme already has 2 open streams, the most one caller may hold"
            " (GRPC_MAX_STREAMS_PER_PRINCIPAL=2); close one before opening another"
        )
        _one_stream(harness, other)  # another tenant's stream is served
        harness.ingest_stub.PublishBatch(  # and so are the capped caller's unary calls
            ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(acme), timeout=5
        )
        held[0].close()  # a closed stream gives its slot back
        _one_stream(harness, acme)
    finally:
        for stream in held:
            stream.release.set()
        harness.close()
    refused = harness.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": INGEST,
            "grpc_method": "PublishStream",
            "grpc_type": "client_stream",
            "grpc_code": "RESOURCE_EXHAUSTED",
        },
    )
    assert refused == 1


def test_streams_cannot_take_every_worker_thread(keys: StaticAuthenticator) -> None:
    harness = Harness(keys)  # 4 threads: at most 3 streams, one thread stays for unary calls
    vendors = [Principal(f"p-v{n}", Role.VENDOR, vendor_id=f"v{n}") for n in range(4)]
    plain = [keys.add(v) for v in vendors]
    held = [HeldStream(harness, key) for key in plain[:3]]
    try:
        _wait_for(lambda: len(harness.ingest.callers) == 3)
        error = _error(lambda: _one_stream(harness, plain[3]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            "the server already serves 3 streams, its limit (GRPC_MAX_STREAMS=3);"
            " retry with back-off"
        )
        started = time.monotonic()
        for key in plain:
            harness.ingest_stub.PublishBatch(
                ingest_pb2.PublishBatchRequest(), metadata=bearer_metadata(key), timeout=5
            )
        assert time.monotonic() - started < 2.0, "unary calls waited for a thread"
    finally:
        for stream in held:
            stream.release.set()
        harness.close()
