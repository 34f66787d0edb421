"""``residuals ingest run``: the ingest gateway from the console script."""

from __future__ import annotations

import argparse
from typing import Any

from residuals.platform.config import describe


def register(subparsers: Any) -> None:
    from residuals.ingest.config import IngestSettings

    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(IngestSettings)
    )
    parser = subparsers.add_parser(
        "ingest",
        help="the gRPC ingest gateway (IngestService)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest="ingest_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="serve IngestService over gRPC until SIGTERM")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from residuals.ingest.app import main

    return main()
