"""Offline replay benchmark: `residuals replay` over a generated month of stored events.

    python -m bench.replay --events 1000000 --licences 5000

Writes the month once (bench/.data/, reused while the parameters match), then runs the
project's own replay command in a fresh process and reports its wall time, events/s and
peak RSS. Target (docs/ARCHITECTURE.md): 1,000,000 events in <= 30 s and <= 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.month import make_events, make_licences

DATA = Path(__file__).resolve().parent / ".data"


def write_month(events: int, licences: int, vendors: int, seed: int) -> tuple[Path, Path]:
    DATA.mkdir(exist_ok=True)
    stem = f"month-{events}-{licences}-{vendors}-{seed}"
    case_path, events_path = DATA / f"{stem}.yaml", DATA / f"{stem}.jsonl"
    if not (case_path.exists() and events_path.exists()):
        specs = make_licences(licences, vendors)
        case = {"case": stem, "period": "2026-10", "licences": specs, "events": []}
        case_path.write_text(yaml.safe_dump(case, sort_keys=False))
        tmp = events_path.with_suffix(".tmp")
        with tmp.open("w") as out:
            for event in make_events(specs, events, seed=seed):
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
        tmp.rename(events_path)
    return case_path, events_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--licences", type=int, default=5_000)
    parser.add_argument("--vendors", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    t0 = time.perf_counter()
    case_path, events_path = write_month(args.events, args.licences, args.vendors, args.seed)
    prepared = time.perf_counter() - t0

    command = [
        sys.executable,
        "-m",
        "residuals",
        "replay",
        str(case_path),
        "--events",
        str(events_path),
    ]
    t1 = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t1
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return result.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = usage.ru_maxrss
    doc = json.loads(result.stdout)
    report = {
        "events": args.events,
        "licences": args.licences,
        "prepare_s": round(prepared, 2),
        "replay_s": round(elapsed, 2),
        "events_per_s": round(args.events / elapsed),
        # CPU seconds are steadier than wall time when the 2 cores are shared.
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mib": round(peak_kib / 1024),
        "statement_lines": sum(len(b["lines"]) for b in doc["licences"]),
        "violations": {v["kind"]: v["count"] for v in doc["violations"]},
        "dlq": {d["reason"]: d["count"] for d in doc["dlq"]},
        "target": "<= 30 s and <= 1024 MiB for 1,000,000 events",
        "command": " ".join(command[1:]),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
