"""Licence specifications (the YAML/JSON shape of the royalty cases) → :class:`Licence`.

Every problem is reported as :class:`SpecError` with a dotted field path, so the replay
command, the admin CLI and the licensing service can all tell a person which field is wrong.
An amendment is the previous version's spec with the amendment's keys laid over it
(nested ``scope`` and ``rates`` merge key by key), then validated as a whole version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from residuals.domain.bounds import LATEST, decimal_problem, time_problem
from residuals.domain.events import parse_timestamp
from residuals.domain.licences import (
    DEFAULT_AUTO_SUSPEND_ON_CRITICAL,
    DEFAULT_ON_EXCEED,
    DEFAULT_UNLICENSED_USE_MULTIPLIER,
    Licence,
    LicenceVersion,
    Quota,
    RateCard,
    RenderTier,
    Scope,
    Window,
)
from residuals.domain.money import is_currency
from residuals.domain.vocabulary import Metric, OnExceed

_IDENTITY = ("licence_id", "talent_id", "avatar_id", "vendor_id", "currency")
_NESTED = ("scope", "rates")
_TERRITORY = re.compile(r"^[A-Z]{2}$")
ONE = Decimal(1)


@dataclass(frozen=True)
class SpecError(ValueError):
    """A field of a specification is missing or invalid."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _Reader:
    """Typed access to a mapping that reports errors with the full field path."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(path or "(root)", "must be a mapping")
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None or not str(value).strip():
            raise SpecError(self.at(key), "is required")
        return str(value).strip()

    def decimal(
        self, key: str, default: Decimal | None = None, *, maximum: Decimal | None = None
    ) -> Decimal:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise SpecError(self.at(key), "is required")
            return default
        return to_decimal(value, self.at(key), maximum=maximum)

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise SpecError(self.at(key), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.at(key), f"must be a whole number, got {value!r}")
        if value < minimum:
            raise SpecError(self.at(key), f"must be >= {minimum}")
        return value

    def time(self, key: str, *, required: bool = True) -> datetime | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise SpecError(self.at(key), "is required")
            return None
        return to_time(value, self.at(key))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str) -> frozenset[str]:
        value = self.data.get(key) or []
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise SpecError(self.at(key), "must be a list")
        return frozenset(str(v).strip() for v in value)

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key) or []
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise SpecError(self.at(key), "must be a list")
        return list(value)

    def child(self, key: str) -> _Reader:
        return _Reader(self.data.get(key) or {}, self.at(key))


def to_time(value: Any, path: str) -> datetime:
    """A timestamp within the platform's era (2000-01-01..9999-12-31), as every reader of
    a licence record requires (:mod:`residuals.codecs.licences`)."""
    try:
        parsed = parse_timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise SpecError(path, f"is not an ISO 8601 timestamp: {value!r}") from None
    problem = time_problem(parsed)
    if problem is not None:
        raise SpecError(path, problem)
    return parsed


def to_decimal(value: Any, path: str, *, maximum: Decimal | None = None) -> Decimal:
    """A non-negative decimal from a string or integer (floats are refused: never binary),
    within the event model's bounds (at most 18 integer and 9 fraction digits), as every
    reader of a licence record requires (:mod:`residuals.codecs.licences`)."""
    if isinstance(value, (bool, float)):
        raise SpecError(path, f'must be a decimal string like "0.50", not {value!r}')
    text = str(value).strip()
    if len(text) > 64:
        raise SpecError(path, f"is not a decimal amount: {text[:32]!r}…")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise SpecError(path, f"is not a decimal number: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise SpecError(path, f"must be a non-negative amount, got {value!r}")
    problem = decimal_problem(number)
    if problem is not None:
        raise SpecError(path, problem)
    if maximum is not None and number > maximum:
        raise SpecError(path, f"must be at most {maximum}, got {value!r}")
    return number


def _tiers(r: _Reader) -> tuple[RenderTier, ...]:
    raw = r.items("render_tiers")
    if not raw:
        raise SpecError(r.at("render_tiers"), "needs at least one tier")
    tiers: list[RenderTier] = []
    previous = 0
    for i, item in enumerate(raw):
        t = _Reader(item, f"{r.at('render_tiers')}[{i}]")
        up_to = t.integer("up_to", -1, minimum=1) if t.has("up_to") else None
        if up_to is not None and up_to <= previous:
            raise SpecError(t.at("up_to"), "tiers must be ascending")
        if up_to is None and i != len(raw) - 1:
            raise SpecError(t.at("up_to"), "only the last tier may be open (up_to: null)")
        tiers.append(RenderTier(up_to, t.decimal("unit_price")))
        previous = up_to or previous
    if tiers[-1].up_to is not None:
        raise SpecError(r.at("render_tiers"), "the last tier must be open (up_to: null)")
    return tuple(tiers)


def _rates(r: _Reader) -> RateCard:
    multipliers = r.child("channel_multipliers")
    return RateCard(
        render_tiers=_tiers(r),
        view_cpm=r.decimal("view_cpm", Decimal(0)),
        ad_revenue_share=r.decimal("ad_revenue_share", Decimal(0), maximum=ONE),
        ad_floor_cpm=r.decimal("ad_floor_cpm", Decimal(0)),
        channel_multipliers={
            str(k): to_decimal(v, multipliers.at(str(k))) for k, v in multipliers.data.items()
        },
        unlicensed_use_multiplier=r.decimal(
            "unlicensed_use_multiplier", DEFAULT_UNLICENSED_USE_MULTIPLIER
        ),
    )


WILDCARD_CATEGORY = "*"


def _scope(r: _Reader) -> Scope:
    for key in ("territories_allowed", "territories_forbidden"):
        for code in r.strings(key):
            if code != "*" and not _TERRITORY.match(code):
                raise SpecError(r.at(key), f"{code!r} is not an ISO 3166 alpha-2 code or '*'")
    allowed = r.strings("categories_allowed")
    approval_required = r.strings("approval_required")
    if WILDCARD_CATEGORY not in allowed:
        for category in sorted(approval_required - allowed):
            raise SpecError(r.at("approval_required"), f"{category!r} is not an allowed category")
    return Scope(
        categories_allowed=allowed,
        categories_forbidden=r.strings("categories_forbidden"),
        territories_allowed=r.strings("territories_allowed"),
        territories_forbidden=r.strings("territories_forbidden"),
        channels_allowed=r.strings("channels_allowed"),
        approval_required=approval_required,
    )


def _quotas(r: _Reader) -> tuple[Quota, ...]:
    quotas: list[Quota] = []
    for i, item in enumerate(r.items("quotas")):
        q = _Reader(item, f"{r.at('quotas')}[{i}]")
        metric = q.text("metric").upper()
        if metric not in Metric.__members__:
            raise SpecError(q.at("metric"), f"must be one of {', '.join(Metric)}")
        on_exceed = q.text("on_exceed", DEFAULT_ON_EXCEED.value).lower()
        if on_exceed not in {o.value for o in OnExceed}:
            raise SpecError(q.at("on_exceed"), "must be block or alert")
        if any(existing.metric is Metric(metric) for existing in quotas):
            raise SpecError(q.at("metric"), f"a second quota for {metric}")
        quotas.append(Quota(Metric(metric), q.integer("limit", minimum=1), OnExceed(on_exceed)))
    return tuple(quotas)


def _splits(r: _Reader) -> tuple[tuple[str, Decimal], ...]:
    splits = r.child("splits")
    if not splits.data:
        raise SpecError(r.at("splits"), "needs at least one payee")
    shares = tuple(
        sorted(
            (str(p), to_decimal(s, splits.at(str(p)), maximum=ONE)) for p, s in splits.data.items()
        )
    )
    total = sum((share for _, share in shares), Decimal(0))
    if total != ONE:
        raise SpecError(r.at("splits"), f"shares must sum to 1, they sum to {total}")
    return shares


def _version(r: _Reader, number: int, effective_from: datetime | None) -> LicenceVersion:
    starts_at = r.time("starts_at")
    ends_at = r.time("ends_at", required=False)
    assert starts_at is not None
    if ends_at is not None and ends_at <= starts_at:
        raise SpecError(r.at("ends_at"), "must be after starts_at")
    revoked_at = r.time("revoked_at", required=False)
    wind_down_days = r.integer("wind_down_days", 0)
    if wind_down_days > (LATEST - (revoked_at or starts_at)).days:
        raise SpecError(r.at("wind_down_days"), "ends after 9999-12-31")
    return LicenceVersion(
        version=number,
        effective_from=effective_from,
        starts_at=starts_at,
        ends_at=ends_at,
        scope=_scope(r.child("scope")),
        rates=_rates(r.child("rates")),
        quotas=_quotas(r),
        minimum_guarantee=r.decimal("minimum_guarantee", Decimal(0)),
        advance_outstanding=r.decimal("advance_outstanding", Decimal(0)),
        platform_fee=r.decimal("platform_fee", Decimal(0), maximum=ONE),
        splits=_splits(r),
        revoked_at=revoked_at,
        wind_down_days=wind_down_days,
        auto_suspend_on_critical=r.boolean(
            "auto_suspend_on_critical", DEFAULT_AUTO_SUSPEND_ON_CRITICAL
        ),
    )


_SUSPENSION_KEYS = ("suspensions", "suspension_windows")


def _windows(r: _Reader) -> list[Window]:
    """Suspension windows ``[from, until)``; ``until`` absent means still suspended;
    ``automatic: true`` marks one the platform opened on critical misuse (see Window)."""
    windows = []
    for key in _SUSPENSION_KEYS:
        for i, item in enumerate(r.items(key)):
            w = _Reader(item, f"{r.at(key)}[{i}]")
            start_key = next((k for k in ("from", "start", "starts_at") if w.has(k)), "from")
            end_key = next((k for k in ("until", "end", "ends_at") if w.has(k)), "until")
            start = w.time(start_key)
            end = w.time(end_key, required=False)
            automatic = w.boolean("automatic", False)
            assert start is not None
            if end is not None and (end < start or (end == start and not automatic)):
                raise SpecError(w.at(end_key), f"must be after {start_key}")
            windows.append(Window(start, end, automatic=automatic))
    return windows


def _reinstatements(r: _Reader) -> list[datetime]:
    values = r.items("reinstatements")
    if r.has("reinstated_at"):
        single = r.data["reinstated_at"]
        values += single if isinstance(single, list) else [single]
    times = []
    for i, value in enumerate(values):
        times.append(to_time(value, r.at(f"reinstatements[{i}]")))
    return times


def _merge(base: Mapping[str, Any], amendment: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in amendment.items():
        if key in (
            "effective_from",
            "version",
            *_SUSPENSION_KEYS,
            "reinstatements",
            "reinstated_at",
        ):
            continue
        if key in _NESTED and isinstance(value, Mapping):
            merged[key] = {**(base.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def parse_licence(data: Any, path: str = "licence") -> Licence:
    """Validate and build a licence; raises :class:`SpecError` naming the bad field."""
    r = _Reader(data, path)
    identity = {key: r.text(key) for key in _IDENTITY}
    if not is_currency(identity["currency"]):
        raise SpecError(r.at("currency"), f"{identity['currency']!r} is not an ISO 4217 code")
    number = r.integer("version", 1, minimum=1)
    versions = [_version(r, number, None)]
    spec: dict[str, Any] = dict(r.data)
    last_effective: datetime | None = None
    windows, reinstated = _windows(r), _reinstatements(r)
    for i, item in enumerate(r.items("amendments")):
        a = _Reader(item, f"{r.at('amendments')}[{i}]")
        for key in _IDENTITY:
            if a.has(key):
                raise SpecError(a.at(key), "cannot be amended; create a new licence")
        effective = a.time("effective_from")
        assert effective is not None
        if last_effective is not None and effective <= last_effective:
            raise SpecError(a.at("effective_from"), "amendments must be in time order")
        number = a.integer("version", number + 1, minimum=number + 1)
        windows += _windows(a)
        reinstated += _reinstatements(a)
        spec = _merge(spec, a.data)
        versions.append(_version(_Reader(spec, a.path), number, effective))
        last_effective = effective
    return Licence(
        licence_id=identity["licence_id"],
        talent_id=identity["talent_id"],
        avatar_id=identity["avatar_id"],
        vendor_id=identity["vendor_id"],
        currency=identity["currency"],
        versions=tuple(versions),
        suspensions=tuple(dict.fromkeys(windows)),
        reinstatements=tuple(sorted(set(reinstated))),
    )
