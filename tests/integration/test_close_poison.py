"""Period close over real PostgreSQL rows that a vendor, a legacy writer or an operator's
hand left behind: an ad_revenue of 1e58, a NaN, a payload that is not an event, times out
of range, a re-send of a bad row, a dead letter with a reason nobody knows, a licence whose
stored terms do not parse. The close completes; each bad row is a named dead letter and a
quarantine row; everything else is exactly the offline replay, and reconciliation holds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.domain.vocabulary import RejectReason
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.reconcile import reconcile
from residuals.platform.postgres import Database
from residuals.v1 import usage_pb2
from tests.support.builders import ev, licence
from tests.support.payouts import StoredRows, register

OCT = Period(2026, 10)
LATER = datetime(2027, 6, 1, tzinfo=UTC)


def mutated(event: UsageEvent, change: Any) -> bytes:
    message = from_domain(event)
    change(message)
    return payload_bytes(message)


def test_one_bad_row_does_not_stop_the_close_for_everyone(
    payouts_database: tuple[str, Database],
) -> None:
    dsn, db = payouts_database
    register(db, *(licence(licence_id=i) for i in ("LIC-1", "LIC-2", "LIC-BAD")))
    with psycopg.connect(dsn) as conn:  # by hand: terms that no longer parse
        conn.execute("SET session_replication_role = replica")  # past the append-only trigger
        conn.execute(
            "UPDATE licence_versions SET terms = jsonb_set(terms, '{rates,view_cpm}',"
            " '\"NaN\"') WHERE licence_id = 'LIC-BAD'"
        )
    ledger = StoredRows(dsn, [])
    for n in range(3):
        ledger.event(ev("RENDER", event_id=f"r{n}", quantity=4))
        ledger.event(ev("VIEW", event_id=f"v{n}", licence_id="LIC-2", quantity=2500))
    ledger.event(ev("AD_IMPRESSION", event_id="a0", quantity=10, ad_revenue="3.50"))
    huge = parse_event(ev("AD_IMPRESSION", event_id="huge", ad_revenue="1"))
    assert isinstance(huge, UsageEvent)
    ledger.bad(huge, mutated(huge, lambda m: setattr(m, "ad_revenue", "1e58")))
    # a re-send of it with a sane payload (a conflict): its money follows the bad row
    ledger.bad(huge, mutated(huge, lambda m: setattr(m, "ad_revenue", "2")), "usage_repeats")
    nan = parse_event(ev("AD_IMPRESSION", event_id="nan", ad_revenue="1"))
    assert isinstance(nan, UsageEvent)
    ledger.bad(nan, mutated(nan, lambda m: setattr(m, "ad_revenue", "NaN")))
    for event_id, seconds, nanos in (("neg-nanos", 1_790_000_000, -1), ("2^62", 2**62, 0)):
        event = parse_event(ev("RENDER", event_id=event_id))
        assert isinstance(event, UsageEvent)

        def bad_time(m: usage_pb2.UsageEvent, s: int = seconds, n: int = nanos) -> None:
            m.occurred_at.seconds, m.occurred_at.nanos = s, n

        ledger.bad(event, mutated(event, bad_time))
    junk = parse_event(ev("RENDER", event_id="junk"))
    assert isinstance(junk, UsageEvent)
    ledger.bad(junk, b"\xff\xfe not a usage event")
    ledger.dead("INVALID_QUANTITY", RejectReason.INVALID_QUANTITY)
    ledger.dead("NO_SUCH_REASON", RejectReason.UNPROCESSABLE)
    for n in range(2):  # the licence that cannot be loaded: its events are dead letters
        ledger.event(ev("RENDER", event_id=f"b{n}", licence_id="LIC-BAD"))
        ledger.expected[-1] = Rejection(RejectReason.UNPROCESSABLE, "")
    ledger.event(ev("RENDER", event_id="r-last", quantity=7))

    sources = stored_sources()
    with db.connection() as conn:
        result = close_period(conn, sources, OCT, policy=ClosePolicy(), closed_by="test", now=LATER)
    document = result.statement.document

    # everything else is exactly the offline replay of the good rows
    good = [licence(licence_id="LIC-1"), licence(licence_id="LIC-2")]
    oracle = compute_statement(OCT, good, ledger.expected).to_document()
    assert document == oracle
    assert {d["reason"]: d["count"] for d in document["dlq"]} == {
        "MALFORMED": 6,
        "INVALID_QUANTITY": 1,
        "UNPROCESSABLE": 3,
    }
    assert [lic["licence_id"] for lic in document["licences"]] == ["LIC-1", "LIC-2"]
    assert Decimal(document["licences"][0]["earned"]) > 0

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT source_topic, error FROM quarantine WHERE consumer = 'payouts-close'"
            " ORDER BY source_topic, source_offset"
        ).fetchall()
    errors = {topic: [e for t, e in rows if t == topic] for topic, _ in rows}
    assert len(errors["usage_events"]) == 5 and len(errors["usage_repeats"]) == 1
    assert any("VEN-1/huge" in e and "ad_revenue" in e for e in errors["usage_events"])
    assert any("VEN-1/nan" in e for e in errors["usage_events"])
    assert any("VEN-1/neg-nanos" in e for e in errors["usage_events"])
    assert any("VEN-1/junk" in e for e in errors["usage_events"])
    assert "follows a row that cannot be used" in errors["usage_repeats"][0]
    assert "unknown reason 'NO_SUCH_REASON'" in errors["dead_letters"][0]
    assert "LIC-BAD" in errors["licences"][0] and "view_cpm" in errors["licences"][0]

    with db.connection() as conn:
        report = reconcile(conn, sources, OCT)
    assert report.ok, report.render()
    accounting = next(c for c in report.checks if c.name.startswith("accepted ="))
    assert accounting.expected == "18 accepted"
    assert "rows that cannot be used (dead letters) 8" in accounting.detail

    # quarantined once, however often the rows are read again
    with db.connection() as conn:
        reconcile(conn, sources, OCT)
    with psycopg.connect(dsn) as conn:
        again = conn.execute(
            "SELECT count(*) FROM quarantine WHERE consumer = 'payouts-close'"
        ).fetchone()
    assert again == (len(rows),)
