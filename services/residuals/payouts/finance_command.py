"""``residuals finance``: registered separately so the CLI can import it lazily by name."""

from __future__ import annotations

from typing import Any

from residuals.payouts.command import register_finance


def register(subparsers: Any) -> None:
    register_finance(subparsers)
