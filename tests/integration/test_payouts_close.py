"""Period close, journal, payouts and reconciliation against a real PostgreSQL database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from residuals.domain import journal
from residuals.domain.closing import content_hash, with_advance_outstanding
from residuals.domain.payouts import PayoutState
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.payouts import store
from residuals.payouts.close import CloseRefused, close_period
from residuals.payouts.paying import pay_payouts
from residuals.payouts.rails import FileRail, TestRail
from residuals.replay.casefile import load_case
from tests.support.payouts import CASE, DEC, NOV, OCT, POLICY, MemoryEvents, World


def _november(events: MemoryEvents, renders: int) -> None:
    for i in range(renders):
        events.add({"event_id": f"nov-{i}", "kind": "RENDER", "vendor_id": "VEN-ACME",
                    "licence_id": "LIC-GUS-ACME", "avatar_id": "AVA-GUS-1", "render_id": "n",
                    "occurred_at": f"2026-11-{i % 28 + 1:02d}T10:00:00Z",
                    "category": "corporate_training", "territory": "BR"})  # fmt: skip


def test_close_stores_exactly_the_offline_statement_once(world: World) -> None:
    case = load_case(CASE)
    oracle = compute_statement(OCT, case.licences, case.events(), thresholds=case.thresholds)
    first = world.close(OCT)
    assert not first.already_closed
    assert first.statement.document == oracle.to_document()
    assert first.statement.content_hash == content_hash(oracle.to_document())
    again = world.close(OCT)
    assert again.already_closed
    assert again.statement.content_hash == first.statement.content_hash
    with world.db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM statements").fetchone() == (1,)
        payouts = store.list_payouts(conn, period="2026-10")
        bal = store.balances(conn)
    assert [(p.payee_id, p.amount, p.state) for p in payouts] == [
        ("TAL-GUS", Decimal("115.65"), PayoutState.PENDING)
    ]
    # AGT-MO stays under the 25.00 threshold: its 9.44 is carried in the journal.
    assert journal.carried_in(bal) == {("AGT-MO", "USD"): Decimal("9.44")}
    assert bal[(journal.advance_outstanding("LIC-GUS-ACME"), "USD")] == 0
    assert world.reconcile(OCT).ok, world.reconcile(OCT).render()


def test_grace_period_order_and_dry_run(world: World) -> None:
    early = datetime(2026, 11, 3, 23, 0, tzinfo=UTC)
    with world.db.connection() as conn, pytest.raises(CloseRefused, match="2026-11-04"):
        close_period(conn, world.sources, OCT, policy=POLICY, closed_by="t", now=early)
    dry = world.close(OCT, dry_run=True)
    assert dry.dry_run and dry.payouts == 1
    with world.db.connection() as conn:
        assert store.get_statement(conn, "2026-10") is None
        assert conn.execute("SELECT count(*) FROM journal_entries").fetchone() == (0,)
    with world.db.connection() as conn:
        forced = close_period(conn, world.sources, OCT, policy=POLICY, closed_by="t", now=early,
                              force=True)  # fmt: skip
    assert forced.statement.content_hash == dry.statement.content_hash
    with pytest.raises(CloseRefused, match="close 2026-11 before 2026-12"):
        world.close(DEC)
    world.close(NOV)
    with pytest.raises(CloseRefused, match="before the last closed period"):
        world.close(Period(2026, 9))


def test_next_period_takes_carried_in_and_outstanding_advance_from_the_journal(
    world: World,
) -> None:
    world.close(OCT)
    _november(world.events, 40)  # 40 renders x 0.60 = 24.00
    nov = world.close(NOV)
    case = load_case(CASE)
    # Oracle: the advance was fully recouped in October, AGT-MO carries 9.44 in.
    lics = [with_advance_outstanding(lic, NOV, Decimal("0.00")) for lic in case.licences]
    oracle = compute_statement(
        NOV, lics, world.events.period_events(None, NOV), thresholds=case.thresholds,
        carried_in={("AGT-MO", "USD"): Decimal("9.44")},
    ).to_document()  # fmt: skip
    assert nov.statement.document == oracle
    acme = next(lic for lic in oracle["licences"] if lic["licence_id"] == "LIC-GUS-ACME")
    assert acme["advance_recouped"] == "0.00"
    agent = next(p for p in oracle["payees"] if p["payee_id"] == "AGT-MO")
    # 9.44 carried + 10 % of 24.00 less the 10 % fee = 2.16 -> 11.60, still under 25.00
    assert (agent["earned"], agent["carried_forward"]) == ("2.16", "11.60")
    assert nov.statement.carried_in == {("AGT-MO", "USD"): Decimal("9.44")}
    assert world.reconcile(NOV).ok, world.reconcile(NOV).render()


def test_late_event_and_retraction_become_adjustments_in_the_next_period(world: World) -> None:
    closed = world.close(OCT)
    # after the close: one late October render and a retraction of an October view
    world.events.add({"event_id": "late-1", "kind": "RENDER", "vendor_id": "VEN-PIXEL",
                      "licence_id": "LIC-GUS-PIXEL", "avatar_id": "AVA-GUS-1", "render_id": "x",
                      "occurred_at": "2026-10-30T00:00:00Z", "category": "entertainment",
                      "territory": "US"})  # fmt: skip
    world.events.add({"event_id": "undo", "kind": "RETRACTION", "vendor_id": "VEN-PIXEL",
                      "original_event_id": "pixel-orphan",
                      "occurred_at": "2026-11-02T00:00:00Z"})  # fmt: skip
    _november(world.events, 3)
    nov = world.close(NOV)
    assert world.close(OCT).statement.content_hash == closed.statement.content_hash
    lines = {(a.licence_id, a.section, a.ref): a for a in nov.statement.adjustments}
    assert {a.adjusts_period for a in nov.statement.adjustments} == {"2026-10"}
    render = lines[("LIC-GUS-PIXEL", "line", "RENDER/v1/tier-1")]
    assert (render.units, render.amount) == (1, Decimal("0.25"))
    views = lines[("LIC-GUS-PIXEL", "line", "VIEW/v1/social")]
    assert (views.units, views.amount) == (-400, Decimal("-0.60"))
    # exact: October restated with everything = October as closed + adjustments
    case = load_case(CASE)
    restated = compute_statement(OCT, case.licences, world.events.period_events(None, OCT, NOV))
    pixel = next(
        x for x in restated.to_document()["licences"] if x["licence_id"] == "LIC-GUS-PIXEL"
    )
    before = next(x for x in closed.statement.document["licences"]
                  if x["licence_id"] == "LIC-GUS-PIXEL")  # fmt: skip
    delta = Decimal(pixel["vendor_invoice"]) - Decimal(before["vendor_invoice"])
    assert lines[("LIC-GUS-PIXEL", "settlement", "vendor_invoice")].amount == delta
    # the correction reaches TAL-GUS's November balance through the journal
    with world.db.connection() as conn:
        entry_ids = {
            e.entry_id for e in store.entries(conn, statement_id=nov.statement.statement_id)
        }
    assert "2026-11:adjustment:2026-10:LIC-GUS-PIXEL" in entry_ids
    for period in (OCT, NOV):
        report = world.reconcile(period)
        assert report.ok, report.render()
    # a third close finds nothing new to adjust
    assert world.close(DEC).statement.adjustments == ()


def test_a_retried_payout_is_paid_once(world: World, tmp_path: Path) -> None:
    world.close(OCT)
    rail = TestRail(fail_next=1)
    first = pay_payouts(world.db, rail, period="2026-10")
    assert [p.state for p in first.payouts] == [PayoutState.FAILED]
    assert first.payouts[0].failure_reason == "test rail: failure requested"
    second = pay_payouts(world.db, rail, period="2026-10")
    assert [(p.state, p.attempts) for p in second.payouts] == [(PayoutState.PAID, 2)]
    assert pay_payouts(world.db, rail, period="2026-10").payouts == ()
    assert list(rail.paid) == ["payout:2026-10:TAL-GUS:USD"]
    with world.db.connection() as conn:
        states = [r[0] for r in conn.execute(
            "SELECT state FROM payout_events ORDER BY sequence")]  # fmt: skip
        bal = store.balances(conn)
    assert states == ["PENDING", "FAILED", "RETRIED", "PAID"]
    assert bal[(journal.PAYMENTS_SENT, "USD")] == Decimal("-115.65")
    assert world.reconcile(OCT).ok, world.reconcile(OCT).render()
    # The file rail writes one instruction per key, and again is a no-op.
    files = FileRail(tmp_path)
    planned = second.payouts[0]
    from residuals.payouts.rails import PaymentInstruction

    instruction = PaymentInstruction(planned.idempotency_key, planned.payout_id, "TAL-GUS",
                                     "USD", planned.amount, "2026-10")  # fmt: skip
    assert files.pay(instruction) == files.pay(instruction)
    assert len(list(tmp_path.iterdir())) == 1


def test_journal_is_append_only_and_every_entry_must_balance(world: World) -> None:
    world.close(OCT)
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="does not balance"),
        world.db.connection() as conn,
    ):
        conn.execute(
            "INSERT INTO journal_entries (entry_id, period, kind, currency)"
            " VALUES ('bad', '2026-10', 'statement', 'USD')"
        )
        conn.execute("INSERT INTO journal_postings VALUES ('bad', 1, 'a', 10), ('bad', 2, 'b', -9)")
    refused = (
        "UPDATE journal_postings SET amount = amount + 1",
        "DELETE FROM statement_lines",
        "UPDATE statements SET closed_by = 'x'",
    )
    for sql in refused:
        # The service's role may not even try; the tables' owner is stopped by the triggers.
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            world.db.connection() as conn,
        ):
            conn.execute(sql)
        with (
            pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"),
            psycopg.connect(world.owner) as conn,
        ):
            conn.execute(sql)


def test_reconcile_names_a_corrupted_ledger_row(world: World) -> None:
    world.close(OCT)
    with psycopg.connect(world.owner) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")  # bypass the triggers
        conn.execute(
            "UPDATE journal_postings SET amount = amount - 1 WHERE entry_id ="
            " '2026-10:statement:LIC-GUS-PIXEL' AND account = 'payee_payable:TAL-GUS'"
        )
    report = world.reconcile(OCT)
    assert not report.ok
    failed = {c.name: c for c in report.checks if not c.ok}
    assert "every journal entry balances" in failed
    assert "2026-10:statement:LIC-GUS-PIXEL" in failed["every journal entry balances"].detail
    assert (
        "payee_payable:TAL-GUS"
        in failed["journal equals the statement (account by account)"].detail
    )
    assert "FAIL" in report.render()


def test_reconcile_detects_stored_events_that_no_longer_give_the_statement(
    world: World,
) -> None:
    world.close(OCT)
    world.events.rows.pop(0)  # an accepted event vanished from the ledger
    report = world.reconcile(OCT)
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["statement equals compute_statement on the stored events"]
    assert "LIC-GUS-ACME line RENDER/v1/tier-1" in failed[0].detail
