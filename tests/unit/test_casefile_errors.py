"""A malformed case file is an error naming the file and the field, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from residuals.replay.casefile import CaseError, load_case

GOOD = Path(__file__).parents[1] / "data" / "royalty-cases" / "01-render-tiers.yaml"


def _write(tmp_path: Path, mutate: Any) -> Path:
    data = yaml.safe_load(GOOD.read_text())
    mutate(data)
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _approval(**fields: Any) -> dict[str, Any]:
    base = {"approval_id": "A", "licence_id": "L", "category": "c"}
    return {**base, "valid_from": "2026-10-05T00:00:00Z", **fields}


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: d.update(period="October"), "period", "YYYY-MM"),
        (lambda d: d.update(approvals={"a": 1}), "approvals", "must be a list"),
        (
            lambda d: d.update(approvals=[{"licence_id": "L", "category": "c"}]),
            "approvals[0].approval_id",
            "required",
        ),
        (
            lambda d: d.update(approvals=[_approval(valid_until="2026-10-05T00:00:00Z")]),
            "approvals[0].valid_until",
            "after valid_from",
        ),
        (
            lambda d: d.update(approvals=[_approval(max_renders=0)]),
            "approvals[0].max_renders",
            ">= 1",
        ),
        (
            lambda d: d["licences"][0]["rates"].update(view_cpm="cheap"),
            "licences[0].rates.view_cpm",
            "not a decimal",
        ),
        (
            lambda d: d["licences"][0]["rates"].update(view_cpm=4.0),
            "licences[0].rates.view_cpm",
            "decimal string",
        ),
        (
            lambda d: d["licences"][0].update(splits={"A": "0.5", "B": "0.4"}),
            "licences[0].splits",
            "sum to 1",
        ),
        (lambda d: d["licences"][0].update(currency="XXX"), "licences[0].currency", "ISO 4217"),
        (lambda d: d["licences"][0].pop("vendor_id"), "licences[0].vendor_id", "required"),
        (
            lambda d: d["licences"][0]["rates"].update(
                render_tiers=[{"up_to": 5, "unit_price": "1"}]
            ),
            "licences[0].rates.render_tiers",
            "last tier must be open",
        ),
        (
            lambda d: d["licences"][0]["rates"].update(
                render_tiers=[
                    {"up_to": 5, "unit_price": "1"},
                    {"up_to": 3, "unit_price": "1"},
                    {"up_to": None, "unit_price": "1"},
                ]
            ),
            "licences[0].rates.render_tiers[1].up_to",
            "ascending",
        ),
        (
            lambda d: d["licences"][0].update(ends_at="2025-01-01T00:00:00Z"),
            "licences[0].ends_at",
            "after starts_at",
        ),
        (
            lambda d: d["licences"][0]["scope"].update(territories_allowed=["usa"]),
            "licences[0].scope.territories_allowed",
            "ISO 3166",
        ),
        (lambda d: d["events"][0].update(repeat="many"), "events[0].repeat", "whole number"),
        (lambda d: d.update(events=["not an event"]), "events[0]", "mapping"),
        (
            lambda d: d["licences"][0].update(quotas=[{"metric": "HOVER", "limit": 3}]),
            "licences[0].quotas[0].metric",
            "one of",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, mutate: Any, field: str, message: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert info.value.field_path == field
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_the_command_prints_the_error_not_a_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["licences"][0]["rates"].update(view_cpm="cheap"))
    result = subprocess.run(
        [sys.executable, "-m", "residuals", "replay", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}: licences[0].rates.view_cpm: is not a decimal number" in result.stderr


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"missing\.yaml"):
        load_case(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("period: [unclosed\n")
    with pytest.raises(CaseError, match="not valid YAML"):
        load_case(bad)
