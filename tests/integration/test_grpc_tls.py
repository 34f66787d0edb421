"""gRPC over TLS and mTLS with real certificates and sockets: what the chart turns on
(GRPC_TLS_CERT / GRPC_TLS_KEY / GRPC_TLS_CLIENT_CA, the plaintext health-only port the
kubelet probes) and the alerts service's client of LicenceService. Needs no Kafka or
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from residuals.alerts.app import licence_registry
from residuals.alerts.settings import AlertsSettings
from residuals.alerts.suspension import Outcome
from residuals.platform.auth import generate_api_key
from residuals.platform.config import ConfigError, load
from residuals.platform.grpc_server import (
    GrpcMetrics,
    GrpcServer,
    GrpcSettings,
    Servicer,
    client_credentials,
    make_grpc_server,
)
from residuals.v1 import alerts_pb2, licence_pb2, licence_service_pb2, licence_service_pb2_grpc
from tests.support.alerts import FakeLicenceService
from tests.support.tls import Pki, make_pki

LICENCE_SERVICE = "residuals.v1.LicenceService"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def serve(pki: Pki, fake: FakeLicenceService, *, mtls: bool) -> GrpcServer:
    settings = GrpcSettings(
        host="127.0.0.1",
        port=0,
        max_workers=4,
        shutdown_grace_seconds=0,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca if mtls else None,
        health_port=0,
    )
    servicer = Servicer(
        fake,
        licence_service_pb2_grpc.add_LicenceServiceServicer_to_server,
        licence_service_pb2.DESCRIPTOR.services_by_name["LicenceService"],
    )
    return make_grpc_server(
        settings, servicers=[servicer], metrics=GrpcMetrics(CollectorRegistry())
    ).start()


@pytest.fixture
def fake() -> FakeLicenceService:
    service = FakeLicenceService()
    service.licences["LIC-TLS"] = licence_pb2.Licence(
        licence_id="LIC-TLS", talent_id="TAL-1", vendor_id="VEN-1", avatar_id="AVA-1"
    )
    service.auto_suspend["LIC-TLS"] = None
    return service


@pytest.fixture
def mtls_server(pki: Pki, fake: FakeLicenceService) -> Iterator[GrpcServer]:
    server = serve(pki, fake, mtls=True)
    try:
        yield server
    finally:
        server.stop(grace=0)


def health(channel: grpc.Channel, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def suspend(channel: grpc.Channel) -> str:
    """An API call (the one the fake registry serves): the licence id it answers for."""
    stub = licence_service_pb2_grpc.LicenceServiceStub(channel)
    request = licence_service_pb2.SuspendLicenceRequest(
        licence_id="LIC-TLS", reason="tls test", automatic=True, alert_id="ALR-TLS-0"
    )
    return str(stub.SuspendLicence(request, timeout=5).licence.licence_id)


def test_mtls_serves_only_clients_with_a_certificate_from_the_ca(
    mtls_server: GrpcServer, pki: Pki
) -> None:
    address = f"localhost:{mtls_server.port}"
    trusted = client_credentials(pki.ca, pki.client_cert, pki.client_key)
    with grpc.secure_channel(address, trusted) as channel:
        assert suspend(channel) == "LIC-TLS"
        assert health(channel, LICENCE_SERVICE) == "SERVING"
    # TLS without a client certificate, and plaintext, are both turned away.
    for channel in (
        grpc.secure_channel(address, client_credentials(pki.ca)),
        grpc.insecure_channel(address),
    ):
        with channel, pytest.raises(grpc.RpcError) as refused:
            suspend(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_ca_is_refused(mtls_server: GrpcServer, pki: Pki) -> None:
    # System CAs only: the test CA is unknown, so the server's certificate is rejected.
    no_ca = grpc.ssl_channel_credentials(
        private_key=pki.client_key.read_bytes(), certificate_chain=pki.client_cert.read_bytes()
    )
    with (
        grpc.secure_channel(f"localhost:{mtls_server.port}", no_ca) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        suspend(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_answers_plaintext_probes_and_nothing_else(
    mtls_server: GrpcServer,
) -> None:
    assert mtls_server.health_port not in (None, 0, mtls_server.port)
    with grpc.insecure_channel(f"127.0.0.1:{mtls_server.health_port}") as channel:
        assert health(channel) == "SERVING"
        assert health(channel, LICENCE_SERVICE) == "SERVING"
        mtls_server.set_serving(False, LICENCE_SERVICE)
        assert health(channel, LICENCE_SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as api:
            suspend(channel)
        assert api.value.code() == grpc.StatusCode.UNIMPLEMENTED
    port = mtls_server.health_port
    mtls_server.stop(grace=0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
        health(channel)


def test_alerts_suspends_through_licensing_over_mtls(
    mtls_server: GrpcServer, pki: Pki, fake: FakeLicenceService
) -> None:
    env = {
        "ALERTS_LICENSING_ADDRESS": f"localhost:{mtls_server.port}",
        "ALERTS_LICENSING_API_KEY": generate_api_key()[1],
        "ALERTS_LICENSING_TLS": "true",
        "ALERTS_LICENSING_TLS_CA": str(pki.ca),
        "ALERTS_LICENSING_TLS_CERT": str(pki.client_cert),
        "ALERTS_LICENSING_TLS_KEY": str(pki.client_key),
    }
    registry = licence_registry(load(AlertsSettings, env))
    assert registry is not None
    alert = alerts_pb2.Alert(alert_id="ALR-TLS-1", licence_id="LIC-TLS")
    assert registry.suspend_for(alert).outcome is Outcome.SUSPENDED
    assert [call[0].alert_id for call in fake.suspend_calls] == ["ALR-TLS-1"]


def test_alerts_tls_settings_must_be_consistent(tmp_path: Path) -> None:
    base = {"ALERTS_LICENSING_ADDRESS": "licensing:50051"}
    with pytest.raises(ConfigError, match="ALERTS_LICENSING_TLS is not"):
        load(AlertsSettings, {**base, "ALERTS_LICENSING_TLS_CA": str(tmp_path / "ca.crt")})
    with pytest.raises(ConfigError, match="go together"):
        load(
            AlertsSettings,
            {
                **base,
                "ALERTS_LICENSING_TLS": "true",
                "ALERTS_LICENSING_TLS_CERT": str(tmp_path / "client.crt"),
            },
        )
