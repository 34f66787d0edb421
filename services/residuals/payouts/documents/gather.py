"""Everything a statement document shows, read from PostgreSQL into the pure model.

* the part: the closed statement's entries for the payee (:mod:`residuals.domain.parts`),
  narrowed to one client's licences for an agent's or estate's client section;
* names: the payee, talents, avatars and vendors through the licensing service's
  directory (:mod:`residuals.licensing.directory`), never its tables;
* where the use happened: the usage tallies the close folded from its ratings and stored
  with the statement (``statement_usage``), merged for the part's licences
  (:class:`~residuals.payouts.tally.UsageTally`); for a statement closed before they were
  stored, the part recomputed by the rules from its stored events
  (:func:`residuals.payouts.close.restate_part`) with the tally as the hook, and compared
  with the closed statement (the document says when they differ);
* the payee's payouts of the period (:func:`residuals.payouts.store.list_payouts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from residuals.domain.licences import Licence
from residuals.domain.parts import part_document, part_licence_ids
from residuals.domain.period import Period
from residuals.licensing import directory
from residuals.payouts import store
from residuals.payouts.close import restate_part
from residuals.payouts.documents.model import (
    LicenceParties,
    Names,
    PayoutFact,
    StatementFacts,
    StatementView,
    build_view,
)
from residuals.payouts.sources import Conn, Sources
from residuals.payouts.tally import UsageTally, usage_from_json
from residuals.platform.heap import bulk_allocations

#: Enough to page through any payee's payouts of one period (one per currency).
_PAYOUT_PAGE = 10_000


class NoStatementPart(LookupError):
    """The payee (or the client asked for) has no part in that closed statement."""


def statement_part(
    stored: store.StoredStatement, payee_id: str, talent_id: str = ""
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The payee's part of ``stored`` (one client's licences with ``talent_id``) and its
    licence ids; :class:`NoStatementPart` when there is none."""
    document = stored.document
    ids = part_licence_ids(document, payee_id)
    whole = part_document(document, payee_id, ids)
    if not whole["licences"] and not whole["payees"]:
        raise NoStatementPart(f"payee {payee_id!r} has no part in the {stored.period} statement")
    if not talent_id:
        return whole, ids
    mine = tuple(
        i
        for i in ids
        if (meta := stored.licences.get(i)) is not None and meta.talent_id == talent_id
    )
    if not mine:
        raise NoStatementPart(
            f"payee {payee_id!r} has no licence of talent {talent_id!r} in the "
            f"{stored.period} statement"
        )
    return part_document(document, payee_id, mine), mine


def client_talent_ids(conn: Conn, payee_id: str) -> tuple[str, ...]:
    """The talents an agent or estate is paid for (``payee_talents``), sorted; () for an
    unknown payee. Several mean one document per client besides the roll-up."""
    row = directory.payee(conn, payee_id)
    return () if row is None else row.talent_ids


def _names(conn: Conn, payee_id: str, licences: Mapping[str, LicenceParties]) -> Names:
    payee = directory.payee(conn, payee_id)
    found = directory.display_names(
        conn,
        talent_ids=sorted({p.talent_id for p in licences.values()}),
        avatar_ids=sorted({p.avatar_id for p in licences.values()}),
        vendor_ids=sorted({p.vendor_id for p in licences.values()}),
    )
    return Names(
        payee_id=payee_id,
        payee_kind=payee.kind if payee else "unspecified",
        payee_name=payee.display_name if payee else "",
        talents=found.talents,
        avatars=found.avatars,
        vendors=found.vendors,
        licences=licences,
    )


def _payouts(conn: Conn, period: str, payee_id: str) -> list[PayoutFact]:
    return [
        PayoutFact(
            payout_id=p.payout_id,
            currency=p.currency,
            amount=p.amount,
            state=str(p.state),
            rail=p.rail,
            rail_reference=p.rail_reference,
            paid_at=p.paid_at,
            failure_reason=p.failure_reason,
        )
        for p in store.list_payouts(conn, period=period, payee_id=payee_id, limit=_PAYOUT_PAGE)
    ]


def _usage(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    licences: Sequence[Licence],
    payee_id: str,
    ids: tuple[str, ...],
    part: Mapping[str, Any],
) -> tuple[UsageTally, bool]:
    """The part's usage tally, and whether a restatement gave other figures than ``part``
    (only checked when there is no stored tally to read)."""
    tally = UsageTally(Period.parse(stored.period), ids)
    kept = store.statement_usage(conn, stored.statement_id, ids)
    if ids and len(kept) == len(ids):  # folded by the close from the statement's ratings
        for licence_id in ids:  # sorted: the order the close rated them in
            tally.add(usage_from_json(kept[licence_id]))
        return tally, False
    with bulk_allocations():
        restated = restate_part(conn, sources, stored, licences, payee_id, on_rated=tally)
    return tally, part_document(restated, payee_id, ids) != part


def gather_view(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    payee_id: str,
    *,
    talent_id: str = "",
) -> StatementView:
    """The document of ``payee_id``'s part of ``stored`` (one client's with ``talent_id``)."""
    part, ids = statement_part(stored, payee_id, talent_id)
    licences = sources.licences.licences(conn)
    parties = {
        lic.licence_id: LicenceParties(lic.talent_id, lic.avatar_id, lic.vendor_id)
        for lic in licences
        if lic.licence_id in ids
    }
    for licence_id in ids:  # a licence the registry could not load: what the statement kept
        meta = stored.licences.get(licence_id)
        if licence_id not in parties and meta is not None:
            parties[licence_id] = LicenceParties(meta.talent_id, "", meta.vendor_id)
    tally, differ = _usage(conn, sources, stored, licences, payee_id, ids, part)
    carried = {
        currency: Decimal(amount)
        for payee, currency, amount in stored.inputs.get("carried_in", [])
        if payee == payee_id
    }
    return build_view(
        part,
        names=_names(conn, payee_id, parties),
        tally=tally,
        payouts=_payouts(conn, stored.period, payee_id),
        facts=StatementFacts(stored.period, stored.content_hash, stored.closed_at, carried),
        client_talent_id=talent_id,
        breakdowns_differ=differ,
    )
