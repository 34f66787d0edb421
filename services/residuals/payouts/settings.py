"""The payouts service's one settings object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from residuals.domain.money import is_currency
from residuals.platform.config import (
    ConfigError,
    KafkaSettings,
    PostgresSettings,
    TelemetrySettings,
    env,
    group,
)
from residuals.platform.grpc_server import GrpcSettings

SERVICE_NAME = "payouts"


def parse_thresholds(text: str) -> dict[str, Decimal]:
    """``"USD=10.00,JPY=1000"`` → ``{"USD": Decimal("10.00"), "JPY": Decimal("1000")}``."""
    out: dict[str, Decimal] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        currency, sep, amount = part.partition("=")
        currency = currency.strip().upper()
        try:
            value = Decimal(amount.strip())
        except InvalidOperation:
            value = Decimal("NaN")
        if not sep or not is_currency(currency) or not value.is_finite() or value < 0:
            raise ConfigError(
                f"PAYOUTS_THRESHOLDS: {part!r} is not CURRENCY=AMOUNT (e.g. USD=10.00)"
            )
        out[currency] = value
    return out


@dataclass(frozen=True)
class PayoutsSettings:
    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    grace_days: int = env(
        "PAYOUTS_GRACE_DAYS", 3, help="days after a month ends before it may be closed", minimum=0
    )
    thresholds_text: str = env(
        "PAYOUTS_THRESHOLDS",
        "",
        help="payout thresholds per currency, e.g. USD=10.00,JPY=1000 (default 10.00 each)",
    )
    rail: str = env(
        "PAYOUTS_RAIL",
        "file",
        help="payment rail: file (instruction files) or test (in memory)",
        choices=("file", "test"),
    )
    rail_dir: Path = env(
        "PAYOUTS_RAIL_DIR", Path("payout-instructions"), help="folder of the file rail"
    )
    auto_close: bool = env(
        "PAYOUTS_AUTO_CLOSE", False, help="close each month automatically after its grace period"
    )
    first_period: str = env(
        "PAYOUTS_FIRST_PERIOD", "", help="YYYY-MM the automatic close starts from (none closed yet)"
    )
    auto_pay: bool = env(
        "PAYOUTS_AUTO_PAY", False, help="send payouts through the rail as soon as they are due"
    )
    scheduler_seconds: float = env(
        "PAYOUTS_SCHEDULER_SECONDS",
        60.0,
        help="how often auto close / auto pay look for work",
        minimum=0.05,
    )
    heartbeat_seconds: float = env(
        "PAYOUTS_HEARTBEAT_SECONDS",
        15.0,
        help="WatchPayouts default heartbeat interval",
        minimum=0.05,
    )
    poll_seconds: float = env(
        "PAYOUTS_POLL_SECONDS",
        0.25,
        help="how often streams and the relay look for new changes",
        minimum=0.01,
    )

    def __post_init__(self) -> None:
        parse_thresholds(self.thresholds_text)

    @property
    def thresholds(self) -> dict[str, Decimal]:
        return parse_thresholds(self.thresholds_text)

    @property
    def grace(self) -> timedelta:
        return timedelta(days=self.grace_days)
