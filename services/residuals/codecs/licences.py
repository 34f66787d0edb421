"""Licences: domain :class:`~residuals.domain.licences.Licence` ↔ protobuf ``Licence``,
the registry's records as readers decode them (licences and vendor signing keys), and a
request's terms as the registry reads them (:func:`request_spec`): the one module that
reads licence protobufs, with one mapping of their enums and the domain's defaults.

The compacted ``residuals.licences.v1`` topic carries each licence's full state (all
versions and suspension windows) in this form, so a consumer rebuilds the domain licence
from one record; ``residuals.signing-keys.v1`` carries ``VendorSigningKey`` records.

Decoding is strict and total: a record either becomes a licence (or key) whose every value
is well-formed and bounded - decimals finite, non-negative and within
:func:`~residuals.domain.bounds.decimal_problem`, shares and rates that are fractions at
most 1, splits summing to exactly 1, times within
:func:`~residuals.domain.bounds.timestamp_problem`, at least one version, versions and
tiers in order, enum values known - or :class:`InvalidRecord` naming the field. Nothing
else is raised, so one bad record cannot crash a reader or put NaN into money. Decoding
deliberately does NOT apply the registry's write-time rules (known categories, channels,
country codes, identifier syntax: :mod:`residuals.licensing.rules`): a licence stored under
older rules must stay readable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from residuals.codecs.signed import PUBLIC_KEY_BYTES, SigningKeyRecord
from residuals.codecs.timestamps import set_timestamp, to_datetime
from residuals.codecs.wire import mistyped_field
from residuals.domain.bounds import (
    EARLIEST,
    LATEST,
    decimal_problem,
    text_problem,
    timestamp_problem,
)
from residuals.domain.licence_spec import SpecError
from residuals.domain.licences import (
    DEFAULT_AUTO_SUSPEND_ON_CRITICAL,
    DEFAULT_ON_EXCEED,
    DEFAULT_UNLICENSED_USE_MULTIPLIER,
    SCOPE_FIELDS,
    Licence,
    LicenceVersion,
    Quota,
    RateCard,
    RenderTier,
    Scope,
    Window,
)
from residuals.domain.money import fmt, is_currency
from residuals.domain.vocabulary import Metric, OnExceed
from residuals.v1 import common_pb2, licence_pb2

T = TypeVar("T")

#: Decoded scopes, rate cards and amounts by their wire form. Licences share a few
#: templates (a vendor's campaign, an agency's standard card), so the meter, which keeps
#: every licence decoded, holds one copy of each instead of one per licence (a third of the
#: memory). Cleared when past the bound, which only costs decoding again. Decimal and
#: these dataclasses are immutable, so sharing is safe.
_INTERNED: dict[bytes, Any] = {}
_DECIMALS: dict[str, Decimal] = {}
_INTERNED_MAX = 50_000


def _version_to_proto(v: LicenceVersion) -> licence_pb2.LicenceVersion:
    rates = v.rates
    message = licence_pb2.LicenceVersion(
        version=v.version,
        scope=licence_pb2.Scope(
            categories_allowed=sorted(v.scope.categories_allowed),
            categories_forbidden=sorted(v.scope.categories_forbidden),
            territories_allowed=sorted(v.scope.territories_allowed),
            territories_forbidden=sorted(v.scope.territories_forbidden),
            channels_allowed=sorted(v.scope.channels_allowed),
            approval_required=sorted(v.scope.approval_required),
        ),
        rates=licence_pb2.RateCard(
            render_tiers=[
                licence_pb2.RenderTier(up_to=t.up_to, unit_price=fmt(t.unit_price))
                if t.up_to is not None
                else licence_pb2.RenderTier(unit_price=fmt(t.unit_price))
                for t in rates.render_tiers
            ],
            view_cpm=fmt(rates.view_cpm),
            ad_revenue_share=fmt(rates.ad_revenue_share),
            ad_floor_cpm=fmt(rates.ad_floor_cpm),
            channel_multipliers={k: fmt(m) for k, m in rates.channel_multipliers.items()},
            unlicensed_use_multiplier=fmt(rates.unlicensed_use_multiplier),
        ),
        quotas=[
            licence_pb2.Quota(
                metric=common_pb2.Metric.Value("METRIC_" + q.metric.value),
                limit=q.limit,
                on_exceed=licence_pb2.OnExceed.Value("ON_EXCEED_" + q.on_exceed.value.upper()),
            )
            for q in v.quotas
        ],
        minimum_guarantee=fmt(v.minimum_guarantee),
        advance_outstanding=fmt(v.advance_outstanding),
        platform_fee=fmt(v.platform_fee),
        splits=[licence_pb2.Split(payee_id=p, share=fmt(s)) for p, s in v.splits],
        wind_down_days=v.wind_down_days,
        auto_suspend_on_critical=v.auto_suspend_on_critical,
    )
    if v.effective_from is not None:
        set_timestamp(message.effective_from, v.effective_from)
    set_timestamp(message.starts_at, v.starts_at)
    if v.ends_at is not None:
        set_timestamp(message.ends_at, v.ends_at)
    if v.revoked_at is not None:
        set_timestamp(message.revoked_at, v.revoked_at)
    return message


def to_proto(licence: Licence) -> licence_pb2.Licence:
    message = licence_pb2.Licence(
        licence_id=licence.licence_id,
        talent_id=licence.talent_id,
        avatar_id=licence.avatar_id,
        vendor_id=licence.vendor_id,
        currency_code=licence.currency,
        versions=[_version_to_proto(v) for v in licence.versions],
    )
    for window in licence.suspensions:
        entry = message.suspensions.add(automatic=window.automatic)
        set_timestamp(entry.starts_at, window.start)
        if window.end is not None:
            set_timestamp(entry.ends_at, window.end)
    for reinstated in licence.reinstatements:
        # A reinstatement of an automatic suspension: an automatic window that ended there.
        entry = message.suspensions.add(automatic=True)
        set_timestamp(entry.starts_at, reinstated)
        set_timestamp(entry.ends_at, reinstated)
    return message


# --- strict decoding ---------------------------------------------------------------------


class InvalidRecord(ValueError):
    """A licence or signing-key record that is not well-formed and bounded.

    The one error the decoders raise; ``field`` is the path of the offending field
    (``versions[1].rates.view_cpm``, ``splits``, ``(record)`` for the bytes themselves).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


