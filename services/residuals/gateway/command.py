"""``residuals gateway run``: the HTTP/JSON gateway from the console script."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.gateway.app import main
    from residuals.gateway.settings import GatewaySettings

    add_service_command(
        subparsers,
        "gateway",
        "the HTTP/JSON gateway in front of the gRPC services",
        GatewaySettings,
        {"run": ("serve the annotated gRPC methods as HTTP/JSON (and SSE for Watch calls)", main)},
    )
