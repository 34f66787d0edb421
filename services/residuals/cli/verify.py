"""``residuals verify BUNDLE``: check an evidence bundle offline.

Needs nothing but the file: every member against the manifest, every event's signature
and batch proof against the vendors' keys in the bundle, and the statement recomputed by
the rules from the bundle's events, licences and inputs, compared with the one it carries
(:mod:`residuals.evidence.verify`). Exit 0 when everything checks, 1 when something does
not (each failing event named by vendor and event id), 2 when the file is not a readable
bundle. ``--json`` prints the report for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residuals.domain.bounds import printable

if TYPE_CHECKING:
    from residuals.evidence.verify import Report


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check an evidence bundle offline: signatures, proofs and the statement",
        description=(
            "Check an evidence bundle (residuals finance evidence, PayoutService."
            "ExportEvidence) with nothing but the file. Exit 0: verified; 1: an event,"
            " member or line fails (named); 2: not a readable bundle."
        ),
    )
    parser.add_argument("bundle", type=Path, help="the .residuals-evidence.tar.gz file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from residuals.cli.evidence import advancing
    from residuals.cli.output import progress
    from residuals.evidence.verify import UnreadableBundle, verify_bundle

    try:
        with progress("verifying: rows") as shown:
            report = verify_bundle(args.bundle, progress=advancing(shown))
    except UnreadableBundle as error:
        if args.json:
            document = {
                "bundle": str(args.bundle),
                "ok": False,
                "exit_code": 2,
                "error": str(error),
            }
            print(json.dumps(document, indent=2))
        else:
            print(f"residuals verify: {printable(str(args.bundle))}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return report.exit_code


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def render(report: Report) -> str:
    """The short report for people."""
    counts = report.counts
    subject = (
        f"the {report.period} statement"
        if report.payee_id is None
        else f"{report.payee_id}'s part of the {report.period} statement"
    )
    out = [
        f"{printable(report.bundle)}: {'VERIFIED' if report.ok else 'FAILED'}",
        f"  {subject}, bundle created {report.created_at}",
        "  "
        + ", ".join(
            [
                _plural(counts.get("events", 0), "event"),
                _plural(counts.get("dead_letters", 0), "dead letter"),
                _plural(counts.get("keys", 0), "key"),
                _plural(counts.get("licences", 0), "licence"),
                _plural(counts.get("approvals", 0), "approval"),
            ]
        ),
    ]
    if report.ok:
        out += [
            "  every signature and batch proof checks; the events recompute the statement",
            f"  statement SHA-256 {report.expected_sha256}",
            "  (compare it with the SHA-256 the statement document prints)",
        ]
        return "\n".join(out)
    if report.failures_total:
        out.append(f"  {_plural(report.failures_total, 'event')} failing:")
        out += [f"    {failure.describe()}" for failure in report.failures]
        if report.failures_total > len(report.failures):
            out.append(f"    … and {report.failures_total - len(report.failures):,} more")
    if report.problems:
        out.append("  problems:")
        out += [f"    {problem}" for problem in report.problems]
    if report.differences:
        out.append("  statement.json and the statement the events give differ:")
        out += [f"    {difference}" for difference in report.differences]
    out += [
        f"  statement SHA-256 expected   {report.expected_sha256}",
        f"             statement.json    {report.statement_sha256}",
        f"             recomputed        {report.recomputed_sha256}",
    ]
    if report.notes:
        out.append("  rows the close could not use either (dead letters in the statement):")
        out += [f"    {note}" for note in report.notes]
    return "\n".join(out)
