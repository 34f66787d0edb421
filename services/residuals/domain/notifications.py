"""Notification rules: event types, who receives what, message ids, bodies, retry schedule.

Pure (no I/O): the notify service's intake, dispatcher and API all decide with these, and
unit tests check them without servers. Webhooks follow the Standard Webhooks
specification (standardwebhooks.com): a JSON body ``{"type", "timestamp", "data"}``, a
stable ``webhook-id`` per message, at-least-once delivery, receivers de-duplicating.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

VENDOR, TALENT, FINANCE, ADMIN = "vendor", "talent", "finance", "admin"
_ALL = frozenset({VENDOR, TALENT, FINANCE, ADMIN})
_PARTIES = _ALL


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    #: Roles whose endpoints may receive it (each only the events that concern it).
    roles: frozenset[str]


ALERT_RAISED = "alert.raised"
QUOTA_NEAR = "quota.near"
QUOTA_EXCEEDED = "quota.exceeded"
LICENCE_SUSPENDED = "licence.suspended"
LICENCE_REINSTATED = "licence.reinstated"
LICENCE_REVOKED = "licence.revoked"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_DECIDED = "approval.decided"
STATEMENT_READY = "statement.ready"
PAYOUT_PAID = "payout.paid"
PAYOUT_FAILED = "payout.failed"
USAGE_REJECTED = "usage.rejected"
ENDPOINT_DISABLED = "endpoint.disabled"
#: Sent only by SendTestEvent, only to the endpoint named; not subscribable.
WEBHOOK_TEST = "webhook.test"

EVENT_TYPES: tuple[EventType, ...] = (
    EventType(
        ALERT_RAISED,
        "a use outside a licence's scope (every violation but quota; min_severity filters)",
        _PARTIES,
    ),
    EventType(QUOTA_NEAR, "usage reached 80 % of a quota limit in a period", _PARTIES),
    EventType(QUOTA_EXCEEDED, "units past a quota limit", _PARTIES),
    EventType(
        LICENCE_SUSPENDED, "a licence was suspended (by a person or automatically)", _PARTIES
    ),
    EventType(LICENCE_REINSTATED, "a suspension ended: the licence is in force again", _PARTIES),
    EventType(LICENCE_REVOKED, "the talent revoked a licence", _PARTIES),
    EventType(APPROVAL_REQUESTED, "a vendor asked the talent to approve a use", _PARTIES),
    EventType(APPROVAL_DECIDED, "the talent approved or denied a requested use", _PARTIES),
    EventType(STATEMENT_READY, "a period was closed: the statement can be read", _PARTIES),
    EventType(
        PAYOUT_PAID, "a payout reached the payee's rail", frozenset({TALENT, FINANCE, ADMIN})
    ),
    EventType(PAYOUT_FAILED, "a payout failed on its rail", frozenset({TALENT, FINANCE, ADMIN})),
    EventType(
        USAGE_REJECTED,
        "a usage event of the vendor's went to the dead-letter topic (reason, event id)",
        frozenset({VENDOR, FINANCE, ADMIN}),
    ),
    EventType(
        ENDPOINT_DISABLED,
        "one of the owner's endpoints was disabled after persistent failure or 410 Gone",
        _PARTIES,
    ),
)
BY_NAME: Mapping[str, EventType] = {t.name: t for t in EVENT_TYPES}


def may_receive(role: str, event_type: str) -> bool:
    """Whether endpoints of ``role`` may subscribe to ``event_type``."""
    found = BY_NAME.get(event_type)
    return found is not None and role in found.roles


def filter_problem(role: str, event_types: Sequence[str]) -> str | None:
    """Why an endpoint's event-type filter is refused, or None."""
    for name in event_types:
        if name not in BY_NAME:
            return f"unknown event type {name!r} (ListEventTypes names them)"
        if not may_receive(role, name):
            return f"a {role} may not receive {name!r}"
    if len(set(event_types)) != len(event_types):
        return "lists an event type twice"
    return None


@dataclass(frozen=True)
class Owner:
    """Whose endpoint: a vendor's, a talent's, or finance/admin (everything)."""

    role: str
    vendor_id: str = ""
    talent_id: str = ""


@dataclass(frozen=True)
class Audience:
    """Whom an event concerns: its vendor and talents (finance and admin: every event)."""

    vendor_id: str = ""
    talent_ids: tuple[str, ...] = ()


def concerns(owner: Owner, audience: Audience) -> bool:
    if owner.role in (FINANCE, ADMIN):
        return True
    if owner.role == VENDOR:
        return bool(owner.vendor_id) and owner.vendor_id == audience.vendor_id
    if owner.role == TALENT:
        return bool(owner.talent_id) and owner.talent_id in audience.talent_ids
    return False


def receives(
    owner: Owner,
    subscribed: Sequence[str],
    min_severity: int,
    event_type: str,
    audience: Audience,
    severity: int = 0,
) -> bool:
    """Whether an endpoint with these filters gets the event."""
    if not may_receive(owner.role, event_type):
        return False
    if subscribed and event_type not in subscribed:
        return False
    if event_type == ALERT_RAISED and severity < min_severity:
        return False
    return concerns(owner, audience)


# --- identities ------------------------------------------------------------------------


def _b32(digest: bytes) -> str:
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")[:26]


def message_id(event_type: str, identity: str) -> str:
    """The webhook-id of the event ``identity`` describes: the same for the same event,
    however often its source record is read or published."""
    return "msg_" + _b32(hashlib.sha256(f"{event_type}\n{identity}".encode()).digest())


def new_endpoint_id() -> str:
    return "ep_" + _b32(secrets.token_bytes(20))


SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


# --- bodies ----------------------------------------------------------------------------


def timestamp_text(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, ``2026-12-07T18:25:06.123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The JSON body of a message: fixed when the event is stored, signed as these bytes.

    ASCII-only (``ensure_ascii``): vendor-supplied text cannot smuggle control or
    bidirectional characters into a receiver's logs unescaped.
    """
    document = {"type": event_type, "timestamp": timestamp_text(occurred_at), "data": data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("ascii")


# --- delivery outcomes and retries -----------------------------------------------------


class Outcome(StrEnum):
    DELIVERED = "delivered"
    #: Retry later (timeout, connection error, 5xx, 429, other 4xx, 3xx: redirects are
    #: not followed, a moved receiver must be updated).
    RETRY = "retry"
    #: 410 Gone: the receiver asks to be disabled (Standard Webhooks).
    GONE = "gone"


def classify(status: int | None) -> Outcome:
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY


#: Waits before the 2nd, 3rd, ... attempt (the first is immediate): 5 s, 5 min, 30 min,
#: 2 h, 5 h, 10 h, 10 h, as Svix and the Standard Webhooks guidance do; about 27.6 hours.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
#: Each wait is multiplied by a factor in this range, so receivers that failed together
#: are not retried together; the low end keeps the default schedule above 24 hours.
JITTER = (0.9, 1.2)


def retry_delay(
    attempts: int,
    schedule: Sequence[float] = DEFAULT_SCHEDULE,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None: give up.

    A receiver's ``Retry-After`` (429, 503) is honoured when longer than the schedule's
    wait, up to the schedule's longest wait.
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    low, high = JITTER
    wait = schedule[attempts - 1] * (rng or random).uniform(low, high)
    if retry_after is not None and retry_after > wait:
        wait = min(retry_after, max(schedule))
    return wait


def schedule_span(schedule: Sequence[float] = DEFAULT_SCHEDULE) -> timedelta:
    """The shortest time from the first attempt to giving up (jitter at its low end)."""
    return timedelta(seconds=sum(schedule) * JITTER[0])
