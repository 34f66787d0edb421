"""Licence terms in the licence-spec shape: from requests, to storage, and validated.

The registry validates terms with the domain's own parser,
:func:`residuals.domain.licence_spec.parse_licence` (splits sum to 1, tiers ascending and
open-ended, ISO 4217, non-negative and bounded money, times within the era, term
ordering, amendment order...), followed by the registry's extra rules
(:mod:`residuals.licensing.rules`). Nothing here re-states a rule: requests are
*translated* into the spec shape the parser reads, and the parser's field paths are
translated back into the request's field names.

Writing and reading differ on purpose: :func:`validate` (a new licence or version) applies
the registry's rules; :func:`read` (a stored licence, for the API, the outbox and the
period close) only the parser's, so a licence recorded under older rules (a category since
retired) stays readable.

A stored version is a *complete* spec (every key present, ``None`` for unset optional
times), so laying it over the previous version as an amendment replaces every term and
reproduces it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from residuals.domain.licence_spec import SpecError, parse_licence
from residuals.domain.licences import SCOPE_FIELDS, Licence, LicenceVersion
from residuals.domain.money import fmt
from residuals.licensing import rules

Spec = dict[str, Any]

RATE_FIELDS = (
    "render_tiers",
    "view_cpm",
    "ad_revenue_share",
    "ad_floor_cpm",
    "channel_multipliers",
    "unlicensed_use_multiplier",
)
#: Top-level keys of a complete version spec (``scope`` and ``rates`` are nested).
VERSION_FIELDS = (
    "starts_at",
    "ends_at",
    "revoked_at",
    "wind_down_days",
    "auto_suspend_on_critical",
    "scope",
    "rates",
    "quotas",
    "minimum_guarantee",
    "advance_outstanding",
    "platform_fee",
    "splits",
)
#: Paths an AmendLicence update_mask may name.
MASKABLE: frozenset[str] = frozenset(
    {
        *VERSION_FIELDS,
        *(f"scope.{f}" for f in SCOPE_FIELDS),
        *(f"rates.{f}" for f in RATE_FIELDS),
    }
)
IDENTITY_TO_REQUEST = {
    "licence_id": "licence_id",
    "talent_id": "talent_id",
    "avatar_id": "avatar_id",
    "vendor_id": "vendor_id",
    "currency": "currency_code",
}


# --- domain -> complete spec (storage) -------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def complete_spec(version: LicenceVersion) -> Spec:
    """Every term of a validated version, JSON-ready (decimal strings, ISO 8601 times)."""
    rates = version.rates
    return {
        "starts_at": _time(version.starts_at),
        "ends_at": _time(version.ends_at),
        "revoked_at": _time(version.revoked_at),
        "wind_down_days": version.wind_down_days,
        "auto_suspend_on_critical": version.auto_suspend_on_critical,
        "scope": {f: sorted(getattr(version.scope, f)) for f in SCOPE_FIELDS},
        "rates": {
            "render_tiers": [
                {"up_to": t.up_to, "unit_price": fmt(t.unit_price)} for t in rates.render_tiers
            ],
            "view_cpm": fmt(rates.view_cpm),
            "ad_revenue_share": fmt(rates.ad_revenue_share),
            "ad_floor_cpm": fmt(rates.ad_floor_cpm),
            "channel_multipliers": {
                k: fmt(v) for k, v in sorted(rates.channel_multipliers.items())
            },
            "unlicensed_use_multiplier": fmt(rates.unlicensed_use_multiplier),
        },
        "quotas": [
            {"metric": q.metric.value, "limit": q.limit, "on_exceed": q.on_exceed.value}
            for q in version.quotas
        ],
        "minimum_guarantee": fmt(version.minimum_guarantee),
        "advance_outstanding": fmt(version.advance_outstanding),
        "platform_fee": fmt(version.platform_fee),
        "splits": {payee: fmt(share) for payee, share in version.splits},
    }


def blank_spec() -> Spec:
    """A complete spec with nothing set (defaults where the parser needs a value)."""
    spec: Spec = dict.fromkeys(VERSION_FIELDS)
    spec["wind_down_days"] = 0
    spec["auto_suspend_on_critical"] = True
    spec["scope"] = {f: [] for f in SCOPE_FIELDS}
    spec["rates"] = dict.fromkeys(RATE_FIELDS)
    spec["quotas"] = []
    spec["splits"] = {}
    return spec


def apply_mask(base: Spec, update: Spec, paths: Sequence[str]) -> Spec:
    """The next version's complete spec: ``base`` with the masked paths from ``update``.

    A masked path absent from ``update`` is reset (to the parser's default, or to "not
    given" for required terms). An empty mask replaces every term, i.e. ``update`` over a
    blank spec. Either way the revocation (``revoked_at`` with its ``wind_down_days``) is
    carried over from ``base`` unless ``update`` sets ``revoked_at``: revoking is not an
    amendment's side effect. Raises :class:`SpecError` at ``update_mask.paths[i]`` for a
    path that is not a term.
    """
    blank = blank_spec()
    if not paths:
        merged = blank
        for key, value in update.items():
            merged[key] = {**merged[key], **value} if key in ("scope", "rates") else value
        if "revoked_at" not in update:
            merged["revoked_at"] = base.get("revoked_at")
            merged["wind_down_days"] = base.get("wind_down_days", 0)
        return merged
    merged = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for i, path in enumerate(paths):
        if path not in MASKABLE:
            raise SpecError(
                f"update_mask.paths[{i}]",
                f"{path!r} is not an amendable term ({', '.join(sorted(MASKABLE))})",
            )
        head, _, tail = path.partition(".")
        if tail:
            merged[head][tail] = update.get(head, {}).get(tail, blank[head][tail])
        elif head in ("scope", "rates"):
            merged[head] = {**blank[head], **update.get(head, {})}
        else:
            merged[head] = update.get(head, blank[head])
    return merged


# --- whole licences ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    licence_id: str
    talent_id: str
    avatar_id: str
    vendor_id: str
    currency: str


def licence_spec(identity: Identity, versions: Sequence[tuple[datetime | None, Spec]]) -> Spec:
    """The ``parse_licence`` input: version 1 at the root, the others as amendments."""
    (_, first), *later = versions
    spec: Spec = {
        "licence_id": identity.licence_id,
        "talent_id": identity.talent_id,
        "avatar_id": identity.avatar_id,
        "vendor_id": identity.vendor_id,
        "currency": identity.currency,
        "version": 1,
        **first,
        "amendments": [
            {"effective_from": effective, "version": n, **terms}
            for n, (effective, terms) in enumerate(later, start=2)
        ],
    }
    return spec


def validate(identity: Identity, versions: Sequence[tuple[datetime | None, Spec]]) -> Licence:
    """The domain licence, or :class:`SpecError` with a licence-spec path.

    The domain parser's rules first, then the registry's (known vocabulary, ISO 3166).
    """
    licence = read(identity, versions)
    rules.check_licence(licence)
    return licence


def read(identity: Identity, versions: Sequence[tuple[datetime | None, Spec]]) -> Licence:
    """A stored licence as the domain licence: well-formed and bounded (the parser), not
    re-judged by today's registry rules; :class:`SpecError` with a licence-spec path."""
    return parse_licence(licence_spec(identity, versions), path="")


_AMENDMENT = re.compile(r"^amendments\[(\d+)\](?:\.(.*))?$")
_SPLIT = re.compile(r"^splits\.(.+)$")


def request_path(spec_path: str, *, new_version_index: int, payees: Sequence[str] = ()) -> str:
    """Where a spec-path error sits in a request carrying version ``new_version_index``.

    Identity keys are request fields (``currency`` is ``currency_code``); the new version's
    terms are under ``terms.``, its ``effective_from`` is a request field, and a payee's
    share is ``terms.splits[i].share`` by the request's ``payees`` order.
    """
    inner = spec_path
    if new_version_index > 0:
        match = _AMENDMENT.match(spec_path)
        if match is None or int(match[1]) != new_version_index - 1:
            return spec_path  # an error in stored history: report it as it is
        inner = match[2] or "terms"
        if inner == "effective_from":
            return "effective_from"
    elif inner in IDENTITY_TO_REQUEST:
        return IDENTITY_TO_REQUEST[inner]
    split = _SPLIT.match(inner)
    if split:
        order = list(payees)
        if split[1] in order:
            return f"terms.splits[{order.index(split[1])}].share"
        payee = split[1].removesuffix(".payee_id")
        if payee in order:
            return f"terms.splits[{order.index(payee)}].payee_id"
    return inner if inner.startswith("terms") else f"terms.{inner}"