#: Longest decimal string read (18 integer digits, the point and 9 fraction digits fit
#: with room; anything longer is refused before it is parsed).
_MAX_DECIMAL_CHARS = 40
#: Plain non-negative decimals as the registry writes them (``fmt``): ASCII digits, an
#: optional fraction; no sign, exponent, spaces, underscores or non-ASCII digits.
_DECIMAL_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?")
ONE = Decimal(1)
_METRICS = {
    common_pb2.METRIC_RENDER: Metric.RENDER,
    common_pb2.METRIC_VIEW: Metric.VIEW,
    common_pb2.METRIC_AD_IMPRESSION: Metric.AD_IMPRESSION,
}
_ON_EXCEED = {
    licence_pb2.ON_EXCEED_UNSPECIFIED: DEFAULT_ON_EXCEED,  # documented: the default
    licence_pb2.ON_EXCEED_BLOCK: OnExceed.BLOCK,
    licence_pb2.ON_EXCEED_ALERT: OnExceed.ALERT,
}


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _typed(message: Message, path: str) -> None:
    """Refuse ``message`` when one of its own fields arrived with the wrong wire type.

    Called on every message a record is decoded from except timestamps: a mistyped
    ``seconds`` reads as 1970 (refused as out of bounds), a mistyped ``nanos`` as 0.
    """
    name = mistyped_field(message)
    if name is not None:
        raise InvalidRecord(_at(path, name), "was sent with the wrong wire type")


