"""Registry rows of parties and credentials <-> their ``residuals.v1`` messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from residuals.codecs.timestamps import set_timestamp
from residuals.platform.auth import Principal, Role
from residuals.v1 import licence_pb2

_ROLE_TO_PROTO: dict[Role, int] = {
    Role.VENDOR: licence_pb2.ROLE_VENDOR,
    Role.TALENT: licence_pb2.ROLE_TALENT,
    Role.FINANCE: licence_pb2.ROLE_FINANCE,
    Role.ADMIN: licence_pb2.ROLE_ADMIN,
    Role.SUSPENDER: licence_pb2.ROLE_SUSPENDER,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}

PAYEE_KINDS: dict[int, str] = {
    licence_pb2.Payee.KIND_UNSPECIFIED: "unspecified",
    licence_pb2.Payee.KIND_TALENT: "talent",
    licence_pb2.Payee.KIND_AGENT: "agent",
    licence_pb2.Payee.KIND_ESTATE: "estate",
}
_PAYEE_KIND_TO_PROTO = {v: k for k, v in PAYEE_KINDS.items()}


def role_to_proto(role: Role) -> int:
    return _ROLE_TO_PROTO[role]


def role_from_proto(value: int) -> Role | None:
    """None for ROLE_UNSPECIFIED or an unknown number."""
    return _ROLE_FROM_PROTO.get(value)


def principal_to_proto(principal: Principal) -> licence_pb2.Principal:
    return licence_pb2.Principal(
        principal_id=principal.principal_id,
        role=role_to_proto(principal.role),  # type: ignore[arg-type]
        vendor_id=principal.vendor_id or "",
        talent_id=principal.talent_id or "",
    )


def talent(row: Mapping[str, Any]) -> licence_pb2.Talent:
    message = licence_pb2.Talent(talent_id=row["talent_id"], display_name=row["display_name"])
    set_timestamp(message.created_at, row["created_at"])
    return message


def avatar(row: Mapping[str, Any]) -> licence_pb2.Avatar:
    message = licence_pb2.Avatar(
        avatar_id=row["avatar_id"], talent_id=row["talent_id"], display_name=row["display_name"]
    )
    set_timestamp(message.created_at, row["created_at"])
    return message


def vendor(row: Mapping[str, Any]) -> licence_pb2.Vendor:
    message = licence_pb2.Vendor(vendor_id=row["vendor_id"], display_name=row["display_name"])
    set_timestamp(message.created_at, row["created_at"])
    return message


def payee(row: Mapping[str, Any]) -> licence_pb2.Payee:
    return licence_pb2.Payee(
        payee_id=row["payee_id"],
        kind=_PAYEE_KIND_TO_PROTO[row["kind"]],  # type: ignore[arg-type]
        display_name=row["display_name"],
        talent_ids=list(row.get("talent_ids", ())),
    )


def signing_key(row: Mapping[str, Any]) -> licence_pb2.VendorSigningKey:
    message = licence_pb2.VendorSigningKey(
        key_id=row["key_id"], vendor_id=row["vendor_id"], public_key=bytes(row["public_key"])
    )
    set_timestamp(message.created_at, row["created_at"])
    if row.get("revoked_at") is not None:
        set_timestamp(message.revoked_at, row["revoked_at"])
    return message


def api_key(row: Mapping[str, Any], principal: Principal) -> licence_pb2.ApiKey:
    message = licence_pb2.ApiKey(
        api_key_id=row["key_id"],
        principal=principal_to_proto(principal),
        prefix=row["prefix"],
        description=row["description"],
    )
    set_timestamp(message.created_at, row["created_at"])
    if row.get("revoked_at") is not None:
        set_timestamp(message.revoked_at, row["revoked_at"])
    return message
