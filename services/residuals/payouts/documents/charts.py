"""The document's daily charts as SVG, drawn by matplotlib (not by hand).

Text stays text (``svg.fonttype = 'none'``, DejaVu Sans, which matplotlib ships and the
image installs): it renders in browsers and in WeasyPrint alike and stays small. Output is
deterministic, so the same statement gives the same HTML bytes: a fixed ``svg.hashsalt``
per chart (ids stay unique when two charts share one page), no date, no metadata block.
Charts show only numbers, day numbers, kind labels and currency codes, never a vendor's or
a person's text. Money is converted to float here only to be plotted.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence
from datetime import date
from typing import Any

from residuals.payouts.documents.model import DailySeries

BILLED, HELD = "#2f6690", "#d1495b"
_LOCK = threading.Lock()  # rcParams are process-wide; the servicer renders on many threads
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)
_ID = re.compile(r'\bid="([^"]+)"')
_REFERENCE = re.compile(r'(url\(#|href="#)([^)"]+)')


def _rc(name: str) -> Any:  # rc_context's key type lists every rcParam name
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": f"residuals-{name}",
        "font.family": "DejaVu Sans",
        "font.size": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }


def _svg(figure: Any, prefix: str) -> str:
    """The figure as an ``<svg>`` element: no XML prolog or metadata, and every id (and
    reference to one) prefixed, since matplotlib numbers ids from 1 in each file and two
    charts share one HTML page."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = _METADATA.sub("", text[text.index("<svg") :]).strip()
    text = _ID.sub(lambda m: f'id="{prefix}-{m[1]}"', text)
    return _REFERENCE.sub(lambda m: f"{m[1]}{prefix}-{m[2]}", text)


def _panels(
    title: str,
    name: str,
    days: Sequence[date],
    rows: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
) -> str:
    """One bar panel per row (label, billed, held, y tick format), days along x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    x = [d.day for d in days]
    with _LOCK, matplotlib.rc_context(_rc(name)):
        figure = Figure(figsize=(7.0, 0.4 + 1.45 * len(rows)), layout="constrained")
        figure.suptitle(title, fontsize=9, fontweight="bold", x=0.02, ha="left")
        axes = figure.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (label, billed, held, tick) in zip(axes, rows, strict=True):
            ax.bar(x, billed, color=BILLED, width=0.8, label="billed")
            if any(held):
                ax.bar(x, held, bottom=billed, color=HELD, width=0.8, label="held (not paid)")
            ax.set_ylabel(label)
            ax.yaxis.set_major_formatter(StrMethodFormatter(tick))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlim(0.4, len(x) + 0.6)
            ax.grid(axis="y", color="#dddddd", linewidth=0.5)
            ax.set_axisbelow(True)
        axes[-1].set_xticks([d for d in x if d == 1 or d % 5 == 0])
        axes[-1].set_xlabel(f"day of {days[0]:%B %Y} (UTC)")
        legend: dict[str, Artist] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
        figure.legend(
            list(legend.values()), list(legend), loc="outside upper right", frameon=False, ncols=2
        )
        return _svg(figure, name)


def usage_chart(daily: DailySeries) -> str:
    """Units used per day, one panel per kind, billed and held stacked ('' if no use)."""
    if daily.empty:
        return ""
    rows = [(s.label + "s", s.billed, s.held, "{x:,.0f}") for s in daily.usage]
    return _panels("Usage per day (units)", "usage", daily.days, rows)


def earnings_chart(daily: DailySeries, digits: dict[str, int]) -> str:
    """Amounts per day, one panel per currency, billed and held stacked ('' if none)."""
    if not daily.earnings:
        return ""
    rows = [
        (
            s.currency,
            [float(a) for a in s.billed],
            [float(a) for a in s.held],
            f"{{x:,.{min(digits.get(s.currency, 2), 2)}f}}",
        )
        for s in daily.earnings
    ]
    return _panels("Earnings per day (before fees and splits)", "earnings", daily.days, rows)
