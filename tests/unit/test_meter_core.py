"""The meter's per-record decisions (residuals.meter.core), without Kafka.

Covers the streaming-only checks, the order of the validation checks, identity (duplicates,
conflicts, retractions) and the exactly-once bookkeeping: what a record writes, and what
happens when it is delivered again after a crash at every point of its state writes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from residuals.codecs.signing import VerifyingKey, sign_event, signing_key_record
from residuals.codecs.usage import from_domain
from residuals.domain.vocabulary import Violation
from residuals.meter import messages
from residuals.meter.core import Meter, Record
from residuals.meter.state import PeriodCounters, counters_key, identity_key, suspension_key
from residuals.v1 import alerts_pb2, common_pb2, usage_pb2
from tests.support.builders import ev, licence, parsed
from tests.support.meter_core import KEY, OTHER, Keys, State, record

Outcome = usage_pb2.RatedUsage.Outcome


def meter(**licence_overrides: Any) -> Meter:
    lic = licence(**licence_overrides)
    return Meter({lic.licence_id: lic}, Keys())


def dead_reason(decision: Any) -> str:
    assert decision.dead is not None, decision
    return str(common_pb2.RejectReason.Name(decision.dead.reason)).removeprefix("REJECT_REASON_")


# --- accepted uses and what they write ---------------------------------------------------------


def test_an_in_scope_render_is_priced_and_writes_identity_then_counters() -> None:
    m, state = meter(), State()
    raw = ev("RENDER")
    decision = m.process(record(raw), state)
    assert decision.outcome == "accepted"
    rated = decision.rated
    assert rated is not None
    assert rated.outcome == Outcome.OUTCOME_ACCEPTED
    assert (rated.units_priced, rated.units_held, rated.tier) == (1, 0, 1)
    assert rated.estimated_amount == "1.00" and rated.currency_code == "USD"
    assert rated.authenticated_vendor_id == "VEN-1"
    assert rated.signed.key_id == "k1" and rated.event.event_id == raw["event_id"]
    period = str(parsed(raw).occurred_at.strftime("%Y-%m"))
    assert state.writes == [
        identity_key("VEN-1", raw["event_id"]),
        counters_key("LIC-1", period),
    ]
    assert PeriodCounters.decode(state.data[state.writes[-1]]).billed_renders == 1


def test_tiers_continue_across_records_of_a_period() -> None:
    m, state = meter(), State()
    amounts = [
        m.process(record(ev("RENDER", occurred_at="2026-10-05T10:00:00Z"), i), state)
        for i in range(12)
    ]
    assert [d.rated.tier for d in amounts if d.rated] == [1] * 10 + [2, 2]
    assert amounts[-1].rated is not None and amounts[-1].rated.estimated_amount == "0.50"


def test_excluded_view_has_no_money() -> None:
    decision = meter().process(record(ev("VIEW", ivt=True, quantity=10)), State())
    assert decision.rated is not None
    assert decision.rated.outcome == Outcome.OUTCOME_EXCLUDED
    assert decision.rated.exclusion == usage_pb2.RatedUsage.EXCLUSION_IVT


# --- identity ------------------------------------------------------------------------------


def test_exact_resend_is_a_duplicate_and_writes_nothing() -> None:
    m, state = meter(), State()
    raw = ev("RENDER")
    m.process(record(raw, 0), state)
    writes = list(state.writes)
    decision = m.process(record(raw, 7), state)
    assert decision.outcome == "duplicate" and state.writes == writes
    assert decision.rated is not None and decision.rated.outcome == Outcome.OUTCOME_DUPLICATE
    assert decision.alerts == []


def test_conflicting_resend_raises_one_deterministic_alert() -> None:
    m, state = meter(), State()
    raw = ev("RENDER")
    m.process(record(raw, 0), state)
    changed = dict(raw, territory="FR")
    first = m.process(record(changed, 1), state)
    again = m.process(record(changed, 2), state)
    assert first.rated is not None and first.rated.outcome == Outcome.OUTCOME_CONFLICT
    (alert,) = first.alerts
    assert alert.kind == common_pb2.VIOLATION_KIND_DUPLICATE_CONFLICT
    assert (
        alert.alert_id
        == again.alerts[0].alert_id
        == messages.event_alert_id("VEN-1", raw["event_id"], Violation.DUPLICATE_CONFLICT)
    )


def test_retraction_of_a_known_event_and_a_second_retraction() -> None:
    m, state = meter(), State()
    original = ev("RENDER")
    m.process(record(original, 0), state)
    retraction = ev(
        "RETRACTION",
        licence_id=None,
        avatar_id=None,
        render_id=None,
        category=None,
        territory=None,
        original_event_id=original["event_id"],
    )
    first = m.process(record(retraction, 1, routing="LIC-1"), state)
    assert first.rated is not None and first.rated.outcome == Outcome.OUTCOME_RETRACTED
    assert first.rated.retracted_event_id == original["event_id"]
    assert first.rated.currency_code == "USD"
    second = m.process(record(dict(retraction, event_id="x-2"), 2, routing="LIC-1"), state)
    assert second.rated is not None and second.rated.outcome == Outcome.OUTCOME_DUPLICATE
    unknown = m.process(
        record(dict(retraction, event_id="x-3", original_event_id="nope"), 3), state
    )
    # Unknown here: forwarded, the ledger resolves it against every stored event.
    assert unknown.rated is not None and unknown.rated.outcome == Outcome.OUTCOME_RETRACTED
    of_retraction = m.process(
        record(dict(retraction, event_id="x-4", original_event_id="x-2x"), 4), state
    )
    assert of_retraction.rated is not None
    retracting_a_retraction = m.process(
        record(dict(retraction, event_id="x-5", original_event_id=retraction["event_id"]), 5),
        state,
    )
    assert dead_reason(retracting_a_retraction) == "UNKNOWN_ORIGINAL"


# --- exactly once under re-delivery ----------------------------------------------------------


def _without_times(rated: usage_pb2.RatedUsage | None) -> usage_pb2.RatedUsage:
    assert rated is not None
    copy = usage_pb2.RatedUsage()
    copy.CopyFrom(rated)
    copy.ClearField("rated_at")
    return copy


def test_redelivery_of_a_fully_applied_record_is_skipped() -> None:
    m, state = meter(), State()
    rec = record(ev("RENDER"), 5)
    m.process(rec, state)
    writes = list(state.writes)
    decision = m.process(rec, state)
    assert decision.skipped and decision.rated is None and state.writes == writes


@pytest.mark.parametrize("kept", [0, 1])
def test_redelivery_after_a_crash_mid_write_rates_exactly_as_the_first_time(kept: int) -> None:
    """A crash after ``kept`` of the record's state writes reached the changelog."""
    m, state = meter(), State()
    m.process(record(ev("RENDER", occurred_at="2026-10-02T00:00:00Z"), 0), state)
    rec = record(ev("RENDER", occurred_at="2026-10-02T01:00:00Z"), 1)
    before = dict(state.data)
    first = m.process(rec, state)
    record_writes = state.writes[-2:]
    survived = {k: state.data[k] for k in record_writes[:kept]}
    state.data = {**before, **survived}
    again = m.process(rec, state)
    assert not again.skipped
    assert _without_times(again.rated) == _without_times(first.rated)
    assert PeriodCounters.decode(state.data[record_writes[-1]]).billed_renders == 2


