"""``python -m residuals.meter``: load settings, wire, run until SIGTERM."""

from __future__ import annotations

import sys

from residuals.meter.app import MeterService
from residuals.meter.settings import MeterSettings
from residuals.platform.faust_app import run_worker
from residuals.platform.service import run_service


def main() -> int:
    """Every licence and key is loaded before faust's worker rates the first record."""
    return run_service(
        "meter",
        MeterSettings,
        lambda settings: MeterService(settings).start(),
        describe_running=lambda service: {"licences": len(service.licences)},
        run=lambda service: run_worker(service.app, loglevel=service.settings.telemetry.log_level),
    )


if __name__ == "__main__":
    sys.exit(main())
