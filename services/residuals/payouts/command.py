"""``residuals payouts run``: the service from the console script (finance operations are
``residuals finance``, :mod:`residuals.cli.finance`)."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.payouts.app import main
    from residuals.payouts.settings import PayoutsSettings

    add_service_command(
        subparsers,
        "payouts",
        "the payouts service (period close, statements, payouts, reconciliation)",
        PayoutsSettings,
        {"run": ("serve PayoutService over gRPC and publish payout events", main)},
    )
