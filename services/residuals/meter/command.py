"""``residuals meter run``: the service from the console script (``python -m residuals.meter``)."""

from __future__ import annotations

import argparse
from typing import Any

from residuals.platform.config import describe


def register(subparsers: Any) -> None:
    from residuals.meter.settings import MeterSettings

    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(MeterSettings)
    )
    parser = subparsers.add_parser(
        "meter",
        help="the meter: rate usage events as they arrive (faust)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest="meter_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run", help="consume residuals.usage.v1 and publish rated usage, alerts and dead letters"
    )
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from residuals.meter.__main__ import main

    return main()
