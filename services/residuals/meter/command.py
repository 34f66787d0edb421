"""``residuals meter run``: the service from the console script (``python -m residuals.meter``)."""

from __future__ import annotations

from typing import Any

from residuals.platform.service import add_service_command


def register(subparsers: Any) -> None:
    from residuals.meter.settings import MeterSettings

    add_service_command(
        subparsers,
        "meter",
        "the meter: rate usage events as they arrive (faust)",
        MeterSettings,
        {
            "run": (
                "consume residuals.usage.v1 and publish rated usage, alerts and dead letters",
                _main,
            )
        },
    )


def _main() -> int:
    from residuals.meter.__main__ import main  # faust/Kafka imports only when it runs

    return main()