def test_suspension_set_by_a_record_is_not_seen_by_its_own_redelivery() -> None:
    m, state = meter(), State()
    rec = record(ev("RENDER", category="political"), 3)
    first = m.process(rec, state)
    assert first.rated is not None and first.rated.outcome == Outcome.OUTCOME_HELD
    assert first.rated.violation == common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY
    assert first.alerts[0].suspended_licence
    # Crash after the suspension write, before the counters write.
    ckey = state.writes[-1]
    assert state.writes[-2] == suspension_key("LIC-1")
    del state.data[ckey]
    again = m.process(rec, state)
    assert again.rated is not None
    assert again.rated.violation == common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY
    later = m.process(record(ev("RENDER"), 4), state)
    assert later.rated is not None
    assert later.rated.violation == common_pb2.VIOLATION_KIND_LICENCE_SUSPENDED


# --- streaming-only and validation checks ------------------------------------------------------


def test_bad_signatures() -> None:
    m = meter()
    assert dead_reason(m.process(record(ev("RENDER"), tamper=True), State())) == "BAD_SIGNATURE"
    unknown = record(ev("RENDER"), key_id="k9")
    assert dead_reason(m.process(unknown, State())) == "BAD_SIGNATURE"
    wrong_key = record(ev("RENDER"), key_id="k1", private=OTHER)
    assert dead_reason(m.process(wrong_key, State())) == "BAD_SIGNATURE"
    claimed = record(ev("RENDER"))
    spoofed = replace(claimed, headers={"residuals-vendor": b"VEN-2"})
    decision = m.process(spoofed, State())
    assert dead_reason(decision) == "BAD_SIGNATURE" and decision.dead is not None
    assert decision.dead.original == claimed.value and decision.dead.source_topic == "usage"