def _dec(text: str, path: str, default: str = "0", *, at_most_one: bool = False) -> Decimal:
    """A bounded non-negative decimal from its wire text (empty: ``default``)."""
    text = text or default
    found = _DECIMALS.get(text)
    if found is None:
        if len(text) > _MAX_DECIMAL_CHARS or not _DECIMAL_TEXT.fullmatch(text):
            raise InvalidRecord(path, f"is not a plain non-negative decimal: {text[:48]!r}")
        value = Decimal(text)
        problem = decimal_problem(value)
        if problem is not None:
            raise InvalidRecord(path, problem)
        if len(_DECIMALS) >= _INTERNED_MAX:
            _DECIMALS.clear()
        found = _DECIMALS[text] = value
    if at_most_one and found > ONE:
        raise InvalidRecord(path, f"is {text}, more than 1")
    return found


def _text(value: str, path: str, *, required: bool = True) -> str:
    if required and not value:
        raise InvalidRecord(path, "is required")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRecord(path, problem)
    return value


def _texts(values: Iterable[str], path: str) -> frozenset[str]:
    return frozenset(_text(v, path) for v in values)


def _time(message: Any, name: str, path: str, *, required: bool = False) -> datetime | None:
    """The timestamp field ``name`` as a datetime, checked raw before converting."""
    if not message.HasField(name):
        if required:
            raise InvalidRecord(_at(path, name), "is required")
        return None
    stamp: Timestamp = getattr(message, name)
    problem = timestamp_problem(stamp.seconds, stamp.nanos)
    if problem is not None:
        raise InvalidRecord(_at(path, name), problem)
    return to_datetime(stamp)


def _interned(message: Message, decode: Callable[[Any, str], T], path: str) -> T:
    """``decode(message, path)``, shared by every message with the same wire form (a
    form that failed to decode is not remembered, so its error always names ``path``)."""
    wire = message.SerializeToString(deterministic=True)
    key = message.DESCRIPTOR.name.encode() + b":" + wire
    found = _INTERNED.get(key)
    if found is None:
        found = decode(message, path)
        if len(_INTERNED) >= _INTERNED_MAX:
            _INTERNED.clear()
        _INTERNED[key] = found
    return cast(T, found)


def _scope_from_proto(scope: licence_pb2.Scope, path: str) -> Scope:
    _typed(scope, path)
    return Scope(
        categories_allowed=_texts(scope.categories_allowed, _at(path, "categories_allowed")),
        categories_forbidden=_texts(scope.categories_forbidden, _at(path, "categories_forbidden")),
        territories_allowed=_texts(scope.territories_allowed, _at(path, "territories_allowed")),
        territories_forbidden=_texts(
            scope.territories_forbidden, _at(path, "territories_forbidden")
        ),
        channels_allowed=_texts(scope.channels_allowed, _at(path, "channels_allowed")),
        approval_required=_texts(scope.approval_required, _at(path, "approval_required")),
    )


def _tiers(rates: licence_pb2.RateCard, path: str) -> tuple[RenderTier, ...]:
    """Graduated tiers: at least one, ``up_to`` ascending, only the last open (otherwise
    renders past the last bound would be priced by nothing)."""
    path = _at(path, "render_tiers")
    if not rates.render_tiers:
        raise InvalidRecord(path, "needs at least one tier")
    tiers: list[RenderTier] = []
    previous = 0
    last = len(rates.render_tiers) - 1
    for i, tier in enumerate(rates.render_tiers):
        here = f"{path}[{i}]"
        _typed(tier, here)
        up_to = tier.up_to if tier.HasField("up_to") else None
        if up_to is None and i != last:
            raise InvalidRecord(_at(here, "up_to"), "only the last tier may be open")
        if up_to is not None and (i == last or up_to <= previous):
            raise InvalidRecord(
                _at(here, "up_to"),
                "the last tier must be open" if i == last else "tiers must be ascending",
            )
        tiers.append(RenderTier(up_to, _dec(tier.unit_price, _at(here, "unit_price"))))
        previous = up_to or previous
    return tuple(tiers)


