"""Kafka records -> notify events (residuals.notify.sources), and sealed secrets."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from residuals.codecs.timestamps import set_timestamp
from residuals.domain.notifications import message_id
from residuals.notify import sources
from residuals.notify.secrets import SecretBox, SecretError
from residuals.notify.statements import statement_events
from residuals.payouts.directory import ClosedStatement, StatementParty
from residuals.v1 import alerts_pb2, approvals_pb2, common_pb2, licence_pb2, payouts_pb2, usage_pb2

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FALLBACK = datetime(2026, 5, 2, tzinfo=UTC)


def _alert(**fields: object) -> alerts_pb2.Alert:
    values: dict[str, object] = {
        "alert_id": "AL-1",
        "kind": common_pb2.VIOLATION_KIND_TERRITORY_NOT_LICENSED,
        "licence_id": "LIC-1",
        "talent_id": "TAL-1",
        "vendor_id": "VEN-1",
        "event_ids": [f"E{i}" for i in range(50)],
        "detail": "territory XX\x1b[2J",
    }
    alert = alerts_pb2.Alert(**(values | fields))  # type: ignore[arg-type]
    set_timestamp(alert.raised_at, T0)
    return alert


def _data(event: object) -> dict[str, object]:
    return json.loads(event.body())["data"]  # type: ignore[attr-defined, no-any-return]


def test_alert_kinds_map_to_types_with_severity_and_audience() -> None:
    (event,) = sources.alert_events(_alert(), fallback=FALLBACK, origin_at=T0)
    assert event.event_type == "alert.raised" and event.identity == "AL-1"
    assert event.severity == common_pb2.SEVERITY_HIGH  # the kind's default when unset
    assert event.audience.vendor_id == "VEN-1" and event.audience.talent_ids == ("TAL-1",)
    assert event.occurred_at == T0 and event.origin_at == T0
    data = _data(event)
    assert len(data["event_ids"]) == 20 and data["event_count"] == 50  # type: ignore[arg-type]
    assert data["kind"] == "TERRITORY_NOT_LICENSED" and data["severity"] == "HIGH"
    assert "\x1b" not in event.body().decode()
    near = sources.alert_events(
        _alert(kind=common_pb2.VIOLATION_KIND_QUOTA_NEAR), fallback=FALLBACK
    )
    exceeded = sources.alert_events(
        _alert(kind=common_pb2.VIOLATION_KIND_QUOTA_EXCEEDED, severity=common_pb2.SEVERITY_LOW),
        fallback=FALLBACK,
    )
    assert near[0].event_type == "quota.near" and near[0].severity == 0
    assert exceeded[0].event_type == "quota.exceeded"


def test_alerts_without_usable_ids_are_unusable() -> None:
    with pytest.raises(sources.Unusable):
        sources.alert_events(_alert(alert_id=""), fallback=FALLBACK)
    with pytest.raises(sources.Unusable):
        sources.alert_events(_alert(talent_id="a,b"), fallback=FALLBACK)
    with pytest.raises(sources.Unusable):
        sources.alert_events(_alert(vendor_id="x" * 500), fallback=FALLBACK)
    with pytest.raises(sources.Unusable):
        sources.decode(sources.ALERT, None)
    with pytest.raises(sources.Unusable):
        sources.decode(sources.ALERT, b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")


def test_a_licence_snapshot_gives_one_event_per_change_with_stable_ids() -> None:
    licence = licence_pb2.Licence(licence_id="LIC-1", talent_id="TAL-1", vendor_id="VEN-1")
    open_window = licence.suspensions.add(suspension_id="S-1", reason="auto", automatic=True)
    set_timestamp(open_window.starts_at, T0)
    ended = licence.suspensions.add(suspension_id="S-0", reinstated_by="p-1")
    set_timestamp(ended.starts_at, T0 - timedelta(days=2))
    set_timestamp(ended.ends_at, T0 - timedelta(days=1))
    scheduled = licence.suspensions.add(suspension_id="S-2")  # an end not by a person
    set_timestamp(scheduled.starts_at, T0)
    set_timestamp(scheduled.ends_at, T0 + timedelta(days=1))
    licence.versions.add(version=1)
    events = sources.licence_events(licence, fallback=FALLBACK)
    assert sorted((e.event_type, e.identity) for e in events) == [
        ("licence.reinstated", "S-0"),
        ("licence.suspended", "S-0"),
        ("licence.suspended", "S-1"),
        ("licence.suspended", "S-2"),
    ]
    revoked = licence.versions.add(version=2, wind_down_days=3)
    set_timestamp(revoked.revoked_at, T0)
    again = sources.licence_events(licence, fallback=FALLBACK)
    assert {e.message_id for e in events} < {e.message_id for e in again}
    (last,) = [e for e in again if e.event_type == "licence.revoked"]
    assert last.identity == "LIC-1" and last.occurred_at == T0
    assert all(e.audience.talent_ids == ("TAL-1",) for e in again)


def test_approvals_requested_and_decided_per_revision() -> None:
    approval = approvals_pb2.Approval(
        approval_id="AP-1",
        talent_id="TAL-1",
        vendor_id="VEN-1",
        status=approvals_pb2.APPROVAL_STATUS_PENDING,
        revision=1,
    )
    (requested,) = sources.approval_events(approval, fallback=FALLBACK)
    assert requested.event_type == "approval.requested" and requested.identity == "AP-1"
    approval.status, approval.revision = approvals_pb2.APPROVAL_STATUS_DENIED, 3
    (decided,) = sources.approval_events(approval, fallback=FALLBACK)
    assert decided.event_type == "approval.decided" and decided.identity == "AP-1:3"
    assert _data(decided)["status"] == "DENIED"
    approval.status = 0  # type: ignore[assignment]
    assert sources.approval_events(approval, fallback=FALLBACK) == []


def test_payouts_paid_or_failed_reach_the_payee_only() -> None:
    event = payouts_pb2.PayoutEvent(
        payout=payouts_pb2.Payout(
            payout_id="PO-1",
            payee_id="PAY-1",
            state=payouts_pb2.PAYOUT_STATE_FAILED,
            amount=common_pb2.Money(currency_code="JPY", units=-3, nanos=-500_000_000),
        ),
        sequence=9,
    )
    (failed,) = sources.payout_events(event, fallback=FALLBACK)
    assert failed.event_type == "payout.failed" and failed.identity == "PO-1:9"
    assert failed.audience.vendor_id == ""
    assert failed.audience.talent_ids == ("PAY-1",)
    assert _data(failed)["amount"] == "-3.5"
    event.payout.state = payouts_pb2.PAYOUT_STATE_PENDING
    assert sources.payout_payee(event) is None
    assert sources.payout_events(event, fallback=FALLBACK) == []


def test_a_dead_letter_is_a_rejection_row_and_a_vendor_only_event() -> None:
    letter = usage_pb2.DeadLetter(
        reason=common_pb2.REJECT_REASON_BAD_SIGNATURE,
        detail="bad\x00sig",
        vendor_id="VEN-1",
        event_id="EV-1",
        original=b"\x00secret bytes",
        source_topic="residuals.usage.v1",
        source_partition=1,
        source_offset=77,
    )
    row, event = sources.rejection(
        letter, dlq_topic="residuals.usage.dlq.v1", dlq_partition=2, dlq_offset=5, fallback=FALLBACK
    )
    assert event.event_type == "usage.rejected" and event.identity == "residuals.usage.dlq.v1:2:5"
    assert event.audience.vendor_id == "VEN-1" and event.audience.talent_ids == ()
    assert (
        row.message_id
        == event.message_id
        == message_id("usage.rejected", "residuals.usage.dlq.v1:2:5")
    )
    assert row.original_bytes == 13
    assert row.original_sha256 == hashlib.sha256(b"\x00secret bytes").hexdigest()
    assert (row.dlq_partition, row.dlq_offset) == (2, 5) and row.detail == "bad\\x00sig"
    body = event.body()
    assert b"secret" not in body and b"BAD_SIGNATURE" in body
    assert event.occurred_at == FALLBACK  # no received_at: the record's time
    anonymous, _ = sources.rejection(
        usage_pb2.DeadLetter(reason=999),  # type: ignore[arg-type]
        dlq_topic="t",
        dlq_partition=0,
        dlq_offset=0,
        fallback=FALLBACK,
    )
    assert anonymous.vendor_id == "" and anonymous.reason == 0


def test_statement_ready_goes_to_each_talent_and_vendor_once() -> None:
    statement = ClosedStatement("ST-1", "2026-04", "f" * 64, T0)
    parties = [
        StatementParty("LIC-1", "TAL-1", "VEN-1"),
        StatementParty("LIC-2", "TAL-1", "VEN-2"),
        StatementParty("LIC-3", "TAL-2", "VEN-1"),
    ]
    events = statement_events(statement, parties)
    assert sorted(e.identity for e in events) == [
        "ST-1:talent:TAL-1",
        "ST-1:talent:TAL-2",
        "ST-1:vendor:VEN-1",
        "ST-1:vendor:VEN-2",
    ]
    (ven1,) = [e for e in events if e.identity == "ST-1:vendor:VEN-1"]
    assert ven1.audience.vendor_id == "VEN-1" and ven1.audience.talent_ids == ()
    assert _data(ven1)["licence_ids"] == ["LIC-1", "LIC-3"]


# --- secrets ---------------------------------------------------------------------------


def test_secrets_are_sealed_with_a_fresh_nonce_and_open_again() -> None:
    box = SecretBox(b"\x01" * 32)
    one, two = box.seal("whsec_abc"), box.seal("whsec_abc")
    assert one.startswith("v1:") and one != two and "whsec_abc" not in one
    assert box.open(one) == box.open(two) == "whsec_abc"
    with pytest.raises(SecretError):
        SecretBox(b"\x02" * 32).open(one)
    tampered = "v1:" + base64.b64encode(b"\x00" * 40).decode()
    with pytest.raises(SecretError):
        box.open(tampered)
    with pytest.raises(SecretError):
        SecretBox(None).open(one)  # sealed, but no key now: refused, never garbage
    assert "whsec" not in repr(box)


def test_without_a_key_secrets_are_stored_marked_plain() -> None:
    box = SecretBox(None)
    assert box.seal("whsec_x") == "plain:whsec_x" and box.open("plain:whsec_x") == "whsec_x"
    assert SecretBox(b"\x01" * 32).open("plain:whsec_x") == "whsec_x"  # a key turned on later
    with pytest.raises(SecretError):
        box.open("whsec_x")
    with pytest.raises(ValueError):
        SecretBox(b"short")
    assert SecretBox.from_setting(base64.b64encode(b"k" * 32).decode()).sealing
