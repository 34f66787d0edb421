"""Licences: domain :class:`~residuals.domain.licences.Licence` ↔ protobuf ``Licence``.

The compacted ``residuals.licences.v1`` topic carries each licence's full state (all
versions and suspension windows) in this form, so a consumer rebuilds the domain licence
from one record.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar, cast

from google.protobuf.message import Message

from residuals.codecs.timestamps import optional_datetime, set_timestamp, to_datetime
from residuals.domain.licences import (
    Licence,
    LicenceVersion,
    Quota,
    RateCard,
    RenderTier,
    Scope,
    Window,
)
from residuals.domain.money import fmt
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


def _dec(text: str, default: str = "0") -> Decimal:
    text = text or default
    found = _DECIMALS.get(text)
    if found is None:
        if len(_DECIMALS) >= _INTERNED_MAX:
            _DECIMALS.clear()
        found = _DECIMALS[text] = Decimal(text)
    return found


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


def _interned(message: Message, decode: Callable[[Any], T]) -> T:
    wire = message.SerializeToString(deterministic=True)
    key = message.DESCRIPTOR.name.encode() + b":" + wire
    found = _INTERNED.get(key)
    if found is None:
        if len(_INTERNED) >= _INTERNED_MAX:
            _INTERNED.clear()
        found = _INTERNED[key] = decode(message)
    return cast(T, found)


def _scope_from_proto(scope: licence_pb2.Scope) -> Scope:
    return Scope(
        categories_allowed=frozenset(scope.categories_allowed),
        categories_forbidden=frozenset(scope.categories_forbidden),
        territories_allowed=frozenset(scope.territories_allowed),
        territories_forbidden=frozenset(scope.territories_forbidden),
        channels_allowed=frozenset(scope.channels_allowed),
    )


def _rates_from_proto(rates: licence_pb2.RateCard) -> RateCard:
    return RateCard(
        render_tiers=tuple(
            RenderTier(t.up_to if t.HasField("up_to") else None, _dec(t.unit_price))
            for t in rates.render_tiers
        ),
        view_cpm=_dec(rates.view_cpm),
        ad_revenue_share=_dec(rates.ad_revenue_share),
        ad_floor_cpm=_dec(rates.ad_floor_cpm),
        channel_multipliers={k: _dec(v) for k, v in rates.channel_multipliers.items()},
        unlicensed_use_multiplier=_dec(rates.unlicensed_use_multiplier, "2"),
    )


def _version_from_proto(m: licence_pb2.LicenceVersion) -> LicenceVersion:
    starts_at = optional_datetime(m, "starts_at")
    if starts_at is None:
        raise ValueError(f"licence version {m.version} has no starts_at")
    return LicenceVersion(
        version=m.version,
        effective_from=optional_datetime(m, "effective_from"),
        starts_at=starts_at,
        ends_at=optional_datetime(m, "ends_at"),
        scope=_interned(m.scope, _scope_from_proto),
        rates=_interned(m.rates, _rates_from_proto),
        quotas=tuple(
            Quota(
                Metric(common_pb2.Metric.Name(q.metric).removeprefix("METRIC_")),
                q.limit,
                OnExceed.ALERT if q.on_exceed == licence_pb2.ON_EXCEED_ALERT else OnExceed.BLOCK,
            )
            for q in m.quotas
        ),
        minimum_guarantee=_dec(m.minimum_guarantee),
        advance_outstanding=_dec(m.advance_outstanding),
        platform_fee=_dec(m.platform_fee),
        splits=tuple(sorted((s.payee_id, _dec(s.share)) for s in m.splits)),
        revoked_at=optional_datetime(m, "revoked_at"),
        wind_down_days=m.wind_down_days,
        auto_suspend_on_critical=(
            m.auto_suspend_on_critical if m.HasField("auto_suspend_on_critical") else True
        ),
    )


def from_proto(message: licence_pb2.Licence) -> Licence:
    """Rebuild the domain licence, automatic suspension windows marked as such.

    How an automatic window counts depends on the period being computed; the domain
    decides that (:class:`~residuals.domain.licences.Window`), not the codec.
    """
    windows: list[Window] = []
    for s in message.suspensions:
        start = to_datetime(s.starts_at)
        end = optional_datetime(s, "ends_at")
        if s.automatic or end is None or end > start:
            windows.append(Window(start, end, automatic=s.automatic))
    return Licence(
        licence_id=message.licence_id,
        talent_id=message.talent_id,
        avatar_id=message.avatar_id,
        vendor_id=message.vendor_id,
        currency=message.currency_code,
        versions=tuple(_version_from_proto(v) for v in message.versions),
        suspensions=tuple(windows),
    )
