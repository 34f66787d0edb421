"""``residuals licensing run|relay``: the licensing service from the console script."""

from __future__ import annotations

import argparse
from typing import Any

from residuals.platform.config import describe


def register(subparsers: Any) -> None:
    from residuals.licensing.config import LicensingSettings

    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(LicensingSettings)
    )
    parser = subparsers.add_parser(
        "licensing",
        help="the licence registry service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest="licensing_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="serve LicenceService over gRPC (with the outbox relay)")
    run.set_defaults(handler=_run)
    relay = sub.add_parser("relay", help="run only the outbox relay (PostgreSQL -> Kafka)")
    relay.set_defaults(handler=_relay)


def _run(args: argparse.Namespace) -> int:
    from residuals.licensing.app import main

    return main()


def _relay(args: argparse.Namespace) -> int:
    from residuals.licensing.app import relay_main

    return relay_main()
