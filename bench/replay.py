"""Offline replay benchmark: the period statement of a generated month of events.

    python bench/replay.py --events 1000000 --licences 5000

Reports parse+replay seconds, events/s and peak RSS. Target (ARCHITECTURE.md): 1,000,000
events in <= 30 s and <= 1 GiB on the 2-core reference machine. Generation is timed apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from month import make_events, make_licences
from residuals.domain.events import parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--licences", type=int, default=5_000)
    parser.add_argument("--vendors", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    t0 = time.perf_counter()
    specs = make_licences(args.licences, args.vendors)
    raw = list(make_events(specs, args.events, seed=args.seed))
    generated = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t1 = time.perf_counter()
    licences = [parse_licence(s) for s in specs]
    statement = compute_statement(Period.parse("2026-10"), licences, map(parse_event, raw))
    elapsed = time.perf_counter() - t1
    doc = statement.to_document()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    report = {
        "events": args.events,
        "licences": args.licences,
        "generate_s": round(generated, 2),
        "replay_s": round(elapsed, 2),
        "events_per_s": round(args.events / elapsed),
        "peak_rss_mib": round(peak_kib / 1024),
        "rss_after_generation_mib": round(rss_before / 1024),
        "outcomes": dict(statement.outcomes),
        "lines": sum(len(lic["lines"]) for lic in doc["licences"]),
        "violations": {v["kind"]: v["count"] for v in doc["violations"]},
        "target": "<= 30 s and <= 1024 MiB for 1,000,000 events",
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
