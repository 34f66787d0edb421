"""The close's per-licence usage tallies: JSON that round-trips exactly (amounts as decimal
strings, exponents kept, fold order kept) and, merged for a part, the same document as the
tally folded while restating the part."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.statement import compute_statement
from residuals.domain.vocabulary import Violation
from residuals.payouts.documents import formats
from residuals.payouts.tally import (
    LicenceUsage,
    Misuse,
    MisuseSum,
    StatementUsage,
    Sums,
    usage_from_json,
    usage_to_json,
)
from tests.support.builders import PERIOD
from tests.support.documents import sample, sample_events, sample_licences


def _through_jsonb(data: dict[str, Any]) -> dict[str, Any]:
    """What PostgreSQL's jsonb gives back: object keys reordered, arrays kept."""
    reordered = dict(sorted(data.items(), key=lambda kv: kv[0][::-1]))
    back: dict[str, Any] = json.loads(json.dumps(reordered))
    return back


def _written(usage: LicenceUsage) -> str:
    return json.dumps(usage_to_json(usage), sort_keys=True)


def test_a_licence_usage_round_trips_exactly() -> None:
    at = datetime(2026, 10, 3, 4, 5, 6, 789, tzinfo=UTC)
    usage = LicenceUsage(
        licence_id="LIC-1",
        currency="JPY",
        unreported_renders=2,
        cells={
            ("VIEW", "US", "web"): Sums(3, Decimal("0.000750"), 1, Decimal("1E-7")),
            ("RENDER", "", ""): Sums(1, Decimal("120"), 0, Decimal("0")),
        },
        usage_by_day={
            (30, "VIEW"): Sums(3, Decimal("0.000750"), 1, Decimal("1E-7")),
            (0, "RENDER"): Sums(1, Decimal("120")),
        },
        earnings_by_day={30: Sums(3, Decimal("0.000750")), 0: Sums(1, Decimal("120.00"))},
        held={(Violation.LICENCE_SUSPENDED, "VIEW"): MisuseSum(1, 1, Decimal("1E-7"))},
        misuse_totals={(Violation.LICENCE_SUSPENDED, "VEN-1"): MisuseSum(1, 1, Decimal("1E-7"))},
        recent=[
            Misuse(
                occurred_at=at,
                licence_id="LIC-1",
                vendor_id="VEN-1",
                event_id="e-1",
                kind="VIEW",
                category="news",
                territory="US",
                channel="web",
                violation=Violation.LICENCE_SUSPENDED,
                held_units=1,
                held_amount=Decimal("1E-7"),
            ),
        ],
    )
    back = usage_from_json(_through_jsonb(usage_to_json(usage)))
    assert back == usage
    assert _written(back) == _written(usage)  # every Decimal's digits and exponent
    assert list(back.cells) == list(usage.cells)  # fold order, which the document keeps
    assert list(back.usage_by_day) == list(usage.usage_by_day)
    assert list(back.earnings_by_day) == list(usage.earnings_by_day)
    assert back.recent[0].occurred_at == at and back.recent[0].occurred_at.tzinfo is not None
    assert str(back.cells[("VIEW", "US", "web")].held_amount) == "1E-7"
    assert str(back.earnings_by_day[0].amount) == "120.00"


def test_an_unknown_format_is_refused() -> None:
    data = usage_to_json(LicenceUsage("LIC-1", "USD"))
    with pytest.raises(ValueError, match="format"):
        usage_from_json({**data, "format": 99})


def test_the_close_tallies_every_licence_it_rates() -> None:
    events: list[UsageEvent | Rejection] = [parse_event(r) for r in sample_events()]
    kept = StatementUsage(PERIOD)
    document = compute_statement(PERIOD, sample_licences(), events, on_rated=kept).to_document()
    assert sorted(kept.tallies) == sorted(lic["licence_id"] for lic in document["licences"])
    for lic in document["licences"]:
        usage = usage_from_json(json.loads(kept.tallies[lic["licence_id"]]))
        billed = sum(s.units for s in usage.cells.values())
        assert billed == sum(line["units"] for line in lic["lines"])
        held = {(v.value, k): m.units for (v, k), m in usage.held.items()}
        assert held == {(h["violation"], h["kind"]): h["units"] for h in lic["held"]}


@pytest.mark.parametrize("misuse_limit", [200, 3])
@pytest.mark.parametrize("payee_id", ["TAL-1", "AGT-1"])
def test_stored_tallies_give_the_same_document(payee_id: str, misuse_limit: int) -> None:
    fresh = sample(payee_id, misuse_limit=misuse_limit)
    stored = sample(payee_id, misuse_limit=misuse_limit, stored=True)
    assert stored.view == fresh.view
    assert formats.html_document(stored.view) == formats.html_document(fresh.view)
    assert formats.csv_document(stored.view) == formats.csv_document(fresh.view)
    assert stored.tally.recent_misuse() == fresh.tally.recent_misuse()
    assert list(stored.tally.cells.items()) == list(fresh.tally.cells.items())