def _rates_from_proto(rates: licence_pb2.RateCard, path: str) -> RateCard:
    _typed(rates, path)
    multipliers = _at(path, "channel_multipliers")
    return RateCard(
        render_tiers=_tiers(rates, path),
        view_cpm=_dec(rates.view_cpm, _at(path, "view_cpm")),
        ad_revenue_share=_dec(
            rates.ad_revenue_share, _at(path, "ad_revenue_share"), at_most_one=True
        ),
        ad_floor_cpm=_dec(rates.ad_floor_cpm, _at(path, "ad_floor_cpm")),
        channel_multipliers={
            _text(k, multipliers): _dec(v, f"{multipliers}.{k}")
            for k, v in sorted(rates.channel_multipliers.items())
        },
        unlicensed_use_multiplier=_dec(
            rates.unlicensed_use_multiplier,
            _at(path, "unlicensed_use_multiplier"),
            str(DEFAULT_UNLICENSED_USE_MULTIPLIER),
        ),
    )


def _quota(q: licence_pb2.Quota, path: str) -> Quota:
    _typed(q, path)
    metric = _METRICS.get(q.metric)
    if metric is None:
        raise InvalidRecord(_at(path, "metric"), f"{q.metric} is not a known metric")
    on_exceed = _ON_EXCEED.get(q.on_exceed)
    if on_exceed is None:
        raise InvalidRecord(_at(path, "on_exceed"), f"{q.on_exceed} is not a known value")
    return Quota(metric, q.limit, on_exceed)


def _splits(m: licence_pb2.LicenceVersion, path: str) -> tuple[tuple[str, Decimal], ...]:
    """Payees and shares: at least one, no payee twice, shares summing to exactly 1 (the
    allocation splits net royalties by them; any other sum creates or loses money)."""
    path = _at(path, "splits")
    if not m.splits:
        raise InvalidRecord(path, "needs at least one payee")
    shares: dict[str, Decimal] = {}
    for i, split in enumerate(m.splits):
        _typed(split, f"{path}[{i}]")
        payee = _text(split.payee_id, f"{path}[{i}].payee_id")
        if payee in shares:
            raise InvalidRecord(f"{path}[{i}].payee_id", f"{payee!r} appears twice")
        shares[payee] = _dec(split.share, f"{path}[{i}].share", at_most_one=True)
    total = sum(shares.values(), Decimal(0))
    if total != ONE:
        raise InvalidRecord(path, f"shares must sum to 1, they sum to {fmt(total)}")
    return tuple(sorted(shares.items()))


def _wind_down(m: licence_pb2.LicenceVersion, revoked_at: datetime | None, path: str) -> int:
    """Days after revocation; the wind-down must end inside the era (a date past year
    9999 cannot even be computed)."""
    days = m.wind_down_days
    if days > (LATEST - (revoked_at or EARLIEST)).days:
        raise InvalidRecord(_at(path, "wind_down_days"), f"{days} days ends after 9999-12-31")
    return days


