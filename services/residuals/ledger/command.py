"""``residuals ledger run``: the service from the console script (python -m residuals.ledger)."""

from __future__ import annotations

import argparse
from typing import Any

from residuals.platform.config import describe


def register(subparsers: Any) -> None:
    from residuals.ledger.settings import LedgerSettings

    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(LedgerSettings)
    )
    parser = subparsers.add_parser(
        "ledger",
        help="the ledger writer: rated usage and dead letters into PostgreSQL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="consume rated usage and dead letters into the ledger")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from residuals.ledger.__main__ import main

    return main()
