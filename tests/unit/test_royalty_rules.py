"""Rules the worked cases do not pin down, each checked against hand-computed figures."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from residuals.domain.licence_spec import parse_licence
from residuals.domain.statement import compute_statement
from tests.support.builders import dlq, ev, licence, licence_spec, only, statement, violations

T = "2026-10-20T12:00:00Z"


def test_one_render_event_with_a_quantity_spans_two_tiers() -> None:
    doc = only(statement([licence()], [ev(quantity=8), ev(quantity=5)]))
    assert [(x["tier"], x["units"], x["amount"]) for x in doc["lines"]] == [
        (1, 10, "10.00"),
        (2, 3, "1.50"),
    ]


def test_suspension_window_holds_uses_inside_it_only() -> None:
    lic = licence(suspensions=[{"from": "2026-10-10T00:00:00Z", "until": "2026-10-12T00:00:00Z"}])
    doc = statement(
        [lic],
        [
            ev(occurred_at="2026-10-09T23:59:59Z"),
            ev(occurred_at="2026-10-10T00:00:00Z"),
            ev(occurred_at="2026-10-11T23:00:00Z"),
            ev(occurred_at="2026-10-12T00:00:00Z"),
        ],
    )
    block = only(doc)
    assert block["lines"][0]["units"] == 2
    assert block["held"] == [
        {"violation": "LICENCE_SUSPENDED", "kind": "RENDER", "units": 2, "amount": "4.00"}
    ]
    assert violations(doc) == {"LICENCE_SUSPENDED": 2}


def test_open_suspension_window_holds_everything_after() -> None:
    lic = licence(suspensions=[{"from": "2026-10-15T00:00:00Z"}])
    doc = only(
        statement(
            [lic], [ev(occurred_at="2026-10-20T00:00:00Z"), ev(occurred_at="2026-10-01T00:00:00Z")]
        )
    )
    assert doc["held"][0]["units"] == 1 and doc["lines"][0]["units"] == 1


def test_automatic_suspension_follows_scope_order_not_arrival_order() -> None:
    political = ev(category="political", occurred_at="2026-10-10T00:00:00Z")
    before = ev(occurred_at="2026-10-09T00:00:00Z")
    after = ev(occurred_at="2026-10-11T00:00:00Z")
    doc = statement([licence()], [after, political, before])
    assert violations(doc) == {"FORBIDDEN_CATEGORY": 1, "LICENCE_SUSPENDED": 1}
    assert only(doc)["lines"][0]["units"] == 1


def test_reinstatement_lifts_an_automatic_suspension() -> None:
    lic = licence(reinstatements=["2026-10-12T00:00:00Z"])
    doc = statement(
        [lic],
        [
            ev(category="political", occurred_at="2026-10-10T00:00:00Z"),
            ev(occurred_at="2026-10-11T00:00:00Z"),
            ev(occurred_at="2026-10-13T00:00:00Z"),
        ],
    )
    assert violations(doc) == {"FORBIDDEN_CATEGORY": 1, "LICENCE_SUSPENDED": 1}
    assert only(doc)["lines"][0]["units"] == 1


def test_auto_suspension_can_be_switched_off() -> None:
    lic = licence(auto_suspend_on_critical=False)
    doc = statement(
        [lic],
        [
            ev(category="political", occurred_at="2026-10-10T00:00:00Z"),
            ev(occurred_at="2026-10-11T00:00:00Z"),
        ],
    )
    assert violations(doc) == {"FORBIDDEN_CATEGORY": 1}


def test_use_before_start_and_after_expiry_with_exclusive_end() -> None:
    lic = licence(starts_at="2026-10-05T00:00:00Z", ends_at="2026-10-20T00:00:00Z")
    doc = statement(
        [lic],
        [
            ev(occurred_at="2026-10-04T23:00:00Z"),
            ev(occurred_at="2026-10-05T00:00:00Z"),
            ev(occurred_at="2026-10-19T23:59:59Z"),
            ev(occurred_at="2026-10-20T00:00:00Z"),
        ],
    )
    assert violations(doc) == {"USE_BEFORE_START": 1, "USE_AFTER_EXPIRY": 1}
    assert only(doc)["lines"][0]["units"] == 2


def test_forbidden_territory_wins_over_worldwide() -> None:
    lic = licence(scope={"territories_allowed": ["*"], "territories_forbidden": ["RU"]})
    doc = statement([lic], [ev(territory="RU"), ev(territory="BR")])
    assert violations(doc) == {"TERRITORY_NOT_LICENSED": 1}


def test_forbidden_category_is_checked_before_the_allow_list() -> None:
    lic = licence(scope={"categories_allowed": ["product_demo", "political"]})
    doc = statement([lic], [ev(category="political")])
    assert violations(doc) == {"FORBIDDEN_CATEGORY": 1}


def test_channel_is_checked_for_views_not_renders() -> None:
    doc = statement(
        [licence()], [ev("VIEW", channel="broadcast", quantity=1000), ev(channel="broadcast")]
    )
    assert violations(doc) == {"CHANNEL_NOT_LICENSED": 1}
    held = only(doc)["held"]
    # 1000 views at CPM 2.00, times the default unlicensed-use multiplier 2
    assert held == [
        {"violation": "CHANNEL_NOT_LICENSED", "kind": "VIEW", "units": 1000, "amount": "4.00"}
    ]


def test_held_ad_impression_uses_revenue_share_floor_and_multipliers() -> None:
    lic = licence(scope={"territories_allowed": ["US"]})
    doc = only(
        statement(
            [lic],
            [
                ev(
                    "AD_IMPRESSION",
                    territory="FR",
                    channel="social",
                    quantity=1000,
                    ad_revenue="3.00",
                )
            ],
        )
    )
    # max(3.00 * 0.50, 1000 * 1.00 / 1000) = 1.50, x social 2 = 3.00, x unlicensed 2 = 6.00
    assert doc["held"] == [
        {
            "violation": "TERRITORY_NOT_LICENSED",
            "kind": "AD_IMPRESSION",
            "units": 1000,
            "amount": "6.00",
        }
    ]


def test_quota_block_splits_an_ad_impression_with_revenue_pro_rata() -> None:
    lic = licence(quotas=[{"metric": "AD_IMPRESSION", "limit": 300, "on_exceed": "block"}])
    doc = statement([lic], [ev("AD_IMPRESSION", quantity=400, ad_revenue="10.00")])
    block = only(doc)
    # billed 300 units with 7.50 revenue: max(3.75, 0.30) = 3.75
    assert block["lines"] == [
        {
            "kind": "AD_IMPRESSION",
            "version": 1,
            "channel": "web",
            "units": 300,
            "revenue": "7.50",
            "amount": "3.75",
        }
    ]
    # held 100 units with 2.50 revenue: max(1.25, 0.10) x 2 = 2.50
    assert block["held"] == [
        {"violation": "QUOTA_EXCEEDED", "kind": "AD_IMPRESSION", "units": 100, "amount": "2.50"}
    ]
    assert violations(doc) == {"QUOTA_EXCEEDED": 1, "QUOTA_NEAR": 1, "UNREPORTED_RENDER": 1}


def test_quota_alert_bills_past_the_limit_and_tiers_count_those_renders() -> None:
    lic = licence(quotas=[{"metric": "RENDER", "limit": 10, "on_exceed": "alert"}])
    doc = statement([lic], [ev(quantity=7), ev(quantity=7)])
    assert [(x["tier"], x["units"]) for x in only(doc)["lines"]] == [(1, 10), (2, 4)]
    assert only(doc)["held"] == []
    assert violations(doc) == {"QUOTA_EXCEEDED": 1, "QUOTA_NEAR": 1}


def test_quota_near_is_raised_once_even_when_one_event_jumps_past_the_limit() -> None:
    lic = licence(quotas=[{"metric": "VIEW", "limit": 100, "on_exceed": "block"}])
    doc = statement(
        [lic], [ev("VIEW", quantity=50), ev("VIEW", quantity=500), ev("VIEW", quantity=5)]
    )
    assert violations(doc) == {"QUOTA_NEAR": 1, "QUOTA_EXCEEDED": 2, "UNREPORTED_RENDER": 1}
    assert only(doc)["lines"][0]["units"] == 100
    assert only(doc)["held"][0]["units"] == 455


def test_held_uses_count_toward_no_quota() -> None:
    lic = licence(quotas=[{"metric": "RENDER", "limit": 2}], scope={"territories_allowed": ["US"]})
    doc = statement([lic], [ev(territory="FR"), ev(territory="FR"), ev(), ev()])
    assert only(doc)["lines"][0]["units"] == 2
    assert violations(doc) == {"TERRITORY_NOT_LICENSED": 2, "QUOTA_NEAR": 1}


def test_excluded_traffic_is_not_a_use() -> None:
    lic = licence(scope={"territories_allowed": ["US"]})
    doc = statement(
        [lic],
        [
            ev("VIEW", ivt=True, quantity=40, territory="FR"),
            ev("VIEW", viewable=False, quantity=30, category="political"),
            ev("AD_IMPRESSION", ivt=True, quantity=20),
            ev("AD_IMPRESSION", viewable=False, quantity=10),
        ],
    )
    block = only(doc)
    assert block["excluded"] == {"duplicates": 0, "ivt": 60, "non_viewable": 30, "retracted": 0}
    assert violations(doc) == {
        "UNREPORTED_RENDER": 1
    }  # the non-viewable ad impression still counts
    assert block["lines"][0]["kind"] == "AD_IMPRESSION" and block["lines"][0]["units"] == 10


def test_unreported_renders_are_counted_per_render_id() -> None:
    doc = statement(
        [licence()],
        [
            ev(render_id="r1"),
            ev("VIEW", render_id="r1"),
            ev("VIEW", render_id="ghost"),
            ev("AD_IMPRESSION", render_id="ghost"),
            ev("VIEW", render_id="ghost-2", ivt=True),
        ],
    )
    assert violations(doc) == {"UNREPORTED_RENDER": 1}


def test_a_retracted_render_no_longer_reports_its_id() -> None:
    doc = statement(
        [licence()],
        [
            ev(event_id="r", render_id="r1"),
            ev("VIEW", render_id="r1"),
            ev("RETRACTION", event_id="x", original_event_id="r"),
        ],
    )
    assert violations(doc) == {"UNREPORTED_RENDER": 1}
    assert only(doc)["excluded"]["retracted"] == 1


def test_retractions_resent_or_repeated_are_duplicates_of_the_originals_licence() -> None:
    doc = statement(
        [licence()],
        [
            ev(event_id="a"),
            ev("RETRACTION", event_id="x1", original_event_id="a", occurred_at=T),
            ev("RETRACTION", event_id="x1", original_event_id="a", occurred_at=T),
            ev("RETRACTION", event_id="x2", original_event_id="a", occurred_at=T),
        ],
    )
    assert only(doc)["excluded"] == {"duplicates": 2, "ivt": 0, "non_viewable": 0, "retracted": 1}
    assert only(doc)["lines"] == []


def test_retraction_of_another_vendors_event_is_unknown_original() -> None:
    other = licence(licence_id="LIC-2", vendor_id="VEN-2", avatar_id="AVA-2")
    doc = statement(
        [licence(), other],
        [
            ev(event_id="theirs", vendor_id="VEN-2", licence_id="LIC-2", avatar_id="AVA-2"),
            ev("RETRACTION", event_id="x", original_event_id="theirs"),
        ],
    )
    assert dlq(doc) == {"UNKNOWN_ORIGINAL": 1}


def test_a_rejected_event_does_not_reserve_its_id() -> None:
    doc = statement([licence()], [ev(event_id="a", quantity=0), ev(event_id="a")])
    assert dlq(doc) == {"INVALID_QUANTITY": 1}
    assert only(doc)["excluded"]["duplicates"] == 0 and only(doc)["lines"][0]["units"] == 1


def test_same_payload_with_defaults_applied_is_a_duplicate() -> None:
    doc = statement(
        [licence()],
        [
            ev("VIEW", event_id="v", occurred_at=T),
            ev("VIEW", event_id="v", occurred_at=T, quantity=1, viewable=True, ivt=False),
        ],
    )
    assert only(doc)["excluded"]["duplicates"] == 1
    assert "DUPLICATE_CONFLICT" not in violations(doc)


def test_conflicting_resend_first_wins() -> None:
    doc = statement(
        [licence()],
        [ev(event_id="a", territory="US"), ev(event_id="a", territory="FR", quantity=5)],
    )
    assert violations(doc) == {"DUPLICATE_CONFLICT": 1}
    assert only(doc)["lines"][0]["units"] == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"kind": "HOVER"}, "MALFORMED"),
        ({"event_id": None}, "MALFORMED"),
        ({"occurred_at": "yesterday"}, "MALFORMED"),
        ({"territory": None}, "MALFORMED"),
        ({"quantity": 1_000_001}, "INVALID_QUANTITY"),
        ({"quantity": 2.5}, "INVALID_QUANTITY"),
        ({"quantity": True}, "INVALID_QUANTITY"),
        ({"licence_id": "LIC-NOPE"}, "UNKNOWN_LICENCE"),
        ({"vendor_id": "VEN-X"}, "VENDOR_MISMATCH"),
        ({"avatar_id": "AVA-X"}, "AVATAR_MISMATCH"),
        (
            {
                "kind": "AD_IMPRESSION",
                "channel": "web",
                "ad_revenue": {"amount": "1.00", "currency": "EUR"},
            },
            "CURRENCY_MISMATCH",
        ),
        (
            {"kind": "AD_IMPRESSION", "channel": "web", "ad_revenue": "1.00 EUR"},
            "CURRENCY_MISMATCH",
        ),
        ({"kind": "AD_IMPRESSION", "channel": "web", "ad_revenue": "-1.00"}, "MALFORMED"),
        ({"kind": "AD_IMPRESSION", "channel": "web", "ad_revenue": None}, "MALFORMED"),
        ({"kind": "RETRACTION"}, "MALFORMED"),
        # the first failing check is the reason: malformed beats an unknown licence
        ({"licence_id": "LIC-NOPE", "category": None}, "MALFORMED"),
        ({"licence_id": "LIC-NOPE", "quantity": 0}, "INVALID_QUANTITY"),
        ({"vendor_id": "VEN-X", "avatar_id": "AVA-X"}, "VENDOR_MISMATCH"),
    ],
)
def test_validation_reasons_in_order(fields: dict[str, object], reason: str) -> None:
    raw = ev(**{k: v for k, v in fields.items() if v is not None})
    for key, value in fields.items():
        if value is None:
            raw.pop(key, None)
    doc = statement([licence()], [raw])
    assert dlq(doc) == {reason: 1}
    assert only(doc)["lines"] == []


def test_amendment_changes_multiplier_per_version_line() -> None:
    spec = licence_spec(
        amendments=[{"effective_from": "2026-10-15T00:00:00Z", "rates": {"view_cpm": "3.00"}}]
    )
    doc = only(
        statement(
            [parse_licence(spec)],
            [
                ev("VIEW", quantity=1000, occurred_at="2026-10-14T00:00:00Z"),
                ev("VIEW", quantity=1000, occurred_at="2026-10-15T00:00:00Z"),
            ],
        )
    )
    assert [(x["version"], x["rate"], x["amount"]) for x in doc["lines"]] == [
        (1, "2.00", "2.00"),
        (2, "3.00", "3.00"),
    ]


def test_terms_at_the_last_instant_decide_fee_and_splits() -> None:
    spec = licence_spec(
        amendments=[
            {
                "effective_from": "2026-10-31T23:00:00Z",
                "platform_fee": "0.20",
                "splits": {"TAL-1": "0.5", "AGT-1": "0.5"},
            }
        ]
    )
    doc = only(statement([parse_licence(spec)], [ev(quantity=10)]))
    assert doc["platform_fee"] == "2.00"
    assert doc["allocations"] == [
        {"payee_id": "AGT-1", "amount": "4.00"},
        {"payee_id": "TAL-1", "amount": "4.00"},
    ]


def test_minimum_guarantee_tops_up_an_idle_licence() -> None:
    doc = statement([licence(minimum_guarantee="50.00", advance_outstanding="100.00")], [])
    block = only(doc)
    assert (block["earned"], block["minimum_guarantee_topup"], block["gross"]) == (
        "0.00",
        "50.00",
        "50.00",
    )
    assert (block["net"], block["advance_recouped"], block["vendor_invoice"]) == (
        "45.00",
        "45.00",
        "5.00",
    )
    assert block["allocations"] == [{"payee_id": "TAL-1", "amount": "0.00"}]
    assert doc["payees"] == [
        {
            "payee_id": "TAL-1",
            "currency": "USD",
            "earned": "0.00",
            "payable": "0.00",
            "carried_forward": "0.00",
        }
    ]


def test_carried_in_amounts_lift_a_payee_over_the_threshold() -> None:
    doc = statement(
        [licence()],
        [ev(quantity=5)],
        carried_in={("TAL-1", "USD"): Decimal("6.00"), ("OLD", "USD"): Decimal("2.00")},
    )
    assert doc["payees"] == [
        {
            "payee_id": "OLD",
            "currency": "USD",
            "earned": "0.00",
            "payable": "0.00",
            "carried_forward": "2.00",
        },
        {
            "payee_id": "TAL-1",
            "currency": "USD",
            "earned": "4.50",
            "payable": "10.50",
            "carried_forward": "0.00",
        },
    ]


def test_three_decimal_currency_rounds_to_fils() -> None:
    doc = only(statement([licence(currency="KWD")], [ev("VIEW", quantity=1234)]))
    assert doc["lines"][0]["amount"] == "2.468"


def test_registry_automatic_suspension_is_not_applied_twice_within_its_period() -> None:
    """The alerts service records the automatic suspension in the registry; restating the
    period from stored events must still see the critical use itself, then suspension."""
    from residuals.domain.licences import Window

    base = licence()
    recorded = Window(parse_ts("2026-10-10T00:00:00Z"), None, automatic=True)
    lic = type(base)(**{**_fields(base), "suspensions": (recorded,)})
    raws = [
        ev(category="political", occurred_at="2026-10-10T00:00:00Z"),
        ev(occurred_at="2026-10-11T00:00:00Z"),
    ]
    assert (
        violations(statement([lic], raws))
        == violations(statement([base], raws))
        == {
            "FORBIDDEN_CATEGORY": 1,
            "LICENCE_SUSPENDED": 1,
        }
    )
    # reinstated on the 12th: the window's end lifts the derived suspension too
    lifted = Window(parse_ts("2026-10-10T00:00:00Z"), parse_ts("2026-10-12T00:00:00Z"), True)
    lic = type(base)(**{**_fields(base), "suspensions": (lifted,)})
    doc = statement([lic], [*raws, ev(occurred_at="2026-10-13T00:00:00Z")])
    assert violations(doc) == {"FORBIDDEN_CATEGORY": 1, "LICENCE_SUSPENDED": 1}
    assert only(doc)["lines"][0]["units"] == 1


def parse_ts(text: str) -> datetime:
    from residuals.domain.events import parse_timestamp

    return parse_timestamp(text)


def _fields(lic: object) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(lic, f.name) for f in dataclasses.fields(lic) if f.init}  # type: ignore[arg-type]


# --- §5a per-use approval ---------------------------------------------------------------


def _approval(approval_id: str = "APR-1", **fields: object) -> object:
    from residuals.domain.approvals import Approval
    from residuals.domain.events import parse_timestamp

    values: dict[str, object] = {
        "licence_id": "LIC-1",
        "category": "product_demo",
        "valid_from": parse_timestamp("2026-10-01T00:00:00Z"),
        **fields,
    }
    return Approval(approval_id, **values)  # type: ignore[arg-type]


def _needs_approval() -> object:
    return licence(scope={"approval_required": ["product_demo"]})


def test_a_multi_unit_render_starting_inside_the_allowance_is_approved_whole() -> None:
    """§5a counts the renders *before* the event: 1 used of 3, so a render of 5 units is
    approved whole; the next render finds 6 used and is held."""
    lic = _needs_approval()
    doc = statement(
        [lic],  # type: ignore[list-item]
        [
            ev(occurred_at="2026-10-02T00:00:00Z", approval_id="APR-1"),
            ev(occurred_at="2026-10-03T00:00:00Z", approval_id="APR-1", quantity=5),
            ev(occurred_at="2026-10-04T00:00:00Z", approval_id="APR-1"),
        ],
        approvals=[_approval(max_renders=3)],
    )
    block = only(doc)
    assert block["lines"][0]["units"] == 6
    assert block["held"] == [
        {"violation": "UNAPPROVED_USE", "kind": "RENDER", "units": 1, "amount": "2.00"}
    ]
    assert violations(doc) == {"UNAPPROVED_USE": 1}


def test_uses_outside_an_approval_are_held_and_suspend_nothing() -> None:
    from residuals.domain.events import parse_timestamp

    lic = _needs_approval()
    doc = statement(
        [lic],  # type: ignore[list-item]
        [
            ev(occurred_at="2026-10-02T00:00:00Z"),  # names no approval
            ev(occurred_at="2026-10-02T01:00:00Z", approval_id="APR-NONE"),  # unknown
            ev(occurred_at="2026-10-02T02:00:00Z", approval_id="APR-OTHER"),  # other category
            ev(occurred_at="2026-10-01T00:00:00Z", approval_id="APR-1", category="x"),  # other
            ev(occurred_at="2026-10-02T03:00:00Z", approval_id="APR-LATE"),  # window not open
            ev(occurred_at="2026-10-03T00:00:00Z", approval_id="APR-1"),  # approved
        ],
        approvals=[
            _approval(),
            _approval("APR-OTHER", category="insurance"),
            _approval("APR-LATE", valid_from=parse_timestamp("2026-10-05T00:00:00Z")),
        ],
    )
    block = only(doc)
    assert block["lines"][0]["units"] == 1
    # The render of category "x" is CATEGORY_NOT_LICENSED (§5 check 5 comes first).
    assert [(h["violation"], h["units"]) for h in block["held"]] == [
        ("CATEGORY_NOT_LICENSED", 1),
        ("UNAPPROVED_USE", 4),
    ]
    assert violations(doc) == {"CATEGORY_NOT_LICENSED": 1, "UNAPPROVED_USE": 4}


def test_approval_required_must_name_allowed_categories() -> None:
    from residuals.domain.licence_spec import SpecError

    with pytest.raises(SpecError, match="approval_required"):
        licence(scope={"approval_required": ["insurance"]})
    assert licence(scope={"categories_allowed": ["*"], "approval_required": ["insurance"]})


def test_an_approval_id_is_part_of_the_payload() -> None:
    """The same event id re-sent naming another approval is a conflict, not a duplicate."""
    first = ev(approval_id="APR-1")
    doc = statement([licence()], [first, {**first, "approval_id": "APR-2"}])
    assert violations(doc) == {"DUPLICATE_CONFLICT": 1}


def test_a_hostile_approval_id_is_malformed_naming_the_field() -> None:
    from residuals.domain.events import Rejection, parse_event
    from residuals.domain.vocabulary import RejectReason

    for bad in ("A" * 129, "APR\x1b[2J", "APR\x00"):
        verdict = parse_event(ev(approval_id=bad))
        assert isinstance(verdict, Rejection)
        assert verdict.reason is RejectReason.MALFORMED and "approval_id" in verdict.detail
    # Blank is "names no approval", not an error.
    assert not isinstance(parse_event(ev(approval_id="  ")), Rejection)


def test_an_approval_carries_its_render_count_from_earlier_periods() -> None:
    """§5a: an approval spans periods. A statement starts from the units it covered before
    (``approval_renders_in``) and reports the cumulative count, outside its document."""
    from residuals.domain.events import parse_event
    from residuals.domain.period import Period

    lic = _needs_approval()
    renders = [ev(occurred_at=f"2026-11-0{d}T00:00:00Z", approval_id="APR-1") for d in (2, 3)]
    approvals = [_approval(max_renders=3)]
    fresh = compute_statement(
        Period(2026, 11),
        [lic],  # type: ignore[list-item]
        [parse_event(r) for r in renders],
        approvals=approvals,  # type: ignore[arg-type]
    )
    carried = compute_statement(
        Period(2026, 11),
        [lic],  # type: ignore[list-item]
        [parse_event(r) for r in renders],
        approvals=approvals,  # type: ignore[arg-type]
        approval_renders_in={"APR-1": 2, "APR-UNUSED": 1},
    )
    assert violations(fresh.to_document()) == {}
    assert fresh.approval_renders == {"APR-1": 2}
    assert violations(carried.to_document()) == {"UNAPPROVED_USE": 1}
    assert carried.approval_renders == {"APR-1": 3, "APR-UNUSED": 1}
    assert "approval_renders" not in carried.to_document()
