"""Every worked royalty case, through the `residuals replay` command, exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from residuals.cli import main
from residuals.replay.compare import differences

CASES = sorted((Path(__file__).parents[1] / "data" / "royalty-cases").glob("*.yaml"))


def test_the_worked_cases_are_in_the_repository() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_replay_prints_the_expected_statement(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(case)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = yaml.safe_load(case.read_text())["expected"]
    assert differences(printed, expected) == []
    # Exact strings too, not only equal decimals: the minor digits are part of the contract.
    assert printed == json.loads(json.dumps(expected, default=str))


def test_replay_check_mode_passes_all_cases_as_a_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "residuals", "replay", "--check", *map(str, CASES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == len(CASES)


def test_check_mode_fails_and_names_the_difference(tmp_path: Path) -> None:
    case = yaml.safe_load(CASES[0].read_text())
    case["expected"]["licences"][0]["earned"] = "579.99"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(case))
    result = subprocess.run(
        [sys.executable, "-m", "residuals", "replay", "--check", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "$.licences[0].earned: 580.00 != expected 579.99" in result.stdout


def test_table_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in CASES if "scope" in c.stem)
    assert main(["replay", "--format", "table", str(case)]) == 0
    out = capsys.readouterr().out
    assert "Licence LIC-CY-NOVA (EUR)" in out
    assert "LICENCE_SUSPENDED" in out and "held (not paid until resolved)" in out


def test_events_file_carries_streaming_only_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if "render-tiers" in c.stem)
    events = tmp_path / "events.jsonl"
    forged = {"dead_letter": "BAD_SIGNATURE", "vendor_id": "VEN-ACME", "event_id": "forged-1"}
    late = {"kind": "RENDER", "event_id": "late-1", "vendor_id": "VEN-ACME",
            "licence_id": "LIC-ANA-ACME", "avatar_id": "AVA-ANA-1", "render_id": "x",
            "category": "corporate_training", "territory": "US",
            "occurred_at": "2026-10-30T00:00:00Z"}  # fmt: skip
    events.write_text("\n".join(json.dumps(x) for x in (forged, late)) + "\n")
    assert main(["replay", str(case), "--events", str(events)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dlq"] == [{"reason": "BAD_SIGNATURE", "count": 1}]
    assert doc["licences"][0]["lines"][-1]["units"] == 201  # the extra render, tier 2

    events.write_text(json.dumps({"dead_letter": "NOT_A_REASON"}) + "\n")
    assert main(["replay", str(case), "--events", str(events)]) == 2
    assert "line 1.dead_letter: must be one of" in capsys.readouterr().err
