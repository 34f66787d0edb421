"""Pre-flight: would this use be billed, held, or does it need the talent's approval?

A vendor asks before it renders (``CheckUse``). The answer comes from the same rule the
meter applies afterwards (:func:`~residuals.domain.metering.rate_event`), run on a copy of
the licence's counters, so asking changes nothing and the answer cannot drift from the
verdict. It is as good as the state it is given: the counters are the period's running
totals as last stored, so the remaining quota is an estimate while uses are in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from residuals.domain.approvals import Approval
from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.metering import LicenceCounters, rate_event
from residuals.domain.vocabulary import Kind, Metric, Violation


class Answer(StrEnum):
    ALLOW = "ALLOW"  # billed (a QUOTA_NEAR or an alert-only quota may still be raised)
    DENY = "DENY"  # some or all of it would be held: ``violation`` says why
    NEEDS_APPROVAL = "NEEDS_APPROVAL"  # held as UNAPPROVED_USE unless the talent approves


@dataclass(frozen=True, slots=True)
class UseVerdict:
    answer: Answer
    #: The violation the meter would record for the held part (DENY, NEEDS_APPROVAL).
    violation: Violation | None = None
    #: Units of the use's metric left under the version's quota this period (None: none).
    quota_remaining: int | None = None
    #: Renders the named approval still covers (None: the use names no live approval).
    approved_renders_remaining: int | None = None


def check_use(
    use: UsageEvent,
    licence: Licence,
    counters: LicenceCounters,
    approvals: Mapping[str, Approval],
) -> UseVerdict:
    """The verdict ``use`` would get now; ``counters`` are left as they are."""
    rating = rate_event(use, licence, counters.copy(), approvals)
    held = next((p.violation for p in rating.portions if p.held), None)
    if held is Violation.UNAPPROVED_USE:
        answer = Answer.NEEDS_APPROVAL
    elif held is not None:
        answer = Answer.DENY
    else:
        answer = Answer.ALLOW
    return UseVerdict(
        answer,
        held,
        _quota_remaining(use, licence, counters),
        _renders_remaining(use, approvals, counters),
    )


def _quota_remaining(use: UsageEvent, licence: Licence, counters: LicenceCounters) -> int | None:
    if use.kind is Kind.RETRACTION:
        return None
    quota = licence.version_at(use.occurred_at).quota(Metric(use.kind.value))
    if quota is None:
        return None
    return max(0, quota.limit - counters.quota_used.get(use.kind.value, 0))


def _renders_remaining(
    use: UsageEvent, approvals: Mapping[str, Approval], counters: LicenceCounters
) -> int | None:
    approval = approvals.get(use.approval_id or "")
    if approval is None or not approval.covers(use):
        return None
    return max(0, approval.max_renders - counters.approval_renders.get(approval.approval_id, 0))
