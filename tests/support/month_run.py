"""A deterministic month of signed usage for the metering end-to-end tests, and the check
they all end with: every published record in the ledger exactly once, and the ledger's
statement equal to the offline replay of the same events, to the cent."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from residuals.domain.events import parse_event
from residuals.domain.period import Period
from residuals.domain.statement import PeriodStatement, compute_statement
from residuals.ledger.history import load_period_events
from tests.support.metering import Pipeline, UsageRecord
from tests.support.month import make_events, make_licences


@dataclass
class Month:
    period: Period
    records: list[UsageRecord]
    offline: PeriodStatement

    def chunks(self, count: int) -> list[list[UsageRecord]]:
        size = len(self.records) // count
        return [
            self.records[i * size : (i + 1) * size if i < count - 1 else len(self.records)]
            for i in range(count)
        ]


def run_period(run_id: str) -> Period:
    """A period of this run alone (test-owned years), so no other run's rows mix in."""
    n = int(run_id, 16)
    return Period(2040 + n % 50, 1 + (n // 50) % 12)


def prepare_month(run: Pipeline, *, events: int, licences: int, vendors: int) -> Month:
    """Licences and keys published, the month's records signed (not yet published) and
    its statement computed offline."""
    period = run_period(run.run_id)
    run.delete_period(str(period))
    specs = make_licences(licences, vendors)
    for spec in specs:
        spec["vendor_id"] = run.vendor(spec["vendor_id"])
    run.publish_licences(specs)
    run.publish_keys(sorted({s["vendor_id"] for s in specs}))
    raws = list(make_events(specs, events, period=str(period)))
    offline = compute_statement(period, run.licences, [parse_event(e) for e in raws])
    # Signed as the SDK's ``publish_many`` signs (one signature per 256 events of a
    # vendor, with Merkle proofs), keyed as it keys them.
    return Month(period, run.sdk_records(raws), offline)


def _statement_units(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for block in doc["licences"]:
        units = sum(line["units"] for line in block["lines"]) + sum(
            h["units"] for h in block["held"]
        )
        ex = block["excluded"]
        out[block["licence_id"]] = {
            "units": units,
            "excluded": ex["ivt"] + ex["non_viewable"],
            "duplicates": ex["duplicates"],
            "retracted": ex["retracted"],
        }
    return out


def assert_ledger_is_the_replay(
    run: Pipeline, month: Month, rows: list[tuple[str, int, int]], out_dir: Path
) -> None:
    # Zero lost, zero duplicated: each published record's position exactly once.
    stored = Counter((p, o) for _table, p, o in rows)
    assert [pos for pos, n in stored.items() if n > 1] == []
    assert sorted(stored) == sorted(run.produced)
    assert len(run.produced) == len(month.records)

    # The ledger's statement equals the offline replay of the same events, to the cent.
    with run.connect() as conn:
        replayed = compute_statement(
            month.period, run.licences, load_period_events(conn, month.period)
        )
        totals = conn.execute(
            "SELECT licence_id, sum(units_priced + units_held), sum(units_excluded), "
            "sum(duplicates), sum(retracted), sum(conflicts) FROM ledger_totals "
            "WHERE period = %s GROUP BY licence_id",
            (str(month.period),),
        ).fetchall()
    expected_doc, ledger_doc = month.offline.to_document(), replayed.to_document()
    if ledger_doc != expected_doc:
        (out_dir / "offline.json").write_text(json.dumps(expected_doc, indent=1))
        (out_dir / "ledger.json").write_text(json.dumps(ledger_doc, indent=1))
    assert ledger_doc == expected_doc, f"statements differ: see {out_dir}"
    assert replayed.outcomes == month.offline.outcomes

    # Running totals (updated from inserted rows only) agree with the statement's
    # order-independent quantities: units used, excluded, duplicates, retractions.
    by_statement = _statement_units(expected_doc)
    by_totals = {
        str(lic): {
            "units": int(u),
            "excluded": int(x),
            "duplicates": int(d),
            "retracted": int(r),
        }
        for lic, u, x, d, r, c in totals
        if int(c) == 0
    }
    for licence_id, values in by_totals.items():
        assert values == by_statement[licence_id], licence_id
    used = {k for k, v in by_statement.items() if any(v.values())}
    assert used <= set(by_totals)
