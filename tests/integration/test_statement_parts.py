"""One payee's part of a closed statement, recomputed from the part's own rows in the real
ledger tables: equal to the stored statement's part for every payee, even when an identity
is shared across licences (a conflicting re-send naming another licence) or a retraction
does not name its licence; and different when a stored payload is changed."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.events import UsageEvent
from residuals.domain.parts import part_document, part_hash, part_licence_ids
from residuals.domain.period import Period
from residuals.ledger.history import load_period
from residuals.payouts import store
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period, restate_part
from residuals.platform.postgres import Database
from residuals.v1 import licence_pb2
from tests.support.builders import ev, licence, parsed
from tests.support.payouts import ADMIN, StoredRows, register

OCT = Period(2026, 10)
LATER = datetime(2027, 6, 1, tzinfo=UTC)


def _repeat(rows: StoredRows, raw: dict[str, object]) -> UsageEvent:
    event = parsed(raw)
    rows._row("usage_repeats", event, payload_bytes(from_domain(event)), "CONFLICT")
    rows.expected.append(event)
    return event


def test_each_payees_part_recomputes_from_its_own_rows(
    payouts_database: tuple[str, Database],
) -> None:
    dsn, db = payouts_database
    from residuals.licensing.registry import Registry

    registry = Registry(db)
    for payee in ("AGT-1", "EST-1"):
        registry.create_payee(ADMIN, licence_pb2.Payee(payee_id=payee))
    lics = [
        licence(licence_id="LIC-1"),
        licence(licence_id="LIC-2", splits={"TAL-1": "0.25", "AGT-1": "0.75"}),
        licence(licence_id="LIC-3", splits={"EST-1": "1"}),
    ]
    register(db, *lics)
    rows = StoredRows(dsn, [])
    for n in range(4):
        rows.event(ev("RENDER", event_id=f"r{n}", quantity=3 + n))
        rows.event(ev("VIEW", event_id=f"v{n}", licence_id="LIC-2", quantity=1500))
        rows.event(ev("RENDER", event_id=f"e{n}", licence_id="LIC-3", quantity=2))
    # LIC-3's event "x" first; a conflicting re-send of the same identity names LIC-1
    rows.event(ev("RENDER", event_id="x", licence_id="LIC-3", quantity=1))
    _repeat(rows, ev("RENDER", event_id="x", licence_id="LIC-1", quantity=9))
    # a retraction that names no licence, of LIC-2's v0
    rows.event(ev("RETRACTION", event_id="ret-1", licence_id=None, original_event_id="v0"))
    with psycopg.connect(dsn) as conn:  # as the ledger writer stores a retraction
        conn.execute("UPDATE usage_events SET original_event_id = 'v0' WHERE event_id = 'ret-1'")

    sources = stored_sources()
    with db.connection() as conn:
        result = close_period(conn, sources, OCT, policy=ClosePolicy(), closed_by="t", now=LATER)
        stored = store.get_statement(conn, str(OCT))
        assert stored is not None
        licences = sources.licences.licences(conn)
        document = result.statement.document
        assert part_licence_ids(document, "TAL-1") == ("LIC-1", "LIC-2")
        assert part_licence_ids(document, "EST-1") == ("LIC-3",)

        # the part's rows include the identity's first send, though it names LIC-3
        part_rows = load_period(conn, OCT, ["LIC-1"]).items
        assert any(getattr(e, "licence_id", "") == "LIC-3" for e in part_rows)
        assert len(part_rows) < len(load_period(conn, OCT).items)

        for payee in ("TAL-1", "AGT-1", "EST-1"):
            again = restate_part(conn, sources, stored, licences, payee)
            expected = part_document(document, payee)
            assert again == expected, payee
            assert part_hash(again) == part_hash(expected)
            assert expected["payees"] and expected["licences"]

    # change one stored payload of LIC-2: TAL-1's and AGT-1's parts no longer recompute
    tampered = parsed(ev("VIEW", event_id="v3", licence_id="LIC-2", quantity=2500))
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE usage_events SET payload = %s WHERE event_id = 'v3'",
            (payload_bytes(from_domain(tampered)),),
        )
    with db.connection() as conn:
        for payee in ("TAL-1", "AGT-1"):
            assert restate_part(conn, sources, stored, licences, payee) != part_document(
                document, payee
            )
        assert restate_part(conn, sources, stored, licences, "EST-1") == part_document(
            document, "EST-1"
        )