def test_revoked_key_rejects_from_its_revocation_on() -> None:
    m = meter()
    revoked = signing_key_record("k1", "VEN-1", KEY)
    revoked.revoked_at.FromDatetime(datetime(2026, 10, 10, tzinfo=UTC))
    m.keys.keys["k1"] = VerifyingKey.from_proto(revoked)  # type: ignore[attr-defined]
    before = record(ev("RENDER", occurred_at="2026-10-09T00:00:00Z"))
    after = record(ev("RENDER", occurred_at="2026-10-11T00:00:00Z"))
    assert m.process(before, State()).outcome == "accepted"
    assert dead_reason(m.process(after, State())) == "BAD_SIGNATURE"


def test_window_size_and_payload_checks() -> None:
    m = meter()
    raw = ev("RENDER", occurred_at="2026-10-01T00:00:00Z")
    late = record(raw, received=datetime(2026, 11, 6, tzinfo=UTC))
    future = record(raw, received=datetime(2026, 9, 30, 23, 50, tzinfo=UTC))
    assert dead_reason(m.process(late, State())) == "TOO_LATE"
    assert dead_reason(m.process(future, State())) == "IN_FUTURE"
    ok = record(raw, received=datetime(2026, 11, 4, tzinfo=UTC))
    assert m.process(ok, State()).outcome == "accepted"
    huge = replace(ok, value=b"x" * (64 * 1024 + 1))
    assert dead_reason(m.process(huge, State())) == "OVERSIZED"
    junk = replace(ok, value=b"\xff\xff\xff")
    assert dead_reason(m.process(junk, State())) == "MALFORMED"


def test_validation_reasons_in_rule_order() -> None:
    m = meter()
    bad_quantity = usage_pb2.UsageEvent()
    bad_quantity.CopyFrom(from_domain(parsed(ev("VIEW"))))
    bad_quantity.quantity = 0
    signed = sign_event(bad_quantity, "k1", KEY)
    rec = record(ev("VIEW"))
    rec = replace(rec, value=signed.SerializeToString())
    assert dead_reason(m.process(rec, State())) == "INVALID_QUANTITY"
    unknown = record(ev("RENDER", licence_id="LIC-404"))
    assert dead_reason(m.process(unknown, State())) == "UNKNOWN_LICENCE"
    # VEN-2 signs an event naming VEN-1 (the licensee): the tenant is the key's vendor.
    impostor = record(ev("RENDER"), key_id="k2", private=OTHER)
    assert dead_reason(m.process(impostor, State())) == "VENDOR_MISMATCH"
    avatar = record(ev("RENDER", avatar_id="AVA-9"))
    assert dead_reason(m.process(avatar, State())) == "AVATAR_MISMATCH"
    currency = record(ev("AD_IMPRESSION", ad_revenue="1.00 EUR"))
    assert dead_reason(m.process(currency, State())) == "CURRENCY_MISMATCH"
    misrouted = record(ev("RENDER"), routing="LIC-OTHER")
    assert dead_reason(m.process(misrouted, State())) == "MALFORMED"


