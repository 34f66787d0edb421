"""The double-entry journal a statement posts: pure construction, no storage.

Each entry is in one currency and balances (debits = credits); amounts are signed, a
debit positive and a credit negative, so "balances" means the postings sum to zero and an
account's balance is the sum of its postings. Accounts are strings ``kind:owner``.

Per licence and statement (docs/ROYALTY-RULES.md §8 identities make it balance exactly:
``vendor_invoice + advance_recouped = gross = platform_fee + Σ allocations + advance_recouped``):

======================================  ======================  ======================
posting                                 debit                   credit
======================================  ======================  ======================
``vendor_receivable:<vendor>``          vendor_invoice
``vendor_advance:<licence>``            advance_recouped
``platform_fee``                                                platform_fee
``payee_payable:<payee>``                                       each allocation
``advance_outstanding:<licence>``                               advance_recouped
======================================  ======================  ======================

The advance is opened once per licence version that states it: ``advance_outstanding``
debited, ``vendor_advance`` (the vendor's prepayment) credited, so the outstanding advance
a period may recoup is the balance of ``advance_outstanding:<licence>``. Held (unpaid,
out-of-scope) amounts are a memo pair, ``held_memo`` / ``held_suspense``, outside the money
that moves. Scheduling a payout moves the amount from ``payee_payable`` to
``payout_clearing``; paying it moves it from there to ``payments_sent``. A payee's carried
balance is therefore the credit balance of ``payee_payable:<payee>``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from residuals.domain.adjustments import AdjustmentLine, settlement_delta
from residuals.domain.money import ZERO

PLATFORM_FEE = "platform_fee"
PAYMENTS_SENT = "payments_sent"


def vendor_receivable(vendor_id: str) -> str:
    return f"vendor_receivable:{vendor_id}"


def vendor_advance(licence_id: str) -> str:
    return f"vendor_advance:{licence_id}"


def advance_outstanding(licence_id: str) -> str:
    return f"advance_outstanding:{licence_id}"


def payee_payable(payee_id: str) -> str:
    return f"payee_payable:{payee_id}"


def payout_clearing(payee_id: str) -> str:
    return f"payout_clearing:{payee_id}"


def held_memo(licence_id: str) -> str:
    return f"held_memo:{licence_id}"


def held_suspense(licence_id: str) -> str:
    return f"held_suspense:{licence_id}"


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount: Decimal  # debit > 0, credit < 0


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One balanced entry; ``entry_id`` is deterministic, so posting twice is detectable."""

    entry_id: str
    period: str
    kind: str
    currency: str
    postings: tuple[Posting, ...]
    licence_id: str | None = None
    memo: str = ""

    @property
    def total(self) -> Decimal:
        return sum((p.amount for p in self.postings), ZERO)

    @property
    def balanced(self) -> bool:
        return self.total == 0


def _entry(
    entry_id: str,
    period: str,
    kind: str,
    currency: str,
    postings: Iterable[tuple[str, Decimal]],
    *,
    licence_id: str | None = None,
    memo: str = "",
) -> JournalEntry | None:
    """An entry of the non-zero postings (same account merged), or None when all are zero."""
    merged: dict[str, Decimal] = {}
    for account, amount in postings:
        merged[account] = merged.get(account, ZERO) + amount
    kept = tuple(Posting(a, v) for a, v in merged.items() if v != 0)
    if not kept:
        return None
    entry = JournalEntry(entry_id, period, kind, currency, kept, licence_id, memo)
    if not entry.balanced:
        raise ValueError(f"journal entry {entry_id} does not balance: total {entry.total}")
    return entry


def settlement_entry(
    entry_id: str,
    period: str,
    kind: str,
    *,
    licence_id: str,
    vendor_id: str,
    currency: str,
    vendor_invoice: Decimal,
    advance_recouped: Decimal,
    platform_fee: Decimal,
    allocations: Iterable[tuple[str, Decimal]],
    memo: str = "",
) -> JournalEntry | None:
    """The billing entry of one licence (amounts may be negative for an adjustment)."""
    postings = [
        (vendor_receivable(vendor_id), vendor_invoice),
        (vendor_advance(licence_id), advance_recouped),
        (PLATFORM_FEE, -platform_fee),
        (advance_outstanding(licence_id), -advance_recouped),
    ]
    postings.extend((payee_payable(p), -a) for p, a in allocations)
    return _entry(entry_id, period, kind, currency, postings, licence_id=licence_id, memo=memo)


def held_entry(
    entry_id: str, period: str, kind: str, licence_id: str, currency: str, amount: Decimal
) -> JournalEntry | None:
    """The memo pair for held (out-of-scope, unpaid) amounts of one licence."""
    return _entry(
        entry_id,
        period,
        kind,
        currency,
        [(held_memo(licence_id), amount), (held_suspense(licence_id), -amount)],
        licence_id=licence_id,
        memo="held until resolved",
    )


