"""Building ``residuals.v1.UsageEvent`` messages from keyword arguments.

The platform is the judge of every event (rejected events go to the dead-letter topic
with a reason). The checks here catch mistakes early, at the call site, where the stack
trace is useful, before anything is signed: wrong types, a naive datetime, a float for
money, an empty required field, a quantity out of range, and the platform's bounds of
the event model (the same as the services', checked by a shared corpus test): ids and
labels printable text of at most 128 characters; amounts finite with at most 18 integer
and 9 fraction digits; times between 2000-01-01 and 9999-12-31. An event outside them
would only be refused as MALFORMED. Optional fields are set only when they differ from
their documented default, so equal events serialize to equal bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from residuals_sdk._proto import common_pb2, usage_pb2

MAX_QUANTITY = 1_000_000
#: The platform's bounds of the event model (``residuals.domain.bounds``).
MAX_ID_CHARS = 128
MAX_INTEGER_DIGITS = 18
MAX_FRACTION_DIGITS = 9
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def _text(name: str, value: object, *, required: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} is required")
    # As the platform reads it: surrounding whitespace is not part of an id.
    stripped = value.strip()
    if len(stripped) > MAX_ID_CHARS:
        raise ValueError(f"{name} is {len(stripped):,} characters, the limit is {MAX_ID_CHARS}")
    if not stripped.isprintable():
        raise ValueError(f"{name} contains a non-printable character")
    return value


def _occurred(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, datetime):
        raise TypeError(f"occurred_at must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware (e.g. datetime.now(UTC))")
    when = value.astimezone(UTC)
    if not EARLIEST <= when <= LATEST:
        raise ValueError("occurred_at is outside 2000-01-01..9999-12-31")
    return when


def _quantity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"quantity must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_QUANTITY:
        raise ValueError(f"quantity {value} outside 1..{MAX_QUANTITY:,}")
    return value


def decimal_text(name: str, value: Decimal | str | int) -> str:
    """A plain decimal string ("12.40"); floats are refused, money is never binary."""
    if isinstance(value, (bool, float)):
        raise TypeError(f"{name} must be a Decimal, str or int, never a float")
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise ValueError(f"{name} {value!r} is not finite")
    if amount < 0:
        raise ValueError(f"{name} must not be negative")
    _sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    if max(0, len(digits) + exponent) > MAX_INTEGER_DIGITS:
        raise ValueError(f"{name} has more than {MAX_INTEGER_DIGITS} integer digits")
    if -exponent > MAX_FRACTION_DIGITS:
        raise ValueError(f"{name} has more than {MAX_FRACTION_DIGITS} fraction digits")
    return format(amount, "f")


def _base(
    kind: common_pb2.UsageKind.ValueType,
    event_id: str,
    vendor_id: str,
    occurred_at: datetime | None,
    quantity: int,
) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=_text("event_id", event_id), vendor_id=_text("vendor_id", vendor_id), kind=kind
    )
    when = _occurred(occurred_at)
    event.occurred_at.seconds = int(when.replace(microsecond=0).timestamp())
    event.occurred_at.nanos = when.microsecond * 1000
    if _quantity(quantity) != 1:
        event.quantity = quantity
    return event


def _usage(
    event: usage_pb2.UsageEvent,
    licence_id: str,
    avatar_id: str,
    render_id: str,
    category: str,
    territory: str,
    channel: str | None,
    approval_id: str | None = None,
) -> usage_pb2.UsageEvent:
    event.licence_id = _text("licence_id", licence_id)
    event.avatar_id = _text("avatar_id", avatar_id)
    event.render_id = _text("render_id", render_id)
    event.category = _text("category", category)
    event.territory = _text("territory", territory)
    if channel is not None:
        event.channel = _text("channel", channel)
    if approval_id is not None:
        event.approval_id = _text("approval_id", approval_id)
    return event


def render(
    *,
    event_id: str,
    vendor_id: str,
    licence_id: str,
    avatar_id: str,
    render_id: str,
    category: str,
    territory: str,
    occurred_at: datetime | None = None,
    quantity: int = 1,
    approval_id: str | None = None,
) -> usage_pb2.UsageEvent:
    """A RENDER event: the avatar was rendered into ``quantity`` videos (``approval_id``:
    the talent's approval, for a category the licence requires one for)."""
    event = _base(common_pb2.USAGE_KIND_RENDER, event_id, vendor_id, occurred_at, quantity)
    return _usage(event, licence_id, avatar_id, render_id, category, territory, None, approval_id)


def view(
    *,
    event_id: str,
    vendor_id: str,
    licence_id: str,
    avatar_id: str,
    render_id: str,
    category: str,
    territory: str,
    channel: str,
    occurred_at: datetime | None = None,
    quantity: int = 1,
    viewable: bool = True,
    ivt: bool = False,
    approval_id: str | None = None,
) -> usage_pb2.UsageEvent:
    """A VIEW event: ``quantity`` views of the video ``render_id`` on ``channel`` (naming
    the render's approval, if it needed one)."""
    event = _base(common_pb2.USAGE_KIND_VIEW, event_id, vendor_id, occurred_at, quantity)
    channel = _text("channel", channel)
    _usage(event, licence_id, avatar_id, render_id, category, territory, channel, approval_id)
    if not isinstance(viewable, bool) or not isinstance(ivt, bool):
        raise TypeError("viewable and ivt must be bool")
    if not viewable:
        event.viewable = False
    if ivt:
        event.ivt = True
    return event


def ad_impression(
    *,
    event_id: str,
    vendor_id: str,
    licence_id: str,
    avatar_id: str,
    render_id: str,
    category: str,
    territory: str,
    channel: str,
    ad_revenue: Decimal | str | int,
    ad_revenue_currency: str = "",
    occurred_at: datetime | None = None,
    quantity: int = 1,
    ivt: bool = False,
    approval_id: str | None = None,
) -> usage_pb2.UsageEvent:
    """An AD_IMPRESSION event with the revenue the impressions earned (licence currency)."""
    event = _base(common_pb2.USAGE_KIND_AD_IMPRESSION, event_id, vendor_id, occurred_at, quantity)
    channel = _text("channel", channel)
    _usage(event, licence_id, avatar_id, render_id, category, territory, channel, approval_id)
    event.ad_revenue = decimal_text("ad_revenue", ad_revenue)
    event.ad_revenue_currency = _text("ad_revenue_currency", ad_revenue_currency, required=False)
    if not isinstance(ivt, bool):
        raise TypeError("ivt must be bool")
    if ivt:
        event.ivt = True
    return event


def retraction(
    *,
    event_id: str,
    vendor_id: str,
    original_event_id: str,
    licence_id: str | None = None,
    occurred_at: datetime | None = None,
) -> usage_pb2.UsageEvent:
    """A RETRACTION withdrawing this vendor's earlier event ``original_event_id``.

    ``licence_id`` is the ORIGINAL event's licence. It routes the retraction to the same
    partition as the original (usage topic key = licence_id), so the meter sees the
    retraction after the event it withdraws; without it the key is the vendor id.
    """
    event = _base(common_pb2.USAGE_KIND_RETRACTION, event_id, vendor_id, occurred_at, 1)
    event.original_event_id = _text("original_event_id", original_event_id)
    if licence_id is not None:
        event.licence_id = _text("licence_id", licence_id)
    return event


def routing_key(event: usage_pb2.UsageEvent) -> str:
    """The usage topic key (TEAM wire convention): the licence id, else the vendor id."""
    return event.licence_id or event.vendor_id
