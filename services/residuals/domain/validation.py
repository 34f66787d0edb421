"""Checks of a parsed event against the licence registry and the clock (§2, checks 3-6)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.vocabulary import Kind, RejectReason

MAX_PAST = timedelta(days=35)
MAX_FUTURE = timedelta(minutes=5)


def check_licence(event: UsageEvent, licences: Mapping[str, Licence]) -> Rejection | None:
    """UNKNOWN_LICENCE, VENDOR_MISMATCH, AVATAR_MISMATCH, CURRENCY_MISMATCH, in that order."""
    if event.kind is Kind.RETRACTION:
        return None
    licence = licences.get(event.licence_id or "")
    if licence is None:
        return Rejection(
            RejectReason.UNKNOWN_LICENCE,
            f"no licence {event.licence_id!r}",
            event.vendor_id,
            event.event_id,
        )
    return check_against(event, licence)


def check_against(event: UsageEvent, licence: Licence) -> Rejection | None:
    """VENDOR_MISMATCH, AVATAR_MISMATCH, CURRENCY_MISMATCH against the event's licence."""

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(reason, detail, event.vendor_id, event.event_id)

    if event.vendor_id != licence.vendor_id:
        return reject(
            RejectReason.VENDOR_MISMATCH,
            f"vendor {event.vendor_id!r} is not the licensee of {licence.licence_id!r}",
        )
    if event.avatar_id != licence.avatar_id:
        return reject(
            RejectReason.AVATAR_MISMATCH,
            f"avatar {event.avatar_id!r} is not licensed by {licence.licence_id!r}",
        )
    if event.ad_currency is not None and event.ad_currency != licence.currency:
        return reject(
            RejectReason.CURRENCY_MISMATCH,
            f"ad revenue in {event.ad_currency}, licence is in {licence.currency}",
        )
    return None


def check_window(occurred_at: datetime, received_at: datetime) -> RejectReason | None:
    """Streaming-only replay window: 35 days in the past, 5 minutes in the future."""
    if occurred_at < received_at - MAX_PAST:
        return RejectReason.TOO_LATE
    if occurred_at > received_at + MAX_FUTURE:
        return RejectReason.IN_FUTURE
    return None
