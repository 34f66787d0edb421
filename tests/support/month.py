"""A deterministic, realistic month of usage for benchmarks and fault tests.

Many licences across vendors and currencies, every event kind, tiers, quotas, guarantees,
invalid traffic, duplicates, retractions, and a little misuse (forbidden categories,
unlicensed territories and channels). Same seed, same month, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

CATEGORIES = ("corporate_training", "product_demo", "education", "entertainment")
FORBIDDEN = ("political", "gambling")
TERRITORIES = ("US", "GB", "DE", "FR", "JP", "BR", "IN", "CA")
CHANNELS = ("web", "social", "broadcast")
CURRENCIES = ("USD", "EUR", "GBP", "JPY")


def make_licences(count: int, vendors: int, seed: int = 7) -> list[dict[str, Any]]:
    """Licence specs in the royalty-case shape (what `residuals licences create` accepts)."""
    rng = random.Random(seed)
    licences = []
    for i in range(count):
        currency = CURRENCIES[i % len(CURRENCIES)]
        scale = 100 if currency == "JPY" else 1
        tiers = [
            {
                "up_to": rng.choice([100, 500, 1000]),
                "unit_price": f"{rng.choice([0.5, 0.75, 1.0]) * scale:.2f}",
            },
            {"up_to": None, "unit_price": f"{rng.choice([0.3, 0.4]) * scale:.2f}"},
        ]
        spec: dict[str, Any] = {
            "licence_id": f"LIC-{i:06d}",
            "version": 1,
            "talent_id": f"TAL-{i // 2:06d}",
            "avatar_id": f"AVA-{i // 2:06d}",
            "vendor_id": f"VEN-{i % vendors:03d}",
            "currency": currency,
            "starts_at": "2026-01-01T00:00:00Z",
            "scope": {
                "categories_allowed": list(CATEGORIES[: 2 + i % 3]),
                "categories_forbidden": list(FORBIDDEN),
                "territories_allowed": ["*"] if i % 3 else list(TERRITORIES[:5]),
                "channels_allowed": ["web", "social"] if i % 4 else list(CHANNELS),
            },
            "rates": {
                "render_tiers": tiers,
                "view_cpm": f"{rng.choice([1.5, 2.5, 4.0]) * scale:.2f}",
                "ad_revenue_share": "0.35",
                "ad_floor_cpm": f"{1.0 * scale:.2f}",
                "channel_multipliers": {"broadcast": "1.5"},
            },
            "platform_fee": "0.10",
            "splits": {f"TAL-{i // 2:06d}": "0.85", f"AGT-{i % 50:03d}": "0.15"},
        }
        if i % 10 == 0:
            spec["quotas"] = [{"metric": "RENDER", "limit": 200, "on_exceed": "block"}]
        if i % 15 == 0:
            spec["minimum_guarantee"] = f"{100 * scale}"
        licences.append(spec)
    return licences


def make_events(
    licences: list[dict[str, Any]], count: int, seed: int = 11, period: str = "2026-10"
) -> Iterator[dict[str, Any]]:
    """``count`` raw events in arrival order, spread over the month."""
    rng = random.Random(seed)
    start = datetime.fromisoformat(f"{period}-01T00:00:00+00:00").astimezone(UTC)
    span = 28 * 86400
    renders: dict[int, list[str]] = {}
    recent: list[dict[str, Any]] = []
    for n in range(count):
        lic_index = rng.randrange(len(licences))
        lic = licences[lic_index]
        occurred = start + timedelta(seconds=int(span * n / count) + rng.randrange(60))
        roll = rng.random()
        if roll < 0.004 and recent:
            yield dict(rng.choice(recent))  # an exact re-send
            continue
        if roll < 0.005 and recent:
            original = rng.choice(recent)
            yield {
                "event_id": f"x-{n}",
                "kind": "RETRACTION",
                "vendor_id": original["vendor_id"],
                "original_event_id": original["event_id"],
                "occurred_at": occurred.isoformat(),
            }
            continue
        event: dict[str, Any] = {
            "event_id": f"e-{n}",
            "vendor_id": lic["vendor_id"],
            "licence_id": lic["licence_id"],
            "avatar_id": lic["avatar_id"],
            "occurred_at": occurred.isoformat(),
            "category": rng.choice(lic["scope"]["categories_allowed"]),
            "territory": rng.choice(
                lic["scope"]["territories_allowed"] if lic_index % 3 == 0 else TERRITORIES
            ),
        }
        if roll < 0.006:
            event["category"] = rng.choice(FORBIDDEN)
        if 0.006 <= roll < 0.008:
            event["territory"] = "KP"  # never licensed
        own = renders.setdefault(lic_index, [])
        if roll < 0.25 or not own:
            event.update(kind="RENDER", render_id=f"r-{n}")
            own.append(f"r-{n}")
        else:
            channels = lic["scope"]["channels_allowed"]
            event.update(
                kind="VIEW" if roll < 0.8 else "AD_IMPRESSION",
                render_id=rng.choice(own) if roll > 0.252 else f"ghost-{n}",
                channel=rng.choice(channels if roll < 0.97 else CHANNELS),
                quantity=rng.randrange(1, 2000),
            )
            if event["kind"] == "AD_IMPRESSION":
                event["ad_revenue"] = f"{rng.randrange(0, 5000) / 100:.2f}"
            if roll > 0.99:
                event["ivt"] = True
            elif roll > 0.98 and event["kind"] == "VIEW":
                event["viewable"] = False
        if roll > 0.9995:
            event["quantity"] = 0  # invalid: dead letter
        if len(recent) < 1000:
            recent.append(event)
        else:
            recent[rng.randrange(1000)] = event
        yield event
