"""Who may see which statements and payouts (roles from :mod:`residuals.platform.auth`).

Finance and admin see everything. Talent see the licences of their own likeness and any
licence that pays them (an agent or estate principal carries its payee id as talent id),
and only their own payee totals and payouts. Vendors see their own licences' statement
parts and no payee data (payee totals add up across vendors). A filtered statement keeps
the §10 shape; period-wide counts (violations, dead letters) are finance-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from residuals.payouts.store import StoredStatement
from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.platform.errors import InvalidArgument

FINANCE_ROLES: tuple[Role, ...] = (Role.FINANCE, Role.ADMIN)


def sees_everything(principal: Principal) -> bool:
    return principal.role in FINANCE_ROLES


def statement_view(
    principal: Principal,
    stored: StoredStatement,
    *,
    licence_ids: tuple[str, ...] = (),
    talent_id: str = "",
    vendor_id: str = "",
    payee_id: str = "",
) -> dict[str, Any]:
    """The part of the statement document ``principal`` may see, narrowed by the filter."""
    doc = stored.document
    everything = sees_everything(principal)
    filtered = bool(licence_ids or talent_id or vendor_id or payee_id)
    if everything and not filtered:
        return doc

    def licence_visible(lic: Mapping[str, Any]) -> bool:
        meta = stored.licences.get(lic["licence_id"])
        payees = {a["payee_id"] for a in lic["allocations"]}
        if principal.role is Role.VENDOR and (
            meta is None or meta.vendor_id != principal.vendor_id
        ):
            return False
        if principal.role is Role.TALENT and not (
            (meta is not None and meta.talent_id == principal.talent_id)
            or principal.talent_id in payees
        ):
            return False
        if licence_ids and lic["licence_id"] not in licence_ids:
            return False
        if talent_id and (meta is None or meta.talent_id != talent_id):
            return False
        if vendor_id and (meta is None or meta.vendor_id != vendor_id):
            return False
        return not (payee_id and payee_id not in payees)

    if principal.role is Role.VENDOR:
        payees: list[Any] = []
    elif principal.role is Role.TALENT:
        payees = [p for p in doc["payees"] if p["payee_id"] == principal.talent_id]
    else:
        payees = [p for p in doc["payees"] if not payee_id or p["payee_id"] == payee_id]
    return {
        "period": doc["period"],
        "licences": [lic for lic in doc["licences"] if licence_visible(lic)],
        "payees": payees,
        "violations": doc["violations"] if everything else [],
        "dlq": doc["dlq"] if everything else [],
    }


def payout_scope(principal: Principal, requested_payee: str) -> str:
    """The payee filter to apply to payout queries; PermissionDenied when not allowed."""
    if sees_everything(principal):
        return requested_payee
    if principal.role is Role.TALENT:
        own = principal.talent_id or ""
        if requested_payee and requested_payee != own:
            raise PermissionDenied(f"{principal.describe()} may only see payouts to {own}")
        return own
    raise PermissionDenied(f"{principal.describe()} may not see payouts")


def document_payee(principal: Principal, requested_payee: str) -> str:
    """Whose statement document a caller may have: finance any payee's (named), talent,
    agent and estate principals only their own (their payee id is their talent id);
    vendors none (payee data spans vendors)."""
    if sees_everything(principal):
        if not requested_payee:
            raise InvalidArgument.field("payee_id", "is required (whose statement?)")
        return requested_payee
    if principal.role is Role.TALENT:
        own = principal.talent_id or ""
        if requested_payee and requested_payee != own:
            raise PermissionDenied(
                f"{principal.describe()} may only have the statement of payee {own}"
            )
        return own
    raise PermissionDenied(f"{principal.describe()} may not have payee statements")


def evidence_payee(principal: Principal, requested_payee: str) -> str | None:
    """Whose evidence a caller may export: None is the whole statement (finance only)."""
    if sees_everything(principal) and not requested_payee:
        return None
    return document_payee(principal, requested_payee)
