"""Scope: is this use inside what the person agreed to? (docs/ROYALTY-RULES.md §4-5)."""

from __future__ import annotations

from datetime import datetime

from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence, LicenceVersion
from residuals.domain.vocabulary import Kind, Violation

WILDCARD = "*"


def exclusion(event: UsageEvent) -> str | None:
    """Invalid traffic and non-viewable views are not uses at all (§4)."""
    if event.kind is Kind.RENDER:
        return None
    if event.ivt:
        return "ivt"
    if event.kind is Kind.VIEW and not event.viewable:
        return "non_viewable"
    return None


def is_suspended(
    licence: Licence,
    t: datetime,
    auto_suspended_since: datetime | None,
    period_start: datetime | None = None,
) -> bool:
    if licence.suspended_at(t, period_start):
        return True
    return auto_suspended_since is not None and not licence.reinstated_between(
        auto_suspended_since, t
    )


def scope_violation(
    event: UsageEvent,
    licence: Licence,
    version: LicenceVersion,
    auto_suspended_since: datetime | None = None,
    period_start: datetime | None = None,
) -> Violation | None:
    """The first scope rule the use breaks, or None when it is licensed (§5, in order)."""
    t = event.occurred_at
    if is_suspended(licence, t, auto_suspended_since, period_start):
        return Violation.LICENCE_SUSPENDED
    revocation = licence.latest
    if revocation.revoked_at is not None:
        if event.kind is Kind.RENDER:
            if t >= revocation.revoked_at:
                return Violation.USE_AFTER_REVOCATION
        elif revocation.wind_down_ends is not None and t >= revocation.wind_down_ends:
            return Violation.USE_AFTER_REVOCATION
    if t < version.starts_at:
        return Violation.USE_BEFORE_START
    if version.ends_at is not None and t >= version.ends_at:
        return Violation.USE_AFTER_EXPIRY
    scope = version.scope
    if event.category in scope.categories_forbidden:
        return Violation.FORBIDDEN_CATEGORY
    if event.category not in scope.categories_allowed and WILDCARD not in scope.categories_allowed:
        return Violation.CATEGORY_NOT_LICENSED
    if event.territory in scope.territories_forbidden or (
        event.territory not in scope.territories_allowed
        and WILDCARD not in scope.territories_allowed
    ):
        return Violation.TERRITORY_NOT_LICENSED
    if (
        event.kind is not Kind.RENDER
        and event.channel not in scope.channels_allowed
        and WILDCARD not in scope.channels_allowed
    ):
        return Violation.CHANNEL_NOT_LICENSED
    return None
