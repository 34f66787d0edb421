"""The README is the newcomer's contract: keep its commands and settings true."""

from __future__ import annotations

from pathlib import Path

import pytest

from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings, describe
from residuals.platform.grpc_server import GrpcSettings
from residuals.stack.settings import StackSettings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "settings", [KafkaSettings, PostgresSettings, TelemetrySettings, GrpcSettings, StackSettings]
)
def test_every_setting_is_documented(settings: type) -> None:
    missing = [var for var, _, _ in describe(settings) if f"`{var}`" not in README]
    assert missing == [], f"README configuration table lacks {missing}"


def test_the_two_commands_exist() -> None:
    assert "./run demo" in README and "./run test" in README
    run = (ROOT / "run").read_text()
    assert "demo) cmd_demo" in run and "test) cmd_test" in run
    assert (ROOT / ".ci" / "run").read_text().count("./run test") == 1
