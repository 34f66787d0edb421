"""Statement exports: JSON (the §10 document, canonical) and CSV (one row per item).

The JSON export of a whole statement is byte for byte the canonical JSON whose SHA-256 is
the statement's ``content_hash``, so a finance user can verify a file against the hash
shown by ``residuals finance statements``. CSV rows carry every line, held line,
allocation and adjustment with its licence, so a spreadsheet sums to the statement.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from residuals.domain.adjustments import AdjustmentLine
from residuals.domain.closing import canonical_json

CSV_COLUMNS: tuple[str, ...] = (
    "period",
    "record",
    "licence_id",
    "kind",
    "version",
    "tier",
    "channel",
    "violation",
    "payee_id",
    "units",
    "rate",
    "revenue",
    "amount",
    "currency",
    "adjusts_period",
    "ref",
)


@dataclass(frozen=True)
class ExportFile:
    content: bytes
    content_type: str
    filename: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def json_export(document: Mapping[str, Any], period: str, suffix: str = "") -> ExportFile:
    return ExportFile(
        canonical_json(document), "application/json", f"residuals-{period}{suffix}.json"
    )


def adjustments_json(adjustments: Iterable[AdjustmentLine], period: str) -> ExportFile:
    body = json.dumps(
        {"period": period, "adjustments": [a.to_document() for a in adjustments]},
        sort_keys=True,
        indent=2,
    )
    return ExportFile(
        (body + "\n").encode("utf-8"), "application/json", f"residuals-{period}-adjustments.json"
    )


def csv_rows(
    document: Mapping[str, Any], adjustments: Iterable[AdjustmentLine] = ()
) -> list[dict[str, Any]]:
    period = document["period"]
    rows: list[dict[str, Any]] = []
    for lic in document["licences"]:
        base = {"period": period, "licence_id": lic["licence_id"], "currency": lic["currency"]}
        for line in lic["lines"]:
            rows.append(
                base
                | {
                    "record": "line",
                    "kind": line["kind"],
                    "version": line["version"],
                    "tier": line.get("tier", ""),
                    "channel": line.get("channel", ""),
                    "units": line["units"],
                    "rate": line.get("rate", ""),
                    "revenue": line.get("revenue", ""),
                    "amount": line["amount"],
                }
            )
        for held in lic["held"]:
            rows.append(
                base
                | {
                    "record": "held",
                    "kind": held["kind"],
                    "violation": held["violation"],
                    "units": held["units"],
                    "amount": held["amount"],
                }
            )
        for alloc in lic["allocations"]:
            rows.append(
                base
                | {"record": "allocation", "payee_id": alloc["payee_id"], "amount": alloc["amount"]}
            )
    for adj in adjustments:
        rows.append(
            {
                "period": period,
                "record": f"adjustment:{adj.section}",
                "licence_id": adj.licence_id,
                "kind": adj.ref.split("/")[0] if adj.section == "line" else "",
                "payee_id": adj.ref if adj.section == "allocation" else "",
                "units": adj.units,
                "amount": format(adj.amount, "f"),
                "currency": adj.currency,
                "adjusts_period": adj.adjusts_period,
                "ref": adj.ref,
            }
        )
    return rows


def csv_bytes(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """RFC 4180 CSV (CRLF) with a header row; missing and None cells are empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def csv_export(
    document: Mapping[str, Any], adjustments: Iterable[AdjustmentLine] = ()
) -> ExportFile:
    period = document["period"]
    content = csv_bytes(CSV_COLUMNS, csv_rows(document, adjustments))
    return ExportFile(content, "text/csv", f"residuals-{period}.csv")
