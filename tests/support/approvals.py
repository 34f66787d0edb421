"""Shared set-up of the approvals integration tests: a licensing service with the relay,
two tenants (A and B) each with a licence whose scope requires approval for some
categories, and API keys per role and tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.platform.auth import Principal, Role, bearer_metadata
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2, approval_service_pb2_grpc, approvals_pb2
from tests.support.bad_request import ts
from tests.support.licensing import (
    Started,
    api_key,
    create_request,
    create_topics,
    ensure_parties,
    keys_for_roles,
    new_prefix,
    reset_registry,
    start_service,
)


def approval_licence(tenant: str) -> Licence:
    """Tenant's licence: political and insurance need approval, adult is forbidden,
    product_demo is allowed outright, news is not licensed."""
    return parse_licence(
        {
            "licence_id": f"LIC-APR-{tenant}",
            "talent_id": f"TAL-{tenant}",
            "avatar_id": f"AVA-{tenant}",
            "vendor_id": f"VEN-{tenant}",
            "currency": "USD",
            "starts_at": "2026-01-01T00:00:00Z",
            "scope": {
                "categories_allowed": ["product_demo", "political", "insurance"],
                "categories_forbidden": ["adult"],
                "approval_required": ["political", "insurance"],
                "territories_allowed": ["*"],
                "channels_allowed": ["web", "social"],
            },
            "rates": {"render_tiers": [{"up_to": None, "unit_price": "0.50"}], "view_cpm": "4"},
            "splits": {f"TAL-{tenant}": "1"},
        }
    )


@dataclass
class World:
    started: Started
    stub: Any
    keys: dict[str, dict[str, str]]  # tenant -> role -> key
    prefix: str
    dsn: str

    @property
    def port(self) -> int:
        return int(self.started.service.app.port)

    def call(self, method: str, request: Any, role: str = "vendor", tenant: str = "A") -> Any:
        metadata = bearer_metadata(self.keys[tenant][role])
        return getattr(self.stub, method)(request, metadata=metadata, timeout=10)

    def stream(
        self, method: str, request: Any, role: str = "vendor", tenant: str = "A"
    ) -> grpc.Call:
        metadata = bearer_metadata(self.keys[tenant][role])
        return getattr(self.stub, method)(request, metadata=metadata, timeout=30)

    def request(self, tenant: str = "A", **fields: Any) -> approvals_pb2.Approval:
        """A fresh pending request of ``tenant``'s vendor (political, 3 renders, a day)."""
        return self.call(
            "RequestApproval", request_message(tenant, **fields), "vendor", tenant
        ).approval


def request_message(tenant: str = "A", **fields: Any) -> Any:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex[:12]}",
        "licence_id": f"LIC-APR-{tenant}",
        "category": "political",
        "use": approvals_pb2.UseDescription(
            brief="Get out the vote, 30 s spot", territories=["US"], channels=["web"]
        ),
        "renders_requested": 3,
        "requested_from": ts(now + timedelta(hours=1)),
        "requested_until": ts(now + timedelta(days=1)),
    }
    values.update(fields)
    return approval_service_pb2.RequestApprovalRequest(
        **{k: v for k, v in values.items() if v is not None}
    )


def start_world(stack: StackSettings) -> Iterator[World]:
    reset_registry(stack.dsn)
    prefix = new_prefix()
    create_topics(stack, prefix)
    started = start_service(stack, prefix, relay=True)
    try:
        admin = api_key(stack.dsn, Principal("p-root", Role.ADMIN))
        for tenant in ("A", "B"):
            licence = approval_licence(tenant)
            ensure_parties(started.service, admin, licence)
            started.service.call("CreateLicence", create_request(licence), admin)
        keys = {
            tenant: keys_for_roles(stack.dsn, vendor=f"VEN-{tenant}", talent=f"TAL-{tenant}")
            for tenant in ("A", "B")
        }
        stub = approval_service_pb2_grpc.ApprovalServiceStub(started.service.channel)
        yield World(started, stub, keys, prefix, stack.dsn)
    finally:
        started.close()
