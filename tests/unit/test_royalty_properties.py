"""Properties of the statement that must hold for any events, not just the worked cases."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.domain.events import parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.money import minor_digits, split_largest_remainder
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.replay.casefile import parse_case
from tests.support.strategies import CURRENCIES, approved_months, months

PERIOD = Period.parse("2026-10")


def _statement(
    specs: list[dict[str, Any]],
    events: list[dict[str, Any]],
    approvals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    lics = [parse_licence(s) for s in specs]
    given = parse_case(
        {"period": str(PERIOD), "licences": specs, "approvals": approvals or []}
    ).approvals
    parsed = [parse_event(e) for e in events]
    return compute_statement(PERIOD, lics, parsed, approvals=given).to_document()


def _without_counts(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for block in doc["licences"]:
        block["excluded"].pop("duplicates")
    doc.pop("dlq")
    return doc


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(months(), st.randoms(use_true_random=False))
def test_shuffling_the_events_never_changes_the_statement(month: Any, rnd: Any) -> None:
    specs, events = month
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert _statement(specs, shuffled) == _statement(specs, events)


@PROPERTY
@given(months(), st.data())
def test_resending_any_event_never_changes_the_statement(month: Any, data: st.DataObject) -> None:
    specs, events = month
    if not events:
        return
    resent = data.draw(st.sampled_from(events))
    position = data.draw(st.integers(events.index(resent) + 1, len(events)))
    again = [*events[:position], dict(resent), *events[position:]]
    before, after = _statement(specs, events), _statement(specs, again)
    assert _without_counts(after) == _without_counts(before)
    assert _counted(after) == _counted(before) + 1


@PROPERTY
@given(approved_months(), st.randoms(use_true_random=False))
def test_with_approvals_the_order_of_arrival_still_never_matters(month: Any, rnd: Any) -> None:
    """Which renders used up an approval is decided in scope order (§5a), not arrival."""
    specs, events, approvals = month
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert _statement(specs, shuffled, approvals) == _statement(specs, events, approvals)


@PROPERTY
@given(approved_months(), st.data())
def test_with_approvals_a_resent_event_still_changes_nothing(
    month: Any, data: st.DataObject
) -> None:
    """A re-sent render is a duplicate: it uses up no approval a second time."""
    specs, events, approvals = month
    if not events:
        return
    resent = data.draw(st.sampled_from(events))
    position = data.draw(st.integers(events.index(resent) + 1, len(events)))
    again = [*events[:position], dict(resent), *events[position:]]
    before, after = _statement(specs, events, approvals), _statement(specs, again, approvals)
    assert _without_counts(after) == _without_counts(before)
    assert _counted(after) == _counted(before) + 1


def _counted(doc: dict[str, Any]) -> int:
    """Events that ended as counted duplicates or dead letters."""
    duplicates = sum(b["excluded"]["duplicates"] for b in doc["licences"])
    return duplicates + sum(x["count"] for x in doc["dlq"])


@PROPERTY
@given(months())
def test_allocations_sum_to_net_less_recoupment_and_amounts_have_minor_digits(month: Any) -> None:
    specs, events = month
    doc = _statement(specs, events)
    for block in doc["licences"]:
        digits = minor_digits(block["currency"])
        amounts = [
            block[k]
            for k in (
                "earned",
                "minimum_guarantee_topup",
                "gross",
                "platform_fee",
                "net",
                "advance_recouped",
                "vendor_invoice",
            )
        ]
        amounts += [x["amount"] for x in block["lines"] + block["held"] + block["allocations"]]
        for amount in amounts:
            assert -Decimal(amount).as_tuple().exponent == digits, (amount, block["currency"])
        allocated = sum(Decimal(a["amount"]) for a in block["allocations"])
        assert allocated == Decimal(block["net"]) - Decimal(block["advance_recouped"])
        assert Decimal(block["earned"]) == sum(Decimal(x["amount"]) for x in block["lines"])
        assert Decimal(block["gross"]) == Decimal(block["earned"]) + Decimal(
            block["minimum_guarantee_topup"]
        )
        assert Decimal(block["vendor_invoice"]) + Decimal(block["advance_recouped"]) == Decimal(
            block["gross"]
        )
    for payee in doc["payees"]:
        digits = minor_digits(payee["currency"])
        assert all(
            -Decimal(payee[k]).as_tuple().exponent == digits
            for k in ("earned", "payable", "carried_forward")
        )
        assert Decimal(payee["payable"]) + Decimal(payee["carried_forward"]) == Decimal(
            payee["earned"]
        )


@given(
    st.integers(0, 10**9),
    st.lists(st.integers(1, 1000), min_size=1, max_size=7),
    st.sampled_from(CURRENCIES),
)
def test_largest_remainder_split_is_exact_and_fair(
    minor: int, weights: list[int], currency: str
) -> None:
    total = sum(weights)
    shares = {f"P{i}": Decimal(w) / Decimal(total) for i, w in enumerate(weights)}
    # shares from a division may not sum to exactly 1; normalise the last one
    shares[f"P{len(weights) - 1}"] += Decimal(1) - sum(shares.values())
    amount = Decimal(minor).scaleb(-minor_digits(currency))
    parts = split_largest_remainder(amount, shares, currency)
    assert sum(parts.values()) == amount
    unit = Decimal(1).scaleb(-minor_digits(currency))
    for payee, part in parts.items():
        assert abs(part - amount * shares[payee]) < unit
