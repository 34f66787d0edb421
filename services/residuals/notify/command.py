"""``residuals notify run``: the notify service from the console script."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.notify.app import main
    from residuals.notify.settings import NotifySettings

    add_service_command(
        subparsers,
        "notify",
        "the webhook notifications service",
        NotifySettings,
        {"run": ("deliver webhooks and serve NotificationService over gRPC", main)},
    )
