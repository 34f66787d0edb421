"""Protobuf records the meter publishes: RatedUsage, Alert and DeadLetter.

Pure translation from the royalty engine's decisions (a :class:`~residuals.domain.metering.
Rating`, a :class:`~residuals.domain.vocabulary.Violation`, a reject reason) into the wire
contracts of ``usage.proto`` and ``alerts.proto``; no rule is decided here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal

from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import violation_value
from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.metering import Rating
from residuals.domain.money import ZERO, fmt
from residuals.domain.period import Period
from residuals.domain.vocabulary import RejectReason, Violation
from residuals.v1 import alerts_pb2, common_pb2, usage_pb2

Outcome = usage_pb2.RatedUsage.Outcome
# Read once: the enum wrapper's attributes are looked up in Python on every access.
_ACCEPTED = Outcome.OUTCOME_ACCEPTED
_HELD = Outcome.OUTCOME_HELD
_EXCLUDED = Outcome.OUTCOME_EXCLUDED

_EXCLUSIONS = {
    "ivt": usage_pb2.RatedUsage.EXCLUSION_IVT,
    "non_viewable": usage_pb2.RatedUsage.EXCLUSION_NON_VIEWABLE,
}


def reject_reason(reason: RejectReason) -> common_pb2.RejectReason.ValueType:
    return common_pb2.RejectReason.Value("REJECT_REASON_" + reason.value)


def alert_id(*parts: str) -> str:
    """Deterministic id: a re-delivered or re-raised alert is the same alert."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"alr_{digest[:32]}"


def event_alert_id(vendor_id: str, event_id: str, violation: Violation) -> str:
    return alert_id(vendor_id, event_id, violation.value)


def quota_near_alert_id(licence_id: str, metric: str, period: str) -> str:
    """QUOTA_NEAR is raised once per licence, metric and period, whatever event crossed 80 %."""
    return alert_id("QUOTA_NEAR", licence_id, metric, period)


def rated_from_rating(rating: Rating) -> usage_pb2.RatedUsage:
    """Outcome, units and estimates of one rated use (event/envelope fields set by caller)."""
    return rated_and_estimates(rating)[0]


def rated_and_estimates(rating: Rating) -> tuple[usage_pb2.RatedUsage, Decimal, Decimal]:
    """:func:`rated_from_rating`, with the rating's ``earned_estimate`` and
    ``held_estimate``, summed in the same order in the same pass (the meter needs all
    three for every use)."""
    rated = usage_pb2.RatedUsage(licence_version=rating.version)
    if rating.excluded is not None:
        rated.outcome = _EXCLUDED
        rated.exclusion = _EXCLUSIONS[rating.excluded]
        return rated, rating.earned_estimate, rating.held_estimate
    priced = held = 0
    earned = held_amount = ZERO
    deciding: Violation | None = None
    tier = 0
    for portion in rating.portions:
        if portion.violation is None:
            priced += portion.units
            earned += portion.amount
            tier = portion.tier or tier
        else:
            held += portion.units
            held_amount += portion.amount
            deciding = deciding or portion.violation
    rated.units_priced = priced
    rated.units_held = held
    rated.estimated_amount = fmt(earned)
    rated.held_amount = fmt(held_amount)
    rated.tier = tier
    if deciding is not None:
        rated.outcome = _HELD
        rated.violation = violation_value(deciding)
    else:
        rated.outcome = _ACCEPTED
    for violation in rating.violations:
        if violation is not deciding:
            rated.notices.append(violation_value(violation))
    return rated, earned, held_amount


_DETAIL = {
    Violation.LICENCE_SUSPENDED: "licence {licence} is suspended",
    Violation.USE_AFTER_REVOCATION: "licence {licence} was revoked",
    Violation.USE_BEFORE_START: "use before licence {licence} starts",
    Violation.USE_AFTER_EXPIRY: "use after licence {licence} expired",
    Violation.FORBIDDEN_CATEGORY: "category {category} is forbidden by licence {licence}",
    Violation.CATEGORY_NOT_LICENSED: "category {category} is not licensed by {licence}",
    Violation.TERRITORY_NOT_LICENSED: "territory {territory} is not licensed by {licence}",
    Violation.CHANNEL_NOT_LICENSED: "channel {channel} is not licensed by {licence}",
    Violation.QUOTA_EXCEEDED: "{kind} quota of licence {licence} exceeded",
    Violation.QUOTA_NEAR: "{kind} usage of licence {licence} reached 80 % of its quota",
    Violation.DUPLICATE_CONFLICT: "event {event} re-sent with a different payload",
    Violation.UNAPPROVED_USE: "{category} use of licence {licence} needs an approval: {approval}",
}


def make_alert(
    violation: Violation,
    event: UsageEvent,
    licence: Licence,
    *,
    version: int,
    rating: Rating | None,
    raised_at: datetime,
) -> alerts_pb2.Alert:
    """One alert for one violation of one event, in state OPEN."""
    period = str(Period.containing(event.occurred_at))
    if violation is Violation.QUOTA_NEAR:
        identity = quota_near_alert_id(licence.licence_id, event.kind.value, period)
    else:
        identity = event_alert_id(event.vendor_id, event.event_id, violation)
    held_units = 0
    held_amount: Decimal = ZERO
    suspended = False
    if rating is not None:
        for portion in rating.portions:
            if portion.violation is violation:
                held_units += portion.units
                held_amount += portion.amount
        suspended = rating.suspended_licence and violation.suspends
    alert = alerts_pb2.Alert(
        alert_id=identity,
        kind=violation_value(violation),
        severity=common_pb2.Severity.Value("SEVERITY_" + violation.severity.value),
        licence_id=licence.licence_id,
        licence_version=version,
        talent_id=licence.talent_id,
        vendor_id=event.vendor_id,
        avatar_id=licence.avatar_id,
        event_ids=[event.event_id],
        period=period,
        held_units=held_units,
        held_amount=fmt(held_amount),
        currency_code=licence.currency,
        detail=_DETAIL[violation].format(
            licence=licence.licence_id,
            category=event.category,
            territory=event.territory,
            channel=event.channel,
            kind=event.kind.value.lower(),
            event=event.event_id,
            approval=f"{event.approval_id!r} does not cover this use"
            if event.approval_id
            else "the event names none",
        ),
        state=alerts_pb2.ALERT_STATE_OPEN,
        suspended_licence=suspended,
    )
    set_timestamp(alert.occurred_at, event.occurred_at)
    set_timestamp(alert.raised_at, raised_at)
    return alert