def statement_entries(
    document: Mapping[str, Any], vendors: Mapping[str, str]
) -> list[JournalEntry]:
    """The journal entries of a §10 statement document; ``vendors`` maps licence → vendor."""
    period = str(document["period"])
    entries: list[JournalEntry | None] = []
    for lic in document.get("licences", []):
        licence_id = str(lic["licence_id"])
        currency = str(lic["currency"])
        entries.append(
            settlement_entry(
                f"{period}:statement:{licence_id}",
                period,
                "statement",
                licence_id=licence_id,
                vendor_id=vendors[licence_id],
                currency=currency,
                vendor_invoice=Decimal(str(lic["vendor_invoice"])),
                advance_recouped=Decimal(str(lic["advance_recouped"])),
                platform_fee=Decimal(str(lic["platform_fee"])),
                allocations=[
                    (a["payee_id"], Decimal(str(a["amount"]))) for a in lic["allocations"]
                ],
                memo=f"statement {period}",
            )
        )
        held = sum((Decimal(str(h["amount"])) for h in lic.get("held", [])), ZERO)
        entries.append(
            held_entry(f"{period}:held:{licence_id}", period, "held", licence_id, currency, held)
        )
    return [e for e in entries if e is not None]


def adjustment_entries(
    period: str, adjustments: Iterable[AdjustmentLine], vendors: Mapping[str, str]
) -> list[JournalEntry]:
    """Entries posting adjustment lines in ``period``, one per (closed period, licence)."""
    groups: dict[tuple[str, str], list[AdjustmentLine]] = defaultdict(list)
    for adj in adjustments:
        groups[(adj.adjusts_period, adj.licence_id)].append(adj)
    entries: list[JournalEntry | None] = []
    for (adjusts, licence_id), lines in sorted(groups.items()):
        currency = lines[0].currency
        allocations = [(a.ref, a.amount) for a in lines if a.section == "allocation"]
        entries.append(
            settlement_entry(
                f"{period}:adjustment:{adjusts}:{licence_id}",
                period,
                "adjustment",
                licence_id=licence_id,
                vendor_id=vendors[licence_id],
                currency=currency,
                vendor_invoice=settlement_delta(lines, "vendor_invoice"),
                advance_recouped=settlement_delta(lines, "advance_recouped"),
                platform_fee=settlement_delta(lines, "platform_fee"),
                allocations=allocations,
                memo=f"adjusts {adjusts}",
            )
        )
        held = sum((a.amount for a in lines if a.section == "held"), ZERO)
        entries.append(
            held_entry(
                f"{period}:adjustment-held:{adjusts}:{licence_id}",
                period,
                "adjustment",
                licence_id,
                currency,
                held,
            )
        )
    return [e for e in entries if e is not None]


def advance_opening_entry(
    period: str,
    licence_id: str,
    version: int,
    currency: str,
    stated: Decimal,
    current_balance: Decimal,
) -> JournalEntry | None:
    """Bring ``advance_outstanding:<licence>`` to what licence version ``version`` states.

    A licence version's ``advance_outstanding`` is the advance outstanding from when that
    version takes effect; the journal then tracks it (recoupments reduce it), so a version
    is opened once, at the first close that settles under it.
    """
    delta = stated - current_balance
    return _entry(
        f"{period}:advance:{licence_id}:v{version}",
        period,
        "advance",
        currency,
        [(advance_outstanding(licence_id), delta), (vendor_advance(licence_id), -delta)],
        licence_id=licence_id,
        memo=f"advance stated by licence version {version}",
    )


def payout_scheduled_entry(
    period: str, idempotency_key: str, payee_id: str, currency: str, amount: Decimal
) -> JournalEntry | None:
    return _entry(
        f"{idempotency_key}:scheduled",
        period,
        "payout_scheduled",
        currency,
        [(payee_payable(payee_id), amount), (payout_clearing(payee_id), -amount)],
        memo=f"payout {idempotency_key}",
    )


def payout_paid_entry(
    period: str, idempotency_key: str, payee_id: str, currency: str, amount: Decimal
) -> JournalEntry | None:
    return _entry(
        f"{idempotency_key}:paid",
        period,
        "payout_paid",
        currency,
        [(payout_clearing(payee_id), amount), (PAYMENTS_SENT, -amount)],
        memo=f"payout {idempotency_key}",
    )


def balances(entries: Iterable[JournalEntry]) -> dict[tuple[str, str], Decimal]:
    """Account balances ``(account, currency) → sum of postings`` (debit positive)."""
    out: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
    for entry in entries:
        for posting in entry.postings:
            out[(posting.account, entry.currency)] += posting.amount
    return dict(out)


def carried_in(balance: Mapping[tuple[str, str], Decimal]) -> dict[tuple[str, str], Decimal]:
    """Per (payee, currency): the unpaid credit balance of ``payee_payable`` (non-zero only)."""
    prefix = payee_payable("")
    return {
        (account.removeprefix(prefix), currency): -amount
        for (account, currency), amount in balance.items()
        if account.startswith(prefix) and amount != 0
    }
