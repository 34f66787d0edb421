"""One payee's part of a period statement: what their document shows and their evidence proves.

A period statement covers every licence and payee; a talent, agent or estate may see only
their own. Their part is the statement's entries for the licences that allocate to them
and their payee balances, in the §10 shape, with its own SHA-256 over canonical JSON. The
money of a licence depends only on its own events (and the identities they share with
other licences' rows), and a payee's balance only on the licences that allocate to them, so
the part can be recomputed from the part's evidence alone and compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from residuals.domain.approvals import Approval
from residuals.domain.closing import content_hash
from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.metering import Rating
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement


def part_licence_ids(document: Mapping[str, Any], payee_id: str) -> tuple[str, ...]:
    """The licences of a §10 document whose allocations name ``payee_id``, sorted."""
    return tuple(
        sorted(
            lic["licence_id"]
            for lic in document["licences"]
            if any(a["payee_id"] == payee_id for a in lic["allocations"])
        )
    )


def part_document(
    document: Mapping[str, Any], payee_id: str, licence_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """``payee_id``'s part of a §10 document (by default every licence that pays them)."""
    wanted = set(part_licence_ids(document, payee_id) if licence_ids is None else licence_ids)
    return {
        "period": document["period"],
        "payee_id": payee_id,
        "licences": [lic for lic in document["licences"] if lic["licence_id"] in wanted],
        "payees": [p for p in document["payees"] if p["payee_id"] == payee_id],
    }


def part_hash(part: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the part's canonical JSON (what documents print and bundles prove)."""
    return content_hash(part)


def compute_part(
    period: Period,
    licences: Iterable[Licence],
    events: Iterable[UsageEvent | Rejection],
    payee_id: str,
    licence_ids: Sequence[str],
    *,
    thresholds: Mapping[str, Decimal] | None = None,
    carried_in: Mapping[tuple[str, str], Decimal] | None = None,
    approvals: Iterable[Approval] = (),
    approval_renders_in: Mapping[str, int] | None = None,
    on_rated: Callable[[Licence, Sequence[Rating]], None] | None = None,
) -> dict[str, Any]:
    """The part recomputed by the rules from the part's events.

    ``licences`` must include the licences of rows that only decide identity (a
    conflicting re-send's first send may name another licence), or those rows would be
    rejected instead of deciding it; their entries are left out of the part."""
    statement = compute_statement(
        period,
        licences,
        events,
        thresholds=thresholds,
        carried_in=carried_in,
        approvals=approvals,
        approval_renders_in=approval_renders_in,
        on_rated=on_rated,
    )
    return part_document(statement.to_document(), payee_id, licence_ids)
