"""A :class:`StatementView` as bytes: HTML (Jinja2), PDF (WeasyPrint), CSV; and the JSON part.

Names, territories, channels and categories come from vendors and registrations: hostile
text. The templates autoescape everything; only the charts' SVG (drawn by matplotlib from
numbers and fixed labels) is marked safe. CSV cells that a spreadsheet would run as a
formula are prefixed with an apostrophe. The HTML is one self-contained page (inline CSS
and SVG, no external request) and is deterministic: same view, same bytes.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from residuals.domain.closing import canonical_json
from residuals.payouts.documents import charts
from residuals.payouts.documents.model import Money, StatementView
from residuals.payouts.export import csv_bytes

CSV_COLUMNS: tuple[str, ...] = (
    "period",
    "payee_id",
    "record",
    "licence_id",
    "talent_id",
    "avatar_id",
    "vendor_id",
    "kind",
    "version",
    "tier",
    "channel",
    "territory",
    "violation",
    "units",
    "rate",
    "revenue",
    "amount",
    "held_units",
    "held_amount",
    "currency",
    "payout_id",
    "state",
    "rail",
    "rail_reference",
    "paid_at",
)

#: Text a spreadsheet would treat as a formula when it starts a cell.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@functools.cache
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("residuals.payouts.documents", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["units"] = lambda n: f"{n:,}"
    env.filters["decimal"] = lambda d: "" if d is None else format(d, ",f")
    env.filters["when"] = lambda t: "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")
    env.filters["nonblank"] = lambda s: s if s else "—"
    return env


def html_document(view: StatementView, *, charts_as_images: bool = False) -> bytes:
    """The statement as one self-contained HTML page (UTF-8), charts as inline SVG.

    ``charts_as_images`` embeds them as ``data:`` images instead, for WeasyPrint: it
    renders an SVG image with its own SVG styles, while inline SVG elements would go
    through the page's CSS cascade (slower, and a warning per SVG style it ignores)."""
    from markupsafe import Markup

    digits = {c.code: c.minor_digits for c in view.currencies}
    drawn = {
        "usage": ("Usage per day", charts.usage_chart(view.daily)),
        "earnings": ("Earnings per day", charts.earnings_chart(view.daily, digits)),
    }
    shown = {
        name: Markup(_image(alt, svg) if charts_as_images and svg else svg)
        for name, (alt, svg) in drawn.items()
    }
    page = (
        _environment()
        .get_template("statement.html.j2")
        .render(
            view=view,
            usage_svg=shown["usage"],
            earnings_svg=shown["earnings"],
            css=Markup(_css()),
        )
    )
    return str(page).encode("utf-8")


def _image(alt: str, svg: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img class="chart-image" alt="{alt}" src="data:image/svg+xml;base64,{data}">'


@functools.cache
def _css() -> str:
    from importlib.resources import files

    return (files("residuals.payouts.documents") / "templates" / "statement.css").read_text("utf-8")


def pdf_document(view: StatementView) -> bytes:
    """The HTML page printed to A4 by WeasyPrint (headers and page numbers from its CSS)."""
    from weasyprint import HTML

    html = html_document(view, charts_as_images=True).decode("utf-8")
    pdf: bytes = HTML(string=html).write_pdf()
    return pdf


def json_document(part: Mapping[str, Any]) -> bytes:
    """The part as canonical JSON: the bytes its SHA-256 is computed over."""
    return canonical_json(part)


def _text(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _amount(money: Money) -> str:
    return format(money.amount, "f")


def csv_rows(view: StatementView) -> Iterator[dict[str, Any]]:
    """One row per statement line, held line, breakdown cell and payout."""
    base = {"period": view.period, "payee_id": view.payee.party_id}
    licences = {lic.licence_id: lic for lic in view.licences}
    for lic in view.licences:
        who = base | {
            "licence_id": lic.licence_id,
            "talent_id": lic.talent.party_id,
            "avatar_id": lic.avatar.party_id,
            "vendor_id": lic.vendor.party_id,
            "currency": lic.currency,
        }
        for line in lic.lines:
            yield who | {
                "record": "line",
                "kind": line.kind,
                "version": line.version,
                "tier": line.tier,
                "channel": line.channel,
                "units": line.units,
                "rate": _plain(line.rate),
                "revenue": _plain(line.revenue),
                "amount": _amount(line.amount),
            }
        for held in lic.held:
            yield who | {
                "record": "held",
                "kind": held.kind,
                "violation": held.violation,
                "units": held.units,
                "amount": _amount(held.amount),
            }
    for group in view.breakdown:
        talents = {licences[i].talent.party_id for i in group.licence_ids if i in licences}
        for cell in group.cells:
            yield base | {
                "record": "breakdown",
                "licence_id": " ".join(group.licence_ids),
                "talent_id": " ".join(sorted(talents)),
                "avatar_id": group.avatar.party_id,
                "vendor_id": group.vendor.party_id,
                "kind": cell.kind,
                "channel": cell.channel,
                "territory": cell.territory,
                "units": cell.units,
                "amount": _amount(cell.amount),
                "held_units": cell.held_units,
                "held_amount": _amount(cell.held_amount),
                "currency": group.currency,
            }
    for payout in view.payouts:
        yield base | {
            "record": "payout",
            "amount": _amount(payout.amount),
            "currency": payout.amount.currency,
            "payout_id": payout.payout_id,
            "state": payout.state,
            "rail": payout.rail,
            "rail_reference": payout.rail_reference,
            "paid_at": payout.paid_at.isoformat() if payout.paid_at else "",
        }


def _plain(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def csv_document(view: StatementView) -> bytes:
    return csv_bytes(CSV_COLUMNS, ({k: _text(v) for k, v in r.items()} for r in csv_rows(view)))
