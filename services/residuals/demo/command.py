"""``residuals demo``: the registration of the command (the work is in :mod:`runner`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MIN_EVENTS = 200
MAX_EVENTS = 500_000


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product on the local stack: a simulated month, live",
        description=(
            "Start the local stack and every service, simulate a month of usage by several"
            " vendors (SDK over Kafka and over the gRPC gateway) with misuse, show royalties"
            " and alerts live, then close the period, export the statements, pay out and"
            " reconcile. Honours RESIDUALS_STACK_DIR, RESIDUALS_KAFKA_PORT,"
            " RESIDUALS_KAFKA_CONTROLLER_PORT and RESIDUALS_POSTGRES_PORT like `residuals"
            " stack`. The same --seed gives the same statement (same period)."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=_positive(float),
        default=90.0,
        help="how long the month takes to publish (default 90)",
    )
    parser.add_argument(
        "--events",
        type=_positive(int),
        default=20_000,
        help="about how many usage events the month has (default 20000, at least 200)",
    )
    parser.add_argument("--seed", type=int, default=7, help="scenario seed (default 7)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="output folder for statements, payouts, replay files and logs (default ./demo-output)",
    )
    parser.add_argument(
        "--keep-stack",
        action="store_true",
        help="leave the local stack running at the end even if the demo started it",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from residuals.demo.runner import Demo, Options

    if not MIN_EVENTS <= args.events <= MAX_EVENTS:
        print(
            f"residuals demo: --events: between {MIN_EVENTS:,} and {MAX_EVENTS:,}"
            " (bench/pipeline.py measures bigger months)"
        )
        return 2
    options = Options(
        seconds=args.seconds,
        events=args.events,
        seed=args.seed,
        out=args.out,
        keep_stack=args.keep_stack,
    )
    return Demo(options).run()
