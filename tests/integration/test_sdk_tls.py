"""The vendor SDK publishing to the real ingest gateway over TLS and mTLS, the way the
chart serves it (GRPC_TLS_CERT / GRPC_TLS_KEY / GRPC_TLS_CLIENT_CA), with a throwaway CA.
The gateway connects to PostgreSQL as its own role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from residuals_sdk import DeliveryReport, DeliveryStatus, UsageClient

from residuals.ingest.app import IngestApp
from residuals.ingest.settings import IngestSettings
from residuals.platform.config import load
from residuals.platform.roles import role_env
from residuals.stack.settings import StackSettings
from tests.support.ingest import Registry, Tenant, Topics
from tests.support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def topics(stack: StackSettings) -> Iterator[Topics]:
    created = Topics(stack, f"sdk-tls-{uuid.uuid4().hex[:8]}.").create()
    yield created
    created.delete()


@pytest.fixture(scope="module")
def vendor(stack: StackSettings) -> Tenant:
    return Registry(stack.dsn, uuid.uuid4().hex[:8]).vendor("TLS")


@pytest.fixture(scope="module")
def gateway(stack: StackSettings, topics: Topics, pki: Pki) -> Iterator[IngestApp]:
    env = {
        **topics.env(),
        "DATABASE_URL": stack.dsn,
        **role_env("ingest"),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "INGEST_ACK_TIMEOUT_SECONDS": "10",
        "GRPC_TLS_CERT": str(pki.server_cert),
        "GRPC_TLS_KEY": str(pki.server_key),
        "GRPC_TLS_CLIENT_CA": str(pki.ca),
    }
    app = IngestApp(load(IngestSettings, env)).start()
    try:
        yield app
    finally:
        app.stop()


def publish_one(
    vendor: Tenant, target: str, spool: Path, wait: float, **transport: object
) -> tuple[list[DeliveryReport], int]:
    reports: list[DeliveryReport] = []
    client = UsageClient.grpc(
        vendor_id=vendor.vendor_id,
        signing_key=vendor.signing_key,
        target=target,
        api_key=vendor.api_key,
        spool_dir=spool,
        on_delivery=reports.append,
        **transport,  # type: ignore[arg-type]
    )
    try:
        client.render(
            licence_id=vendor.licence_id,
            avatar_id=vendor.avatar_id,
            render_id="tls-1",
            category="product_demo",
            territory="GB",
        )
        client.flush(timeout=wait)
    finally:
        left = client.close(timeout=0)
    return reports, left


def test_the_sdk_publishes_over_mutual_tls(
    gateway: IngestApp, vendor: Tenant, pki: Pki, tmp_path: Path
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    reports, left = publish_one(
        vendor, f"localhost:{gateway.port}", tmp_path, 15, credentials=credentials
    )
    assert [r.status for r in reports] == [DeliveryStatus.DELIVERED]
    assert left == 0


def test_the_sdks_loopback_plaintext_default_cannot_reach_a_tls_gateway(
    gateway: IngestApp, vendor: Tenant, tmp_path: Path
) -> None:
    # 127.0.0.1 without credentials is plaintext: the TLS gateway never sees the API key,
    # and the event stays spooled (never lost, never reported delivered).
    reports, left = publish_one(vendor, f"127.0.0.1:{gateway.port}", tmp_path, 3)
    assert reports == [] and left == 1