# --- alerts ----------------------------------------------------------------------------------


def test_quota_near_alert_is_one_per_licence_metric_and_period() -> None:
    m = meter(quotas=[{"metric": "RENDER", "limit": 5, "on_exceed": "block"}])
    state = State()
    alerts: list[alerts_pb2.Alert] = []
    outcomes = []
    for i in range(7):
        d = m.process(record(ev("RENDER", occurred_at=f"2026-10-03T0{i}:00:00Z"), i), state)
        alerts.extend(d.alerts)
        outcomes.append(d.outcome)
    kinds = [common_pb2.ViolationKind.Name(a.kind) for a in alerts]
    assert kinds == [
        "VIOLATION_KIND_QUOTA_NEAR",
        "VIOLATION_KIND_QUOTA_EXCEEDED",
        "VIOLATION_KIND_QUOTA_EXCEEDED",
    ]
    assert alerts[0].alert_id == messages.quota_near_alert_id("LIC-1", "RENDER", "2026-10")
    assert outcomes == ["accepted"] * 5 + ["held", "held"]
    assert alerts[1].held_units == 1 and alerts[1].severity == common_pb2.SEVERITY_MEDIUM


# --- state expiry and the batch protocol -------------------------------------------------------


def test_expired_state_is_what_no_record_can_need() -> None:
    from residuals.meter.state import expired

    m, state = meter(), State()
    old = ev("RENDER", occurred_at="2026-10-02T00:00:00Z")
    new = ev("RENDER", occurred_at="2026-12-20T00:00:00Z")
    m.process(record(old, 0, partition=2), state)
    m.process(record(new, 1, partition=2), state)
    cutoff = datetime(2026, 12, 1, tzinfo=UTC)
    gone = expired(state.data.items(), cutoff)
    assert sorted(gone) == sorted(
        [(2, identity_key("VEN-1", old["event_id"])), (2, counters_key("LIC-1", "2026-10"))]
    )


