"""``python -m residuals.ledger``: load settings, wire, run until SIGTERM."""

from __future__ import annotations

import sys

from residuals.ledger.app import LedgerWriter
from residuals.ledger.settings import LedgerSettings
from residuals.platform.service import run_service


def main() -> int:
    """The sink loop holds the main thread until a signal ends it after its batch."""
    return run_service(
        "ledger",
        LedgerSettings,
        lambda settings: LedgerWriter(settings).start(),
        describe_running=lambda writer: {"group": writer.group_id},
        run=lambda writer: writer.run(),
    )


if __name__ == "__main__":
    sys.exit(main())
