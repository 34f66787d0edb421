"""Money arithmetic is safe for every bounded input: the worst case of the event model's
bounds (largest rates, multipliers, quantities and revenue, the finest fractions) prices,
sums and rounds exactly, with no InvalidOperation (MONEY_CONTEXT's docstring has the
arithmetic)."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

from residuals.domain.events import MAX_QUANTITY, parse_event
from residuals.domain.money import MONEY_CONTEXT, round_money
from residuals.domain.statement import compute_statement
from tests.support.builders import PERIOD, ev, licence

#: The largest amount the bounds allow: 18 integer and 9 fraction digits.
MAX = "999999999999999999.999999999"
FINEST = "0.000000001"


def worst_licence(share: str = "1") -> object:
    return licence(
        rates={
            "render_tiers": [{"up_to": None, "unit_price": MAX}],
            "view_cpm": MAX,
            "ad_revenue_share": share,
            "ad_floor_cpm": MAX,
            "channel_multipliers": {"web": MAX, "social": FINEST},
            "unlicensed_use_multiplier": MAX,
        },
        quotas=[{"metric": "AD_IMPRESSION", "limit": 1, "on_exceed": "block"}],
        minimum_guarantee=MAX,
        advance_outstanding=FINEST,
        splits={"TAL-1": "0.333333333", "AGT-1": "0.333333333", "EST-1": "0.333333334"},
    )


def test_a_line_of_a_billion_maximal_amounts_rounds_in_every_currency() -> None:
    per_event = Decimal(MAX) ** 3 * MAX_QUANTITY / 1000  # a view priced at the bounds
    line = per_event * 10**15 + Decimal("1e-39")  # a period's worth, finest digit kept
    for currency in ("USD", "JPY", "KWD", "CLF"):
        rounded = round_money(line, currency)
        assert rounded.is_finite() and abs(rounded - line) <= Decimal("0.5")


def test_the_worst_bounded_events_price_exactly() -> None:
    events = [
        ev("RENDER", quantity=MAX_QUANTITY),
        ev("VIEW", quantity=MAX_QUANTITY, channel="web"),
        ev("VIEW", quantity=MAX_QUANTITY, channel="social"),
        # the quota (1 impression) splits this one: revenue pro rata, the rest held at
        # the unlicensed-use multiplier
        ev("AD_IMPRESSION", quantity=MAX_QUANTITY, ad_revenue=MAX, channel="web"),
        ev("VIEW", quantity=MAX_QUANTITY, channel="web", category="political"),  # held
    ]
    statement = compute_statement(
        PERIOD, [worst_licence()], [parse_event(e) for e in events]
    ).to_document()
    (lic,) = statement["licences"]
    m, q = Decimal(MAX), MAX_QUANTITY
    with localcontext(Context(prec=500)):  # an oracle that cannot round
        render = q * m
        view_web = q * m * m / 1000
        view_social = q * m * Decimal(FINEST) / 1000
        one_ad = max(m * 1 / q, m / 1000) * m
        expected_lines = sorted(
            round_money(x, "USD") for x in (render, view_web, view_social, one_ad)
        )
    assert sorted(Decimal(line["amount"]) for line in lic["lines"]) == expected_lines
    assert [h["violation"] for h in lic["held"]] and all(
        Decimal(h["amount"]) > 0 for h in lic["held"]
    )
    with localcontext(MONEY_CONTEXT):
        allocated = sum(Decimal(a["amount"]) for a in lic["allocations"])
        assert allocated == Decimal(lic["net"]) - Decimal(lic["advance_recouped"])
        assert Decimal(lic["earned"]) == sum(expected_lines)


def test_the_context_is_the_documented_one() -> None:
    assert MONEY_CONTEXT.prec >= 120 and MONEY_CONTEXT.Emax >= 999_999
