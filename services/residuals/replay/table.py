"""A statement for people: fixed-width tables on a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        out.append(
            "  ".join(
                c.rjust(w) if n and _numeric(c) else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            ).rstrip()
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).isdigit()


def render_table(doc: dict[str, Any]) -> str:
    out = [f"Statement for period {doc['period']}", ""]
    for lic in doc["licences"]:
        cur = lic["currency"]
        out.append(f"Licence {lic['licence_id']} ({cur})")
        rows = [
            [ln["kind"], ln["version"], ln.get("tier", ln.get("channel")), ln["units"],
             ln.get("rate", ln.get("revenue", "")), ln["amount"]]
            for ln in lic["lines"]
        ]  # fmt: skip
        out += [
            "  " + s
            for s in _table(
                ["kind", "ver", "tier/channel", "units", "rate/revenue", "amount"], rows
            )
        ]
        if lic["held"]:
            out.append("  held (not paid until resolved):")
            held = [[h["violation"], h["kind"], h["units"], h["amount"]] for h in lic["held"]]
            out += ["    " + s for s in _table(["violation", "kind", "units", "amount"], held)]
        ex = lic["excluded"]
        out.append(
            f"  excluded: duplicates {ex['duplicates']}, ivt {ex['ivt']} units, "
            f"non-viewable {ex['non_viewable']} units, retracted {ex['retracted']}"
        )
        for key in ("earned", "minimum_guarantee_topup", "gross", "platform_fee", "net",
                    "advance_recouped", "vendor_invoice"):  # fmt: skip
            out.append(f"  {key.replace('_', ' '):<24}{lic[key]:>14} {cur}")
        for a in lic["allocations"]:
            out.append(f"  -> {a['payee_id']:<21}{a['amount']:>14} {cur}")
        out.append("")
    out.append("Payees")
    payees = [
        [p["payee_id"], p["currency"], p["earned"], p["payable"], p["carried_forward"]]
        for p in doc["payees"]
    ]
    out += [
        "  " + s
        for s in _table(["payee", "currency", "earned", "payable", "carried forward"], payees)
    ]
    out.append("")
    out.append(
        "Violations: "
        + (
            ", ".join(f"{v['kind']} ({v['severity']}) x{v['count']}" for v in doc["violations"])
            or "none"
        )
    )
    out.append(
        "Dead letters: " + (", ".join(f"{d['reason']} x{d['count']}" for d in doc["dlq"]) or "none")
    )
    return "\n".join(out)
