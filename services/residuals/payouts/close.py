"""Period close: the statement from stored events and licence versions, posted once.

One PostgreSQL transaction, serialised by an advisory lock:

1. already closed → the stored statement, unchanged (idempotent: same hash, no new row);
2. refuse before the grace period has passed (unless forced), out of order, or after a
   later period was closed;
3. corrections first: every closed period with events that arrived after its cut-off is
   computed again by :func:`compute_statement` with them included, and the difference from
   its stored statement (plus earlier corrections) becomes adjustment lines and entries;
4. the advance each licence may recoup and each payee's carried-in balance are read from
   the journal (after the corrections), never from running totals;
5. :func:`compute_statement` on the period's stored events → the §10 document, its
   canonical JSON and hash, rows, journal entries, payouts and payout events, and each
   licence's usage tally folded from the same ratings (``statement_usage``: what statement
   documents break down by day, kind, territory, channel and misuse).

Approvals (§5a) are priced like the meter prices them: the approvals granted for the
period's licences, each starting from the render units it covered in earlier periods (the
previous closed statement's cumulative counts, kept in its stored inputs as
``approval_renders``; a restatement starts from the ``approval_renders_in`` it stored).

A dry run does all of it and rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from opentelemetry import trace

from residuals.domain import journal
from residuals.domain.adjustments import (
    AdjustmentLine,
    diff_items,
    statement_items,
    with_adjustments,
)
from residuals.domain.closing import (
    DEFAULT_GRACE,
    RestateInputs,
    canonical_json,
    closable_at,
    content_hash,
    licences_for_period,
    stored_renders,
    with_advance_outstanding,
)
from residuals.domain.licences import Licence
from residuals.domain.metering import Rating
from residuals.domain.money import ZERO, round_money
from residuals.domain.parts import compute_part, part_licence_ids
from residuals.domain.payouts import plan_payouts
from residuals.domain.period import Period
from residuals.domain.statement import PeriodStatement, compute_statement
from residuals.payouts import store
from residuals.payouts.messages import payout_event_bytes
from residuals.payouts.sources import Conn, Sources
from residuals.payouts.tally import StatementUsage
from residuals.platform.heap import bulk_allocations

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class CloseRefused(Exception):
    """The period cannot be closed now; the message says why and what to do."""


class _DryRun(Exception):
    """Raised inside the close transaction to roll a dry run back, carrying its result."""

    def __init__(self, result: CloseResult) -> None:
        super().__init__("dry run")
        self.result = result


@dataclass(frozen=True)
class ClosePolicy:
    grace: timedelta = DEFAULT_GRACE
    thresholds: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class CloseResult:
    statement: store.StoredStatement
    already_closed: bool
    dry_run: bool = False
    payouts: int = 0
    adjustments: int = 0
    entries: int = 0


def _thresholds_doc(thresholds: Mapping[str, Decimal]) -> dict[str, str]:
    return {c: format(v, "f") for c, v in sorted(thresholds.items())}


def restate(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    licences: Iterable[Licence],
    through: Period | None = None,
) -> dict[str, Any]:
    """:func:`restate_statement` as a §10 document."""
    return restate_statement(conn, sources, stored, licences, through).to_document()


def restate_statement(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    licences: Iterable[Licence],
    through: Period | None = None,
) -> PeriodStatement:
    """A closed period computed again from stored events and its stored inputs: its own
    events only (``through`` None) reproduces it; with ``through``, late uses recorded
    as adjustments of periods up to ``through`` are included (the restatement)."""
    period = Period.parse(stored.period)
    inputs = RestateInputs.parse(stored.inputs)
    events = sources.events.period_events(conn, period, through)
    used = inputs.licences | {getattr(e, "licence_id", None) or "" for e in events}
    chosen = inputs.priced(licences, period, used)
    return compute_statement(
        period,
        chosen,
        events,
        thresholds=inputs.thresholds,
        carried_in=inputs.carried_in,
        approvals=sources.approvals.approvals(conn, [lic.licence_id for lic in chosen]),
        approval_renders_in=inputs.approval_renders_in,
    )


def restate_part(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    licences: Iterable[Licence],
    payee_id: str,
    *,
    on_rated: Callable[[Licence, Sequence[Rating]], None] | None = None,
) -> dict[str, Any]:
    """``payee_id``'s part of a closed statement (:mod:`residuals.domain.parts`) computed
    again from its own events and the statement's stored inputs; equal to
    ``part_document(stored.document, payee_id)`` unless the stored data changed."""
    period = Period.parse(stored.period)
    inputs = RestateInputs.parse(stored.inputs)
    licence_ids = part_licence_ids(stored.document, payee_id)
    events = sources.events.part_events(conn, period, licence_ids)
    used = set(licence_ids) | {getattr(e, "licence_id", None) or "" for e in events}
    return compute_part(
        period,
        inputs.priced(licences, period, used),
        events,
        payee_id,
        licence_ids,
        thresholds=inputs.thresholds,
        carried_in=inputs.carried_in,
        approvals=sources.approvals.approvals(conn, list(licence_ids)),
        approval_renders_in=inputs.approval_renders_in,
        on_rated=on_rated,
    )


def close_period(
    conn: Conn,
    sources: Sources,
    period: Period,
    *,
    policy: ClosePolicy,
    closed_by: str,
    now: datetime | None = None,
    force: bool = False,
    dry_run: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> CloseResult:
    """Close ``period`` (see the module docstring). ``conn`` must not be in a transaction.

    ``on_step`` hears the name of each step as it starts (progress for a person waiting)."""
    now = now or datetime.now(UTC)
    span = tracer.start_as_current_span("close_period", attributes={"period": str(period)})
    with span, bulk_allocations():
        try:
            with conn.transaction():
                result = _close(
                    conn, sources, period, policy, closed_by, now, force, dry_run, on_step
                )
                if dry_run and not result.already_closed:
                    raise _DryRun(result)
                return result
        except _DryRun as rollback:
            return rollback.result


def _close(
    conn: Conn,
    sources: Sources,
    period: Period,
    policy: ClosePolicy,
    closed_by: str,
    now: datetime,
    force: bool,
    dry_run: bool,
    on_step: Callable[[str], None] | None,
) -> CloseResult:
    step = on_step or (lambda _name: None)
    step("waiting for the close lock")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (store.CLOSE_LOCK,))
    key = str(period)
    existing = store.get_statement(conn, key)
    if existing is not None:
        return CloseResult(existing, already_closed=True)
    opens = closable_at(period, policy.grace)
    if now < opens and not force:
        raise CloseRefused(
            f"{key} can be closed from {opens.isoformat()} (grace period "
            f"{policy.grace.days} days after the month ends); use force to close earlier"
        )
    closed = store.closed_periods(conn)
    if closed and closed[-1] > key:
        raise CloseRefused(f"{key} is before the last closed period {closed[-1]}")
    if closed and Period.parse(closed[-1]).next() != period:
        raise CloseRefused(f"close {Period.parse(closed[-1]).next()} before {key}")

    step("fencing the period and loading licences")
    sources.events.mark_closed(conn, period)
    licences = sources.licences.licences(conn)
    registry = {lic.licence_id: lic for lic in licences}
    vendors = {lic.licence_id: lic.vendor_id for lic in licences}

    # 3. corrections of closed periods
    adjustments: list[AdjustmentLine] = []
    corrected: list[str] = []
    for target in sorted(sources.events.late_periods(conn, period)):
        step(f"restating {target} with its late uses")
        stored = store.get_statement(conn, target)
        if stored is None:
            continue
        baseline = with_adjustments(
            statement_items(stored.document), store.adjustments_targeting(conn, target)
        )
        restated = restate(conn, sources, stored, licences, through=period)
        adjustments.extend(diff_items(target, baseline, statement_items(restated)))
        corrected.append(target)
    new_entries = journal.adjustment_entries(key, adjustments, vendors)

    # 4. advances and carried-in balances from the journal
    balance = store.balances(conn)
    _merge(balance, journal.balances(new_entries))
    step("loading the period's events")
    events = sources.events.period_events(conn, period)
    used = {getattr(e, "licence_id", None) or "" for e in events}
    chosen = licences_for_period(licences, period, used & set(registry))
    advance: dict[str, str] = {}
    priced: list[Licence] = []
    for lic in chosen:
        terms = lic.version_at(period.last_instant)
        account = (journal.advance_outstanding(lic.licence_id), lic.currency)
        suffix = f":advance:{lic.licence_id}:v{terms.version}"
        if not store.entry_exists(conn, suffix, lic.licence_id):
            stated = round_money(terms.advance_outstanding, lic.currency)
            opening = journal.advance_opening_entry(
                key, lic.licence_id, terms.version, lic.currency, stated, balance.get(account, ZERO)
            )
            if opening is not None:
                new_entries.append(opening)
                _merge(balance, journal.balances([opening]))
        outstanding = max(balance.get(account, ZERO), ZERO)
        advance[lic.licence_id] = format(round_money(outstanding, lic.currency), "f")
        priced.append(with_advance_outstanding(lic, period, Decimal(advance[lic.licence_id])))
    carried = journal.carried_in(balance)

    # 5. the statement; approvals carry their render counts on from the last close
    previous = store.get_statement(conn, closed[-1]) if closed else None
    renders_in = stored_renders(previous.inputs.get("approval_renders")) if previous else {}
    step(f"rating {len(events):,} events by the rules")
    usage = StatementUsage(period)  # the documents' breakdowns, from the same ratings
    statement = compute_statement(
        period,
        priced,
        events,
        thresholds=policy.thresholds,
        carried_in=carried,
        approvals=sources.approvals.approvals(conn, [lic.licence_id for lic in priced]),
        approval_renders_in=renders_in,
        on_rated=usage,
    )
    document = statement.to_document()
    canonical = canonical_json(document).decode("utf-8")
    adjustments_doc = [a.to_document() for a in adjustments]
    statement_id = store.statement_id_for(key)
    step("recording the statement, journal and payouts")
    inputs = {
        "licences": [lic.licence_id for lic in priced],
        "advance": advance,
        "thresholds": _thresholds_doc(policy.thresholds),
        "carried_in": [[p, c, format(a, "f")] for (p, c), a in sorted(carried.items())],
        "corrected_periods": corrected,
        "grace_days": policy.grace.days,
        "approval_renders_in": renders_in,
        "approval_renders": dict(sorted(statement.approval_renders.items())),
    }
    metas = {
        lic.licence_id: store.LicenceMeta(
            lic.licence_id, lic.talent_id, lic.vendor_id, lic.currency
        )
        for lic in priced
    }
    store.insert_statement(
        conn,
        statement_id=statement_id,
        period=key,
        content_hash=content_hash(document),
        canonical=canonical,
        document=document,
        adjustments=adjustments,
        adjustments_hash=content_hash({"adjustments": adjustments_doc}),
        inputs=inputs,
        event_count=len(events),
        closed_by=closed_by,
        licences=metas,
        carried_in=carried,
    )
    store.insert_statement_usage(
        conn,
        statement_id,
        {lic["licence_id"]: usage.tallies[lic["licence_id"]] for lic in document["licences"]},
    )
    new_entries.extend(journal.statement_entries(document, vendors))
    planned = plan_payouts(key, document["payees"])
    for p in planned:
        entry = journal.payout_scheduled_entry(
            key, p.idempotency_key, p.payee_id, p.currency, p.amount
        )
        if entry is not None:
            new_entries.append(entry)
    store.insert_entries(conn, new_entries, statement_id)
    for p in planned:
        row = store.insert_payout(conn, p, statement_id)
        store.record_payout_event(conn, row, payout_event_bytes)
    stored = store.get_statement(conn, key)
    assert stored is not None
    result = CloseResult(
        stored,
        already_closed=False,
        dry_run=dry_run,
        payouts=len(planned),
        adjustments=len(adjustments),
        entries=len(new_entries),
    )
    log.info(
        "period closed",
        extra={
            "period": key,
            "content_hash": stored.content_hash,
            "licences": len(priced),
            "events": len(events),
            "payouts": len(planned),
            "adjustments": len(adjustments),
            "dry_run": dry_run,
        },
    )
    return result


def _merge(into: dict[tuple[str, str], Decimal], more: Mapping[tuple[str, str], Decimal]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, ZERO) + v
