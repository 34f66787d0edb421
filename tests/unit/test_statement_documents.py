"""Statement documents from the rules alone: the view's breakdowns add up to the binding
statement lines, held use matches the held lines, misuse is capped, hostile text is
escaped, output is deterministic, and the PDF and the page a browser shows carry the
names and the figures of the JSON part."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from residuals.domain.closing import canonical_json
from residuals.domain.money import quantum
from residuals.domain.parts import part_hash
from residuals.domain.vocabulary import Violation
from residuals.payouts.documents import DocumentFormat, document_filename, formats
from residuals.payouts.documents.guidance import releases
from residuals.payouts.documents.model import Money
from tests.support.documents import HOSTILE, pdf_text, sample


def test_breakdown_cells_add_up_to_the_statement_lines() -> None:
    s = sample()
    assert s.view.breakdown
    licences = {lic["licence_id"]: lic for lic in s.part["licences"]}
    assert sorted(i for g in s.view.breakdown for i in g.licence_ids) == sorted(licences)
    for group in s.view.breakdown:
        mine = [licences[i] for i in group.licence_ids]
        assert {lic["currency"] for lic in mine} == {group.currency}
        for kind in {line["kind"] for lic in mine for line in lic["lines"]}:
            lines = [line for lic in mine for line in lic["lines"] if line["kind"] == kind]
            cells = [c for c in group.cells if c.kind == kind]
            assert sum(c.units for c in cells) == sum(line["units"] for line in lines)
            # each line and each cell is rounded once: half a minor unit each at most
            slack = quantum(group.currency) * (len(cells) + len(lines)) / 2
            cell_total = sum((c.amount.amount for c in cells), Decimal(0))
            line_total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
            assert abs(cell_total - line_total) <= slack, (group.licence_ids, kind)
        held_units = sum(h["units"] for lic in mine for h in lic["held"])
        assert sum(c.held_units for c in group.cells) == held_units


def test_held_per_violation_equals_the_held_lines() -> None:
    s = sample()
    for lic in s.part["licences"]:
        for held in lic["held"]:
            summed = s.tally.held[(lic["licence_id"], Violation(held["violation"]), held["kind"])]
            assert summed.units == held["units"]
            rounded = summed.amount.quantize(quantum(lic["currency"]))
            assert format(rounded, "f") == held["amount"]
    by_violation: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for lic in s.part["licences"]:
        for held in lic["held"]:
            by_violation[(held["violation"], lic["currency"])] += Decimal(held["amount"])
    shown = {(v.violation, v.currency): v.amount.amount for v in s.view.held_by_violation}
    assert shown == dict(by_violation)
    assert {v.violation for v in s.view.held_by_violation} >= {
        "LICENCE_SUSPENDED",
        "FORBIDDEN_CATEGORY",
        "TERRITORY_NOT_LICENSED",
        "CHANNEL_NOT_LICENSED",
    }
    for v in s.view.held_by_violation:
        assert v.releases == releases(v.violation)
        assert v.severity == Violation(v.violation).severity.value


def test_every_violation_says_what_would_release_it_and_the_close_pays_no_held_money() -> None:
    for violation in Violation:
        assert releases(violation)
    assert "does not pay held money" in sample().view.held_note


def test_misuse_lists_the_most_recent_and_sums_the_rest() -> None:
    full = sample()
    capped = sample(misuse_limit=5)
    assert full.view.misuse_total == capped.view.misuse_total == len(full.view.misuse)
    assert len(capped.view.misuse) == 5
    assert capped.view.misuse == full.view.misuse[:5]  # newest first
    times = [m.occurred_at for m in full.view.misuse]
    assert times == sorted(times, reverse=True)
    listed = len(capped.view.misuse) + sum(r.uses for r in capped.view.misuse_rest)
    assert listed == capped.view.misuse_total
    held = sum((m.held_amount.amount for m in full.view.misuse), Decimal(0))
    rest = sum((r.amount.amount for r in capped.view.misuse_rest), Decimal(0))
    shown = sum((m.held_amount.amount for m in capped.view.misuse), Decimal(0))
    assert abs(rest + shown - held) <= Decimal("0.01") * len(capped.view.misuse_rest)
    assert not full.view.misuse_rest


def test_daily_series_cover_the_month_and_add_up() -> None:
    s = sample()
    assert len(s.view.daily.days) == 31 and s.view.daily.days[0].day == 1
    units = {k.kind: sum(k.billed) + sum(k.held) for k in s.view.daily.usage}
    for kind, total in units.items():
        cells = sum(
            c.units + c.held_units for g in s.view.breakdown for c in g.cells if c.kind == kind
        )
        assert total == cells
    for series in s.view.daily.earnings:
        lines = sum(
            (
                Decimal(line["amount"])
                for lic in s.part["licences"]
                if lic["currency"] == series.currency
                for line in lic["lines"]
            ),
            Decimal(0),
        )
        assert abs(sum(series.billed, Decimal(0)) - lines) < quantum(series.currency) * 10


def test_hostile_text_is_escaped_in_html() -> None:
    s = sample(
        talent_name=HOSTILE,
        payee_name=HOSTILE,
        vendor_name="Evil & Co <img src=x onerror=alert(1)>",
        extra=[
            {
                "event_id": "h1",
                "vendor_id": "VEN-1",
                "kind": "VIEW",
                "licence_id": "LIC-2",
                "avatar_id": "AVA-1",
                "render_id": "r-LIC-2",
                "category": "product_demo",
                "territory": "<b>US</b>",
                "channel": "<script>x</script>",
                "occurred_at": "2026-10-03T05:00:00Z",
            }
        ],
    )
    html = formats.html_document(s.view)
    assert b"<script>" not in html and b"<img" not in html and b"<b>" not in html
    assert b"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert b"Evil &amp; Co &lt;img src=x onerror=alert(1)&gt;" in html
    assert b"&lt;script&gt;x&lt;/script&gt;" in html


def test_the_same_statement_gives_the_same_html_bytes() -> None:
    first, second = formats.html_document(sample().view), formats.html_document(sample().view)
    assert first == second
    assert b"<svg" in first and b"<metadata>" not in first
    assert first.count(b"<svg") == 2


def test_csv_has_a_row_per_line_held_line_cell_and_payout() -> None:
    s = sample()
    rows = list(csv.DictReader(io.StringIO(formats.csv_document(s.view).decode("utf-8"))))
    kinds = defaultdict(list)
    for row in rows:
        kinds[row["record"]].append(row)
    assert len(kinds["line"]) == sum(len(lic["lines"]) for lic in s.part["licences"])
    assert len(kinds["held"]) == sum(len(lic["held"]) for lic in s.part["licences"])
    assert len(kinds["breakdown"]) == sum(len(g.cells) for g in s.view.breakdown)
    assert len(kinds["payout"]) == len(s.view.payouts) == 3
    assert set(kinds) == {"line", "held", "breakdown", "payout"}
    assert [r["amount"] for r in kinds["line"]] == [
        line["amount"] for lic in s.part["licences"] for line in lic["lines"]
    ]


def test_csv_cells_never_start_a_formula() -> None:
    s = sample(
        extra=[
            {
                "event_id": "f1",
                "vendor_id": "VEN-1",
                "kind": "VIEW",
                "licence_id": "LIC-2",
                "avatar_id": "AVA-1",
                "render_id": "r-LIC-2",
                "category": "product_demo",
                "territory": "=HYPERLINK(1)",
                "channel": "@SUM(A1)",
                "occurred_at": "2026-10-03T05:00:00Z",
            }
        ]
    )
    rows = list(csv.DictReader(io.StringIO(formats.csv_document(s.view).decode("utf-8"))))
    hostile = [r for r in rows if r["territory"].startswith("'=")]
    assert hostile and hostile[0]["channel"] == "'@SUM(A1)"
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values())


def test_json_is_the_canonical_part_and_its_hash() -> None:
    s = sample()
    content = formats.json_document(s.part)
    assert content == canonical_json(s.part)
    assert json.loads(content) == s.part
    assert s.view.part_sha256 == part_hash(s.part)


def test_file_names_are_safe() -> None:
    name = document_filename("2026-10", "AGT/../1", DocumentFormat.PDF, "TAL 2")
    assert name == "residuals-2026-10-payee-AGT_.._1-talent-TAL_2.pdf"


def test_pdf_text_has_the_names_and_the_figures_of_the_json_part(tmp_path: Path) -> None:
    s = sample(talent_name="Ada Lovelace", vendor_name="PixelForge Studios")
    text = pdf_text(formats.pdf_document(s.view), tmp_path)
    flat = " ".join(text.split())
    for name in ("Ada Lovelace", "Ada (studio avatar)", "PixelForge Studios"):
        assert name in flat
    for balance in s.part["payees"]:
        currency = balance["currency"]
        for key in ("earned", "payable", "carried_forward"):
            assert str(Money(Decimal(balance[key]), currency)) in flat, (key, currency)
    for lic in s.part["licences"]:
        assert str(Money(Decimal(lic["earned"]), lic["currency"])) in flat
        for line in [*lic["lines"], *lic["held"]]:
            assert str(Money(Decimal(line["amount"]), lic["currency"])) in flat, line
    assert "page 1 of" in flat
    assert s.view.part_sha256 in flat


def test_a_browser_renders_the_page(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: apt-get install chromium (.ci/run installs it)"
    page = tmp_path / "statement.html"
    page.write_bytes(formats.html_document(sample().view))
    shot = tmp_path / "statement.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1100,2400",
        page.as_uri(),
    ]
    subprocess.run(command, capture_output=True, check=True, timeout=120)
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1100, 2400)
        counts = rgb.getcolors(maxcolors=1100 * 2400) or []
    inked = sum(n for n, colour in counts if sum(colour) < 720) / (1100 * 2400)
    colours = len(counts)
    assert inked > 0.02, inked  # text, rules and bars, not a blank page
    assert colours > 50, colours  # the blue bars and red held text among them


@pytest.mark.parametrize("fmt", list(DocumentFormat))
def test_every_format_has_a_content_type(fmt: DocumentFormat) -> None:
    from residuals.payouts.documents import CONTENT_TYPES

    assert CONTENT_TYPES[fmt]
