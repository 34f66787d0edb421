"""A month through the real pipeline, closed, exported, paid and reconciled by a finance user.

Real stack, real processes: licences registered in the licensing tables (the registry's own
code) and published on the compacted topic; signed usage events on ``residuals.usage.v1``
(as the SDK sends them); ``python -m residuals.meter`` and ``python -m residuals.ledger``
as subprocesses storing into PostgreSQL; then the finance CLI (``residuals finance …``,
subprocesses) closes, exports, pays and reconciles, and ``python -m residuals.payouts``
serves the statements over gRPC with API keys from the licensing tables.

The oracle is ``compute_statement`` on the generated events in generation order (the
offline replay of the same month).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from confluent_kafka.admin import NewTopic

from residuals.codecs import licences as licence_codec
from residuals.domain.closing import content_hash, licences_for_period
from residuals.domain.events import parse_event, parse_timestamp
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.licensing.registry import Registry
from residuals.platform.auth import Principal, Role, bearer_metadata, generate_api_key
from residuals.platform.config import PostgresSettings
from residuals.platform.kafka import make_admin
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.platform.topics import PAYOUTS
from residuals.stack.settings import StackSettings
from residuals.v1 import (
    licence_pb2,
    licence_service_pb2,
    payout_service_pb2_grpc,
)
from residuals.v1 import payout_service_pb2 as ps
from tests.support.metering import Pipeline, Service, pipeline
from tests.support.month import make_events, make_licences
from tests.support.payouts import migrated_database

REPO = Path(__file__).resolve().parents[2]


OCT, NOV = Period(2026, 10), Period(2026, 11)
LICENCES = 12
EVENTS = 3000
ADMIN = Principal("e2e-admin", Role.ADMIN)


def register(dsn: str, specs: list[dict[str, Any]]) -> None:
    """Parties and licences through the licence registry's own code (stored versions)."""
    settings = PostgresSettings(dsn=dsn, pool_min=0, pool_max=2, user=database_role("licensing"))
    db = Database(settings, application_name="e2e")
    db.open()
    try:
        registry = Registry(db)
        licences = [parse_licence(dict(s)) for s in specs]
        for talent in sorted({lic.talent_id for lic in licences}):
            registry.create_talent(ADMIN, licence_pb2.Talent(talent_id=talent))
        for avatar, talent in sorted({(lic.avatar_id, lic.talent_id) for lic in licences}):
            registry.create_avatar(ADMIN, licence_pb2.Avatar(avatar_id=avatar, talent_id=talent))
        for vendor in sorted({lic.vendor_id for lic in licences}):
            registry.create_vendor(ADMIN, licence_pb2.Vendor(vendor_id=vendor))
        payees = sorted({p for lic in licences for p, _ in lic.latest.splits})
        for payee in payees:
            kind = licence_pb2.Payee.KIND_TALENT if payee.startswith("TAL") else (
                licence_pb2.Payee.KIND_AGENT
            )  # fmt: skip
            registry.create_payee(ADMIN, licence_pb2.Payee(payee_id=payee, kind=kind))
        for lic in licences:
            proto = licence_codec.to_proto(lic)
            registry.create_licence(
                ADMIN,
                licence_service_pb2.CreateLicenceRequest(
                    licence_id=lic.licence_id,
                    talent_id=lic.talent_id,
                    avatar_id=lic.avatar_id,
                    vendor_id=lic.vendor_id,
                    currency_code=lic.currency,
                    terms=proto.versions[0],
                ),
            )
    finally:
        db.close()


def api_key(dsn: str, principal: Principal) -> str:
    """An API key stored in the licensing tables (what PostgresAuthenticator reads)."""
    key_id, plaintext, digest = generate_api_key()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO principals (principal_id, role, vendor_id, talent_id, created_by)"
            " VALUES (%s, %s, %s, %s, 'e2e') ON CONFLICT DO NOTHING",
            (principal.principal_id, str(principal.role), principal.vendor_id,
             principal.talent_id),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO api_keys (key_id, principal_id, secret_sha256, prefix, created_by)"
            " VALUES (%s, %s, %s, %s, 'e2e')",
            (key_id, principal.principal_id, digest, plaintext[:12]),
        )
    return plaintext


