"""The demo's month (pure parts): where it sits in time, what it holds, and that the same
seed prices to the same statement whatever day it runs on (same period)."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from residuals.demo import hostile_vendor
from residuals.demo import scenario as scenario_module
from residuals.demo.fleet import Published, json_raw, sdk_event
from residuals.demo.live import Frame, LiveView, Progress
from residuals.demo.replaycase import licence_spec, streaming_rejections, without_streaming_only
from residuals.demo.report import talent_rows
from residuals.demo.scenario import ATTACKER, GRPC, HTTP, KAFKA, Scenario, build_scenario
from residuals.demo.timeline import (
    CANONICAL_MONTH,
    CANONICAL_SECONDS,
    END_MARGIN,
    REPLAY_HORIZON,
    Window,
    choose_window,
)
from residuals.domain.closing import content_hash
from residuals.domain.events import UsageEvent, parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.licensing import rules
from residuals.v1 import usage_pb2

NOW = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)


def offline_statement(scenario: Scenario) -> dict[str, object]:
    """The statement the pipeline must reach for this month (the gateway's DUPLICATE answer
    aside, which does not change between windows)."""
    licences = [parse_licence(s) for s in scenario.expected_licence_specs()]
    events = [parse_event(e.raw) for e in scenario.events if e.sender != ATTACKER]
    forged = [
        Published(0, ATTACKER, {"event_id": "x", "vendor_id": "VEN-PIXELFORGE"}, "", "DELIVERED")
    ]
    return compute_statement(
        scenario.window.period,
        licences,
        [*events, *streaming_rejections(forged)],
        thresholds={c: Decimal(v) for c, v in scenario.thresholds.items()},
    ).to_document()


@pytest.mark.parametrize(
    "now",
    [
        NOW,
        datetime(2026, 12, 1, 0, 5, tzinfo=UTC),
        datetime(2026, 12, 16, 12, tzinfo=UTC),
        datetime(2026, 12, 18, 12, tzinfo=UTC),
        datetime(2027, 3, 1, 9, tzinfo=UTC),
        datetime(2028, 2, 29, 23, 59, tzinfo=UTC),
    ],
)
def test_the_window_is_recent_inside_one_period_and_long(now: datetime) -> None:
    window = choose_window(now)
    assert window.period.contains(window.start)
    assert window.period.contains(window.end - timedelta(microseconds=1))
    assert window.end <= now - END_MARGIN
    assert window.start >= now - REPLAY_HORIZON
    assert timedelta(days=16) <= window.length <= CANONICAL_MONTH


def test_canonical_offsets_keep_their_order_on_every_window() -> None:
    long, short = choose_window(NOW), choose_window(datetime(2026, 11, 20, tzinfo=UTC))
    assert long.period == short.period and long.length != short.length
    offsets = [0, 1, 2, 59, 86_399, 86_400, 1_000_000, CANONICAL_SECONDS - 1, CANONICAL_SECONDS]
    for window in (long, short):
        times = [window.at(o) for o in offsets]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert times[0] == window.start and times[-1] == window.end
    with pytest.raises(ValueError):
        long.at(CANONICAL_SECONDS + 1)


def test_same_seed_same_month_and_a_different_seed_another() -> None:
    window = choose_window(NOW)
    a, b = build_scenario(7, 3000, window), build_scenario(7, 3000, window)
    assert a == b
    c = build_scenario(8, 3000, window)
    assert [e.raw for e in c.events] != [e.raw for e in a.events]
    assert len(a.events) == 3000


def test_same_seed_same_statement_whatever_the_window_in_the_period() -> None:
    """Only the order of instants matters to the rules, and scaling keeps it."""
    first = build_scenario(11, 2500, choose_window(NOW))
    later = build_scenario(11, 2500, choose_window(datetime(2026, 11, 19, 6, tzinfo=UTC)))
    assert first.window.length != later.window.length
    assert content_hash(offline_statement(first)) == content_hash(offline_statement(later))


def test_every_licence_passes_the_registry_rules_and_round_trips_as_a_case() -> None:
    scenario = build_scenario(7, 1000, choose_window(NOW))
    for spec in [*scenario.licence_specs(), *scenario.expected_licence_specs()]:
        licence = parse_licence(spec)
        rules.check_licence(licence)
        assert parse_licence(licence_spec(licence)) == licence
    currencies = {lic["currency"] for lic in scenario.licences}
    assert currencies == {"USD", "EUR", "GBP", "JPY"}
    assert len(scenario.talents) == 12 and len({a for t in scenario.talents for a, _ in t.avatars})
    assert {v.transport for v in scenario.vendors} == {KAFKA, GRPC, HTTP}
    # One vendor of each SDK transport; the poisoner writes to Kafka itself, as before.
    assert [v.vendor_id for v in scenario.vendors if v.transport == HTTP] == ["VEN-MUSEAI"]
    assert hostile_vendor.poisoner(scenario).vendor_id == "VEN-PIXELFORGE"


def test_a_vendors_transport_does_not_change_its_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """MuseAI moved from Kafka to the TypeScript SDK over HTTP: the same month, event for
    event (only the way its events travel changed)."""
    window = choose_window(NOW)
    over_http = build_scenario(7, 3000, window)
    kafka_only = tuple(
        scenario_module.Vendor(v.vendor_id, v.name, KAFKA, v.short) if v.transport == HTTP else v
        for v in scenario_module.VENDORS
    )
    monkeypatch.setattr(scenario_module, "VENDORS", kafka_only)
    over_kafka = build_scenario(7, 3000, window)
    assert [v.transport for v in over_kafka.vendors].count(HTTP) == 0
    assert over_http.events == over_kafka.events


def test_the_month_has_its_misuse_and_corner_cases() -> None:
    scenario = build_scenario(7, 4000, choose_window(NOW))
    document = offline_statement(scenario)
    violations = {v["kind"]: v["count"] for v in document["violations"]}  # type: ignore[index]
    for kind in (
        "FORBIDDEN_CATEGORY",
        "LICENCE_SUSPENDED",
        "USE_AFTER_REVOCATION",
        "USE_AFTER_EXPIRY",
        "TERRITORY_NOT_LICENSED",
        "CHANNEL_NOT_LICENSED",
        "QUOTA_EXCEEDED",
        "QUOTA_NEAR",
        "DUPLICATE_CONFLICT",
        "UNREPORTED_RENDER",
    ):
        assert violations.get(kind, 0) >= 1, kind
    dlq = {d["reason"]: d["count"] for d in document["dlq"]}  # type: ignore[index]
    assert dlq == {
        "BAD_SIGNATURE": 1,
        "CURRENCY_MISMATCH": 1,
        "UNKNOWN_LICENCE": 1,
        "VENDOR_MISMATCH": 1,
    }
    licences = {x["licence_id"]: x for x in document["licences"]}  # type: ignore[index]
    assert Decimal(licences["LIC-DEV-CASTLY"]["minimum_guarantee_topup"]) > 0
    assert Decimal(licences["LIC-ELIN-PIXEL"]["advance_recouped"]) > 0
    excluded = Counter[str]()
    for lic in licences.values():
        for key, value in lic["excluded"].items():
            excluded[key] += value
    assert all(excluded[k] > 0 for k in ("duplicates", "ivt", "non_viewable", "retracted"))
    payees = {(p["payee_id"], p["currency"]): p for p in document["payees"]}  # type: ignore[index]
    assert Decimal(payees[("TAL-LEA", "EUR")]["carried_forward"]) > 0


def test_the_sdk_publishes_exactly_the_scripted_payloads() -> None:
    scenario = build_scenario(3, 600, choose_window(NOW))
    for event in scenario.events:
        message = usage_pb2.UsageEvent.FromString(sdk_event(event.raw).SerializeToString())
        assert parse_event(json_raw(message)) == parse_event(event.raw)
        assert isinstance(parse_event(event.raw), UsageEvent)


def test_expected_block_leaves_out_only_streaming_decisions() -> None:
    document = {
        "dlq": [{"reason": "BAD_SIGNATURE", "count": 2}, {"reason": "MALFORMED", "count": 1}]
    }
    forged = [Published(0, ATTACKER, {"event_id": "f"}, "", "DELIVERED")]
    assert without_streaming_only(document, streaming_rejections(forged)) == {
        "dlq": [{"reason": "BAD_SIGNATURE", "count": 1}, {"reason": "MALFORMED", "count": 1}]
    }
    rejected = Published(1, "VEN-CASTLY", {}, "", "REJECTED", "UNKNOWN_LICENCE", via=GRPC)
    duplicate = Published(2, "VEN-CASTLY", {}, "", "DUPLICATE", via=GRPC)
    forged_at_gateway = Published(3, "VEN-CASTLY", {}, "", "REJECTED", "BAD_SIGNATURE", via=GRPC)
    kafka_refused = Published(4, "VEN-DUBLY", {}, "", "REJECTED", "MSG_SIZE_TOO_LARGE")
    http_rejected = Published(5, "VEN-MUSEAI", {}, "", "REJECTED", "VENDOR_MISMATCH", via=HTTP)
    http_duplicate = Published(6, "VEN-MUSEAI", {}, "", "DUPLICATE", via=HTTP)
    assert rejected.replayable and rejected.stored and not rejected.streaming_only
    assert not duplicate.replayable and not duplicate.stored
    assert forged_at_gateway.streaming_only and forged_at_gateway.stored
    assert not kafka_refused.stored and not kafka_refused.replayable
    assert http_rejected.replayable and http_rejected.stored and not http_rejected.streaming_only
    assert not http_duplicate.replayable and not http_duplicate.stored
    assert forged[0].streaming_only and not forged[0].replayable and forged[0].stored


def test_summary_rows_come_from_the_statement_and_the_payouts() -> None:
    from residuals.demo.finance import Paid

    scenario = build_scenario(7, 2000, choose_window(NOW))
    document = offline_statement(scenario)
    payable = [p for p in document["payees"] if Decimal(p["payable"]) > 0]  # type: ignore[union-attr]
    paid = [
        Paid(f"po-{i}", p["payee_id"], p["currency"], Decimal(p["payable"]), "PAID", "ref")
        for i, p in enumerate(payable)
    ]
    talents, agents = talent_rows(scenario, document, paid)
    assert {r.who for r in talents} == {t.talent_id for t in scenario.talents}
    isaac = next(r for r in talents if r.who == "TAL-ISAAC")
    estate = next(p for p in document["payees"] if p["payee_id"] == "EST-ISAAC")  # type: ignore[union-attr]
    assert isaac.paid == Decimal(estate["payable"])
    assert {r.who for r in agents} <= {"AGT-STARLINE", "AGT-NORTHBOUND"}
    assert sum(r.paid for r in [*talents, *agents]) == sum(p.amount for p in paid)


def test_live_view_writes_log_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = LiveView(out, interval=0)
    frame = Frame(
        title="t",
        day=3.5,
        published=10,
        total=20,
        rates=(5.0, 4.0, 3.0),
        progress=Progress(rated=8, stored=7),
        avatars={},
        alerts=[],
        alert_count=2,
        notes=[],
        metrics=[],
    )
    view.show(frame)
    text = out.getvalue()
    assert "day  3.5/30" in text and "published 10/20" in text and "ledgered 7" in text
    assert "\x1b[" not in text


def test_a_window_is_refused_when_too_short() -> None:
    window = Window(Period(2026, 11), NOW - timedelta(days=3), NOW)
    assert window.canonical_day(NOW) == pytest.approx(30.0)
    assert window.canonical_day(NOW - timedelta(days=3)) == 0.0


def test_terminal_frames_never_wrap() -> None:
    from residuals.demo.live import fit, wrap

    assert fit("\x1b[1mhello\x1b[0m world", 8) == "\x1b[1mhello\x1b[0m w"
    assert fit("abcdefghij", 5) == "abcd"
    lines = wrap(" SDK clients: ", ["PixelForge 1,231", "MuseAI 617", "Castly 240 1 rejected"], 36)
    assert lines == [
        " SDK clients: PixelForge 1,231",
        "              MuseAI 617",
        "              Castly 240 1 rejected",
    ]
    assert all(len(line) < 36 for line in lines)
