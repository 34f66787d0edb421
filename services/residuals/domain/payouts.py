"""Payout planning and the payout state machine (pure).

A payout is owed per (payee, currency, period) when the statement makes the payee's total
``payable`` (docs/ROYALTY-RULES.md §8). Its idempotency key is derived from exactly that triple,
so scheduling twice, retrying, or a payment rail seeing the same instruction again can
never pay twice: the rail de-duplicates on the key and the store keeps one row per key.

States: ``PENDING`` (scheduled, not yet attempted) → ``PAID`` or ``FAILED``; a ``FAILED``
payout may be sent again (``RETRIED``) under the same key → ``PAID`` or ``FAILED``.
``PAID`` is final.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any


class PayoutState(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"
    RETRIED = "RETRIED"


class Outcome(StrEnum):
    """What happened when the rail was asked to pay."""

    PAID = "PAID"
    FAILED = "FAILED"


class InvalidTransition(ValueError):
    """The payout cannot move from its state that way (e.g. paying a paid payout)."""


#: States from which a payment attempt may start, and the state the attempt runs in.
_ATTEMPT_FROM: dict[PayoutState, PayoutState] = {
    PayoutState.PENDING: PayoutState.PENDING,
    PayoutState.FAILED: PayoutState.RETRIED,
    PayoutState.RETRIED: PayoutState.RETRIED,  # an attempt that crashed before its outcome
}


def attempt_state(state: PayoutState) -> PayoutState:
    """The state a payout is in while an attempt runs; InvalidTransition when PAID."""
    try:
        return _ATTEMPT_FROM[state]
    except KeyError:
        raise InvalidTransition(f"a {state} payout cannot be sent again") from None


def after_attempt(state: PayoutState, outcome: Outcome) -> PayoutState:
    """The state after an attempt made from ``state`` ended with ``outcome``."""
    attempt_state(state)
    return PayoutState.PAID if outcome is Outcome.PAID else PayoutState.FAILED


def can_attempt(state: PayoutState) -> bool:
    return state in _ATTEMPT_FROM


def idempotency_key(period: str, payee_id: str, currency: str) -> str:
    """``payout:2026-10:TAL-GUS:USD`` — one payout per payee, currency and period."""
    return f"payout:{period}:{payee_id}:{currency}"


def payout_id(key: str) -> str:
    """A short stable id derived from the idempotency key (``po_`` + 16 hex digits)."""
    return "po_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PlannedPayout:
    payout_id: str
    idempotency_key: str
    period: str
    payee_id: str
    currency: str
    amount: Decimal


def plan_payouts(period: str, payees: Iterable[Mapping[str, Any]]) -> list[PlannedPayout]:
    """One payout per payee and currency whose ``payable`` is positive (§10 ``payees``)."""
    planned = []
    for payee in payees:
        amount = Decimal(str(payee["payable"]))
        if amount <= 0:
            continue
        key = idempotency_key(period, str(payee["payee_id"]), str(payee["currency"]))
        planned.append(
            PlannedPayout(
                payout_id=payout_id(key),
                idempotency_key=key,
                period=period,
                payee_id=str(payee["payee_id"]),
                currency=str(payee["currency"]),
                amount=amount,
            )
        )
    return sorted(planned, key=lambda p: (p.payee_id, p.currency))
