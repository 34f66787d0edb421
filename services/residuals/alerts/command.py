"""``residuals alerts run``: the alerts service from the console script."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.alerts.app import main
    from residuals.alerts.settings import AlertsSettings

    add_service_command(
        subparsers,
        "alerts",
        "the scope-violation alerts service",
        AlertsSettings,
        {"run": ("consume alerts and serve AlertService over gRPC", main)},
    )
