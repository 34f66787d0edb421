"""Hypothesis strategies for whole months: licences (every kind of term, several currencies)
and events against them (tests/unit/test_royalty_properties.py, test_statement_ledger.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from tests.support.builders import licence_spec

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


@st.composite
def approved_months(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A month where some licences need approval of every product demo (§5a), approvals of
    several windows and sizes, and events naming them, another licence's, or none."""
    specs, events = draw(months())
    for spec in specs:
        if draw(st.booleans()):
            spec["scope"]["approval_required"] = ["product_demo"]
    approvals = []
    for i in range(draw(st.integers(0, 4))):
        start = draw(st.integers(1, 25))
        approval: dict[str, Any] = {
            "approval_id": f"APR-{i}",
            "licence_id": draw(st.sampled_from(specs))["licence_id"],
            "category": draw(st.sampled_from(["product_demo", "product_demo", "political"])),
            "valid_from": f"2026-10-{start:02d}T00:00:00Z",
            "max_renders": draw(st.integers(1, 4)),
        }
        if draw(st.booleans()):
            approval["valid_until"] = f"2026-10-{draw(st.integers(start + 1, 31)):02d}T00:00:00Z"
        approvals.append(approval)
    for event in events:
        if event["kind"] != "RETRACTION" and draw(st.booleans()):
            event["approval_id"] = f"APR-{draw(st.integers(0, 4))}"
    return specs, events, approvals
