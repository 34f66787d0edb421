"""Which alert changes a caller gets: the request filter narrowed by the caller's role.

One :class:`AlertQuery` answers both questions the service asks: a SQL condition for the
backlog and for ``ListAlerts``, and :meth:`AlertQuery.matches` for live changes held in
memory. Both read the same denormalised columns (``alert_changes`` copies them as of each
change), so a live subscriber and one catching up from the database see the same set.

Scoping follows the licensing service: talent see only their own alerts, vendors only
theirs, finance and admin everything. A filter that names another tenant is refused
(PERMISSION_DENIED) rather than silently emptied, so a misconfigured client notices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.platform.errors import (
    InvalidArgument,
    enum_filters,
    period_field,
    text_field,
    text_fields,
)
from residuals.v1 import alerts_pb2, common_pb2

#: Most licence ids one filter may name.
MAX_FILTER_IDS = 1000

#: alerts.state / alert_changes.state values by AlertState number.
STATE_NAMES: dict[int, str] = {
    alerts_pb2.ALERT_STATE_OPEN: "open",
    alerts_pb2.ALERT_STATE_ACKNOWLEDGED: "acknowledged",
    alerts_pb2.ALERT_STATE_RESOLVED: "resolved",
}


def kind_name(kind: int) -> str:
    """``VIOLATION_KIND_FORBIDDEN_CATEGORY`` -> ``FORBIDDEN_CATEGORY`` (the stored form)."""
    return common_pb2.ViolationKind.Name(common_pb2.ViolationKind.ValueType(kind)).removeprefix(
        "VIOLATION_KIND_"
    )


def severity_name(severity: int) -> str:
    return common_pb2.Severity.Name(common_pb2.Severity.ValueType(severity)).removeprefix(
        "SEVERITY_"
    )


class ChangeKey(NamedTuple):
    """The filterable facts of one change (columns of ``alert_changes``)."""

    kind: str
    severity: int
    state: str
    licence_id: str
    talent_id: str
    vendor_id: str
    avatar_id: str
    period: str


@dataclass(frozen=True)
class AlertQuery:
    """A conjunction of optional conditions; empty sets and None match everything."""

    severities: frozenset[int] = frozenset()
    min_severity: int = 0
    kinds: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    licence_ids: frozenset[str] = frozenset()
    talent_id: str | None = None
    vendor_id: str | None = None
    avatar_id: str | None = None
    period: str | None = None

    def matches(self, key: ChangeKey) -> bool:
        return (
            (not self.severities or key.severity in self.severities)
            and key.severity >= self.min_severity
            and (not self.kinds or key.kind in self.kinds)
            and (not self.states or key.state in self.states)
            and (not self.licence_ids or key.licence_id in self.licence_ids)
            and (self.talent_id is None or key.talent_id == self.talent_id)
            and (self.vendor_id is None or key.vendor_id == self.vendor_id)
            and (self.avatar_id is None or key.avatar_id == self.avatar_id)
            and (self.period is None or key.period == self.period)
        )

    def where(self, table: str) -> tuple[str, list[Any]]:
        """``(sql, params)``: a condition on ``table``'s filter columns (``TRUE`` if none)."""
        parts: list[str] = []
        params: list[Any] = []

        def add(sql: str, value: Any) -> None:
            parts.append(sql.format(t=table))
            params.append(value)

        if self.severities:
            add("{t}.severity = ANY(%s::smallint[])", sorted(self.severities))
        if self.min_severity:
            add("{t}.severity >= %s", self.min_severity)
        if self.kinds:
            add("{t}.kind = ANY(%s::text[])", sorted(self.kinds))
        if self.states:
            add("{t}.state = ANY(%s::text[])", sorted(self.states))
        if self.licence_ids:
            add("{t}.licence_id = ANY(%s::text[])", sorted(self.licence_ids))
        if self.talent_id is not None:
            add("{t}.talent_id = %s", self.talent_id)
        if self.vendor_id is not None:
            add("{t}.vendor_id = %s", self.vendor_id)
        if self.avatar_id is not None:
            add("{t}.avatar_id = %s", self.avatar_id)
        if self.period is not None:
            add("{t}.period = %s", self.period)
        return (" AND ".join(parts) or "TRUE"), params


def _tenant(requested: str, own: str | None, what: str, principal: Principal) -> str | None:
    """The tenant id to filter on: the caller's own, or what was asked if unrestricted."""
    text_field(f"filter.{what}_id", requested)
    if own is None:
        return requested or None
    if requested and requested != own:
        raise PermissionDenied(f"{principal.describe()} may not read alerts of {what} {requested}")
    return own


def _licence_ids(values: Sequence[str]) -> frozenset[str]:
    if len(values) > MAX_FILTER_IDS:
        raise InvalidArgument.field("filter.licence_ids", f"names more than {MAX_FILTER_IDS}")
    return frozenset(x for x in text_fields("filter.licence_ids", values) if x)


def scoped_query(request_filter: alerts_pb2.AlertFilter, principal: Principal) -> AlertQuery:
    """The request's filter restricted to what ``principal`` may see.

    Raises :class:`PermissionDenied` when the filter names another talent or vendor, and
    :class:`InvalidArgument` (naming the field) for a value no alert can have: an enum
    number the contract does not define, an id that is not printable or too long, a
    period that is not ``YYYY-MM``.
    """
    f = request_filter
    own_talent = principal.talent_id if principal.role is Role.TALENT else None
    own_vendor = principal.vendor_id if principal.role is Role.VENDOR else None
    if principal.role not in (Role.TALENT, Role.VENDOR, Role.FINANCE, Role.ADMIN):
        raise PermissionDenied(f"{principal.describe()} may not read alerts")
    severities = common_pb2.Severity.values()
    if f.min_severity not in severities:
        raise InvalidArgument.field("filter.min_severity", f"{f.min_severity} is not a known value")
    return AlertQuery(
        severities=frozenset(enum_filters("filter.severities", f.severities, severities)),
        min_severity=int(f.min_severity),
        kinds=frozenset(
            kind_name(k)
            for k in enum_filters("filter.kinds", f.kinds, common_pb2.ViolationKind.values())
        ),
        states=frozenset(
            STATE_NAMES[s] for s in enum_filters("filter.states", f.states, list(STATE_NAMES))
        ),
        licence_ids=_licence_ids(f.licence_ids),
        talent_id=_tenant(f.talent_id, own_talent, "talent", principal),
        vendor_id=_tenant(f.vendor_id, own_vendor, "vendor", principal),
        avatar_id=text_field("filter.avatar_id", f.avatar_id) or None,
        period=str(period_field("filter.period", f.period)) if f.period else None,
    )


def may_see(principal: Principal, talent_id: str, vendor_id: str) -> bool:
    """Whether ``principal`` may read an alert of this talent and vendor."""
    if principal.role is Role.TALENT:
        return principal.talent_id == talent_id
    if principal.role is Role.VENDOR:
        return principal.vendor_id == vendor_id
    return principal.role in (Role.FINANCE, Role.ADMIN)
