"""`residuals replay CASE.yaml`: the offline statement of a royalty case.

The output is the statement exactly as the period close computes it, in the shape of
docs/ROYALTY-RULES.md §10, so finance can restate any period from stored events.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from residuals.cli.output import Progress, progress
from residuals.domain.statement import PeriodStatement, compute_statement
from residuals.platform.heap import bulk_allocations
from residuals.replay.casefile import Case, CaseError, load_case, read_event_lines
from residuals.replay.compare import differences
from residuals.replay.table import render_table


def replay(case: Case, shown: Progress | None = None) -> PeriodStatement:
    events = case.events() if shown is None else shown.track(case.events())
    return compute_statement(
        case.period,
        case.licences,
        events,
        thresholds=case.thresholds,
        carried_in=case.carried_in,
        approvals=case.approvals,
    )


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "replay",
        help="compute the period statement of royalty case files offline",
        description="Print each case's period statement (docs/ROYALTY-RULES.md §10).",
    )
    parser.add_argument("cases", nargs="+", type=Path, metavar="CASE.yaml")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.add_argument(
        "--events",
        type=Path,
        action="append",
        default=[],
        metavar="EVENTS.jsonl",
        help="more events as JSON lines, arriving after the case's own (repeatable)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with each case's expected block; exit 1 on any difference",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with bulk_allocations():  # reading and folding millions of events
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.cases:
        try:
            case = load_case(path)
            case.more_events = [read_event_lines(p) for p in args.events]
            with progress(f"replaying {path.name}: events read") as shown:
                doc = replay(case, shown).to_document()
        except CaseError as exc:
            print(f"residuals replay: {exc}", file=sys.stderr)
            return 2
        if args.check:
            status |= _check(path, case, doc)
            continue
        if args.format == "table":
            print(render_table(doc))
        elif len(args.cases) == 1:
            print(json.dumps(doc, indent=2))
        else:
            print(json.dumps(doc))
    return status


def _check(path: Path, case: Case, doc: dict[str, Any]) -> int:
    if case.expected is None:
        print(f"{path}: no expected block", file=sys.stderr)
        return 1
    diffs = differences(doc, case.expected)
    if not diffs:
        print(f"ok   {path}")
        return 0
    print(f"FAIL {path}")
    for diff in diffs:
        print(f"     {diff}")
    return 1
