"""The demo's month: parties, licences, licence changes and a seeded mix of usage (pure).

No I/O: :func:`build_scenario` turns ``(seed, events, window)`` into data the runner sends
through the real services. The same seed and size give the same month byte for byte
(times scaled onto the window, :mod:`residuals.demo.timeline`).

What a month holds, on top of ordinary renders, views and ad impressions:

* four vendors: two publish with the Python SDK over Kafka, one (Castly) through the gRPC
  ingest gateway, one (MuseAI) with the TypeScript SDK through the HTTP gateway;
* twelve talents, thirteen avatars, thirteen licences in USD, EUR, GBP and JPY with
  graduated tiers, CPM views, ad revenue shares with floors, channel multipliers, a
  render quota that blocks, a view quota that only alerts, a minimum guarantee, an
  advance, splits with agents and an estate, territory and channel allow-lists, a licence
  that expires mid-month and one its talent revokes mid-month;
* invalid traffic, non-viewable views, exact re-sends, a conflicting re-send, retractions,
  views of renders nobody reported;
* misuse: a political render (forbidden: the licence is suspended automatically), use in
  an unlicensed territory, on an unlicensed channel, after revocation and after expiry; a
  vendor reporting another vendor's licence, an ad impression in the wrong currency, an
  unknown licence at the gateway, and a spoofed event signed with a forged key.

Offsets are seconds into the canonical 30-day month; :class:`PlannedEvent.publish_at` is
when the sender hands the event to its SDK client (re-sends are published later than the
event they repeat).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from residuals.demo.timeline import CANONICAL_SECONDS, DAY, Window

ATTACKER = "attacker"
KAFKA = "kafka"
GRPC = "grpc"
HTTP = "http"  # the TypeScript SDK through the HTTP gateway (sdk/typescript)
#: Transports that go through the ingest gateway, which answers each event itself.
GATEWAY = frozenset({GRPC, HTTP})

#: Default payout thresholds of the demo (also written into the exported case file).
THRESHOLDS: dict[str, str] = {"EUR": "25.00", "GBP": "25.00", "JPY": "2500", "USD": "25.00"}

#: Territories a worldwide licence's audience comes from.
AUDIENCE = ("US", "GB", "DE", "FR", "JP", "BR", "IN", "CA", "AU", "ES")
FORBIDDEN = ("adult", "gambling", "political")


@dataclass(frozen=True)
class Vendor:
    vendor_id: str
    name: str
    transport: str  # KAFKA, GRPC or HTTP
    short: str  # event id prefix


@dataclass(frozen=True)
class Talent:
    talent_id: str
    name: str
    avatars: tuple[tuple[str, str], ...]  # (avatar_id, display name)


@dataclass(frozen=True)
class Payee:
    payee_id: str
    kind: str  # talent | agent | estate
    name: str
    talent_ids: tuple[str, ...]


@dataclass(frozen=True)
class PlannedEvent:
    """One event a sender publishes; ``raw`` is the replay shape (``occurred_at`` a datetime)."""

    publish_at: int
    sender: str  # a vendor id, or ATTACKER (forged signing key claiming PixelForge)
    raw: Mapping[str, Any]
    note: str = ""


@dataclass(frozen=True)
class LicenceChange:
    """A change a talent makes live, ``publish_at`` (canonical) before it takes effect."""

    publish_at: int
    action: str  # "revoke"
    licence_id: str
    effective: Any  # datetime
    wind_down_days: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Scenario:
    seed: int
    window: Window
    vendors: tuple[Vendor, ...]
    talents: tuple[Talent, ...]
    payees: tuple[Payee, ...]
    licences: tuple[dict[str, Any], ...]
    events: tuple[PlannedEvent, ...]
    changes: tuple[LicenceChange, ...]
    thresholds: Mapping[str, str] = field(default_factory=lambda: dict(THRESHOLDS))

    def vendor(self, vendor_id: str) -> Vendor:
        return next(v for v in self.vendors if v.vendor_id == vendor_id)

    def licence(self, licence_id: str) -> dict[str, Any]:
        return next(lic for lic in self.licences if lic["licence_id"] == licence_id)

    def avatar_names(self) -> dict[str, str]:
        return {a: name for t in self.talents for a, name in t.avatars}

    def talent_names(self) -> dict[str, str]:
        return {t.talent_id: t.name for t in self.talents}

    def licence_specs(self) -> list[dict[str, Any]]:
        """Licences as ``residuals licences create`` reads them (as they start the month)."""
        return [dict(lic) for lic in self.licences]

    def expected_licence_specs(self) -> list[dict[str, Any]]:
        """Licences as they end the month: the live changes applied as amendments."""
        specs = {lic["licence_id"]: dict(lic) for lic in self.licences}
        for change in self.changes:
            spec = specs[change.licence_id]
            spec["amendments"] = [
                *spec.get("amendments", []),
                {
                    "effective_from": change.effective,
                    "revoked_at": change.effective,
                    "wind_down_days": change.wind_down_days,
                },
            ]
        return list(specs.values())


VENDORS = (
    Vendor("VEN-PIXELFORGE", "PixelForge (AI video studio)", KAFKA, "pxf"),
    Vendor("VEN-MUSEAI", "MuseAI (ad creative platform)", HTTP, "mus"),
    Vendor("VEN-DUBLY", "Dubly (dubbing and localisation)", KAFKA, "dub"),
    Vendor("VEN-CASTLY", "Castly (support avatars, no Kafka)", GRPC, "cst"),
)

TALENTS = (
    Talent("TAL-AMARA", "Amara Okafor", (("AVA-AMARA-1", "Amara (presenter)"),
                                         ("AVA-AMARA-2", "Amara (spokesperson)"))),
    Talent("TAL-BEN", "Ben Carter", (("AVA-BEN-1", "Ben"),)),
    Talent("TAL-CHIARA", "Chiara Rossi", (("AVA-CHIARA-1", "Chiara"),)),
    Talent("TAL-DEV", "Dev Malhotra", (("AVA-DEV-1", "Dev"),)),
    Talent("TAL-ELIN", "Elin Hughes", (("AVA-ELIN-1", "Elin"),)),
    Talent("TAL-FUMIKO", "Fumiko Sato", (("AVA-FUMIKO-1", "Fumiko"),)),
    Talent("TAL-GABRIEL", "Gabriel Moreau", (("AVA-GABRIEL-1", "Gabriel"),)),
    Talent("TAL-HANA", "Hana Kim", (("AVA-HANA-1", "Hana"),)),
    Talent("TAL-ISAAC", "Isaac Okonjo (estate)", (("AVA-ISAAC-1", "Isaac"),)),
    Talent("TAL-JUNE", "June Park", (("AVA-JUNE-1", "June"),)),
    Talent("TAL-KOFI", "Kofi Mensah", (("AVA-KOFI-1", "Kofi"),)),
    Talent("TAL-LEA", "Léa Dubois", (("AVA-LEA-1", "Léa"),)),
)  # fmt: skip

PAYEES = (
    *(Payee(t.talent_id, "talent", t.name, (t.talent_id,)) for t in TALENTS
      if t.talent_id != "TAL-ISAAC"),
    Payee("EST-ISAAC", "estate", "Estate of Isaac Okonjo", ("TAL-ISAAC",)),
    Payee("AGT-STARLINE", "agent", "Starline Talent Agency",
          ("TAL-AMARA", "TAL-ELIN", "TAL-GABRIEL", "TAL-ISAAC")),
    Payee("AGT-NORTHBOUND", "agent", "Northbound Management",
          ("TAL-CHIARA", "TAL-FUMIKO", "TAL-KOFI")),
)  # fmt: skip


# --- licences ----------------------------------------------------------------------------


def _tiers(*tiers: tuple[int | None, str]) -> list[dict[str, Any]]:
    return [{"up_to": up_to, "unit_price": price} for up_to, price in tiers]


def _licence(
    licence_id: str,
    talent: str,
    avatar: str,
    vendor: str,
    currency: str,
    *,
    categories: Sequence[str],
    territories: Sequence[str],
    channels: Sequence[str],
    tiers: list[dict[str, Any]],
    view_cpm: str,
    splits: Mapping[str, str],
    ad_share: str = "0.30",
    floor: str = "1.00",
    multipliers: Mapping[str, str] | None = None,
    **terms: Any,
) -> dict[str, Any]:
    return {
        "licence_id": licence_id,
        "version": 1,
        "talent_id": talent,
        "avatar_id": avatar,
        "vendor_id": vendor,
        "currency": currency,
        "scope": {
            "categories_allowed": list(categories),
            "categories_forbidden": list(FORBIDDEN),
            "territories_allowed": list(territories),
            "channels_allowed": list(channels),
        },
        "rates": {
            "render_tiers": tiers,
            "view_cpm": view_cpm,
            "ad_revenue_share": ad_share,
            "ad_floor_cpm": floor,
            "channel_multipliers": dict(multipliers or {}),
        },
        "platform_fee": "0.10",
        "splits": dict(splits),
        **terms,
    }


def _licences(window: Window) -> list[dict[str, Any]]:
    starts = window.period.start
    star, north = "AGT-STARLINE", "AGT-NORTHBOUND"
    return [
        _licence("LIC-AMARA-PIXEL", "TAL-AMARA", "AVA-AMARA-1", "VEN-PIXELFORGE", "USD",
                 categories=["corporate_training", "product_demo", "education",
                             "customer_support"],
                 territories=["*"], channels=["web", "social", "streaming"],
                 tiers=_tiers((1000, "0.80"), (None, "0.60")), view_cpm="3.00",
                 multipliers={"streaming": "1.25"},
                 splits={"TAL-AMARA": "0.85", star: "0.15"}, starts_at=starts),
        _licence("LIC-AMARA-MUSE", "TAL-AMARA", "AVA-AMARA-2", "VEN-MUSEAI", "USD",
                 categories=["advertising", "product_demo"],
                 territories=["US", "CA", "GB", "AU"], channels=["web", "social", "broadcast"],
                 tiers=_tiers((None, "1.20")), view_cpm="2.50", ad_share="0.35", floor="1.50",
                 multipliers={"broadcast": "1.5"},
                 splits={"TAL-AMARA": "0.85", star: "0.15"}, starts_at=starts),
        _licence("LIC-BEN-PIXEL", "TAL-BEN", "AVA-BEN-1", "VEN-PIXELFORGE", "EUR",
                 categories=["corporate_training", "education"],
                 territories=["*"], channels=["web", "social"],
                 tiers=_tiers((200, "1.00"), (None, "0.75")), view_cpm="2.00",
                 splits={"TAL-BEN": "1"}, starts_at=starts),
        _licence("LIC-CHIARA-MUSE", "TAL-CHIARA", "AVA-CHIARA-1", "VEN-MUSEAI", "EUR",
                 categories=["advertising", "entertainment"],
                 territories=["DE", "FR", "IT", "ES", "NL", "BE", "AT"],
                 channels=["web", "social", "streaming"],
                 tiers=_tiers((None, "0.90")), view_cpm="2.20", ad_share="0.40",
                 splits={"TAL-CHIARA": "0.80", north: "0.20"}, starts_at=starts),
        _licence("LIC-DEV-CASTLY", "TAL-DEV", "AVA-DEV-1", "VEN-CASTLY", "USD",
                 categories=["customer_support", "product_demo"],
                 territories=["US", "CA", "IN"], channels=["web", "in_app"],
                 tiers=_tiers((None, "1.00")), view_cpm="1.50",
                 splits={"TAL-DEV": "1"}, minimum_guarantee="250.00", starts_at=starts),
        _licence("LIC-ELIN-PIXEL", "TAL-ELIN", "AVA-ELIN-1", "VEN-PIXELFORGE", "GBP",
                 categories=["education", "corporate_training", "news"],
                 territories=["GB", "IE", "US"], channels=["web", "social", "streaming"],
                 tiers=_tiers((500, "0.70"), (None, "0.55")), view_cpm="2.80",
                 splits={"TAL-ELIN": "0.90", star: "0.10"}, advance_outstanding="400.00",
                 starts_at=starts),
        _licence("LIC-FUMIKO-DUBLY", "TAL-FUMIKO", "AVA-FUMIKO-1", "VEN-DUBLY", "JPY",
                 categories=["entertainment", "education", "advertising"],
                 territories=["JP", "KR", "TW"],
                 channels=["web", "social", "streaming", "broadcast"],
                 tiers=_tiers((300, "120"), (None, "90")), view_cpm="350", floor="150",
                 multipliers={"broadcast": "1.5"},
                 splits={"TAL-FUMIKO": "0.80", north: "0.20"}, starts_at=starts),
        _licence("LIC-HANA-DUBLY", "TAL-HANA", "AVA-HANA-1", "VEN-DUBLY", "JPY",
                 categories=["entertainment", "advertising"],
                 territories=["*"], channels=["web", "social", "streaming"],
                 tiers=_tiers((None, "100")), view_cpm="300", floor="100",
                 splits={"TAL-HANA": "1"}, starts_at=starts),
        _licence("LIC-ISAAC-PIXEL", "TAL-ISAAC", "AVA-ISAAC-1", "VEN-PIXELFORGE", "USD",
                 categories=["education", "entertainment", "news"],
                 territories=["*"], channels=["web", "social", "streaming", "broadcast"],
                 tiers=_tiers((None, "1.50")), view_cpm="4.00",
                 multipliers={"broadcast": "1.5"},
                 splits={"EST-ISAAC": "0.90", star: "0.10"}, starts_at=starts),
        _licence("LIC-JUNE-MUSE", "TAL-JUNE", "AVA-JUNE-1", "VEN-MUSEAI", "USD",
                 categories=["advertising", "product_demo"],
                 territories=["*"], channels=["web", "social"],
                 tiers=_tiers((None, "0.90")), view_cpm="2.00",
                 splits={"TAL-JUNE": "1"}, starts_at=starts),
        _licence("LIC-KOFI-CASTLY", "TAL-KOFI", "AVA-KOFI-1", "VEN-CASTLY", "USD",
                 categories=["corporate_training", "customer_support"],
                 territories=["*"], channels=["web", "in_app"],
                 tiers=_tiers((None, "0.80")), view_cpm="1.80",
                 splits={"TAL-KOFI": "0.85", north: "0.15"}, starts_at=starts),
        _licence("LIC-LEA-DUBLY", "TAL-LEA", "AVA-LEA-1", "VEN-DUBLY", "EUR",
                 categories=["education"],
                 territories=["FR", "BE", "CH", "CA"], channels=["web"],
                 tiers=_tiers((None, "0.50")), view_cpm="1.00",
                 splits={"TAL-LEA": "1"}, starts_at=starts),
        _licence("LIC-GABRIEL-PIXEL", "TAL-GABRIEL", "AVA-GABRIEL-1", "VEN-PIXELFORGE", "GBP",
                 categories=["product_demo", "corporate_training"],
                 territories=["GB", "US"], channels=["web", "social"],
                 tiers=_tiers((None, "0.65")), view_cpm="2.40",
                 splits={"TAL-GABRIEL": "0.85", star: "0.15"},
                 starts_at=starts, ends_at=window.at(22 * DAY)),
    ]  # fmt: skip


#: Share of the random traffic each licence gets (Léa's comes from the script only).
WEIGHTS = {
    "LIC-AMARA-PIXEL": 16,
    "LIC-AMARA-MUSE": 10,
    "LIC-BEN-PIXEL": 9,
    "LIC-CHIARA-MUSE": 8,
    "LIC-DEV-CASTLY": 3,
    "LIC-ELIN-PIXEL": 9,
    "LIC-FUMIKO-DUBLY": 9,
    "LIC-HANA-DUBLY": 8,
    "LIC-ISAAC-PIXEL": 7,
    "LIC-JUNE-MUSE": 6,
    "LIC-KOFI-CASTLY": 5,
    "LIC-GABRIEL-PIXEL": 6,
}

REVOKED = "LIC-JUNE-MUSE"
REVOKED_DAY = 17
#: Longer than any window, so whether a view falls in the wind-down never depends on it.
WIND_DOWN_DAYS = 45
POLITICAL_DAY = 12


# --- events --------------------------------------------------------------------------------


class _Month:
    """Builds the events in canonical time; ids and render ids are readable and seeded."""

    def __init__(self, seed: int, window: Window, licences: Sequence[dict[str, Any]]) -> None:
        self.rng = random.Random(seed)
        self.window = window
        self.licences = {lic["licence_id"]: lic for lic in licences}
        self.vendor_short = {v.vendor_id: v.short for v in VENDORS}
        self.counters: dict[str, int] = {}
        self.render_count = 0
        #: Per licence, the renders its vendor reported: (canonical offset, render id), sorted.
        self.renders: dict[str, list[tuple[int, str]]] = {}
        self.events: list[tuple[int, int, PlannedEvent]] = []
        self.recent: dict[str, list[dict[str, Any]]] = {}  # sender -> recent originals
        self.sequence = 0

    def _event_id(self, vendor_id: str) -> str:
        short = self.vendor_short[vendor_id]
        n = self.counters.get(short, 0) + 1
        self.counters[short] = n
        return f"{short}-{n:06d}"

    def add(self, at: int, sender: str, raw: dict[str, Any], note: str = "") -> dict[str, Any]:
        self.sequence += 1
        self.events.append((at, self.sequence, PlannedEvent(at, sender, raw, note)))
        return raw

    def usage(
        self,
        at: int,
        licence_id: str,
        kind: str,
        *,
        sender: str | None = None,
        vendor_id: str | None = None,
        note: str = "",
        **fields: Any,
    ) -> dict[str, Any]:
        """A render, view or ad impression on ``licence_id`` at canonical offset ``at``."""
        rng = self.rng
        lic = self.licences.get(licence_id)
        vendor = vendor_id or (lic["vendor_id"] if lic else "VEN-CASTLY")
        scope = lic["scope"] if lic else {}
        raw: dict[str, Any] = {
            "event_id": self._event_id(vendor),
            "kind": kind,
            "vendor_id": vendor,
            "licence_id": licence_id,
            "avatar_id": lic["avatar_id"] if lic else "AVA-UNKNOWN",
            "occurred_at": self.window.at(at),
        }
        allowed = scope.get("territories_allowed", ["US"])
        raw["category"] = rng.choice(scope.get("categories_allowed", ["product_demo"]))
        raw["territory"] = rng.choice(AUDIENCE if "*" in allowed else allowed)
        own = self.renders.setdefault(licence_id, [])
        if kind == "RENDER":
            self.render_count += 1
            raw["render_id"] = (
                f"{raw['avatar_id'].removeprefix('AVA-').lower()}-v{self.render_count:05d}"
            )
            if lic is not None and vendor == lic["vendor_id"]:  # what views may show later
                bisect.insort(own, (at, raw["render_id"]))
        else:
            shown = bisect.bisect_right(own, (at, "\uffff"))
            raw["render_id"] = own[rng.randrange(shown)][1] if shown else "unreported"
            raw["channel"] = rng.choice(scope.get("channels_allowed", ["web"]))
        raw.update(fields)
        return self.add(at, sender or vendor, raw, note)

    def random_usage(self, at: int, licence_id: str) -> dict[str, Any]:
        rng = self.rng
        lic = self.licences[licence_id]
        roll = rng.random()
        ads = 0.35 if lic["vendor_id"] == "VEN-MUSEAI" else 0.12
        reported = self.renders.get(licence_id, [])
        if roll < 0.22 or not reported or reported[0][0] > at:
            return self.usage(at, licence_id, "RENDER", quantity=1 if rng.random() < 0.9 else 2)
        scale = 100 if lic["currency"] == "JPY" else 1
        if roll < 1 - ads:
            raw = self.usage(
                at, licence_id, "VIEW", quantity=min(5000, int(rng.paretovariate(1.6) * 40))
            )
            if rng.random() < 0.02:
                raw["viewable"] = False
        else:
            quantity = rng.randrange(100, 2000)
            revenue = Decimal(quantity * rng.randrange(100, 800) * scale) / Decimal(100_000)
            digits = Decimal(1) if scale == 100 else Decimal("0.01")
            raw = self.usage(
                at, licence_id, "AD_IMPRESSION", quantity=quantity,
                ad_revenue=str(revenue.quantize(digits)),
            )  # fmt: skip
        if rng.random() < 0.015:
            raw["ivt"] = True
        elif rng.random() < 0.03:
            raw["render_id"] = f"ghost-{raw['event_id']}"  # a video nobody reported rendering
        return raw

    def finish(self) -> tuple[PlannedEvent, ...]:
        return tuple(e for _, _, e in sorted(self.events, key=lambda x: (x[0], x[1])))


def _bulk(month: _Month, count: int) -> None:
    """Ordinary traffic spread over the month, with re-sends and retractions."""
    rng = month.rng
    ids = sorted(WEIGHTS)
    weights = [WEIGHTS[i] for i in ids]
    # Bulk re-sends and retractions come from every vendor but Castly. A vendor's events do
    # not depend on whether it publishes over Kafka or HTTP (MuseAI published over Kafka
    # before it moved to the TypeScript SDK; its month stayed the same). The HTTP gateway
    # answers MuseAI's exact re-sends DUPLICATE; over Kafka the meter drops them.
    kafka_senders = {v.vendor_id for v in VENDORS if v.transport != GRPC}
    for n in range(count):
        at = min(CANONICAL_SECONDS - 1, int(CANONICAL_SECONDS * (n + rng.random()) / count))
        licence_id = rng.choices(ids, weights)[0]
        roll = rng.random()
        vendor = month.licences[licence_id]["vendor_id"]
        recent = month.recent.setdefault(vendor, [])
        if roll < 0.004 and recent and vendor in kafka_senders:
            # The SDK's contract makes repeats rare but possible; the platform drops them.
            month.add(at, vendor, dict(rng.choice(recent)))
            continue
        if roll < 0.0065 and recent and vendor in kafka_senders:
            original = recent.pop(rng.randrange(len(recent)))
            month.add(
                at,
                vendor,
                {
                    "event_id": month._event_id(vendor),
                    "kind": "RETRACTION",
                    "vendor_id": vendor,
                    "licence_id": original["licence_id"],  # routes it after the original
                    "original_event_id": original["event_id"],
                    "occurred_at": month.window.at(at),
                },
            )
            continue
        raw = month.random_usage(at, licence_id)
        if raw["kind"] != "RENDER" and not raw.get("ivt"):
            recent.append(raw)
            if len(recent) > 200:
                recent.pop(0)


def _script(month: _Month) -> None:
    """The misuse and corner cases every month has, whatever its size."""
    rng = month.rng
    d = DAY
    # Léa: a little education content, enough to earn less than the payout threshold.
    for i in range(6):
        month.usage(2 * d + i * 4 * d, "LIC-LEA-DUBLY", "RENDER")
        month.usage(3 * d + i * 4 * d, "LIC-LEA-DUBLY", "VIEW", quantity=rng.randrange(200, 900))
    month.usage(20 * d, "LIC-LEA-DUBLY", "VIEW", channel="broadcast", quantity=5000,
                note="Léa's lesson aired on broadcast TV: channel not licensed")  # fmt: skip
    # Dev: light support-bot use; the minimum guarantee tops it up.
    for i in range(40):
        month.usage(d + i * 17_000, "LIC-DEV-CASTLY", "RENDER")
    month.usage(4 * d + 3_600, "LIC-AMARA-PIXEL", "RENDER", vendor_id="VEN-MUSEAI",
                note="MuseAI reports a render on PixelForge's licence")  # fmt: skip
    for i in range(3):
        month.usage(5 * d + i * 20_000, "LIC-CHIARA-MUSE", "VIEW", territory="US",
                    quantity=2500, note="Chiara's EU-only ad shown in the US")  # fmt: skip
    month.usage(8 * d + 7_200, "LIC-AMARA-MUSE", "AD_IMPRESSION", quantity=800,
                ad_revenue="4.80", ad_revenue_currency="EUR",
                note="ad revenue reported in EUR on a USD licence")  # fmt: skip
    spoof = month.usage(9 * d + 1_800, "LIC-ISAAC-PIXEL", "RENDER", sender=ATTACKER,
                        note="spoofed event: PixelForge's identity, a forged key")  # fmt: skip
    spoof["event_id"] = "pxf-forged-1"
    month.usage(10 * d + 600, "LIC-NOVA-CASTLY", "RENDER", vendor_id="VEN-CASTLY",
                note="Castly reports a licence that does not exist")  # fmt: skip
    political = month.usage(
        POLITICAL_DAY * d, "LIC-KOFI-CASTLY", "RENDER", category="political", territory="US",
        note="Kofi's avatar rendered into a political campaign video",
    )  # fmt: skip
    for i in range(3):
        month.usage(POLITICAL_DAY * d + 3_600 * (i + 2), "LIC-KOFI-CASTLY", "VIEW",
                    render_id=political["render_id"], category="political", territory="US",
                    quantity=40_000, note="the campaign video keeps being watched")  # fmt: skip
    # A conflicting re-send: same event id, another quantity (first one wins).
    first = month.usage(13 * d, "LIC-BEN-PIXEL", "VIEW", quantity=300)
    month.add(14 * d, first["vendor_id"], {**first, "quantity": 3000},
              "PixelForge re-sends an event id with another payload")  # fmt: skip
    # An exact re-send through the gateway: Castly answers it with DUPLICATE.
    dev = month.usage(15 * d, "LIC-DEV-CASTLY", "RENDER")
    month.add(16 * d, "VEN-CASTLY", dict(dev), "Castly retries a delivered event")
    for i in range(4):
        month.usage(REVOKED_DAY * d + 3 * d + i * 50_000, REVOKED, "RENDER",
                    note="MuseAI keeps rendering June after she revoked the licence")  # fmt: skip
    for i in range(3):
        month.usage(22 * d + 7_200 + i * 40_000, "LIC-GABRIEL-PIXEL", "RENDER",
                    note="Gabriel's licence expired on day 22")  # fmt: skip


def _quota_limits(licences: list[dict[str, Any]], events: Sequence[PlannedEvent]) -> None:
    """Quotas sized from the month itself, so they bite at every scale (pure, seeded)."""
    renders = views = 0
    for e in events:
        raw = e.raw
        if e.sender == ATTACKER or raw.get("ivt") or raw.get("viewable") is False:
            continue
        if raw.get("licence_id") == "LIC-BEN-PIXEL" and raw["kind"] == "RENDER":
            renders += int(raw.get("quantity", 1))
        if raw.get("licence_id") == "LIC-HANA-DUBLY" and raw["kind"] == "VIEW":
            views += int(raw.get("quantity", 1))
    for lic in licences:
        if lic["licence_id"] == "LIC-BEN-PIXEL":
            lic["quotas"] = [
                {"metric": "RENDER", "limit": max(10, renders * 7 // 10), "on_exceed": "block"}
            ]
        if lic["licence_id"] == "LIC-HANA-DUBLY":
            lic["quotas"] = [
                {"metric": "VIEW", "limit": max(100, views * 3 // 4), "on_exceed": "alert"}
            ]


def build_scenario(seed: int, events: int, window: Window) -> Scenario:
    """The month for ``seed`` with about ``events`` events (the script adds ~100)."""
    if events < 200:
        raise ValueError("a demo month needs at least 200 events")
    licences = _licences(window)
    scripted = _Month(seed, window, licences)
    _script(scripted)
    # Ordinary traffic first, so scripted views can show videos it rendered.
    month = _Month(seed, window, licences)
    _bulk(month, max(0, events - len(scripted.events)))
    _script(month)
    planned = month.finish()
    _quota_limits(licences, planned)
    revoke = LicenceChange(
        publish_at=(REVOKED_DAY - 1) * DAY,
        action="revoke",
        licence_id=REVOKED,
        effective=window.at(REVOKED_DAY * DAY),
        wind_down_days=WIND_DOWN_DAYS,
        reason="June withdrew consent for advertising use",
    )
    return Scenario(
        seed=seed,
        window=window,
        vendors=VENDORS,
        talents=TALENTS,
        payees=PAYEES,
        licences=tuple(licences),
        events=planned,
        changes=(revoke,),
    )
