"""Usage events and their structural validation (docs/ROYALTY-RULES.md §2, checks 1-2).

Adapters (YAML cases, protobuf, the SDK) turn their input into a plain mapping and call
:func:`parse_event`; everything after that works on the normalised, immutable
:class:`UsageEvent`, whose equality is the "same payload" test for de-duplication.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from sys import intern
from typing import Any, NamedTuple

from residuals.domain.bounds import (
    MAX_ID_CHARS,
    decimal_problem,
    printable,
    time_problem,
)
from residuals.domain.vocabulary import Kind, RejectReason

MAX_QUANTITY = 1_000_000

_USAGE_REQUIRED = ("licence_id", "avatar_id", "render_id", "category", "territory")


class UsageEvent(NamedTuple):
    """One normalised event; defaults applied, so equal payloads compare equal.

    A named tuple rather than a dataclass: immutable, compared field by field, and cheap to
    build, which matters at a million events per replay.
    """

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
    #: The talent's approval this use relies on (§5a); part of the payload.
    approval_id: str | None = None

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
    if value.__class__ is str and value and not value[0].isspace():
        parsed = datetime.fromisoformat(value)
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        parsed = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


_KINDS: dict[str, Kind] = {k.value: k for k in Kind}


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


def _show(value: Any) -> str:
    """A vendor value for a detail: escaped and bounded, quoted like repr."""
    if isinstance(value, str):
        return f"'{printable(value, 64)}'"
    return printable(repr(value), 64)


def _text_out_of_bounds(names: tuple[str, ...], values: list[str | None]) -> str | None:
    """The first present text that is not a bounded printable id, as a detail."""
    present = [*filter(None, values)]
    # The common case in a few C calls (this runs for every event of every path).
    if max(map(len, present), default=0) <= MAX_ID_CHARS and "".join(present).isprintable():
        return None
    for name, value in zip(names, values, strict=False):
        if value is not None and (len(value) > MAX_ID_CHARS or not value.isprintable()):
            if len(value) > MAX_ID_CHARS:
                return f"{name} is {len(value):,} characters, the limit is {MAX_ID_CHARS}"
            return f"{name} {_show(value)} contains a non-printable character"
    return None


def _money_field(value: Any) -> tuple[Decimal | None, str | None]:
    """Ad revenue as a decimal string, a number-ish, ``"12.40 EUR"`` or ``{amount, currency}``."""
    currency: str | None = None
    if isinstance(value, Mapping):
        found = value.get("currency") or value.get("currency_code")
        currency = None if found is None else str(found)
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


def _texts(raw: Mapping[str, Any], names: tuple[str, ...]) -> list[str | None]:
    """Stripped, non-empty text of each field (None when absent or blank), in one pass."""
    get = raw.get
    out: list[str | None] = []
    for name in names:
        value = get(name)
        if value is not None:
            value = (value if value.__class__ is str else str(value)).strip() or None
        out.append(value)
    return out


_HEAD = ("vendor_id", "event_id", "kind")
_USAGE = (*_USAGE_REQUIRED, "channel")
#: Texts bounded as ids (checked at once: this runs for every event of every path).
_IDS = ("event_id", "vendor_id", *_USAGE)
_RETRACTION_IDS = ("event_id", "vendor_id", "original_event_id")


def parse_event(raw: Mapping[str, Any]) -> UsageEvent | Rejection:
    """Normalise one raw event or say why it is ``MALFORMED`` / ``INVALID_QUANTITY``."""
    vendor_id, event_id, kind_text = _texts(raw, _HEAD)

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(reason, detail, _bounded(vendor_id), _bounded(event_id))

    kind = _KINDS.get(kind_text or "")
    if kind is None:
        return reject(RejectReason.MALFORMED, f"unknown kind {_show(kind_text or '')}")
    if event_id is None:
        return reject(RejectReason.MALFORMED, "missing event_id")
    if vendor_id is None:
        return reject(RejectReason.MALFORMED, "missing vendor_id")
    stamp = raw.get("occurred_at")
    if stamp is None or stamp == "":
        return reject(RejectReason.MALFORMED, "missing occurred_at")
    try:
        occurred_at = parse_timestamp(stamp)
    except (ValueError, TypeError, OverflowError):
        return reject(RejectReason.MALFORMED, f"occurred_at {_show(stamp)} is not ISO 8601")
    problem = time_problem(occurred_at)
    if problem is not None:
        return reject(RejectReason.MALFORMED, f"occurred_at {problem}")
    quantity = _quantity(raw.get("quantity"))

    if kind is Kind.RETRACTION:
        (original,) = _texts(raw, ("original_event_id",))
        if original is None:
            return reject(RejectReason.MALFORMED, "retraction without original_event_id")
        out_of_bounds = _text_out_of_bounds(_RETRACTION_IDS, [event_id, vendor_id, original])
        if out_of_bounds is not None:
            return reject(RejectReason.MALFORMED, out_of_bounds)
        if quantity is None:
            return _bad_quantity(raw, reject)
        return UsageEvent(
            event_id, vendor_id, kind, occurred_at, quantity=quantity, original_event_id=original
        )

    values = _texts(raw, _USAGE)
    required: list[str] = []
    for name, value in zip(_USAGE_REQUIRED, values, strict=False):
        if value is None:
            return reject(RejectReason.MALFORMED, f"{kind.value.lower()} without {name}")
    out_of_bounds = _text_out_of_bounds(_IDS, [event_id, vendor_id, *values])
    if out_of_bounds is not None:
        return reject(RejectReason.MALFORMED, out_of_bounds)
    for name, value in zip(_USAGE_REQUIRED, values, strict=False):
        assert value is not None
        # Few distinct values, millions of events: share one string object per value.
        required.append(value if name == "render_id" else intern(value))
    licence_id, avatar_id, render_id, category, territory = required
    channel = values[-1] if values[-1] is None else intern(values[-1])
    vendor_id = intern(vendor_id)
    if channel is None and kind is not Kind.RENDER:
        return reject(RejectReason.MALFORMED, f"{kind.value.lower()} without channel")
    revenue: Decimal | None = None
    currency: str | None = None
    if kind is Kind.AD_IMPRESSION:
        revenue, currency = _money_field(raw.get("ad_revenue"))
        if revenue is None or revenue < 0:
            return reject(RejectReason.MALFORMED, "ad impression without non-negative ad_revenue")
        problem = decimal_problem(revenue)
        if problem is not None:
            return reject(RejectReason.MALFORMED, f"ad_revenue {problem}")
        explicit = _texts(raw, ("ad_revenue_currency", "currency"))
        currency = explicit[0] or explicit[1] or currency
        out_of_bounds = _text_out_of_bounds(("ad_revenue_currency",), [currency])
        if out_of_bounds is not None:
            return reject(RejectReason.MALFORMED, out_of_bounds)
    viewable = raw.get("viewable", True)
    ivt = raw.get("ivt", False)
    if viewable is None:
        viewable = True
    if ivt is None:
        ivt = False
    if viewable.__class__ is not bool or ivt.__class__ is not bool:
        name = "viewable" if viewable.__class__ is not bool else "ivt"
        return reject(RejectReason.MALFORMED, f"{name} must be true or false")
    (approval_id,) = _texts(raw, ("approval_id",))
    if approval_id is not None:
        out_of_bounds = _text_out_of_bounds(("approval_id",), [approval_id])
        if out_of_bounds is not None:
            return reject(RejectReason.MALFORMED, out_of_bounds)
    if quantity is None:
        return _bad_quantity(raw, reject)
    return UsageEvent(
        event_id,
        vendor_id,
        kind,
        occurred_at,
        licence_id,
        avatar_id,
        render_id,
        category,
        territory,
        channel,  # a render has no channel, but a given one is part of the payload
        quantity,
        viewable,
        ivt,
        revenue,
        currency,
        None,
        approval_id,
    )


def plain_event(
    kind: Kind,
    occurred_at: datetime,
    texts: tuple[str, str, str, str, str, str, str, str, str, str],
    quantity: int | None,
    viewable: bool,
    ivt: bool,
    ad_revenue: str | None,
) -> UsageEvent | None:
    """What :func:`parse_event` returns for a use (not a retraction) whose values are all
    plain, or None when one is not (then :func:`parse_event` must judge it).

    A decoder hands over what it read without building a mapping: ``kind``; an aware UTC
    ``occurred_at``; ``texts`` = event_id, vendor_id, licence_id, avatar_id, render_id,
    category, territory, channel, ad_revenue_currency, approval_id as sent ("" = absent);
    ``quantity`` (None = absent), ``viewable`` and ``ivt`` with their defaults applied, and
    ``ad_revenue`` (None = absent). Plain means: every required text present and every
    text the rules read printable, within :data:`MAX_ID_CHARS` and without a space (so
    stripping leaves it as it is: a space is the one printable whitespace), quantity in
    range and, for an ad impression, a revenue :func:`parse_event` accepts. Such an event
    passes every check of :func:`parse_event`, which would build exactly this one; this
    only skips the general case's work (the meter and the gateway decode every event).
    """
    if kind is Kind.RETRACTION or occurred_at.tzinfo is not UTC:
        return None
    (
        event_id,
        vendor_id,
        licence_id,
        avatar_id,
        render_id,
        category,
        territory,
        channel,
        ad_currency,
        approval_id,
    ) = texts
    if not (event_id and vendor_id and licence_id and avatar_id and render_id):
        return None
    if not (category and territory and (channel or kind is Kind.RENDER)):
        return None
    # ad_revenue_currency counts only for ad impressions (parse_event ignores it otherwise).
    read = texts if kind is Kind.AD_IMPRESSION else texts[:8] + texts[9:]
    joined = "".join(read)
    if " " in joined or not joined.isprintable():
        return None
    if len(joined) > MAX_ID_CHARS and max(map(len, read)) > MAX_ID_CHARS:  # short: all are
        return None
    if time_problem(occurred_at) is not None:
        return None
    if quantity is None:
        quantity = 1
    elif quantity.__class__ is not int or not 1 <= quantity <= MAX_QUANTITY:
        return None
    if viewable.__class__ is not bool or ivt.__class__ is not bool:
        return None
    revenue: Decimal | None = None
    currency: str | None = None
    if kind is Kind.AD_IMPRESSION:
        if ad_revenue is None:
            return None
        revenue, currency = _money_field(ad_revenue)
        if revenue is None or revenue < 0 or decimal_problem(revenue) is not None:
            return None
        currency = ad_currency or currency
        if _text_out_of_bounds(("ad_revenue_currency",), [currency]) is not None:
            return None
    return UsageEvent(
        event_id,
        intern(vendor_id),
        kind,
        occurred_at,
        intern(licence_id),
        intern(avatar_id),
        render_id,
        intern(category),
        intern(territory),
        intern(channel) if channel else None,
        quantity,
        viewable,
        ivt,
        revenue,
        currency,
        None,
        approval_id or None,
    )


def _bounded(value: str | None) -> str | None:
    """An id worth echoing in a rejection: None when it is out of bounds."""
    if value is None or len(value) > MAX_ID_CHARS or not value.isprintable():
        return None
    return value


def _bad_quantity(raw: Mapping[str, Any], reject: Any) -> Rejection:
    quantity = raw.get("quantity")
    detail = f"quantity {_show(quantity)} is not an integer in 1..{MAX_QUANTITY:,}"
    result: Rejection = reject(RejectReason.INVALID_QUANTITY, detail)
    return result
