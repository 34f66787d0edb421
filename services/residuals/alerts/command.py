"""``residuals alerts run``: the alerts service from the console script."""

from __future__ import annotations

import argparse
from typing import Any

from residuals.platform.config import describe


def register(subparsers: Any) -> None:
    from residuals.alerts.config import AlertsSettings

    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(AlertsSettings)
    )
    parser = subparsers.add_parser(
        "alerts",
        help="the scope-violation alerts service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="consume alerts and serve AlertService over gRPC")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from residuals.alerts.app import main

    return main()
