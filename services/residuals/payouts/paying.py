"""Sending payouts through a rail, with states a crash cannot corrupt.

Each attempt is two short transactions around the rail call: the first locks the payout,
checks it may be sent (never a PAID one), counts the attempt and moves a FAILED payout to
RETRIED; the second records the outcome and, when paid, posts the journal entry that
moves the amount from ``payout_clearing`` to ``payments_sent``. If the process dies in
between, the payout is still PENDING/RETRIED and the next run asks the rail again under
the same idempotency key; the rail answers "already paid" and the payout is paid once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from prometheus_client import Counter

from residuals.domain import journal
from residuals.domain.payouts import (
    InvalidTransition,
    Outcome,
    PayoutState,
    after_attempt,
    attempt_state,
)
from residuals.payouts import store
from residuals.payouts.messages import payout_event_bytes
from residuals.payouts.rails import PaymentInstruction, PaymentRail, RailError
from residuals.platform.postgres import Database

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

UNPAID: tuple[PayoutState, ...] = (PayoutState.PENDING, PayoutState.FAILED, PayoutState.RETRIED)

PAYOUT_ATTEMPTS = Counter(
    "residuals_payout_attempts_total", "Payment attempts by outcome.", ["rail", "outcome"]
)


@dataclass(frozen=True)
class PayReport:
    payouts: tuple[store.PayoutRow, ...]

    @property
    def paid(self) -> int:
        return sum(1 for p in self.payouts if p.state is PayoutState.PAID)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.payouts if p.state is PayoutState.FAILED)


def pay_payouts(
    db: Database, rail: PaymentRail, *, period: str = "", payout_ids: Sequence[str] = ()
) -> PayReport:
    """Attempt every unpaid payout of ``period`` (or the given ids) once."""
    with db.connection() as conn:
        if payout_ids:
            rows = [r for r in (store.get_payout(conn, i) for i in payout_ids) if r is not None]
        else:
            rows = store.list_payouts(conn, period=period, states=UNPAID, limit=100_000)
    return PayReport(tuple(pay_one(db, rail, row.payout_id) for row in rows))


def pay_one(db: Database, rail: PaymentRail, payout_id: str) -> store.PayoutRow:
    with tracer.start_as_current_span("pay_payout", attributes={"payout_id": payout_id}):
        with db.connection() as conn:
            row = store.get_payout(conn, payout_id, lock=True)
            if row is None:
                raise KeyError(f"no payout {payout_id}")
            try:
                state = attempt_state(row.state)
            except InvalidTransition:
                return row  # already paid: nothing to do, ever
            row = store.update_payout(
                conn,
                payout_id,
                state=state,
                attempts=row.attempts + 1,
                failure_reason=row.failure_reason,
                rail=rail.name,
                rail_reference=row.rail_reference,
            )
            if state is not PayoutState.PENDING:
                row = store.record_payout_event(conn, row, payout_event_bytes)
        instruction = PaymentInstruction(
            row.idempotency_key, row.payout_id, row.payee_id, row.currency, row.amount, row.period
        )
        try:
            reference = rail.pay(instruction)
            outcome, reason = Outcome.PAID, ""
        except RailError as error:
            reference, outcome, reason = "", Outcome.FAILED, str(error)
        PAYOUT_ATTEMPTS.labels(rail.name, str(outcome)).inc()
        with db.connection() as conn:
            current = store.get_payout(conn, payout_id, lock=True)
            assert current is not None
            if current.state is PayoutState.PAID:
                return current  # a concurrent attempt recorded it first
            new_state = after_attempt(current.state, outcome)
            updated = store.update_payout(
                conn,
                payout_id,
                state=new_state,
                attempts=current.attempts,
                failure_reason=reason,
                rail=rail.name,
                rail_reference=reference,
            )
            if new_state is PayoutState.PAID:
                entry = journal.payout_paid_entry(
                    updated.period,
                    updated.idempotency_key,
                    updated.payee_id,
                    updated.currency,
                    updated.amount,
                )
                if entry is not None:
                    store.insert_entries(conn, [entry], updated.statement_id)
            updated = store.record_payout_event(conn, updated, payout_event_bytes)
        log.info(
            "payout attempt",
            extra={"payout_id": payout_id, "outcome": str(outcome), "reason": reason},
        )
        return updated
