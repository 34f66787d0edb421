"""Exports, role-scoped statement views and payouts settings (no servers)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from residuals.domain.adjustments import AdjustmentLine
from residuals.domain.closing import canonical_json, content_hash
from residuals.domain.statement import compute_statement
from residuals.payouts import access, export
from residuals.payouts.settings import PayoutsSettings, parse_thresholds
from residuals.payouts.store import LicenceMeta, StoredStatement
from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.platform.config import ConfigError, load
from residuals.platform.errors import InvalidArgument
from residuals.replay.casefile import load_case

CASE = Path(__file__).parents[1] / "data" / "royalty-cases" / "07-advance-and-threshold.yaml"


def _stored() -> StoredStatement:
    case = load_case(CASE)
    doc = compute_statement(
        case.period, case.licences, case.events(), thresholds=case.thresholds
    ).to_document()
    adjustment = AdjustmentLine(
        "2026-09", "LIC-GUS-PIXEL", "USD", "line", "RENDER/v1/tier-1", 2, Decimal("0.50")
    )
    return StoredStatement(
        statement_id="st-2026-10",
        period="2026-10",
        content_hash=content_hash(doc),
        canonical_json=canonical_json(doc).decode(),
        adjustments=(adjustment,),
        adjustments_hash="0" * 64,
        inputs={},
        event_count=0,
        closed_at=datetime(2026, 11, 4, tzinfo=UTC),
        closed_by="test",
        licences={
            lic.licence_id: LicenceMeta(lic.licence_id, lic.talent_id, lic.vendor_id, "USD")
            for lic in case.licences
        },
    )


def test_json_export_is_the_canonical_document_with_its_hash() -> None:
    stored = _stored()
    file = export.json_export(stored.document, stored.period)
    assert file.sha256 == stored.content_hash
    assert json.loads(file.content) == load_case(CASE).expected | {"period": "2026-10"}


def test_csv_export_has_every_line_held_allocation_and_adjustment() -> None:
    stored = _stored()
    content = export.csv_export(stored.document, stored.adjustments).content.decode()
    rows = list(csv.DictReader(io.StringIO(content)))
    kinds = [r["record"] for r in rows]
    assert kinds.count("line") == 4 and kinds.count("allocation") == 3
    assert kinds[-1] == "adjustment:line"
    adj = rows[-1]
    assert (adj["adjusts_period"], adj["units"], adj["amount"]) == ("2026-09", "2", "0.50")
    view = next(r for r in rows if r["record"] == "line" and r["kind"] == "VIEW"
                and r["licence_id"] == "LIC-GUS-PIXEL")  # fmt: skip
    assert (view["channel"], view["units"], view["rate"], view["amount"], view["currency"]) == (
        "social", "9400", "1.50", "14.10", "USD"
    )  # fmt: skip


def test_views_by_role() -> None:
    stored = _stored()
    finance = Principal("f", Role.FINANCE)
    assert access.statement_view(finance, stored) == stored.document
    pixel = access.statement_view(Principal("v", Role.VENDOR, vendor_id="VEN-PIXEL"), stored)
    assert [x["licence_id"] for x in pixel["licences"]] == ["LIC-GUS-PIXEL"]
    assert pixel["payees"] == [] and pixel["violations"] == [] and pixel["dlq"] == []
    agent = access.statement_view(Principal("a", Role.TALENT, talent_id="AGT-MO"), stored)
    assert [x["licence_id"] for x in agent["licences"]] == ["LIC-GUS-ACME"]
    assert [p["payee_id"] for p in agent["payees"]] == ["AGT-MO"]
    narrowed = access.statement_view(finance, stored, vendor_id="VEN-ACME", payee_id="TAL-GUS")
    assert [x["licence_id"] for x in narrowed["licences"]] == ["LIC-GUS-ACME"]
    assert [p["payee_id"] for p in narrowed["payees"]] == ["TAL-GUS"]
    # a talent filter cannot widen a talent's view
    other = access.statement_view(
        Principal("a", Role.TALENT, talent_id="AGT-MO"), stored, licence_ids=("LIC-GUS-PIXEL",)
    )
    assert other["licences"] == []


def test_payout_scope() -> None:
    talent = Principal("t", Role.TALENT, talent_id="TAL-GUS")
    assert access.payout_scope(talent, "") == "TAL-GUS"
    with pytest.raises(PermissionDenied):
        access.payout_scope(talent, "AGT-MO")
    with pytest.raises(PermissionDenied):
        access.payout_scope(Principal("v", Role.VENDOR, vendor_id="V"), "")
    assert access.payout_scope(Principal("a", Role.ADMIN), "X") == "X"


def test_who_may_have_a_statement_document_or_its_evidence() -> None:
    talent = Principal("t", Role.TALENT, talent_id="TAL-GUS")
    agent = Principal("a", Role.TALENT, talent_id="AGT-MO")
    finance = Principal("f", Role.FINANCE)
    vendor = Principal("v", Role.VENDOR, vendor_id="V")
    assert access.document_payee(talent, "") == "TAL-GUS"
    assert access.document_payee(agent, "AGT-MO") == "AGT-MO"
    assert access.document_payee(finance, "TAL-GUS") == "TAL-GUS"
    with pytest.raises(PermissionDenied, match="AGT-MO"):
        access.document_payee(agent, "TAL-GUS")
    with pytest.raises(PermissionDenied):
        access.document_payee(vendor, "")
    with pytest.raises(InvalidArgument, match="payee_id"):
        access.document_payee(finance, "")
    assert access.evidence_payee(finance, "") is None  # the whole statement
    assert access.evidence_payee(Principal("x", Role.ADMIN), "AGT-MO") == "AGT-MO"
    assert access.evidence_payee(talent, "") == "TAL-GUS"
    with pytest.raises(PermissionDenied):
        access.evidence_payee(vendor, "")


def test_settings() -> None:
    settings = load(PayoutsSettings, {"PAYOUTS_THRESHOLDS": "usd=25.00, JPY=1000"})
    assert settings.thresholds == {"USD": Decimal("25.00"), "JPY": Decimal(1000)}
    assert settings.grace.days == 3
    assert parse_thresholds("") == {}
    for bad in ("USD", "XXX=1", "USD=-1", "USD=abc"):
        with pytest.raises(ConfigError, match="PAYOUTS_THRESHOLDS"):
            load(PayoutsSettings, {"PAYOUTS_THRESHOLDS": bad})
    with pytest.raises(ConfigError, match="PAYOUTS_RAIL"):
        load(PayoutsSettings, {"PAYOUTS_RAIL": "bank"})
