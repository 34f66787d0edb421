"""Statement documents from real PostgreSQL: licences registered through the registry with
display names, events stored in the ledger's tables, the period closed and paid, then
``render_statement`` and ``residuals finance statement`` for a talent and for an agent
with two clients (a roll-up and one document per client)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.closing import canonical_json
from residuals.domain.parts import part_document, part_hash
from residuals.domain.period import Period
from residuals.licensing.registry import Registry
from residuals.payouts import store
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.documents import (
    NoStatementPart,
    RenderedDocument,
    client_talent_ids,
    render_statement,
)
from residuals.payouts.paying import pay_payouts
from residuals.payouts.rails import FileRail
from residuals.platform.postgres import Database
from residuals.v1 import licence_pb2
from tests.support.builders import ev, licence, parsed
from tests.support.documents import HOSTILE, pdf_text
from tests.support.licensing import create_request
from tests.support.payouts import ADMIN, StoredRows

OCT = Period(2026, 10)
LATER = datetime(2027, 6, 1, tzinfo=UTC)
GRACE = "Grace " + HOSTILE


@dataclass
class Closed:
    dsn: str
    db: Database
    stored: store.StoredStatement

    def render(self, payee: str, fmt: str, talent: str = "") -> RenderedDocument:
        with self.db.connection() as conn:
            return render_statement(
                conn, stored_sources(), self.stored, payee, fmt, talent_id=talent
            )

    def finance(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "DATABASE_URL": self.dsn, "LOG_LEVEL": "WARNING"}
        return subprocess.run(
            [sys.executable, "-m", "residuals", "finance", *args],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )


def _register(db: Database) -> None:
    registry = Registry(db)
    for talent, name in (("TAL-1", "Ada Lovelace"), ("TAL-2", GRACE)):
        registry.create_talent(ADMIN, licence_pb2.Talent(talent_id=talent, display_name=name))
    for avatar, talent, name in (("AVA-1", "TAL-1", "Ada studio"), ("AVA-2", "TAL-2", "Grace 3D")):
        registry.create_avatar(
            ADMIN, licence_pb2.Avatar(avatar_id=avatar, talent_id=talent, display_name=name)
        )
    for vendor, name in (("VEN-1", "PixelForge"), ("VEN-2", "MuseAI")):
        registry.create_vendor(ADMIN, licence_pb2.Vendor(vendor_id=vendor, display_name=name))
    kinds = licence_pb2.Payee
    for payee, kind, name, clients in (
        ("TAL-1", kinds.KIND_TALENT, "Ada Lovelace", ["TAL-1"]),
        ("TAL-2", kinds.KIND_TALENT, GRACE, ["TAL-2"]),
        ("AGT-1", kinds.KIND_AGENT, "Bright Agency", ["TAL-1", "TAL-2"]),
    ):
        registry.create_payee(
            ADMIN,
            licence_pb2.Payee(payee_id=payee, kind=kind, display_name=name, talent_ids=clients),
        )
    grace = {"talent_id": "TAL-2", "avatar_id": "AVA-2", "vendor_id": "VEN-2"}
    for lic in (
        licence(licence_id="LIC-1", scope={"territories_allowed": ["US", "GB", "DE"]}),
        licence(licence_id="LIC-2", currency="EUR", splits={"TAL-1": "0.25", "AGT-1": "0.75"}),
        licence(licence_id="LIC-3", splits={"TAL-2": "0.8", "AGT-1": "0.2"}, **grace),
    ):
        registry.create_licence(ADMIN, create_request(lic))


def _events(rows: StoredRows) -> None:
    grace = {"licence_id": "LIC-3", "avatar_id": "AVA-2", "vendor_id": "VEN-2"}
    for n in range(24):
        day = f"2026-10-{1 + n:02d}T{n % 24:02d}:00:00Z"
        territory = ("US", "GB", "DE")[n % 3]
        channel = ("web", "social")[n % 2]
        rows.event(
            ev("RENDER", event_id=f"r{n}", quantity=2 + n, territory=territory, occurred_at=day)
        )
        rows.event(ev("VIEW", event_id=f"v{n}", quantity=900 + n, channel=channel, occurred_at=day))
        rows.event(ev("RENDER", event_id=f"e{n}", licence_id="LIC-2", occurred_at=day))
        rows.event(
            ev(
                "VIEW",
                event_id=f"g{n}",
                quantity=1200,
                territory=territory,
                occurred_at=day,
                **grace,
            )
        )
    rows.event(ev("RENDER", event_id="kp", territory="KP", occurred_at="2026-10-25T10:00:00Z"))
    rows.event(
        ev(
            "VIEW",
            event_id="tv",
            channel="broadcast",
            quantity=50,
            occurred_at="2026-10-26T10:00:00Z",
        )
    )
    rows.event(
        ev(
            "AD_IMPRESSION",
            event_id="ad",
            channel="<b>web</b>",
            occurred_at="2026-10-26T11:00:00Z",
            **grace,
        )
    )


@pytest.fixture
def closed(payouts_database: tuple[str, Database], tmp_path: Path) -> Closed:
    dsn, db = payouts_database
    _register(db)
    _events(StoredRows(dsn, []))
    with db.connection() as conn:
        close_period(conn, stored_sources(), OCT, policy=ClosePolicy(), closed_by="t", now=LATER)
    pay_payouts(db, FileRail(tmp_path / "rail"), period=str(OCT))
    with db.connection() as conn:
        stored = store.get_statement(conn, str(OCT))
    assert stored is not None
    return Closed(dsn, db, stored)


def _money(amount: str, currency: str) -> str:
    return f"{Decimal(amount):,f} {currency}"


def test_a_talents_document_in_every_format(closed: Closed, tmp_path: Path) -> None:
    expected = part_document(closed.stored.document, "TAL-1")
    assert [lic["licence_id"] for lic in expected["licences"]] == ["LIC-1", "LIC-2"]

    json_doc = closed.render("TAL-1", "json")
    assert json_doc.content == canonical_json(expected)
    assert json_doc.part_sha256 == part_hash(expected) == json_doc.sha256
    assert json_doc.statement_sha256 == closed.stored.content_hash
    assert json_doc.filename == "residuals-2026-10-payee-TAL-1.json"
    assert json_doc.content_type == "application/json"

    pdf = closed.render("TAL-1", "pdf")
    assert pdf.content.startswith(b"%PDF") and pdf.content_type == "application/pdf"
    assert pdf.part_sha256 == json_doc.part_sha256
    text = " ".join(pdf_text(pdf.content, tmp_path).split())
    for name in ("Ada Lovelace", "Ada studio", "PixelForge"):
        assert name in text
    for balance in expected["payees"]:
        for key in ("earned", "payable", "carried_forward"):
            assert _money(balance[key], balance["currency"]) in text, key
    for lic in expected["licences"]:
        assert _money(lic["earned"], lic["currency"]) in text
        for line in [*lic["lines"], *lic["held"]]:
            assert _money(line["amount"], lic["currency"]) in text, line
    assert json_doc.part_sha256 in text and "PAID" in text
    assert "TERRITORY_NOT_LICENSED" in text and "CHANNEL_NOT_LICENSED" in text

    html = closed.render("TAL-1", "html")
    assert html.content_type == "text/html; charset=utf-8"
    assert html.content == closed.render("TAL-1", "html").content  # deterministic
    (payout,) = [p for p in _payouts(closed, "TAL-1") if p.currency == "USD"]
    assert payout.rail_reference and payout.rail_reference.encode() in html.content
    assert b"recomputed from the stored events and do not" not in html.content

    rows = list(csv.DictReader(io.StringIO(closed.render("TAL-1", "csv").content.decode())))
    units: Counter[tuple[str, str]] = Counter()
    for row in rows:
        if row["record"] == "breakdown":
            units[(row["licence_id"], row["kind"])] += int(row["units"])
            units[(row["licence_id"], "held")] += int(row["held_units"])
    for lic in expected["licences"]:  # each licence of TAL-1 has its own currency here
        for kind in {line["kind"] for line in lic["lines"]}:
            billed = sum(line["units"] for line in lic["lines"] if line["kind"] == kind)
            assert units[(lic["licence_id"], kind)] == billed
        assert units[(lic["licence_id"], "held")] == sum(h["units"] for h in lic["held"])
    assert {r["record"] for r in rows} == {"line", "held", "breakdown", "payout"}


def _payouts(closed: Closed, payee: str) -> list[store.PayoutRow]:
    with closed.db.connection() as conn:
        return store.list_payouts(conn, period=str(OCT), payee_id=payee)


def test_an_agent_gets_a_roll_up_and_one_document_per_client(closed: Closed) -> None:
    with closed.db.connection() as conn:
        assert client_talent_ids(conn, "AGT-1") == ("TAL-1", "TAL-2")
        assert client_talent_ids(conn, "NOBODY") == ()
    document = closed.stored.document
    roll_up = closed.render("AGT-1", "json")
    assert json.loads(roll_up.content) == part_document(document, "AGT-1")
    for talent, licences in (("TAL-1", ["LIC-2"]), ("TAL-2", ["LIC-3"])):
        client = closed.render("AGT-1", "json", talent)
        expected = part_document(document, "AGT-1", licences)
        assert client.content == canonical_json(expected)
        assert client.part_sha256 == part_hash(expected) != roll_up.part_sha256
        assert client.filename == f"residuals-2026-10-payee-AGT-1-talent-{talent}.json"
    page = closed.render("AGT-1", "html", "TAL-2").content
    assert b"Client section for Grace &lt;script&gt;" in page
    assert b"<script>" not in page and b"<b>web</b>" not in page
    assert b"MuseAI" in page and b"PixelForge" not in page


def test_no_part_is_a_clear_error(closed: Closed) -> None:
    with pytest.raises(NoStatementPart, match="NOBODY"):
        closed.render("NOBODY", "pdf")
    with pytest.raises(LookupError, match="no licence of talent 'TAL-9'"):
        closed.render("AGT-1", "html", "TAL-9")
    with pytest.raises(ValueError):
        closed.render("TAL-1", "docx")


def _forget_usage(dsn: str) -> None:
    """Delete the stored usage tallies, as for a statement closed before migration 0017."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")  # past the append-only trigger
        conn.execute("DELETE FROM statement_usage")


