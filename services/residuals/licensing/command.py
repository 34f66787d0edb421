"""``residuals licensing run|relay``: the licensing service from the console script."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.licensing.app import main, relay_main
    from residuals.licensing.settings import LicensingSettings

    add_service_command(
        subparsers,
        "licensing",
        "the licence registry service",
        LicensingSettings,
        {
            "run": ("serve LicenceService over gRPC (with the outbox relay)", main),
            "relay": ("run only the outbox relay (PostgreSQL -> Kafka)", relay_main),
        },
    )
