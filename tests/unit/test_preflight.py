"""Pre-flight (CheckUse's rule): the verdict a use would get, from the meter's own rule,
without changing the state it is asked against."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings

from residuals.domain.approvals import Approval
from residuals.domain.events import UsageEvent, parse_event, parse_timestamp
from residuals.domain.licence_spec import parse_licence
from residuals.domain.metering import LicenceCounters, rate_event
from residuals.domain.period import Period
from residuals.domain.preflight import Answer, check_use
from residuals.domain.vocabulary import Violation
from residuals.replay.casefile import parse_case
from tests.support.builders import ev, licence
from tests.support.strategies import approved_months

PERIOD = Period.parse("2026-10")
APPROVAL = Approval(
    "APR-1", "LIC-1", "product_demo", parse_timestamp("2026-10-01T00:00:00Z"), max_renders=2
)


def _use(**fields: Any) -> UsageEvent:
    event = parse_event(ev(**fields))
    assert isinstance(event, UsageEvent)
    return event


def _counters() -> LicenceCounters:
    counters = LicenceCounters()
    counters.enter_period(str(PERIOD), PERIOD.start)
    return counters


def test_asking_changes_nothing_and_answers_as_the_meter_would() -> None:
    lic = licence(quotas=[{"metric": "RENDER", "limit": 3}])
    counters = _counters()
    before = copy.deepcopy(counters)
    verdict = check_use(_use(quantity=2), lic, counters, {})
    assert (verdict.answer, verdict.violation, verdict.quota_remaining) == (Answer.ALLOW, None, 3)
    assert counters == before
    rate_event(_use(quantity=2), lic, counters)
    over = check_use(_use(quantity=2), lic, counters, {})
    assert (over.answer, over.violation, over.quota_remaining) == (
        Answer.DENY,
        Violation.QUOTA_EXCEEDED,
        1,
    )
    forbidden = check_use(_use(category="political"), lic, counters, {})
    assert (forbidden.answer, forbidden.violation) == (Answer.DENY, Violation.FORBIDDEN_CATEGORY)


def test_an_approval_required_use_needs_one_and_counts_down() -> None:
    lic = licence(scope={"approval_required": ["product_demo"]})
    counters, approvals = _counters(), {"APR-1": APPROVAL}
    unasked = check_use(_use(), lic, counters, approvals)
    assert (unasked.answer, unasked.violation) == (
        Answer.NEEDS_APPROVAL,
        Violation.UNAPPROVED_USE,
    )
    remaining = []
    for _ in range(3):
        verdict = check_use(_use(approval_id="APR-1"), lic, counters, approvals)
        remaining.append((verdict.answer, verdict.approved_renders_remaining))
        rate_event(_use(approval_id="APR-1"), lic, counters, approvals)
    assert remaining == [
        (Answer.ALLOW, 2),
        (Answer.ALLOW, 1),
        (Answer.NEEDS_APPROVAL, 0),
    ]
    # A view names its render's approval and uses none of it.
    view = check_use(
        _use(kind="VIEW", channel="web", approval_id="APR-1"), lic, counters, approvals
    )
    assert view.answer is Answer.ALLOW


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(approved_months())
def test_every_use_of_a_month_gets_the_verdict_the_meter_then_gives(month: Any) -> None:
    """Folding a month in scope order: before each use, check_use; then the meter's rule.
    A held part means DENY (or NEEDS_APPROVAL for UNAPPROVED_USE) with that violation."""
    specs, raws, approval_specs = month
    case = parse_case({"period": str(PERIOD), "licences": specs, "approvals": approval_specs})
    approvals = {a.approval_id: a for a in case.approvals}
    licences = {lic.licence_id: lic for lic in (parse_licence(s) for s in specs)}
    counters: dict[str, LicenceCounters] = {}
    uses = [e for e in map(parse_event, raws) if isinstance(e, UsageEvent)]
    for use in sorted((u for u in uses if u.licence_id in licences), key=lambda u: u.order_key):
        state = counters.setdefault(use.licence_id or "", _counters())
        verdict = check_use(use, licences[use.licence_id or ""], state, approvals)
        rating = rate_event(use, licences[use.licence_id or ""], state, approvals)
        held = next((p.violation for p in rating.portions if p.held), None)
        assert verdict.violation == held
        assert (verdict.answer is Answer.ALLOW) == (held is None)
        assert (verdict.answer is Answer.NEEDS_APPROVAL) == (held is Violation.UNAPPROVED_USE)
