"""``residuals ingest run``: the ingest gateway from the console script."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.ingest.app import main
    from residuals.ingest.settings import IngestSettings

    add_service_command(
        subparsers,
        "ingest",
        "the gRPC ingest gateway (IngestService)",
        IngestSettings,
        {"run": ("serve IngestService over gRPC until SIGTERM", main)},
    )