def test_the_close_stores_every_licences_usage(closed: Closed) -> None:
    with psycopg.connect(closed.dsn) as conn:
        rows = conn.execute(
            "SELECT licence_id, tally FROM statement_usage WHERE statement_id = %s",
            (closed.stored.statement_id,),
        ).fetchall()
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute("DELETE FROM statement_usage")
    licences = {lic["licence_id"]: lic for lic in closed.stored.document["licences"]}
    assert sorted(licence_id for licence_id, _ in rows) == sorted(licences)
    for licence_id, tally in rows:
        assert tally["currency"] == licences[licence_id]["currency"]
        billed = sum(cell[3] for cell in tally["cells"])
        assert billed == sum(line["units"] for line in licences[licence_id]["lines"])
        assert all(isinstance(cell[4], str) for cell in tally["cells"])  # exact, not floats


def test_stored_tallies_give_the_recomputed_documents_bytes(closed: Closed) -> None:
    documents = [("TAL-1", ""), ("TAL-2", ""), ("AGT-1", ""), ("AGT-1", "TAL-2")]
    formats = ("html", "csv")
    kept = {(p, t, f): closed.render(p, f, t).content for p, t in documents for f in formats}
    _forget_usage(closed.dsn)
    recomputed = {(p, t, f): closed.render(p, f, t).content for p, t in documents for f in formats}
    assert recomputed == kept
    assert b"residuals verify" in kept[("TAL-1", "", "html")]


