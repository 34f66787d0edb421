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
from tests.support.builders import licence_spec

PERIOD = Period.parse("2026-10")
CURRENCIES = ("USD", "JPY", "KWD")


@st.composite
def licences(draw: st.DrawFn) -> list[dict[str, Any]]:
    specs = []
    for i in range(draw(st.integers(1, 3))):
        first_tier = draw(st.integers(1, 30))
        spec = licence_spec(
            licence_id=f"LIC-{i}",
            vendor_id=f"VEN-{i % 2}",
            avatar_id=f"AVA-{i}",
            currency=draw(st.sampled_from(CURRENCIES)),
            splits={"TAL": "0.5", "AGT": "0.3", "EST": "0.2"} if i % 2 else {"TAL": "1"},
            auto_suspend_on_critical=draw(st.booleans()),
            minimum_guarantee=draw(st.sampled_from(["0", "7.5", "120"])),
            advance_outstanding=draw(st.sampled_from(["0", "3.333", "500"])),
            platform_fee=draw(st.sampled_from(["0", "0.1", "0.125"])),
            rates={
                "render_tiers": [
                    {
                        "up_to": first_tier,
                        "unit_price": draw(st.sampled_from(["0.5", "1.25", "37.5"])),
                    },
                    {"up_to": None, "unit_price": "0.333"},
                ],
                "view_cpm": draw(st.sampled_from(["1.5", "2.25", "150"])),
                "ad_revenue_share": "0.35",
                "ad_floor_cpm": "1.10",
                "channel_multipliers": {"social": "1.5", "broadcast": "1.25"},
            },
            scope={
                "territories_allowed": draw(st.sampled_from([["*"], ["US", "GB"]])),
                "channels_allowed": ["web", "social"],
            },
        )
        if draw(st.booleans()):
            spec["quotas"] = [
                {
                    "metric": draw(st.sampled_from(["RENDER", "VIEW", "AD_IMPRESSION"])),
                    "limit": draw(st.integers(1, 50)),
                    "on_exceed": draw(st.sampled_from(["block", "alert"])),
                }
            ]
        if draw(st.booleans()):
            spec["amendments"] = [
                {"effective_from": "2026-10-15T00:00:00Z", "rates": {"view_cpm": "3.10"}}
            ]
        specs.append(spec)
    return specs


@st.composite
def months(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    specs = draw(licences())
    events: list[dict[str, Any]] = []
    days = st.integers(1, 31)
    for n in range(draw(st.integers(0, 40))):
        spec = draw(st.sampled_from(specs))
        kind = draw(
            st.sampled_from(["RENDER", "RENDER", "VIEW", "AD_IMPRESSION", "RETRACTION", "HOVER"])
        )
        event: dict[str, Any] = {
            "event_id": f"e{n}",
            "vendor_id": spec["vendor_id"],
            "kind": kind,
            "occurred_at": f"2026-10-{draw(days):02d}T0{draw(st.integers(0, 1))}:00:00Z",
        }
        if kind == "RETRACTION":
            event["original_event_id"] = f"e{draw(st.integers(0, max(n, 1)))}"
        else:
            event.update(
                licence_id=spec["licence_id"],
                avatar_id=spec["avatar_id"],
                render_id=f"r{draw(st.integers(0, 5))}",
                category=draw(
                    st.sampled_from(["product_demo", "product_demo", "political", "gaming"])
                ),
                territory=draw(st.sampled_from(["US", "GB", "FR"])),
                quantity=draw(st.integers(0, 3000)),
            )
            if kind != "RENDER":
                event["channel"] = draw(st.sampled_from(["web", "social", "broadcast"]))
                event["ivt"] = draw(st.booleans()) and draw(st.booleans())
            if kind == "AD_IMPRESSION":
                event["ad_revenue"] = str(Decimal(draw(st.integers(0, 10_000))) / 100)
        events.append(event)
    return specs, events


def _statement(specs: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    lics = [parse_licence(s) for s in specs]
    return compute_statement(PERIOD, lics, [parse_event(e) for e in events]).to_document()


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
