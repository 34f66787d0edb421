"""Journal entries, adjustment lines, payout planning and close inputs (pure domain)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.domain import journal
from residuals.domain.adjustments import (
    AdjustmentLine,
    diff_items,
    statement_items,
    with_adjustments,
)
from residuals.domain.closing import (
    canonical_json,
    closable_at,
    content_hash,
    licences_for_period,
    with_advance_outstanding,
)
from residuals.domain.events import parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.payouts import (
    InvalidTransition,
    Outcome,
    PayoutState,
    after_attempt,
    attempt_state,
    idempotency_key,
    plan_payouts,
)
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.replay.casefile import load_case
from tests.support.builders import licence, licence_spec
from tests.support.strategies import months

CASES = sorted((Path(__file__).parents[1] / "data" / "royalty-cases").glob("*.yaml"))
PERIOD = Period.parse("2026-10")
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _case_document(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    case = load_case(path)
    doc = compute_statement(
        case.period,
        case.licences,
        case.events(),
        thresholds=case.thresholds,
        carried_in=case.carried_in,
    ).to_document()
    return doc, {lic.licence_id: lic.vendor_id for lic in case.licences}


# --- journal -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_worked_case_posts_balanced_entries_that_match_the_statement(path: Path) -> None:
    doc, vendors = _case_document(path)
    entries = journal.statement_entries(doc, vendors)
    assert all(e.balanced for e in entries)
    bal = journal.balances(entries)
    for lic in doc["licences"]:
        cur = lic["currency"]
        held = sum(Decimal(h["amount"]) for h in lic["held"])
        assert bal.get((journal.held_memo(lic["licence_id"]), cur), 0) == held
        recouped = Decimal(lic["advance_recouped"])
        assert bal.get((journal.advance_outstanding(lic["licence_id"]), cur), 0) == -recouped
    fees: dict[str, Decimal] = {}
    for lic in doc["licences"]:
        fees[lic["currency"]] = fees.get(lic["currency"], Decimal(0)) + Decimal(lic["platform_fee"])
    for cur, fee in fees.items():
        assert bal.get((journal.PLATFORM_FEE, cur), 0) == -fee
    owed = journal.carried_in(bal)
    for payee in doc["payees"]:
        assert owed.get((payee["payee_id"], payee["currency"]), 0) == Decimal(payee["earned"])


def test_an_unbalanced_entry_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="does not balance"):
        journal.settlement_entry(
            "x",
            "2026-10",
            "statement",
            licence_id="L",
            vendor_id="V",
            currency="USD",
            vendor_invoice=Decimal("10.00"),
            advance_recouped=Decimal("0"),
            platform_fee=Decimal("1.00"),
            allocations=[("P", Decimal("8.99"))],
        )


def test_advance_opening_brings_the_account_to_the_stated_amount() -> None:
    entry = journal.advance_opening_entry(
        "2026-10", "L", 2, "USD", Decimal("50.00"), Decimal("20.00")
    )
    assert entry is not None and entry.balanced
    bal = journal.balances([entry])
    assert bal[(journal.advance_outstanding("L"), "USD")] == Decimal("30.00")
    assert journal.advance_opening_entry("2026-10", "L", 2, "USD", Decimal(5), Decimal(5)) is None


def test_scheduling_and_paying_a_payout_empties_the_payable() -> None:
    entries = [
        journal.settlement_entry(
            "s",
            "2026-10",
            "statement",
            licence_id="L",
            vendor_id="V",
            currency="USD",
            vendor_invoice=Decimal("100.00"),
            advance_recouped=Decimal(0),
            platform_fee=Decimal("10.00"),
            allocations=[("P", Decimal("90.00"))],
        ),
        journal.payout_scheduled_entry("2026-10", "k", "P", "USD", Decimal("90.00")),
        journal.payout_paid_entry("2026-10", "k", "P", "USD", Decimal("90.00")),
    ]
    bal = journal.balances(e for e in entries if e is not None)
    assert journal.carried_in(bal) == {}
    assert bal[(journal.payout_clearing("P"), "USD")] == 0
    assert bal[(journal.PAYMENTS_SENT, "USD")] == Decimal("-90.00")


# --- adjustments -------------------------------------------------------------------------


def _nonzero(items: dict[Any, Any]) -> dict[Any, Any]:
    return {k: v for k, v in items.items() if v.units or v.amount or k[1] == "settlement"}


def _doc(specs: list[dict[str, Any]], raws: list[dict[str, Any]]) -> dict[str, Any]:
    lics = [parse_licence(s) for s in specs]
    return compute_statement(PERIOD, lics, [parse_event(r) for r in raws]).to_document()


@PROPERTY
@given(months(), st.data())
def test_adjustments_turn_the_closed_statement_into_the_restated_one(
    month: Any, data: st.DataObject
) -> None:
    specs, events = month
    cut = data.draw(st.integers(0, len(events)))
    closed = _doc(specs, events[:cut])
    restated = _doc(specs, events)
    vendors = {s["licence_id"]: s["vendor_id"] for s in specs}
    lines = diff_items("2026-10", statement_items(closed), statement_items(restated))
    # Exact: the closed statement plus its adjustments is the restatement, item by item
    # (an item that vanished remains as zero).
    corrected = with_adjustments(statement_items(closed), lines)
    assert _nonzero(corrected) == _nonzero(statement_items(restated))
    assert diff_items("2026-10", corrected, statement_items(restated)) == []
    # Adjustment entries balance and move the ledger exactly to the restatement's ledger.
    entries = journal.adjustment_entries("2026-11", lines, vendors)
    assert all(e.balanced for e in entries)
    before = journal.balances(journal.statement_entries(closed, vendors))
    after = journal.balances(journal.statement_entries(restated, vendors))
    moved = journal.balances(entries)
    for key in set(before) | set(after) | set(moved):
        assert before.get(key, 0) + moved.get(key, 0) == after.get(key, 0), key


def test_a_late_render_becomes_adjustment_lines_naming_the_period_and_line() -> None:
    spec = licence_spec(splits={"TAL-1": "0.8", "AGT-1": "0.2"})
    base = {
        "vendor_id": "VEN-1",
        "licence_id": "LIC-1",
        "avatar_id": "AVA-1",
        "render_id": "r",
        "category": "product_demo",
        "territory": "US",
        "kind": "RENDER",
    }
    on_time = [{**base, "event_id": f"e{i}", "occurred_at": f"2026-10-0{i + 1}T00:00:00Z"}
               for i in range(3)]  # fmt: skip
    late = {**base, "event_id": "late", "occurred_at": "2026-10-30T00:00:00Z"}
    closed = _doc([spec], on_time)
    restated = _doc([spec], [*on_time, late])
    lines = diff_items("2026-10", statement_items(closed), statement_items(restated))
    by_ref = {(a.section, a.ref): a for a in lines}
    render = by_ref[("line", "RENDER/v1/tier-1")]
    assert (render.units, render.amount, render.adjusts_period) == (1, Decimal("1.00"), "2026-10")
    assert by_ref[("settlement", "platform_fee")].amount == Decimal("0.10")
    assert by_ref[("allocation", "TAL-1")].amount + by_ref[("allocation", "AGT-1")].amount == (
        Decimal("0.90")
    )
    # A retraction of a closed period's event is a negative line.
    retraction = {"vendor_id": "VEN-1", "event_id": "x", "kind": "RETRACTION",
                  "original_event_id": "e0", "occurred_at": "2026-10-31T00:00:00Z"}  # fmt: skip
    undone = _doc([spec], [*on_time, retraction])
    neg = diff_items("2026-10", statement_items(closed), statement_items(undone))
    assert {(a.ref, a.units, a.amount) for a in neg if a.section == "line"} == {
        ("RENDER/v1/tier-1", -1, Decimal("-1.00"))
    }


def test_adjustment_lines_round_trip_through_documents() -> None:
    line = AdjustmentLine("2026-10", "L", "JPY", "line", "VIEW/v2/web", -3, Decimal("-15"))
    assert AdjustmentLine.from_document(line.to_document()) == line


# --- payouts -----------------------------------------------------------------------------


def test_payouts_are_planned_per_payee_and_currency_above_zero() -> None:
    payees = [
        {"payee_id": "B", "currency": "USD", "payable": "12.00"},
        {"payee_id": "A", "currency": "USD", "payable": "0.00"},
        {"payee_id": "A", "currency": "JPY", "payable": "1500"},
    ]
    plan = plan_payouts("2026-10", payees)
    assert [(p.payee_id, p.currency, p.amount) for p in plan] == [
        ("A", "JPY", Decimal(1500)),
        ("B", "USD", Decimal("12.00")),
    ]
    assert plan[0].idempotency_key == idempotency_key("2026-10", "A", "JPY")
    assert plan_payouts("2026-10", payees) == plan  # same keys and ids every time


def test_payout_state_machine() -> None:
    assert attempt_state(PayoutState.PENDING) is PayoutState.PENDING
    assert attempt_state(PayoutState.FAILED) is PayoutState.RETRIED
    assert after_attempt(PayoutState.PENDING, Outcome.FAILED) is PayoutState.FAILED
    assert after_attempt(PayoutState.RETRIED, Outcome.PAID) is PayoutState.PAID
    with pytest.raises(InvalidTransition):
        attempt_state(PayoutState.PAID)
    with pytest.raises(InvalidTransition):
        after_attempt(PayoutState.PAID, Outcome.PAID)


# --- close inputs -------------------------------------------------------------------------


def test_canonical_json_is_stable_and_hash_is_sha256() -> None:
    a = {"b": [1, {"y": "2.50", "x": Decimal("0.10")}], "a": "é"}
    b = {"a": "é", "b": [1, {"x": Decimal("0.10"), "y": "2.50"}]}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":"é","b":[1,{"x":"0.10","y":"2.50"}]}'.encode()
    assert len(content_hash(a)) == 64


def test_grace_period() -> None:
    assert closable_at(PERIOD).isoformat() == "2026-11-04T00:00:00+00:00"


def test_licences_for_period_covers_terms_overlapping_it_and_licences_with_events() -> None:
    active = licence(licence_id="A")
    future = licence(licence_id="B", starts_at="2027-01-01T00:00:00Z")
    ended = licence(licence_id="C", ends_at="2026-09-01T00:00:00Z")
    chosen = licences_for_period([future, ended, active], PERIOD, with_events=["C"])
    assert [lic.licence_id for lic in chosen] == ["A", "C"]


def test_with_advance_outstanding_changes_only_the_settling_version() -> None:
    lic = licence(
        advance_outstanding="100",
        amendments=[{"effective_from": "2026-10-15T00:00:00Z", "rates": {"view_cpm": "3"}}],
    )
    changed = with_advance_outstanding(lic, PERIOD, Decimal("40.00"))
    assert changed.version_at(PERIOD.last_instant).advance_outstanding == Decimal("40.00")
    assert changed.versions[0] == lic.versions[0]
    events = [parse_event({"vendor_id": "VEN-1", "event_id": "e", "kind": "RENDER",
                           "licence_id": "LIC-1", "avatar_id": "AVA-1", "render_id": "r",
                           "category": "product_demo", "territory": "US", "quantity": 200,
                           "occurred_at": "2026-10-02T00:00:00Z"})]  # fmt: skip
    doc = compute_statement(PERIOD, [changed], events).to_document()
    assert doc["licences"][0]["advance_recouped"] == "40.00"