def request_spec(terms: licence_pb2.LicenceVersion) -> dict[str, Any]:
    """The licence-spec keys a request's ``LicenceVersion`` actually sets (what the
    registry validates with the domain's parser; :class:`SpecError` with a spec path).

    A request, unlike a record, is partial: unset optional fields are left out so the
    parser applies the domain's defaults (or says the field is required). ``version``,
    ``effective_from`` and ``recorded_*`` are the server's to assign and are ignored.
    """
    spec: dict[str, Any] = {}
    for key in ("starts_at", "ends_at", "revoked_at"):
        if terms.HasField(key):
            stamp = getattr(terms, key)
            problem = timestamp_problem(stamp.seconds, stamp.nanos)
            if problem is not None:
                raise SpecError(key, problem)
            spec[key] = to_datetime(stamp)
    spec["wind_down_days"] = terms.wind_down_days
    if terms.HasField("auto_suspend_on_critical"):
        spec["auto_suspend_on_critical"] = terms.auto_suspend_on_critical
    spec["scope"] = {f: list(getattr(terms.scope, f)) for f in SCOPE_FIELDS}
    rates: dict[str, Any] = {
        "render_tiers": [
            {
                "up_to": tier.up_to if tier.HasField("up_to") else None,
                **({"unit_price": tier.unit_price} if tier.unit_price else {}),
            }
            for tier in terms.rates.render_tiers
        ],
        "channel_multipliers": dict(terms.rates.channel_multipliers),
    }
    for key in ("view_cpm", "ad_revenue_share", "ad_floor_cpm", "unlicensed_use_multiplier"):
        if getattr(terms.rates, key):  # proto3 strings: empty is "not given"
            rates[key] = getattr(terms.rates, key)
    spec["rates"] = rates
    quotas = []
    for i, quota in enumerate(terms.quotas):
        entry: dict[str, Any] = {"limit": quota.limit}
        if quota.metric != common_pb2.METRIC_UNSPECIFIED:
            metric = _METRICS.get(quota.metric)
            if metric is None:
                raise SpecError(f"quotas[{i}].metric", f"{quota.metric} is not a known metric")
            entry["metric"] = metric.value
        on_exceed = _ON_EXCEED.get(quota.on_exceed)
        if on_exceed is None:
            raise SpecError(f"quotas[{i}].on_exceed", f"{quota.on_exceed} is not a known value")
        entry["on_exceed"] = on_exceed.value
        quotas.append(entry)
    spec["quotas"] = quotas
    for key in ("minimum_guarantee", "advance_outstanding", "platform_fee"):
        if getattr(terms, key):
            spec[key] = getattr(terms, key)
    splits: dict[str, str] = {}
    for i, split in enumerate(terms.splits):
        if not split.payee_id.strip():
            raise SpecError(f"splits[{i}].payee_id", "is required")
        if split.payee_id in splits:
            raise SpecError(f"splits[{i}].payee_id", f"{split.payee_id!r} appears twice")
        if not split.share:
            raise SpecError(f"splits[{i}].share", "is required")
        splits[split.payee_id] = split.share
    spec["splits"] = splits
    return spec


def _version_from_proto(m: licence_pb2.LicenceVersion, path: str) -> LicenceVersion:
    _typed(m, path)
    starts_at = _time(m, "starts_at", path, required=True)
    assert starts_at is not None
    revoked_at = _time(m, "revoked_at", path)
    return LicenceVersion(
        version=m.version,
        effective_from=_time(m, "effective_from", path),
        starts_at=starts_at,
        ends_at=_time(m, "ends_at", path),
        scope=_interned(m.scope, _scope_from_proto, _at(path, "scope")),
        rates=_interned(m.rates, _rates_from_proto, _at(path, "rates")),
        quotas=tuple(_quota(q, f"{path}.quotas[{i}]") for i, q in enumerate(m.quotas)),
        minimum_guarantee=_dec(m.minimum_guarantee, _at(path, "minimum_guarantee")),
        advance_outstanding=_dec(m.advance_outstanding, _at(path, "advance_outstanding")),
        platform_fee=_dec(m.platform_fee, _at(path, "platform_fee"), at_most_one=True),
        splits=_splits(m, path),
        revoked_at=revoked_at,
        wind_down_days=_wind_down(m, revoked_at, path),
        auto_suspend_on_critical=(
            m.auto_suspend_on_critical
            if m.HasField("auto_suspend_on_critical")
            else DEFAULT_AUTO_SUSPEND_ON_CRITICAL
        ),
    )


def _versions(message: licence_pb2.Licence) -> tuple[LicenceVersion, ...]:
    """Every version, numbered and taking effect in ascending order (the lookup of the
    version in force at an instant relies on it)."""
    if not message.versions:
        raise InvalidRecord("versions", "needs at least one version")
    versions: list[LicenceVersion] = []
    for i, m in enumerate(message.versions):
        path = f"versions[{i}]"
        version = _version_from_proto(m, path)
        if version.version < 1:
            raise InvalidRecord(_at(path, "version"), "must be 1 or more")
        if versions:
            before = versions[-1]
            if version.version <= before.version:
                raise InvalidRecord(_at(path, "version"), "versions must be ascending")
            if version.effective_from is None:
                raise InvalidRecord(_at(path, "effective_from"), "is required after version 1")
            previous = before.effective_from
            if previous is not None and version.effective_from <= previous:
                raise InvalidRecord(_at(path, "effective_from"), "versions must be in time order")
        versions.append(version)
    return tuple(versions)


