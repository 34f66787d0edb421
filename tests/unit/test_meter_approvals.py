"""Per-use approval in the meter (docs/ROYALTY-RULES.md §5a): the approval registry over raw
records, the approval's render count in the partition's state, and its exactly-once
bookkeeping when a record is delivered again after a crash."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from residuals.codecs import approvals as approval_codec
from residuals.codecs.licences import InvalidRecord
from residuals.domain.approvals import Approval
from residuals.meter.core import Decision, Meter
from residuals.meter.lookups import ApprovalRegistry
from residuals.meter.state import ApprovalUse, approval_key, counters_key, identity_key
from residuals.v1 import approvals_pb2, common_pb2, usage_pb2
from tests.support.builders import ev, licence
from tests.support.meter_core import Keys, State, record

Outcome = usage_pb2.RatedUsage.Outcome
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
APPROVAL = Approval("APR-1", "LIC-1", "product_demo", OCTOBER, max_renders=3)


def raw_record(
    approval: Approval = APPROVAL,
    *,
    status: int = approvals_pb2.APPROVAL_STATUS_APPROVED,
    revision: int = 1,
) -> bytes:
    message = approval_codec.to_proto(approval)
    message.status = status  # type: ignore[assignment]
    message.revision = revision
    return message.SerializeToString()


def table(*approvals: Approval) -> dict[bytes, bytes]:
    return {a.approval_id.encode(): raw_record(a) for a in approvals}


def meter(records: dict[bytes, bytes] | None = None) -> Meter:
    """LIC-1 with product demos needing approval, and the approvals of ``records``."""
    lic = licence(scope={"approval_required": ["product_demo"]})
    other = licence(licence_id="LIC-2")
    return Meter(
        {lic.licence_id: lic, other.licence_id: other},
        Keys(),
        approvals=ApprovalRegistry(records if records is not None else table(APPROVAL)),
    )


def render(n: int, **fields: Any) -> dict[str, Any]:
    return ev("RENDER", occurred_at=f"2026-10-05T{n:02d}:00:00Z", **fields)


def violation(decision: Decision) -> str:
    assert decision.rated is not None and decision.dead is None, decision
    return str(common_pb2.ViolationKind.Name(decision.rated.violation))


# --- the rule in the stream ----------------------------------------------------------------


def test_approved_renders_are_billed_up_to_max_renders_then_held_with_an_alert() -> None:
    m, state = meter(), State()
    decisions = [m.process(record(render(i, approval_id="APR-1"), i), state) for i in range(5)]
    assert [d.outcome for d in decisions] == ["accepted"] * 3 + ["held"] * 2
    assert violation(decisions[3]) == "VIOLATION_KIND_UNAPPROVED_USE"
    alert = decisions[3].alerts[0]
    assert alert.kind == common_pb2.VIOLATION_KIND_UNAPPROVED_USE
    assert alert.severity == common_pb2.SEVERITY_HIGH and not alert.suspended_licence
    assert "'APR-1' does not cover this use" in alert.detail
    assert ApprovalUse.decode(state.data[approval_key("LIC-1", "APR-1")]).used == 3
    # Held uses do not count; no suspension either.
    assert m.process(record(render(6), 6), state).outcome == "held"
    assert all(not d.alerts for d in decisions[:3])


def test_the_count_is_written_before_the_counters_and_only_when_it_changes() -> None:
    m, state = meter(), State()
    raw = render(1, approval_id="APR-1")
    m.process(record(raw, 0), state)
    assert state.writes == [
        identity_key("VEN-1", raw["event_id"]),
        approval_key("LIC-1", "APR-1"),
        counters_key("LIC-1", "2026-10"),
    ]
    assert ApprovalUse.decode(state.data[state.writes[1]]) == ApprovalUse(0, 0, 1)
    held = render(2)  # names no approval: held, the count untouched
    state.writes.clear()
    m.process(record(held, 1), state)
    assert approval_key("LIC-1", "APR-1") not in state.writes


def test_the_count_outlives_the_period() -> None:
    m, state = meter(), State()
    for i in range(3):
        m.process(record(render(i, approval_id="APR-1"), i), state)
    november = ev("RENDER", occurred_at="2026-11-02T00:00:00Z", approval_id="APR-1")
    assert violation(m.process(record(november, 3), state)) == "VIOLATION_KIND_UNAPPROVED_USE"


def test_a_view_naming_the_approval_uses_none_of_it() -> None:
    m, state = meter(table(Approval("APR-1", "LIC-1", "product_demo", OCTOBER))), State()
    view = ev("VIEW", occurred_at="2026-10-05T00:00:00Z", quantity=1000, approval_id="APR-1")
    assert m.process(record(view, 0), state).outcome == "accepted"
    assert approval_key("LIC-1", "APR-1") not in state.data
    assert m.process(record(render(1, approval_id="APR-1"), 1), state).outcome == "accepted"


@pytest.mark.parametrize(
    ("approval_id", "records"),
    [
        ("APR-404", table(APPROVAL)),
        ("APR-2", table(Approval("APR-2", "LIC-2", "product_demo", OCTOBER))),
        ("APR-1", {b"APR-1": raw_record(status=approvals_pb2.APPROVAL_STATUS_PENDING)}),
        ("APR-1", {b"APR-1": raw_record(status=approvals_pb2.APPROVAL_STATUS_DENIED)}),
        ("APR-1", table(Approval("APR-1", "LIC-1", "product_demo", OCTOBER.replace(day=20)))),
        ("APR-1", {b"APR-1": b"\xff not an approval"}),
    ],
    ids=["unknown", "another-licence", "pending", "denied", "outside-window", "garbage"],
)
def test_a_use_without_a_live_approval_is_held_not_dead_lettered(
    approval_id: str, records: dict[bytes, bytes]
) -> None:
    m, state = meter(records), State()
    decision = m.process(record(render(1, approval_id=approval_id), 0), state)
    assert decision.outcome == "held"
    assert violation(decision) == "VIOLATION_KIND_UNAPPROVED_USE"
    assert [a.kind for a in decision.alerts] == [common_pb2.VIOLATION_KIND_UNAPPROVED_USE]
    assert approval_key("LIC-1", approval_id) not in state.data


def test_an_approval_granted_later_counts_from_the_next_event() -> None:
    records: dict[bytes, bytes] = {
        b"APR-1": raw_record(status=approvals_pb2.APPROVAL_STATUS_PENDING)
    }
    m, state = meter(records), State()
    assert m.process(record(render(1, approval_id="APR-1"), 0), state).outcome == "held"
    records[b"APR-1"] = raw_record(revision=2)
    assert m.process(record(render(2, approval_id="APR-1"), 1), state).outcome == "accepted"


# --- exactly once --------------------------------------------------------------------------


@pytest.mark.parametrize("kept", [0, 1, 2])
def test_a_redelivery_after_a_crash_mid_write_counts_the_render_once(kept: int) -> None:
    """A crash after ``kept`` of the record's three writes (identity, approval count,
    counters) reached the changelog; the record is delivered again."""
    m, state = meter(), State()
    for i in range(2):
        m.process(record(render(i, approval_id="APR-1"), i), state)
    rec = record(render(2, approval_id="APR-1"), 2)
    before = dict(state.data)
    first = m.process(rec, state)
    writes = state.writes[-3:]
    assert writes[1] == approval_key("LIC-1", "APR-1")
    state.data = {**before, **{k: state.data[k] for k in writes[:kept]}}
    again = m.process(rec, state)
    assert not again.skipped and again.outcome == first.outcome == "accepted"
    assert ApprovalUse.decode(state.data[writes[1]]).used == 3
    # The approval is now used up: the next render is held.
    later = m.process(record(render(3, approval_id="APR-1"), 3), state)
    assert violation(later) == "VIOLATION_KIND_UNAPPROVED_USE"
    assert m.process(rec, state).skipped


def test_a_held_render_redelivered_after_a_crash_stays_held() -> None:
    m, state = meter(), State()
    for i in range(3):
        m.process(record(render(i, approval_id="APR-1"), i), state)
    raw = render(3, approval_id="APR-1")
    rec = record(raw, 3)
    before = dict(state.data)
    first = m.process(rec, state)
    ikey = identity_key("VEN-1", raw["event_id"])
    state.data = {**before, ikey: state.data[ikey]}  # crashed before its counters write
    again = m.process(rec, state)
    assert again.outcome == first.outcome == "held"


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_serves_approved_records_only() -> None:
    registry = ApprovalRegistry(
        {
            **table(APPROVAL),
            b"APR-P": raw_record(
                Approval("APR-P", "LIC-1", "product_demo", OCTOBER),
                status=approvals_pb2.APPROVAL_STATUS_PENDING,
            ),
        }
    )
    assert registry.get("APR-1") == APPROVAL and registry["APR-1"] == APPROVAL
    assert registry.get("APR-P") is None and registry.get("") is None
    with pytest.raises(KeyError):
        registry["APR-P"]
    assert list(registry) == ["APR-1"] and len(registry) == 1


def test_the_registry_check_refuses_poison_and_stale_revisions() -> None:
    held: dict[bytes, bytes] = {}
    registry = ApprovalRegistry(held)

    def admit(key: bytes, value: bytes | None) -> None:
        registry.admit(key, value)  # the replica stores what its check accepts
        if value is not None:
            held[key] = value

    admit(b"APR-1", raw_record(revision=2))
    refused = {
        "tombstone": (b"APR-1", None, "(value)"),
        "garbage": (b"APR-1", b"\x0a\xff", "(record)"),
        "wrong key": (b"APR-9", raw_record(revision=3), "(key)"),
        "stale": (
            b"APR-1",
            raw_record(status=approvals_pb2.APPROVAL_STATUS_DENIED, revision=1),
            "revision",
        ),
    }
    for name, (key, value, field) in refused.items():
        with pytest.raises(InvalidRecord) as error:
            admit(key, value)
        assert error.value.field == field, name
    assert registry.get("APR-1") == APPROVAL
    admit(b"APR-1", raw_record(status=approvals_pb2.APPROVAL_STATUS_DENIED, revision=3))
    assert registry.get("APR-1") is None


def test_the_alerts_service_takes_the_meters_unapproved_use_alert_as_high() -> None:
    """The alert the meter raises is one the alerts service stores (and so streams on
    WatchAlerts): a known kind, HIGH, no suspension."""
    from residuals.alerts.store import Incoming, normalise

    decision = meter().process(record(render(1, approval_id="APR-404"), 0), State())
    (alert,) = decision.alerts
    stored = normalise(Incoming(alert), datetime.now(UTC))
    assert stored.kind == common_pb2.VIOLATION_KIND_UNAPPROVED_USE == 13
    assert stored.severity == common_pb2.SEVERITY_HIGH and not stored.suspended_licence
