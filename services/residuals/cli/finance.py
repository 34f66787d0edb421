"""``residuals finance …``: close periods, statements, exports, documents, payouts, reconciliation.

The finance commands work directly on the database (``DATABASE_URL``) through the same
functions PayoutService calls, so the CLI and gRPC can never disagree. ``reconcile``
exits 1 when any check finds a difference (and names it), so it can gate a pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finance",
        help="close periods, list and export statements, pay out, reconcile",
        description="Finance operations on the statements database (DATABASE_URL).",
    )
    sub = parser.add_subparsers(dest="finance_command", metavar="ACTION", required=True)

    close = sub.add_parser("close", help="close a period: statement, journal, payouts")
    close.add_argument("--period", required=True, help="YYYY-MM")
    close.add_argument("--force", action="store_true", help="close before the grace period ends")
    close.add_argument("--dry-run", action="store_true", help="compute and show, record nothing")
    close.add_argument("--by", default=os.environ.get("USER", "cli"), help="who closes (audit)")
    close.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    close.set_defaults(handler=_close)

    statements = sub.add_parser("statements", help="list statements, or show one")
    statements.add_argument("--period", help="YYYY-MM: show this statement")
    statements.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    statements.set_defaults(handler=_statements)

    exp = sub.add_parser("export", help="write a statement as CSV and JSON files")
    exp.add_argument("--period", required=True, help="YYYY-MM")
    exp.add_argument("--out", required=True, type=Path, help="folder to write into")
    exp.add_argument("--format", choices=("csv", "json", "both"), default="both")
    exp.set_defaults(handler=_export)

    doc = sub.add_parser(
        "statement",
        help="write a payee's statement document (PDF, HTML, JSON or CSV)",
        description=(
            "A payee's part of a closed statement as a document: names, statement lines, "
            "held use, breakdowns, misuse, payouts, daily charts and the hashes to verify. "
            "Prints each file written and its SHA-256."
        ),
    )
    doc.add_argument("--payee", required=True, help="payee id (talent, agent or estate)")
    doc.add_argument("--period", required=True, help="YYYY-MM of a closed period")
    doc.add_argument("--format", choices=("pdf", "html", "json", "csv"), default="pdf")
    who = doc.add_mutually_exclusive_group()
    who.add_argument("--talent", default="", help="an agent's or estate's client: only theirs")
    who.add_argument(
        "--all-clients",
        action="store_true",
        help="the roll-up plus one document per client (--out is then a folder)",
    )
    doc.add_argument(
        "--out",
        default="",
        help="file to write, or - for standard output (default: the document's name here)",
    )
    doc.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    doc.set_defaults(handler=_statement_document)

    payouts = sub.add_parser("payouts", help="list payouts, or pay them (--pay)")
    payouts.add_argument("--period", default="", help="YYYY-MM")
    payouts.add_argument("--payee", default="", help="payee id")
    payouts.add_argument("--pay", action="store_true", help="send unpaid payouts via the rail")
    payouts.add_argument("--id", action="append", default=[], help="only this payout (repeat)")
    payouts.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    payouts.set_defaults(handler=_payouts)

    rec = sub.add_parser("reconcile", help="prove events = ledger = statements = payouts")
    rec.add_argument("--period", default="", help="YYYY-MM (default: every closed period)")
    rec.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    rec.set_defaults(handler=_reconcile)

    from residuals.cli import evidence

    evidence.register(sub)


@contextmanager
def _context() -> Iterator[Any]:
    """Settings, an open database and the stored-data sources."""
    from residuals.payouts.app import default_sources, settings_from_env
    from residuals.platform.logs import configure_logging
    from residuals.platform.postgres import Database

    settings = settings_from_env()
    configure_logging("residuals-finance", level="WARNING", log_format="text")
    db = Database(settings.postgres, application_name="residuals-finance")
    db.open()
    try:
        yield settings, db, default_sources()
    finally:
        db.close()


def _fail(message: str, code: int = 2) -> int:
    print(f"residuals finance: {message}", file=sys.stderr)
    return code


def _period_arg(text: str) -> Any:
    from residuals.domain.period import Period

    return Period.parse(text)


def _close(args: argparse.Namespace) -> int:
    from residuals.cli.output import print_json, progress
    from residuals.payouts.app import policy_of
    from residuals.payouts.close import CloseRefused, close_period

    try:
        period = _period_arg(args.period)
    except ValueError as exc:
        return _fail(str(exc))
    with _context() as (settings, db, sources), progress(f"closing {period}") as shown:
        try:
            with db.connection() as conn:
                result = close_period(
                    conn,
                    sources,
                    period,
                    policy=policy_of(settings),
                    closed_by=args.by,
                    force=args.force,
                    dry_run=args.dry_run,
                    on_step=shown.step,
                )
        except CloseRefused as refused:
            return _fail(str(refused), 1)
    st = result.statement
    if args.json:
        print_json(
            {
                "period": st.period,
                "state": "already_closed"
                if result.already_closed
                else ("dry_run" if result.dry_run else "closed"),
                "statement_id": st.statement_id,
                "content_hash": st.content_hash,
                "closed_at": st.closed_at,
                "closed_by": st.closed_by,
                "event_count": st.event_count,
                "statement": st.document,
                "adjustments": [a.to_document() for a in st.adjustments],
            }
        )
        return 0
    state = (
        "already closed"
        if result.already_closed
        else ("dry run (nothing recorded)" if result.dry_run else "closed")
    )
    print(f"{st.period}: {state}")
    print(f"  statement     {st.statement_id}  sha256 {st.content_hash}")
    print(f"  closed        {st.closed_at.isoformat()} by {st.closed_by}")
    print(f"  events        {st.event_count}")
    print(f"  adjustments   {len(st.adjustments)} line(s)")
    _print_statement(st.document)
    return 0


def _print_statement(doc: dict[str, Any]) -> None:
    print(f"  {'licence':<24} {'cur':<4} {'earned':>12} {'gross':>12} {'fee':>10} {'invoice':>12}")
    for lic in doc["licences"]:
        print(
            f"  {lic['licence_id']:<24} {lic['currency']:<4} {lic['earned']:>12} "
            f"{lic['gross']:>12} {lic['platform_fee']:>10} {lic['vendor_invoice']:>12}"
        )
    print(f"  {'payee':<24} {'cur':<4} {'earned':>12} {'payable':>12} {'carried fwd':>12}")
    for p in doc["payees"]:
        print(
            f"  {p['payee_id']:<24} {p['currency']:<4} {p['earned']:>12} "
            f"{p['payable']:>12} {p['carried_forward']:>12}"
        )


def _statement_json(st: Any) -> dict[str, Any]:
    return {
        "period": st.period,
        "statement_id": st.statement_id,
        "content_hash": st.content_hash,
        "closed_at": st.closed_at,
        "closed_by": st.closed_by,
        "event_count": st.event_count,
        "statement": st.document,
        "adjustments": [a.to_document() for a in st.adjustments],
    }


def _statements(args: argparse.Namespace) -> int:
    from residuals.cli.output import print_json
    from residuals.payouts import store

    with _context() as (_settings, db, _sources), db.connection() as conn:
        if args.period:
            st = store.get_statement(conn, str(_period_arg(args.period)))
            if st is None:
                return _fail(f"{args.period} has no statement (not closed)", 1)
            if args.json:
                print_json(_statement_json(st))
                return 0
            print(f"{st.period}  {st.statement_id}  sha256 {st.content_hash}")
            _print_statement(st.document)
            for a in st.adjustments:
                print(
                    f"  adjusts {a.adjusts_period} {a.licence_id} {a.section} {a.ref}: "
                    f"{a.units:+d} units {a.amount:+} {a.currency}"
                )
            return 0
        rows = store.list_statements(conn, limit=1000)
    if args.json:
        keys = ("statement_id", "period", "content_hash", "closed_at", "licences")
        print_json({"statements": [dict(zip(keys, row, strict=True)) for row in rows]})
        return 0
    print(f"{'period':<8} {'statement':<12} {'licences':>8}  closed at                  sha256")
    for statement_id, period, digest, closed_at, count in rows:
        print(f"{period:<8} {statement_id:<12} {count:>8}  {closed_at.isoformat():<26} {digest}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from residuals.payouts import export, store

    with _context() as (_settings, db, _sources), db.connection() as conn:
        st = store.get_statement(conn, str(_period_arg(args.period)))
    if st is None:
        return _fail(f"{args.period} has no statement (not closed)", 1)
    files = []
    if args.format in ("json", "both"):
        files.append(export.json_export(st.document, st.period))
        if st.adjustments:
            files.append(export.adjustments_json(st.adjustments, st.period))
    if args.format in ("csv", "both"):
        files.append(export.csv_export(st.document, st.adjustments))
    args.out.mkdir(parents=True, exist_ok=True)
    for f in files:
        path = args.out / f.filename
        path.write_bytes(f.content)
        print(f"{path}  sha256 {f.sha256}")
    return 0


def _statement_document(args: argparse.Namespace) -> int:
    from residuals.cli.output import print_json, progress
    from residuals.payouts import store
    from residuals.payouts.documents import NoStatementPart, client_talent_ids, render_statement

    try:
        period = str(_period_arg(args.period))
    except ValueError as exc:
        return _fail(str(exc))
    if args.all_clients and args.out == "-":
        return _fail("--all-clients writes several files: give --out a folder")
    written = []
    with (
        _context() as (_settings, db, sources),
        db.connection() as conn,
        progress(f"statement of {args.payee} for {period}") as shown,
    ):
        stored = store.get_statement(conn, period)
        if stored is None:
            return _fail(f"{period} has no statement (not closed)", 1)
        clients = [args.talent]
        if args.all_clients:
            clients = ["", *client_talent_ids(conn, args.payee)]
        for talent in clients:
            shown.step(f"{args.format} of {args.payee}" + (f" for {talent}" if talent else ""))
            try:
                written.append(
                    render_statement(
                        conn, sources, stored, args.payee, args.format, talent_id=talent
                    )
                )
            except NoStatementPart as missing:
                if not talent or not args.all_clients:
                    return _fail(str(missing), 1)
                print(f"skipped: {missing}", file=sys.stderr)
    if args.out == "-":
        sys.stdout.buffer.write(written[0].content)
        sys.stdout.buffer.flush()
        print(f"{written[0].filename}  sha256 {written[0].sha256}", file=sys.stderr)
        return 0
    folder = Path(args.out or ".") if args.all_clients else None
    files = []
    for document in written:
        if folder is not None:
            path = folder / document.filename
        else:
            path = Path(args.out) if args.out else Path(document.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(document.content)
        files.append((path, document))
    if args.json:
        print_json(
            {
                "documents": [
                    {
                        "path": str(path),
                        "content_type": document.content_type,
                        "sha256": document.sha256,
                        "part_sha256": document.part_sha256,
                        "statement_sha256": document.statement_sha256,
                    }
                    for path, document in files
                ]
            }
        )
        return 0
    for path, document in files:
        print(f"{path}  sha256 {document.sha256}  part sha256 {document.part_sha256}")
    return 0


def _payouts(args: argparse.Namespace) -> int:
    from residuals.payouts import store
    from residuals.payouts.paying import pay_payouts

    with _context() as (settings, db, _sources):
        if args.pay:
            from residuals.payouts.rails import make_rail

            rail = make_rail(settings.rail, settings.rail_dir)
            report = pay_payouts(db, rail, period=args.period, payout_ids=args.id)
            rows = list(report.payouts)
            print(f"paid {report.paid}, failed {report.failed} (rail {rail.name})")
        else:
            with db.connection() as conn:
                rows = store.list_payouts(
                    conn, period=args.period, payee_id=args.payee, limit=100_000
                )
    if args.json:
        from residuals.cli.output import print_json

        print_json({"payouts": rows})
        return 0
    total: dict[tuple[str, str], Decimal] = {}
    print(f"{'payout':<20} {'period':<8} {'payee':<20} {'amount':>12} cur {'state':<8} tries")
    for p in rows:
        print(
            f"{p.payout_id:<20} {p.period:<8} {p.payee_id:<20} {p.amount:>12} {p.currency} "
            f"{p.state:<8} {p.attempts}" + (f"  ({p.failure_reason})" if p.failure_reason else "")
        )
        total[(p.currency, p.state)] = total.get((p.currency, p.state), Decimal(0)) + p.amount
    for (currency, state), amount in sorted(total.items()):
        print(f"  total {state:<8} {amount} {currency}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from residuals.domain.period import Period
    from residuals.payouts import store
    from residuals.payouts.reconcile import reconcile

    with _context() as (_settings, db, sources), db.connection() as conn:
        if args.period:
            periods = [_period_arg(args.period)]
        else:
            periods = [Period.parse(p) for p in store.closed_periods(conn)]
        if not periods:
            return _fail("no closed period to reconcile", 1)
        reports = [reconcile(conn, sources, p) for p in periods]
    ok = all(r.ok for r in reports)
    if args.json:
        from residuals.cli.output import print_json
        from residuals.payouts.reconcile import report_document

        print_json({"ok": ok, "reports": [report_document(r) for r in reports]})
        return 0 if ok else 1
    for report in reports:
        print(report.render())
    return 0 if all(r.ok for r in reports) else 1
