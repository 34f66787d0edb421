"""``residuals finance evidence``: write the evidence bundle of a closed statement, or of
one payee's part of it, from the database (like the other finance commands) through the
same export the PayoutService streams (:mod:`residuals.evidence.export`).

A long export shows the rows written on stderr when it is a terminal, and stays quiet
otherwise (pipelines, logs); ``--json`` prints the summary for scripts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from residuals.cli.output import Progress


def register(subparsers: Any) -> None:
    """Add ``evidence`` to ``residuals finance``'s actions."""
    parser = subparsers.add_parser(
        "evidence",
        help="export the evidence bundle of a closed statement (or a payee's part)",
        description=(
            "Write a portable archive of the events behind a closed statement: payloads,"
            " signatures, batch proofs, vendors' keys, licence versions, approvals and"
            " inputs. `residuals verify` checks it offline."
        ),
    )
    parser.add_argument("--period", required=True, help="YYYY-MM of a closed period")
    parser.add_argument(
        "--payee", default="", help="payee id: their part (default: the whole statement)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="a .tar.gz file to write, or a folder (made if missing) for the suggested name"
        " (default: the current folder)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.set_defaults(handler=_evidence)


def advancing(shown: Progress) -> Callable[[int], None]:
    """A callback taking rows done so far that advances ``shown`` by the new ones."""
    done = 0

    def seen(rows: int) -> None:
        nonlocal done
        shown.advance(rows - done)
        done = rows

    return seen


def _evidence(args: argparse.Namespace) -> int:
    from residuals.cli.finance import _context, _fail, _period_arg
    from residuals.cli.output import print_json, progress
    from residuals.evidence.export import NoPart, write_evidence
    from residuals.payouts import store

    try:
        period = _period_arg(args.period)
    except ValueError as exc:
        return _fail(str(exc))
    out: Path = args.out
    if out.is_dir() or not out.name.endswith(".tar.gz"):
        out.mkdir(parents=True, exist_ok=True)  # a folder, for the suggested name
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    with (
        _context() as (_settings, db, sources),
        db.connection() as conn,
        progress(f"exporting the evidence of {period}: rows") as shown,
    ):
        stored = store.get_statement(conn, str(period))
        if stored is None:
            return _fail(f"{period} has no statement (not closed)", 1)
        payee = args.payee or None
        try:
            summary = write_evidence(conn, sources, stored, payee, out, progress=advancing(shown))
        except NoPart as missing:
            return _fail(str(missing), 1)
    if args.json:
        print_json(summary)
        return 0
    whose = f"payee {summary.payee_id}" if summary.payee_id else "the whole statement"
    print(summary.path)
    print(f"  period {summary.period}, {whose}")
    print(
        f"  {summary.events:,} events, {summary.dead_letters:,} dead letters,"
        f" {summary.keys:,} keys, {summary.licences:,} licences, {summary.approvals:,} approvals"
        f" in {summary.members:,} members, {summary.size / 1048576:.1f} MiB"
    )
    print(f"  sha256            {summary.sha256}")
    print(f"  statement sha256  {summary.expected_sha256}  (residuals verify checks it)")
    return 0