def test_changed_stored_events_are_flagged_in_the_document(closed: Closed) -> None:
    before = closed.render("TAL-1", "html").content
    tampered = parsed(ev("VIEW", event_id="v3", quantity=5000, occurred_at="2026-10-04T03:00:00Z"))
    with psycopg.connect(closed.dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE usage_events SET payload = %s WHERE event_id = 'v3'",
            (payload_bytes(from_domain(tampered)),),
        )
    # the tallies the close stored are read, not the events: nothing recomputed, no claim
    assert closed.render("TAL-1", "html").content == before
    _forget_usage(closed.dsn)  # a statement closed before the tallies were stored
    page = closed.render("TAL-1", "html").content
    assert b"recomputed from the stored events and do not" in page
    # the binding figures are still the closed statement's
    assert closed.render("TAL-1", "json").content == canonical_json(
        part_document(closed.stored.document, "TAL-1")
    )


def test_the_finance_command_writes_documents(closed: Closed, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    done = closed.finance(
        "statement", "--payee", "AGT-1", "--period", "2026-10", "--format", "html",
        "--all-clients", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "residuals-2026-10-payee-AGT-1-talent-TAL-1.html",
        "residuals-2026-10-payee-AGT-1-talent-TAL-2.html",
        "residuals-2026-10-payee-AGT-1.html",
    ]
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 3 and all("sha256" in line for line in lines)

    listed = closed.finance(
        "statement", "--payee", "TAL-1", "--period", "2026-10", "--format", "csv",
        "--out", str(tmp_path / "tal.csv"), "--json",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["documents"]
    assert entry["path"] == str(tmp_path / "tal.csv") and entry["content_type"] == "text/csv"
    assert entry["sha256"] == hashlib.sha256((tmp_path / "tal.csv").read_bytes()).hexdigest()
    assert entry["statement_sha256"] == closed.stored.content_hash

    piped = closed.finance(
        "statement", "--payee", "TAL-1", "--period", "2026-10", "--format", "json", "--out", "-"
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == canonical_json(part_document(closed.stored.document, "TAL-1"))

    missing = closed.finance("statement", "--payee", "NOBODY", "--period", "2026-10")
    assert missing.returncode == 1 and b"has no part" in missing.stderr
    open_period = closed.finance("statement", "--payee", "TAL-1", "--period", "2026-11")
    assert open_period.returncode == 1 and b"not closed" in open_period.stderr
