"""Statement document benchmark: one payee with a million events in a period.

    residuals stack up                       # once
    python -m bench.statement_document --events 1000000

Target (issue 17): the document of a payee with 1,000,000 events in a period in <= 30 s.
Set-up, in a fresh database of the local stack: ``--licences`` licences of one talent
(``TAL-BENCH``, 85 %, with an agent at 15 %) across vendors and currencies, registered
through the registry's code; a month of usage for them from ``tests/support/month.py``
(every kind, tiers, quotas, guarantees, invalid traffic, duplicates, retractions and
misuse) stored as the ledger writer stores it (accepted identities in ``usage_events``
with their signed payload bytes, exact re-sends in ``usage_repeats``, dead letters in
``dead_letters``), written with COPY; then the period is closed. Timed: the project's own
command in a fresh process per format, ``residuals finance statement --payee TAL-BENCH
--period 2026-10 --format pdf`` (and html), with its wall time, CPU and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.events import Rejection, parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.licensing.registry import Registry
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period
from residuals.platform.config import PostgresSettings, load
from residuals.platform.postgres import Database
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from tests.support.licensing import register_licences
from tests.support.month import make_events, make_licences
from tests.support.payouts import ADMIN, migrated_database

PERIOD = Period(2026, 10)
TALENT, AGENT = "TAL-BENCH", "AGT-BENCH"
LATER = datetime(2027, 1, 1, tzinfo=UTC)

COLUMNS = {
    "usage_events": (
        "vendor_id, event_id, licence_id, kind, occurred_at, payload, period, outcome,"
        " original_event_id, source_topic, source_partition, source_offset"
    ),
    "usage_repeats": (
        "source_topic, source_partition, source_offset, vendor_id, event_id, licence_id, kind,"
        " outcome, decided_by, occurred_at, period, payload, signature, key_id, received_at"
    ),
    "dead_letters": (
        "source_topic, source_partition, source_offset, reason, detail, decided_by, vendor_id,"
        " event_id, period, original, received_at"
    ),
}


def payee_licences(count: int, vendors: int) -> list[dict[str, Any]]:
    """The month's licence specs, all of one talent's likeness, paying one talent and agent."""
    specs = make_licences(count, vendors)
    for spec in specs:
        spec.update(talent_id=TALENT, avatar_id=f"AVA-BENCH-{spec['currency']}")
        spec["splits"] = {TALENT: "0.85", AGENT: "0.15"}
    return specs


def _rows(
    specs: list[dict[str, Any]], count: int, seed: int
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(table, row) for each raw event, as the ledger writer would store it."""
    seen: set[tuple[str, str]] = set()
    retracted: set[tuple[str, str]] = set()
    period = str(PERIOD)
    for offset, raw in enumerate(make_events(specs, count, seed=seed)):
        event = parse_event(raw)
        if isinstance(event, Rejection):
            yield "dead_letters", (
                "dlq", 0, offset, event.reason.value, event.detail, "meter",
                raw.get("vendor_id"), raw.get("event_id"), period, b"", LATER,
            )  # fmt: skip
            continue
        payload = payload_bytes(from_domain(event))
        licence_id = event.licence_id or ""
        if event.identity in seen:
            yield "usage_repeats", (
                "usage", 0, offset, event.vendor_id, event.event_id, licence_id,
                event.kind.value, "DUPLICATE", "meter", event.occurred_at, period, payload,
                b"", "k", LATER,
            )  # fmt: skip
            continue
        original = (event.vendor_id, event.original_event_id or "")
        if event.original_event_id and original in retracted:
            continue  # the ledger keeps one retraction per original
        seen.add(event.identity)
        if event.original_event_id:
            retracted.add(original)
        yield "usage_events", (
            event.vendor_id, event.event_id, licence_id, event.kind.value, event.occurred_at,
            payload, period, "ACCEPTED", event.original_event_id, "usage", 0, offset,
        )  # fmt: skip


def _copy(cur: psycopg.Cursor[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        with cur.copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        rows.clear()


def store_month(dsn: str, specs: list[dict[str, Any]], count: int, seed: int) -> dict[str, int]:
    """Register the licences and COPY the month's rows into the ledger's tables (accepted
    rows of each batch first, so a re-send never arrives before what it repeats)."""
    settings = PostgresSettings(dsn=dsn, pool_min=1, pool_max=2)
    with Database(settings, application_name="bench-setup").open() as db:
        register_licences(Registry(db), ADMIN, *(parse_licence(s) for s in specs))
    stored = dict.fromkeys(COLUMNS, 0)
    pending: dict[str, list[tuple[Any, ...]]] = {table: [] for table in COLUMNS}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table, row in _rows(specs, count, seed):
            pending[table].append(row)
            stored[table] += 1
            if len(pending["usage_events"]) >= 50_000:
                for name, rows in pending.items():
                    _copy(cur, name, rows)
        for name, rows in pending.items():
            _copy(cur, name, rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return stored


def close(dsn: str) -> str:
    settings = PostgresSettings(dsn=dsn, pool_min=1, pool_max=2)
    with Database(settings, application_name="bench-close").open() as db, db.connection() as conn:
        result = close_period(
            conn, stored_sources(), PERIOD, policy=ClosePolicy(), closed_by="bench", now=LATER
        )
    return result.statement.content_hash


#: Runs the measured command as its own child and writes its exit code, CPU seconds and
#: peak RSS (KiB) to the file named first. A child of the bench itself would report the
#: bench's RSS as its peak: Linux keeps the high-water mark of the address space a
#: (v)forked child starts with across ``execve``, and the bench holds the close's memory.
_MEASURE = """
import json, os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss], out)
"""


def timed(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` in a fresh process: its wall seconds, CPU seconds and peak RSS."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as measured,
    ):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _MEASURE, measured.name, *command],
            env=env,
            stdout=out,
            stderr=err,
            check=False,
        )
        wall = time.perf_counter() - start
        code, cpu, maxrss = json.load(measured)
        out.seek(0)
        err.seek(0)
        if code:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode()}")
        return {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "peak_rss_mib": round(maxrss / 1024),
            "output": out.read().decode().strip(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--licences", type=int, default=8)
    parser.add_argument("--vendors", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--formats", nargs="+", default=["pdf", "html"])
    args = parser.parse_args(argv)

    stack = load(StackSettings)
    if not lifecycle.health(stack).healthy:
        raise SystemExit("the local stack is not running: residuals stack up")
    specs = payee_licences(args.licences, args.vendors)
    report: dict[str, Any] = {"events": args.events, "licences": args.licences}
    with migrated_database(stack) as dsn, tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report["stored"] = store_month(dsn, specs, args.events, args.seed)
        report["store_s"] = round(time.perf_counter() - t0, 1)
        t1, cpu1 = time.perf_counter(), time.process_time()
        report["statement_sha256"] = close(dsn)
        report["close_s"] = round(time.perf_counter() - t1, 1)
        report["close_cpu_s"] = round(time.process_time() - cpu1, 1)  # this process only
        # the bench's own high-water mark: storing (batches of 50,000 rows), then the close
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report["close_peak_rss_mib"] = round(peak / 1024)
        env = {**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}
        for fmt in args.formats:
            path = Path(out) / f"statement.{fmt}"
            command = [
                sys.executable, "-m", "residuals", "finance", "statement", "--payee", TALENT,
                "--period", str(PERIOD), "--format", fmt, "--out", str(path),
            ]  # fmt: skip
            result = timed(command, env)
            result["bytes"] = path.stat().st_size
            report[fmt] = result
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    report["target"] = "<= 30 s for a payee with 1,000,000 events in the period"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
