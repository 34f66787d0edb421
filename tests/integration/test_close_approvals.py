"""The period close prices per-use approvals like the meter (docs/ROYALTY-RULES.md §5a):
approvals granted in the licensing tables, events naming them in the ledger's, render
counts carried from one closed period to the next, over the real stored-data adapters."""

from __future__ import annotations

from datetime import UTC, datetime

from residuals.domain.approvals import Approval
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.payouts import store
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period, restate_statement
from residuals.payouts.reconcile import reconcile
from residuals.platform.postgres import Database
from tests.support.builders import ev, licence
from tests.support.payouts import StoredRows, record_request, register

OCT, NOV = Period(2026, 10), Period(2026, 11)
LATER = datetime(2027, 6, 1, tzinfo=UTC)
APR = Approval("APR-1", "LIC-1", "product_demo", datetime(2026, 10, 1, tzinfo=UTC), None, 3)


def test_the_close_bills_approved_renders_and_carries_the_count_to_the_next_period(
    payouts_database: tuple[str, Database],
) -> None:
    dsn, db = payouts_database
    lic = licence(scope={"approval_required": ["product_demo"]})
    register(db, lic)
    record_request(dsn, APR)
    record_request(dsn, Approval("APR-P", "LIC-1", "product_demo", APR.valid_from), "pending")
    record_request(dsn, Approval("APR-D", "LIC-1", "product_demo", APR.valid_from), "denied")
    rows = StoredRows(dsn, [])
    for n in range(2):
        rows.event(ev(event_id=f"oct-{n}", approval_id="APR-1"))
    for approval_id in ("APR-P", "APR-D", "APR-404"):
        rows.event(ev(event_id=f"oct-{approval_id}", approval_id=approval_id), outcome="HELD")
    october = list(rows.expected)
    rows.event(ev(event_id="nov-0", occurred_at="2026-11-02T00:00:00Z", approval_id="APR-1"))
    rows.event(
        ev(event_id="nov-1", occurred_at="2026-11-03T00:00:00Z", approval_id="APR-1"),
        outcome="HELD",
    )

    sources = stored_sources()
    with db.connection() as conn:
        oct_closed = close_period(
            conn, sources, OCT, policy=ClosePolicy(), closed_by="t", now=LATER
        )
        nov_closed = close_period(
            conn, sources, NOV, policy=ClosePolicy(), closed_by="t", now=LATER
        )

    oracle = compute_statement(OCT, [lic], october, approvals=[APR]).to_document()
    assert oct_closed.statement.document == oracle
    (block,) = oct_closed.statement.document["licences"]
    assert block["lines"][0]["units"] == 2
    assert [(h["violation"], h["units"]) for h in block["held"]] == [("UNAPPROVED_USE", 3)]
    assert oct_closed.statement.inputs["approval_renders_in"] == {}
    assert oct_closed.statement.inputs["approval_renders"] == {"APR-1": 2}

    # November starts from October's two: one render left under the approval.
    (block,) = nov_closed.statement.document["licences"]
    assert block["lines"][0]["units"] == 1
    assert [(h["violation"], h["units"]) for h in block["held"]] == [("UNAPPROVED_USE", 1)]
    assert nov_closed.statement.inputs["approval_renders_in"] == {"APR-1": 2}
    assert nov_closed.statement.inputs["approval_renders"] == {"APR-1": 3}

    with db.connection() as conn:
        stored = store.get_statement(conn, str(NOV))
        assert stored is not None
        licences = sources.licences.licences(conn)
        again = restate_statement(conn, sources, stored, licences).to_document()
        report = reconcile(conn, sources, NOV)
    assert again == stored.document
    assert report.ok, report.render()
