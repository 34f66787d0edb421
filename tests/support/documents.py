"""A payee's statement document built from the rules alone (no database), for the unit
tier: three licences in USD, EUR and JPY, a month of renders, views and impressions across
territories and channels, and misuse (an unlicensed territory and channel, a forbidden
category that suspends a licence, and the suspended uses after it), rated once by
``compute_statement`` with the document's tally as its ``on_rated`` hook."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licences import Licence
from residuals.domain.parts import part_document, part_licence_ids
from residuals.domain.statement import compute_statement
from residuals.payouts.documents.model import (
    LicenceParties,
    Names,
    PayoutFact,
    StatementFacts,
    StatementView,
    build_view,
)
from residuals.payouts.tally import MISUSE_LIMIT, StatementUsage, UsageTally, usage_from_json
from tests.support.builders import PERIOD, licence

HOSTILE = "<script>alert('x')</script>"
TERRITORIES = ("US", "GB", "DE", "JP")
CLOSED_AT = datetime(2026, 11, 4, 9, 30, tzinfo=UTC)


def sample_licences() -> list[Licence]:
    jpy_rates = {
        "render_tiers": [{"up_to": 50, "unit_price": "120"}, {"up_to": None, "unit_price": "90"}],
        "view_cpm": "250",
        "ad_floor_cpm": "100",
    }
    return [
        licence(licence_id="LIC-1", scope={"territories_allowed": ["US", "GB", "DE", "JP"]}),
        licence(licence_id="LIC-2", currency="EUR", splits={"TAL-1": "0.25", "AGT-1": "0.75"}),
        licence(licence_id="LIC-3", currency="JPY", rates=jpy_rates, minimum_guarantee="5000"),
    ]


def sample_events(days: int = 28) -> list[dict[str, Any]]:
    """Raw events in arrival order: every kind, four territories, two channels, misuse."""
    start = PERIOD.start
    raws: list[dict[str, Any]] = []
    for n in range(days * 6):
        at = start + timedelta(hours=4 * n + 1)
        lic = ("LIC-1", "LIC-2", "LIC-3")[n % 3]
        base = {"licence_id": lic, "occurred_at": at.isoformat(), "render_id": f"r-{lic}"}
        territory = TERRITORIES[n % 4]
        raws.append(_ev("RENDER", f"r{n}", base, territory=territory, quantity=1 + n % 4))
        raws.append(
            _ev(
                "VIEW",
                f"v{n}",
                base,
                territory=territory,
                channel=("web", "social")[n % 2],
                quantity=700 + 13 * n,
            )
        )
        if n % 5 == 0:
            raws.append(
                _ev("AD_IMPRESSION", f"a{n}", base, territory="GB", quantity=40, ad_revenue="3.30")
            )
    late = start + timedelta(days=days - 2)
    misuse = {"licence_id": "LIC-1", "render_id": "r-LIC-1"}
    raws.append(_ev("RENDER", "m-kp", misuse, territory="KP", occurred_at=late))
    raws.append(_ev("VIEW", "m-tv", misuse, channel="broadcast", occurred_at=late))
    raws.append(
        _ev("RENDER", "m-pol", misuse, category="political", occurred_at=late + timedelta(hours=1))
    )
    for k in range(6):  # after the automatic suspension
        at = late + timedelta(hours=2 + k)
        raws.append(_ev("VIEW", f"m-s{k}", misuse, channel="web", quantity=500, occurred_at=at))
    return raws


def _ev(kind: str, event_id: str, base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "event_id": event_id,
        "vendor_id": "VEN-1",
        "kind": kind,
        "avatar_id": "AVA-1",
        "category": "product_demo",
        "territory": "US",
        **base,
    }
    if kind in ("VIEW", "AD_IMPRESSION"):
        raw.setdefault("channel", "web")
    raw.update(fields)
    if isinstance(raw["occurred_at"], datetime):
        raw["occurred_at"] = raw["occurred_at"].isoformat()
    return raw


@dataclass
class Sample:
    view: StatementView
    part: dict[str, Any]
    document: dict[str, Any]
    tally: UsageTally


def sample(
    payee_id: str = "TAL-1",
    *,
    talent_name: str = "Ada Lovelace",
    payee_name: str = "Ada Lovelace",
    vendor_name: str = "PixelForge",
    extra: list[dict[str, Any]] | None = None,
    misuse_limit: int = MISUSE_LIMIT,
    stored: bool = False,
) -> Sample:
    """``payee_id``'s document of the sample month (``extra`` raw events appended); with
    ``stored``, its tally is the close's per-licence tallies through JSON and merged, as a
    document reads them from ``statement_usage``."""
    licences = sample_licences()
    events: list[UsageEvent | Rejection] = [
        parse_event(r) for r in [*sample_events(), *(extra or [])]
    ]
    carried_in = {(payee_id, "USD"): Decimal("4.50")}
    ids = part_licence_ids(compute_statement(PERIOD, licences, events).to_document(), payee_id)
    tally = UsageTally(PERIOD, ids, misuse_limit=misuse_limit)
    kept = StatementUsage(PERIOD, misuse_limit=misuse_limit)
    document = compute_statement(
        PERIOD, licences, events, carried_in=carried_in, on_rated=kept if stored else tally
    ).to_document()
    if stored:
        for licence_id in sorted(kept.tallies):
            tally.add(usage_from_json(json.loads(kept.tallies[licence_id])))
    part = part_document(document, payee_id)
    names = Names(
        payee_id=payee_id,
        payee_kind="talent" if payee_id.startswith("TAL") else "agent",
        payee_name=payee_name,
        talents={"TAL-1": talent_name},
        avatars={"AVA-1": "Ada (studio avatar)"},
        vendors={"VEN-1": vendor_name},
        licences={
            lic.licence_id: LicenceParties(lic.talent_id, lic.avatar_id, lic.vendor_id)
            for lic in licences
        },
    )
    payouts = [
        PayoutFact(
            f"po-{b['currency']}",
            b["currency"],
            Decimal(b["payable"]),
            "PAID",
            "file",
            f"file:{b['currency']}-0001",
            CLOSED_AT + timedelta(days=1),
        )
        for b in part["payees"]
        if Decimal(b["payable"])
    ]
    view = build_view(
        part,
        names=names,
        tally=tally,
        payouts=payouts,
        facts=StatementFacts(str(PERIOD), "ab" * 32, CLOSED_AT, {"USD": Decimal("4.50")}),
    )
    return Sample(view, part, document, tally)


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    """The PDF's text laid out as printed (``pdftotext -layout``, poppler-utils)."""
    path = tmp_path / "statement.pdf"
    path.write_bytes(pdf)
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext is missing: apt-get install poppler-utils (.ci/run installs it)"
    return subprocess.run(
        [tool, "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