@dataclass
class Month:
    run: Pipeline
    dsn: str
    work: Path
    specs: list[dict[str, Any]]
    raws: list[dict[str, Any]]
    services: list[Service]

    def finance(self, *args: str, rail_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "PAYOUTS_RAIL": "file",
            "PAYOUTS_RAIL_DIR": str(rail_dir or self.work / "instructions"),
            "LOG_LEVEL": "WARNING",
        }
        return subprocess.run(
            [sys.executable, "-m", "residuals", "finance", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def publish(self, raws: list[dict[str, Any]]) -> None:
        before = len(self.run.stored_positions())
        self.run.produce([self.run.usage_record(r) for r in raws])
        self.run.wait_ledgered(before + len(raws), timeout=240, services=self.services)

    def licences(self) -> list[Licence]:
        from residuals.payouts.adapters import LicensingLicences

        with psycopg.connect(self.dsn) as conn:
            return LicensingLicences().licences(conn)


@pytest.fixture(scope="module")
def month(stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    work = tmp_path_factory.mktemp("statements-e2e")
    specs = make_licences(LICENCES, vendors=3)
    raws = list(make_events(specs, EVENTS, period=str(OCT)))
    # A vendor that knows the original's licence keys its retraction by it (the wire
    # convention), so the retraction follows the original on its partition.
    licence_of = {(r["vendor_id"], r["event_id"]): r.get("licence_id") for r in raws}
    for raw in raws:
        if raw["kind"] == "RETRACTION":
            original = licence_of.get((raw["vendor_id"], raw["original_event_id"]))
            if original:
                raw["_licence_of_original"] = original
    with migrated_database(stack) as dsn, pipeline(stack, work, partitions=3) as run:
        run.dsn = dsn
        register(dsn, specs)
        run.publish_licences(specs)
        run.publish_keys(sorted({s["vendor_id"] for s in specs}))
        services = [run.meter().start(), run.ledger().start()]
        m = Month(run, dsn, work, specs, raws, services)
        try:
            m.publish(raws)
            yield m
        finally:
            for service in services:
                service.stop()


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON documents differ (for readable failures)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _json(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_month_close_export_pay_adjust_reconcile(month: Month) -> None:
    licences = month.licences()
    assert {lic.licence_id for lic in licences} == {s["licence_id"] for s in month.specs}

    # --- close October: the statement equals the offline replay of the generated month
    out = _json(month.finance("close", "--period", "2026-10", "--by", "e2e"))
    assert "2026-10: closed" in out
    oracle = compute_statement(
        OCT,
        licences_for_period(licences, OCT),
        [parse_event(r) for r in month.raws],
    ).to_document()
    export_dir = month.work / "export"
    listing = _json(month.finance("export", "--period", "2026-10", "--out", str(export_dir)))
    exported = json.loads((export_dir / "residuals-2026-10.json").read_bytes())
    diffs = _differences(exported, oracle)
    assert not diffs, "\n".join(diffs[:40])
    assert content_hash(oracle) in out and content_hash(oracle) in listing
    csv_text = (export_dir / "residuals-2026-10.csv").read_text()
    assert csv_text.count("\nline,") + csv_text.count(",line,") > 0
    assert sum(x["count"] for x in oracle["dlq"]) >= 1  # the month has dead letters

    # --- closing twice gives the same statement and no second row
    again = _json(month.finance("close", "--period", "2026-10"))
    assert "already closed" in again and content_hash(oracle) in again
    with psycopg.connect(month.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM statements").fetchone() == (1,)

    # --- pay: the rail fails first (its folder cannot be created), the retry pays once
    blocked = month.work / "not-a-folder"
    blocked.write_text("a file where the rail wants a folder")
    failed = _json(month.finance("payouts", "--pay", "--period", "2026-10",
                                 rail_dir=blocked / "sub"))  # fmt: skip
    payable = [p for p in oracle["payees"] if Decimal(p["payable"]) > 0]
    assert f"paid 0, failed {len(payable)}" in failed
    paid = _json(month.finance("payouts", "--pay", "--period", "2026-10"))
    assert f"paid {len(payable)}, failed 0" in paid
    assert "paid 0, failed 0" in _json(month.finance("payouts", "--pay", "--period", "2026-10"))
    files = sorted((month.work / "instructions").glob("*.json"))
    assert len(files) == len(payable)
    paid_amounts = {
        (d["payee_id"], d["currency"]): Decimal(d["amount"])
        for d in (json.loads(f.read_text()) for f in files)
    }
    assert paid_amounts == {(p["payee_id"], p["currency"]): Decimal(p["payable"]) for p in payable}
    listing = _json(month.finance("payouts", "--period", "2026-10"))
    rows = [line.split() for line in listing.splitlines() if line.startswith("po_")]
    assert [(r[5], r[6]) for r in rows] == [("PAID", "2")] * len(payable)  # two attempts
    as_json = json.loads(_json(month.finance("payouts", "--period", "2026-10", "--json")))
    assert [(p["state"], p["attempts"]) for p in as_json["payouts"]] == [("PAID", 2)] * len(payable)
    assert {
        (p["payee_id"], p["currency"]): Decimal(p["amount"]) for p in as_json["payouts"]
    } == paid_amounts

    # --- a late October event and November usage; November closes with the adjustment
    # a licence in good standing (nothing held: not suspended, no quota reached)
    clean = [x["licence_id"] for x in oracle["licences"] if not x["held"]]
    lic = next(s for s in month.specs if s["licence_id"] in clean and "quotas" not in s)
    late = {"event_id": "late-render", "kind": "RENDER", "vendor_id": lic["vendor_id"],
            "licence_id": lic["licence_id"], "avatar_id": lic["avatar_id"],
            "render_id": "late-r", "occurred_at": "2026-10-30T12:00:00+00:00",
            "category": lic["scope"]["categories_allowed"][0], "territory": "US"}  # fmt: skip
    november = [
        dict(r, event_id=f"nov-{i}",
             occurred_at=(parse_timestamp(r["occurred_at"]) + timedelta(days=31)).isoformat())
        for i, r in enumerate(month.raws[:200])
        if r.get("kind") == "RENDER"
    ]  # fmt: skip
    month.publish([late, *november])
    nov_out = _json(month.finance("close", "--period", "2026-11", "--force"))
    assert "2026-11: closed" in nov_out
    shown = _json(month.finance("statements", "--period", "2026-11"))
    assert f"adjusts 2026-10 {lic['licence_id']} line RENDER/v1/tier-" in shown
    restated = compute_statement(
        OCT,
        licences_for_period(licences, OCT),
        [parse_event(r) for r in [*month.raws, late]],
    ).to_document()
    before = next(x for x in oracle["licences"] if x["licence_id"] == lic["licence_id"])
    after = next(x for x in restated["licences"] if x["licence_id"] == lic["licence_id"])
    delta = Decimal(after["vendor_invoice"]) - Decimal(before["vendor_invoice"])
    assert delta > 0
    assert f"vendor_invoice: +0 units {delta:+} {lic['currency']}" in shown

    # --- reconcile to zero, from the CLI and over gRPC
    report = _json(month.finance("reconcile"))
    assert report.count("reconciled: no differences") == 2, report
    as_json = json.loads(_json(month.finance("reconcile", "--json")))
    assert as_json["ok"] and [r["period"] for r in as_json["reports"]] == ["2026-10", "2026-11"]
    assert all(c["ok"] for r in as_json["reports"] for c in r["checks"])
    listed = json.loads(_json(month.finance("statements", "--json")))["statements"]
    assert [(s["period"], s["content_hash"]) for s in listed][-1] == (
        "2026-10",
        content_hash(oracle),
    )
    one = json.loads(_json(month.finance("statements", "--period", "2026-10", "--json")))
    assert one["statement"] == exported and one["content_hash"] == content_hash(oracle)
    key = api_key(month.dsn, Principal("e2e-finance", Role.FINANCE))
    payouts_topic = month.run.topic(PAYOUTS)
    admin = make_admin(month.run.kafka)
    admin.create_topics([NewTopic(payouts_topic, num_partitions=1)])[payouts_topic].result(60)
    service = Service(
        "payouts",
        "residuals.payouts",
        {**month.run.service_env("payouts"), "DATABASE_URL": month.dsn},
        month.work,
    ).start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = payout_service_pb2_grpc.PayoutServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                rec = stub.Reconcile(ps.ReconcileRequest(), metadata=bearer_metadata(key))
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert rec.ok, [c for c in rec.checks if not c.ok]
        statement = stub.GetStatement(
            ps.GetStatementRequest(period="2026-10"), metadata=bearer_metadata(key)
        ).statement
        assert statement.content_hash == content_hash(oracle)
        channel.close()
    finally:
        service.stop()

    # --- a corrupted ledger row makes reconcile fail, naming it
    with psycopg.connect(month.dsn) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        entry = conn.execute(
            "SELECT entry_id, line_no FROM journal_postings"
            " WHERE entry_id LIKE '2026-10:statement:%' ORDER BY entry_id, line_no LIMIT 1"
        ).fetchone()
        assert entry is not None
        conn.execute(
            "UPDATE journal_postings SET amount = amount + 0.01"
            " WHERE entry_id = %s AND line_no = %s",
            entry,
        )
    broken = month.finance("reconcile", "--period", "2026-10")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "[FAIL] every journal entry balances" in broken.stdout
    assert f"entry {entry[0]}: " in broken.stdout
    assert "difference(s)" in broken.stdout
