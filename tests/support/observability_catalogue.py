"""What the deploy files (Grafana dashboards, Prometheus rules and scrape config) refer to.

Shared by the unit test of the deploy files and the end-to-end test that compares the
metric names they use with what the running services export.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

#: Series Prometheus itself creates for every target (not exported by services).
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "le",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_panels() -> Iterator[tuple[str, dict[str, Any]]]:
    """(dashboard file name, panel) for every non-row panel."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            if panel.get("type") != "row":
                yield path.name, panel


def dashboard_metrics() -> dict[str, set[str]]:
    """``"file: panel title"`` -> metric names its queries use."""
    return {
        f"{name}: {panel['title']}": set().union(
            *(metric_names(t["expr"]) for t in panel.get("targets", []))
        )
        for name, panel in dashboard_panels()
    }


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_metrics() -> dict[str, set[str]]:
    """``"rule: name"`` -> metric names its expression uses."""
    return {
        f"rule: {rule.get('alert') or rule.get('record')}": metric_names(rule["expr"])
        for rule in rules()
    }


def referenced_metrics() -> dict[str, set[str]]:
    return {**dashboard_metrics(), **rule_metrics()}


def scrape_jobs() -> set[str]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def runnable_services() -> set[str]:
    """Service packages with a ``__main__`` (``python -m residuals.<name>``)."""
    root = REPO / "services" / "residuals"
    return {p.parent.name for p in root.glob("*/__main__.py")}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+\S+")


def sample_names(exposition: str) -> set[str]:
    """Names of the samples in a Prometheus text exposition (series with data only)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            names.add(match.group(1))
    return names
