"""Usage events and their structural validation (ROYALTY-RULES.md §2, checks 1-2).

Adapters (YAML cases, protobuf, the SDK) turn their input into a plain mapping and call
:func:`parse_event`; everything after that works on the normalised, immutable
:class:`UsageEvent`, whose equality is the "same payload" test for de-duplication.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from residuals.domain.vocabulary import Kind, RejectReason

MAX_QUANTITY = 1_000_000

_USAGE_REQUIRED = ("licence_id", "avatar_id", "render_id", "category", "territory")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One normalised event; defaults applied, so equal payloads compare equal."""

    event_id: str
    vendor_id: str
    kind: Kind
    occurred_at: datetime
    licence_id: str | None = None
    avatar_id: str | None = None
    render_id: str | None = None
    category: str | None = None
    territory: str | None = None
    channel: str | None = None
    quantity: int = 1
    viewable: bool = True
    ivt: bool = False
    ad_revenue: Decimal | None = None
    ad_currency: str | None = None
    original_event_id: str | None = None

    @property
    def identity(self) -> tuple[str, str]:
        """Identity forever: ``(vendor_id, event_id)`` (§3)."""
        return (self.vendor_id, self.event_id)

    @property
    def order_key(self) -> tuple[datetime, str]:
        """The order scope, quotas and tiers are judged in (§5)."""
        return (self.occurred_at, self.event_id)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that cannot enter money: reason, a human detail, and what we know of it."""

    reason: RejectReason
    detail: str
    vendor_id: str | None = None
    event_id: str | None = None


def parse_timestamp(value: Any) -> datetime:
    """An aware UTC datetime from an ISO 8601 string or datetime; naive means UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        parsed = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


_KINDS: dict[str, Kind] = {k.value: k for k in Kind}


def _text(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    text = (value if value.__class__ is str else str(value)).strip()
    return text or None


def _flag(raw: Mapping[str, Any], name: str, default: bool) -> bool | None:
    value = raw.get(name, default)
    if value is None:
        return default
    return value if isinstance(value, bool) else None


def _quantity(value: Any) -> int | None:
    if value is None:
        return 1
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        quantity = value
    elif isinstance(value, float) and value.is_integer():
        quantity = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        quantity = int(value.strip())
    else:
        return None
    return quantity if 1 <= quantity <= MAX_QUANTITY else None


def _money_field(value: Any) -> tuple[Decimal | None, str | None]:
    """Ad revenue as a decimal string, a number-ish, ``"12.40 EUR"`` or ``{amount, currency}``."""
    currency: str | None = None
    if isinstance(value, Mapping):
        currency = value.get("currency") or value.get("currency_code")
        value = value.get("amount")
    if isinstance(value, str) and " " in value.strip():
        value, currency = value.strip().split(None, 1)
    if value is None or isinstance(value, (bool, float)):
        return None, currency
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None, currency
    return (amount if amount.is_finite() else None), currency


def parse_event(raw: Mapping[str, Any]) -> UsageEvent | Rejection:
    """Normalise one raw event or say why it is ``MALFORMED`` / ``INVALID_QUANTITY``."""
    vendor_id = _text(raw, "vendor_id")
    event_id = _text(raw, "event_id")

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(reason, detail, vendor_id, event_id)

    kind_text = _text(raw, "kind")
    kind = _KINDS.get(kind_text or "")
    if kind is None:
        return reject(RejectReason.MALFORMED, f"unknown kind {kind_text!r}")
    if event_id is None:
        return reject(RejectReason.MALFORMED, "missing event_id")
    if vendor_id is None:
        return reject(RejectReason.MALFORMED, "missing vendor_id")
    if raw.get("occurred_at") in (None, ""):
        return reject(RejectReason.MALFORMED, "missing occurred_at")
    try:
        occurred_at = parse_timestamp(raw["occurred_at"])
    except (ValueError, TypeError):
        return reject(RejectReason.MALFORMED, f"occurred_at {raw['occurred_at']!r} is not ISO 8601")

    fields: dict[str, Any] = {}
    if kind is Kind.RETRACTION:
        original = _text(raw, "original_event_id")
        if original is None:
            return reject(RejectReason.MALFORMED, "retraction without original_event_id")
        fields["original_event_id"] = original
    else:
        for name in _USAGE_REQUIRED:
            value = _text(raw, name)
            if value is None:
                return reject(RejectReason.MALFORMED, f"{kind.value.lower()} without {name}")
            fields[name] = value
        channel = _text(raw, "channel")
        if channel is None and kind in (Kind.VIEW, Kind.AD_IMPRESSION):
            return reject(RejectReason.MALFORMED, f"{kind.value.lower()} without channel")
        fields["channel"] = channel  # a render has no channel, but it is part of the payload
        if kind is Kind.AD_IMPRESSION:
            revenue, currency = _money_field(raw.get("ad_revenue"))
            if revenue is None or revenue < 0:
                return reject(
                    RejectReason.MALFORMED, "ad impression without non-negative ad_revenue"
                )
            fields["ad_revenue"] = revenue
            fields["ad_currency"] = (
                _text(raw, "ad_revenue_currency") or _text(raw, "currency") or currency
            )
        for name, default in (("viewable", True), ("ivt", False)):
            flag = _flag(raw, name, default)
            if flag is None:
                return reject(RejectReason.MALFORMED, f"{name} must be true or false")
            fields[name] = flag

    quantity = _quantity(raw.get("quantity"))
    if quantity is None:
        return reject(
            RejectReason.INVALID_QUANTITY,
            f"quantity {raw.get('quantity')!r} is not an integer in 1..{MAX_QUANTITY:,}",
        )
    return UsageEvent(
        event_id=event_id,
        vendor_id=vendor_id,
        kind=kind,
        occurred_at=occurred_at,
        quantity=quantity,
        **fields,
    )
