"""Fault test of the metering pipeline on the real stack: a month of signed usage through
Kafka, the meter (faust) and the ledger writer into PostgreSQL, while the meter and the
ledger writer are killed with SIGKILL several times and the broker is restarted once.

After catch-up: every published record is in the ledger exactly once (zero lost, zero
duplicated), the period's statement recomputed from the ledger equals the offline replay
of the same events (``compute_statement``) to the cent, and the ledger's running totals
agree with that statement wherever the rules make them order-independent.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from residuals.domain.events import parse_event
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.ledger.replay import load_period_events
from residuals.platform.topics import USAGE_DLQ, USAGE_RATED
from residuals.stack import kafka as stack_kafka
from residuals.stack.settings import StackSettings
from tests.integration.metering_support import Pipeline, UsageRecord, pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from month import make_events, make_licences

pytestmark = pytest.mark.e2e

EVENTS = 100_000
LICENCES = 2_000
VENDORS = 20
CHUNKS = 10
CATCH_UP_TIMEOUT = 420.0


def _period(run_id: str) -> Period:
    """A period of this run alone (test-owned years), so no other run's rows mix in."""
    n = int(run_id, 16)
    return Period(2040 + n % 50, 1 + (n // 50) % 12)


def _records(run: Pipeline, events: list[dict[str, Any]]) -> list[UsageRecord]:
    """Signed records as the SDK's ``publish_many`` makes them (each vendor's events under
    one signature per 256, with Merkle proofs), each keyed like the SDK keys it: by
    licence, a retraction by its original's licence."""
    licence_of: dict[str, str] = {}
    keys = []
    for raw in events:
        if raw.get("licence_id"):
            licence_of.setdefault(raw["event_id"], raw["licence_id"])
            keys.append(raw["licence_id"])
        else:
            keys.append(licence_of.get(raw.get("original_event_id", ""), raw["vendor_id"]))
    return run.usage_records(events, keys=keys, receive_delay=timedelta(seconds=3))


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


def test_month_survives_kills_and_a_broker_restart(stack: StackSettings, tmp_path: Path) -> None:
    started = time.monotonic()
    with pipeline(stack, tmp_path) as run:
        period = _period(run.run_id)
        run.delete_period(str(period))
        specs = make_licences(LICENCES, VENDORS)
        for spec in specs:
            spec["vendor_id"] = run.vendor(spec["vendor_id"])
        run.publish_licences(specs)
        run.publish_keys(sorted({s["vendor_id"] for s in specs}))
        events = list(make_events(specs, EVENTS, period=str(period)))
        records = _records(run, events)
        offline = compute_statement(period, run.licences, [parse_event(e) for e in events])

        # A partition left behind is noticed (and the meter restarted) within a minute.
        meter, ledger = run.meter(METER_STALL_SECONDS="60"), run.ledger()
        meter.start()
        ledger.start()
        chunk = len(records) // CHUNKS
        faults: list[str] = []
        try:
            for i in range(CHUNKS):
                part = records[i * chunk : (i + 1) * chunk if i < CHUNKS - 1 else len(records)]
                run.produce(part)
                time.sleep(1.0)  # let the services get into the chunk, then hit them
                if i in (1, 6, 8):
                    meter.kill9()
                    faults.append(f"kill -9 meter after chunk {i}")
                    meter.start()
                if i in (3, 6):
                    ledger.kill9()
                    faults.append(f"kill -9 ledger after chunk {i}")
                    ledger.start()
                if i == 4:
                    stack_kafka.stop(stack, lambda _m: None)
                    faults.append("broker stopped")
                    stack_kafka.start(stack, lambda _m: None)
                    faults.append("broker restarted")
            rows = run.wait_ledgered(
                len(records), CATCH_UP_TIMEOUT, [meter, ledger], supervise=True
            )
            time.sleep(2.0)  # anything late and duplicated would show up now
            rows = run.stored_positions()
        finally:
            meter.stop()
            ledger.stop()

        # Zero lost, zero duplicated: each published record's position exactly once.
        stored = Counter((p, o) for _table, p, o in rows)
        assert [pos for pos, n in stored.items() if n > 1] == []
        assert sorted(stored) == sorted(run.produced)
        assert len(run.produced) == len(records) == EVENTS

        # The ledger's statement equals the offline replay of the same events, to the cent.
        with run.connect() as conn:
            replayed = compute_statement(period, run.licences, load_period_events(conn, period))
            totals = conn.execute(
                "SELECT licence_id, sum(units_priced + units_held), sum(units_excluded), "
                "sum(duplicates), sum(retracted), sum(conflicts) FROM ledger_totals "
                "WHERE period = %s GROUP BY licence_id",
                (str(period),),
            ).fetchall()
        expected_doc, ledger_doc = offline.to_document(), replayed.to_document()
        if ledger_doc != expected_doc:
            (tmp_path / "offline.json").write_text(json.dumps(expected_doc, indent=1))
            (tmp_path / "ledger.json").write_text(json.dumps(ledger_doc, indent=1))
        assert ledger_doc == expected_doc, f"statements differ: see {tmp_path}"
        assert replayed.outcomes == offline.outcomes

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

        assert meter.starts >= 4 and ledger.starts >= 3, faults
        # The kills hit work in progress: the meter re-published records it had rated but
        # not committed (one rated record or dead letter per record and processing), and
        # the ledger still stored each once.
        republished = run.records_on(USAGE_RATED, USAGE_DLQ) - len(records)
        assert republished > 0, "no record was processed twice: the faults missed the work"
        elapsed = time.monotonic() - started
        print(
            f"\n{EVENTS} events, faults: {faults}; restarts after an exit: "
            f"meter {meter.exit_codes}, ledger {ledger.exit_codes}; "
            f"records the meter published again after a kill: {republished}; "
            f"outcomes {dict(offline.outcomes)}; {elapsed:.0f} s"
        )
