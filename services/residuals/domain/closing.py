"""What a period close feeds the rules, and the statement's content hash (pure).

The statement itself is always :func:`residuals.domain.statement.compute_statement`; this
module only decides its inputs the same way every time:

* which licences a period's statement covers (:func:`licences_for_period`): every licence
  whose term overlaps the period (a minimum guarantee is owed even without use) plus any
  licence that has events in it;
* the advance a period may recoup comes from the journal, not from the licence text once
  the licence version has been opened (:func:`with_advance_outstanding`);
* the canonical JSON and SHA-256 that make "closing twice gives the same statement"
  checkable byte for byte (:func:`canonical_json`, :func:`content_hash`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from residuals.domain.licences import Licence
from residuals.domain.period import Period

DEFAULT_GRACE = timedelta(days=3)


def closable_at(period: Period, grace: timedelta = DEFAULT_GRACE) -> datetime:
    """The first instant ``period`` may be closed: its end plus the grace period."""
    return period.end + grace


def overlaps(licence: Licence, period: Period) -> bool:
    """Does any version's term ``[starts_at, ends_at)`` overlap the period?"""
    for version in licence.versions:
        if version.starts_at >= period.end:
            continue
        if version.ends_at is not None and version.ends_at <= period.start:
            continue
        wound_down = version.wind_down_ends
        if wound_down is not None and wound_down <= period.start:
            continue
        return True
    return False


def licences_for_period(
    licences: Iterable[Licence], period: Period, with_events: Iterable[str] = ()
) -> list[Licence]:
    """The licences a period's statement covers, by licence id."""
    used = set(with_events)
    chosen = [lic for lic in licences if lic.licence_id in used or overlaps(lic, period)]
    return sorted(chosen, key=lambda lic: lic.licence_id)


def with_advance_outstanding(licence: Licence, period: Period, amount: Decimal) -> Licence:
    """The licence with the advance of the version that settles ``period`` set to ``amount``.

    Settlement reads the terms in force at the period's last instant (§8), so only that
    version changes; everything else (scope, rates, history) is untouched.
    """
    terms = licence.version_at(period.last_instant)
    versions = tuple(
        dataclasses.replace(v, advance_outstanding=amount) if v is terms else v
        for v in licence.versions
    )
    return dataclasses.replace(licence, versions=versions)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: equal documents give equal bytes."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default
    ).encode("utf-8")


def content_hash(document: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(document)).hexdigest()
