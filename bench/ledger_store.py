"""The ledger writer's store path alone: what storing a rated usage record costs the
writer's Python and PostgreSQL, without Kafka, the meter or anything else in the run.

    residuals stack up
    python -m bench.ledger_store [--events 40000] [--batch 2000] [--licences 5000]

A freshly migrated database of the local stack (so table and index sizes are the same for
every run); the meter's records built as ``tests/support/ledger.py`` builds them, signed
one by one; each batch applied with :meth:`LedgerStore.apply` in one transaction that, as
the sink's does, has begun before the store runs. Reported per event: the writer's CPU
(this process, in the store only), the PostgreSQL backend's CPU, and the wall time.
Compare two versions of the code by running this from each checkout in turn.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psycopg

from residuals.platform.config import load
from residuals.platform.processes import cpu_seconds
from residuals.stack.settings import StackSettings
from tests.support.ledger import Ledger
from tests.support.payouts import migrated_database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--licences", type=int, default=5_000)
    args = parser.parse_args(argv)
    stack = load(StackSettings)
    with migrated_database(stack) as dsn:
        ledger = Ledger(dsn)
        batches: list[list[Any]] = []
        for start in range(0, args.events, args.batch):
            batches.append(
                [
                    ledger.rated(
                        ledger.event(f"e{i}", licence_id=f"LIC@{ledger.run}-{i % args.licences}")
                    )
                    for i in range(start, min(start + args.batch, args.events))
                ]
            )
        with psycopg.connect(ledger.service_dsn) as conn:
            backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            conn.commit()
            python = postgres = wall = 0.0
            for batch in batches:
                pg_before, started, cpu_before = (
                    cpu_seconds(backend),
                    time.perf_counter(),
                    time.process_time(),
                )
                conn.execute("SELECT 1")  # the sink's transaction has begun (offset locks)
                result = ledger.store.apply(conn, batch)
                conn.commit()
                python += time.process_time() - cpu_before
                wall += time.perf_counter() - started
                postgres += cpu_seconds(backend) - pg_before
                assert result.events == len(batch), result
    per = 1e6 / args.events
    print(
        json.dumps(
            {
                "events": args.events,
                "batch": args.batch,
                "writer_cpu_us_per_event": round(python * per, 1),
                "postgres_cpu_us_per_event": round(postgres * per, 1),
                "wall_us_per_event": round(wall * per, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
