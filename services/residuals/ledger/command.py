"""``residuals ledger run``: the service from the console script (python -m residuals.ledger)."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.ledger.settings import LedgerSettings

    add_service_command(
        subparsers,
        "ledger",
        "the ledger writer: rated usage and dead letters into PostgreSQL",
        LedgerSettings,
        {"run": ("consume rated usage and dead letters into the ledger", _main)},
    )


def _main() -> int:
    from residuals.ledger.__main__ import main  # faust/Kafka imports only when it runs

    return main()
