"""What a period close feeds the rules, and the statement's content hash (pure).

The statement itself is always :func:`residuals.domain.statement.compute_statement`; this
module only decides its inputs the same way every time:

* which licences a period's statement covers (:func:`licences_for_period`): every licence
  whose term overlaps the period (a minimum guarantee is owed even without use) plus any
  licence that has events in it;
* the advance a period may recoup comes from the journal, not from the licence text once
  the licence version has been opened (:func:`with_advance_outstanding`);
* the canonical JSON and SHA-256 that make "closing twice gives the same statement"
  checkable byte for byte (:func:`canonical_json`, :func:`content_hash`);
* a closed statement's stored inputs read back for computing it again
  (:class:`RestateInputs`): by the close's restatements, a payee's part, and the offline
  evidence verifier, which has only a bundle and must choose exactly as the close did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


def stored_renders(stored: Any) -> dict[str, int]:
    """Approval render counts as stored in a statement's inputs (none before §5a)."""
    return {str(a): int(n) for a, n in (stored or {}).items()}


@dataclass(frozen=True)
class RestateInputs:
    """What a closed statement's stored inputs (``statements.inputs``) give the rules when
    the statement is computed again from its events."""

    #: The licences the statement covered (the events' own licences come on top).
    licences: frozenset[str]
    #: The advance each licence could recoup, from the journal at the close.
    advance: Mapping[str, Decimal]
    thresholds: Mapping[str, Decimal]
    carried_in: Mapping[tuple[str, str], Decimal]
    approval_renders_in: Mapping[str, int]

    @classmethod
    def parse(cls, inputs: Mapping[str, Any]) -> RestateInputs:
        """From the stored JSON; KeyError, TypeError or ValueError when it is malformed."""
        return cls(
            licences=frozenset(str(x) for x in inputs.get("licences", [])),
            advance={str(k): Decimal(str(v)) for k, v in inputs.get("advance", {}).items()},
            thresholds={str(c): Decimal(str(v)) for c, v in inputs.get("thresholds", {}).items()},
            carried_in={
                (str(p), str(c)): Decimal(str(a)) for p, c, a in inputs.get("carried_in", [])
            },
            approval_renders_in=stored_renders(inputs.get("approval_renders_in")),
        )

    def priced(
        self, licences: Iterable[Licence], period: Period, used: Iterable[str]
    ) -> list[Licence]:
        """The licences among ``used``, by id, each with the advance the close priced it
        with (the terms in force at the period's end; everything else as registered)."""
        wanted = set(used)
        return [
            with_advance_outstanding(lic, period, self.advance[lic.licence_id])
            if lic.licence_id in self.advance
            else lic
            for lic in licences_for_period(licences, period, wanted)
            if lic.licence_id in wanted
        ]


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
