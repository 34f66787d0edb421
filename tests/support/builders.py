"""Small builders for royalty-rule tests: a licence spec and events in the case shape."""

from __future__ import annotations

import copy
from typing import Any

from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement

PERIOD = Period.parse("2026-10")

BASE_LICENCE: dict[str, Any] = {
    "licence_id": "LIC-1",
    "talent_id": "TAL-1",
    "avatar_id": "AVA-1",
    "vendor_id": "VEN-1",
    "currency": "USD",
    "starts_at": "2026-01-01T00:00:00Z",
    "scope": {
        "categories_allowed": ["product_demo"],
        "categories_forbidden": ["political"],
        "territories_allowed": ["*"],
        "channels_allowed": ["web", "social"],
    },
    "rates": {
        "render_tiers": [
            {"up_to": 10, "unit_price": "1.00"},
            {"up_to": None, "unit_price": "0.50"},
        ],
        "view_cpm": "2.00",
        "ad_revenue_share": "0.50",
        "ad_floor_cpm": "1.00",
        "channel_multipliers": {"social": "2"},
    },
    "platform_fee": "0.10",
    "splits": {"TAL-1": "1"},
}


def licence_spec(**overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_LICENCE)
    for key, value in overrides.items():
        if key in ("scope", "rates") and isinstance(value, dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def licence(**overrides: Any) -> Licence:
    return parse_licence(licence_spec(**overrides))


_counter = iter(range(10**9))


def restart_numbering() -> None:
    """Number :func:`ev` events from 0 again. Their times come from the number (day
    ``1 + n % 28``), so a test whose events straddle the wrap from day 28 to day 1 would
    see them in another scope order: unit tests restart at 0 each (tests/unit/conftest.py)
    and so do not depend on which tests ran before them."""
    global _counter
    _counter = iter(range(10**9))


def ev(kind: str = "RENDER", **fields: Any) -> dict[str, Any]:
    """A valid raw event of ``kind`` for LIC-1, overridable field by field."""
    n = next(_counter)
    raw: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "vendor_id": "VEN-1",
        "kind": kind,
        "licence_id": "LIC-1",
        "avatar_id": "AVA-1",
        "render_id": "vid-1",
        "category": "product_demo",
        "territory": "US",
        "occurred_at": f"2026-10-{1 + n % 28:02d}T{n % 24:02d}:00:00Z",
    }
    if kind in ("VIEW", "AD_IMPRESSION"):
        raw["channel"] = "web"
    if kind == "AD_IMPRESSION":
        raw["ad_revenue"] = "1.00"
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def parsed(raw: dict[str, Any]) -> UsageEvent:
    event = parse_event(raw)
    assert isinstance(event, UsageEvent), event
    return event


def statement(licences: list[Licence], raws: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    events: list[UsageEvent | Rejection] = [parse_event(r) for r in raws]
    return compute_statement(PERIOD, licences, events, **kwargs).to_document()


def only(doc: dict[str, Any]) -> dict[str, Any]:
    """The single licence block of a one-licence statement."""
    (block,) = doc["licences"]
    return block


def violations(doc: dict[str, Any]) -> dict[str, int]:
    return {v["kind"]: v["count"] for v in doc["violations"]}


def dlq(doc: dict[str, Any]) -> dict[str, int]:
    return {d["reason"]: d["count"] for d in doc["dlq"]}