class FakePublisher:
    """Records sends and barriers in order (no Kafka)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def send(self, topic: str, key: Any, value: Any, **kw: Any) -> None:
        self.log.append(("send", (topic, key, value, kw.get("partition", -1))))

    async def barrier(self) -> None:
        self.log.append(("barrier", None))


def test_a_batch_publishes_outputs_then_state_each_after_an_acknowledgement() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from residuals.meter.app import BatchRunner
    from residuals.meter.metrics import MeterMetrics

    publisher, store = FakePublisher(), {}
    runner = BatchRunner(
        meter(),
        publisher,  # type: ignore[arg-type]
        store,
        changelog_topic="changelog",
        rated_topic="rated",
        alerts_topic="alerts",
        dlq_topic="dlq",
        metrics=MeterMetrics(CollectorRegistry()),
        purge_every=0.0,
    )
    records = [
        record(ev("RENDER"), 0, partition=4),
        record(ev("RENDER", category="political"), 1, partition=4),
    ]
    asyncio.run(runner.run(records))
    steps = [(kind, item[0] if item else None) for kind, item in publisher.log]
    first_barrier = steps.index(("barrier", None))
    assert {t for _k, t in steps[:first_barrier]} == {"rated", "alerts"}
    writes = steps[first_barrier + 1 :]
    assert writes[: writes.index(("barrier", None))] == [("send", "changelog")] * 5
    assert all(
        item[3] == 4 for kind, item in publisher.log if kind == "send" and item[0] == "changelog"
    )
    assert len(store) == 4  # two identities, the suspension, the counters


def _runner(m: Any, publisher: FakePublisher, store: dict[bytes, bytes]) -> Any:
    from prometheus_client import CollectorRegistry

    from residuals.meter.app import BatchRunner
    from residuals.meter.metrics import MeterMetrics

    return BatchRunner(
        m,
        publisher,  # type: ignore[arg-type]
        store,
        changelog_topic="changelog",
        rated_topic="rated",
        alerts_topic="alerts",
        dlq_topic="dlq",
        metrics=MeterMetrics(CollectorRegistry()),
        purge_every=3600.0,
    )


class Exploding:
    """A meter with a defect that one record meets after writing state (a wrapper, not a
    subclass: compiled with mypyc, as ``bench/compiled.py`` builds it, ``Meter`` takes no
    interpreted subclasses)."""

    def __init__(self, bad_offset: int) -> None:
        lic = licence()
        self._meter = Meter({lic.licence_id: lic}, Keys())
        self.bad_offset = bad_offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)

    def process(self, record: Record, state: Any) -> Any:
        decision = self._meter.process(record, state)
        if record.offset == self.bad_offset:
            raise ZeroDivisionError("a defect")
        return decision


def test_a_record_the_meter_fails_on_is_dead_lettered_and_leaves_no_state() -> None:
    import asyncio

    publisher, store = FakePublisher(), {}
    runner = _runner(Exploding(bad_offset=1), publisher, store)
    records = [record(ev("RENDER"), 0), record(ev("RENDER"), 1), record(ev("RENDER"), 2)]
    decisions = asyncio.run(runner.run(records))
    assert [d.outcome for d in decisions] == ["accepted", "dead", "accepted"]
    assert dead_reason(decisions[1]) == "UNPROCESSABLE"
    assert "ZeroDivisionError: a defect" in decisions[1].dead.detail
    assert decisions[1].dead.original == records[1].value
    sent = [item[0] for kind, item in publisher.log if kind == "send"]
    assert sent.count("dlq") == 1 and sent.count("rated") == 2
    # The failed record's identity was rolled back: only the other two are in the state.
    identities = [k for k in store if k.startswith(identity_key("VEN-1", "")[:4])]
    assert len(identities) == 2
    # The third record was rated on counters without the failed one's render.
    assert decisions[2].rated is not None and decisions[2].rated.tier == 1


def test_an_output_too_large_for_kafka_becomes_a_dead_letter() -> None:
    import asyncio

    from residuals.meter import app

    publisher, store = FakePublisher(), {}
    runner = _runner(meter(), publisher, store)
    original = app.MAX_OUTPUT_BYTES
    app.MAX_OUTPUT_BYTES = 100  # every rated record is larger
    try:
        decisions = asyncio.run(runner.run([record(ev("RENDER"), 0)]))
    finally:
        app.MAX_OUTPUT_BYTES = original
    assert dead_reason(decisions[0]) == "UNPROCESSABLE"
    assert "OutputTooLarge" in decisions[0].dead.detail
    assert [item[0] for kind, item in publisher.log if kind == "send"] == ["dlq"]
    assert store == {}


def test_state_expiry_follows_trusted_time_and_never_runs_ahead_of_the_meter_clock() -> None:
    from residuals.meter.app import RETENTION

    lic = licence()
    m = Meter({lic.licence_id: lic}, Keys(), clock=FixedClock)
    runner = _runner(m, FakePublisher(), {})
    assert runner.purge_cutoff() is None
    far = record(ev("RENDER"), 0, received=FixedClock.moment + timedelta(days=30000))
    m.process(far, State())
    # A stamp (or broker time) far ahead cannot push expiry past the meter's own clock.
    assert runner.purge_cutoff() == FixedClock.moment - RETENTION


class FixedClock(datetime):
    moment = datetime(2026, 10, 20, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> FixedClock:  # type: ignore[override]
        return cls.moment  # type: ignore[return-value]
