"""The operators' commands' machine output and progress: JSON that keeps money exact, and
progress that never reaches a pipe."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum

import pytest

from residuals.cli import main, version
from residuals.cli.output import print_json, progress

pytestmark = pytest.mark.unit


class Colour(Enum):
    RED = "RED"


@dataclass
class Row:
    amount: Decimal
    at: datetime
    colour: Colour


def test_json_keeps_amounts_as_exact_decimal_strings(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"rows": [Row(Decimal("0.10"), datetime(2026, 10, 1, tzinfo=UTC), Colour.RED)]})
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"rows": [{"amount": "0.10", "at": "2026-10-01T00:00:00+00:00", "colour": "RED"}]}


def test_json_refuses_what_it_cannot_represent() -> None:
    with pytest.raises(TypeError, match="object"):
        print_json({"x": object()})


def test_progress_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress("work", total=3) as shown:
        shown.step("step two")
        assert list(shown.track(range(25_000))) == list(range(25_000))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_counts_every_item_when_shown() -> None:
    with progress("work", force=True) as shown:
        items = list(shown.track(range(25_001), every=10_000))
        task = shown._bar.tasks[0]  # type: ignore[union-attr]
        assert task.completed == 25_001
    assert items == list(range(25_001))


def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"residuals {version()}" and out.split()[1][0].isdigit()
    full = subprocess.run(
        [sys.executable, "-m", "residuals", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert full.returncode == 0 and full.stdout.strip() == out