def _windows(message: licence_pb2.Licence) -> tuple[Window, ...]:
    """Suspension windows, automatic ones marked as such (how one counts depends on the
    period being computed; the domain decides that, :class:`Window`). A person's window
    that ends where it starts suspended nothing and is left out."""
    windows: list[Window] = []
    for i, s in enumerate(message.suspensions):
        path = f"suspensions[{i}]"
        _typed(s, path)
        start = _time(s, "starts_at", path, required=True)
        assert start is not None
        end = _time(s, "ends_at", path)
        if end is not None and end < start:
            raise InvalidRecord(_at(path, "ends_at"), "is before starts_at")
        if s.automatic or end is None or end > start:
            windows.append(Window(start, end, automatic=s.automatic))
    return tuple(windows)


def from_proto(message: licence_pb2.Licence) -> Licence:
    """The domain licence of a record, or :class:`InvalidRecord` naming the bad field."""
    _typed(message, "")
    licence_id, talent_id, avatar_id, vendor_id, currency = identity(
        message.licence_id,
        message.talent_id,
        message.avatar_id,
        message.vendor_id,
        message.currency_code,
    )
    return Licence(
        licence_id=licence_id,
        talent_id=talent_id,
        avatar_id=avatar_id,
        vendor_id=vendor_id,
        currency=currency,
        versions=_versions(message),
        suspensions=_windows(message),
    )


def identity(
    licence_id: str, talent_id: str, avatar_id: str, vendor_id: str, currency_code: str
) -> tuple[str, str, str, str, str]:
    """A licence's immutable identity, checked as in a record: ids present, printable and
    bounded, the currency ISO 4217; :class:`InvalidRecord` naming the field."""
    ids = (licence_id, talent_id, avatar_id, vendor_id)
    for name, value in zip(("licence_id", "talent_id", "avatar_id", "vendor_id"), ids, strict=True):
        _text(value, name)
    if not is_currency(currency_code):
        raise InvalidRecord("currency_code", f"{currency_code[:16]!r} is not an ISO 4217 code")
    return licence_id, talent_id, avatar_id, vendor_id, currency_code


def _parse(parse: Callable[[bytes], T], raw: bytes) -> T:
    try:
        return parse(raw)
    except DecodeError as error:
        raise InvalidRecord("(record)", f"is not a protobuf record: {error}") from None


def decode(raw: bytes) -> Licence:
    """A ``residuals.v1.Licence`` record's bytes as the domain licence (strict)."""
    return from_proto(_parse(licence_pb2.Licence.FromString, raw))


def decode_signing_key(raw: bytes) -> SigningKeyRecord:
    """A ``residuals.v1.VendorSigningKey`` record's bytes as the key readers verify with."""
    return signing_key_from_proto(_parse(licence_pb2.VendorSigningKey.FromString, raw))


def signing_key_from_proto(message: licence_pb2.VendorSigningKey) -> SigningKeyRecord:
    """A signing key checked as in a record: ids printable and bounded, a 32-byte Ed25519
    public key, times within the era; :class:`InvalidRecord` naming the field."""
    _typed(message, "")
    _text(message.key_id, "key_id")
    _text(message.vendor_id, "vendor_id")
    if len(message.public_key) != PUBLIC_KEY_BYTES:
        raise InvalidRecord(
            "public_key", f"is {len(message.public_key)} bytes, not {PUBLIC_KEY_BYTES}"
        )
    _time(message, "created_at", "")
    _time(message, "revoked_at", "")
    try:
        return SigningKeyRecord.from_proto(message)
    except ValueError as error:
        raise InvalidRecord("public_key", f"is not an Ed25519 public key: {error}") from None
