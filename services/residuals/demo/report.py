"""The end-of-month summary: per talent and per agent/estate, violations, alerts (pure).

Every number comes from the closed statement (the §10 document exported by the payouts
service) and the payouts the rail paid; nothing is recomputed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from residuals.demo.finance import Paid
from residuals.demo.scenario import Scenario

ZERO = Decimal(0)


@dataclass(frozen=True)
class Row:
    who: str
    name: str
    currency: str
    earned: Decimal
    held: Decimal
    paid: Decimal
    carried_forward: Decimal


def _amount(value: Any) -> Decimal:
    return Decimal(str(value))


def talent_rows(
    scenario: Scenario, document: Mapping[str, Any], payouts: Iterable[Paid]
) -> tuple[list[Row], list[Row]]:
    """(talent rows, agent rows).

    A talent's *earned* and *held* are their licences' statement amounts (what the
    likeness earned, and what is held for out-of-scope use); *paid* and *carried forward*
    are those of the talent's own payee account (the estate's, for a late talent).
    Agents get their allocations across talents, payouts and carried-forward balances.
    """
    names = scenario.talent_names()
    talent_of = {lic["licence_id"]: lic["talent_id"] for lic in scenario.licences}
    earned: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    held: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for lic in document["licences"]:
        key = (talent_of.get(lic["licence_id"], "?"), lic["currency"])
        earned[key] += _amount(lic["earned"]) + _amount(lic["minimum_guarantee_topup"])
        held[key] += sum((_amount(h["amount"]) for h in lic["held"]), ZERO)
    paid: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for p in payouts:
        if p.state == "PAID":
            paid[(p.payee_id, p.currency)] += p.amount
    payee_rows = {(p["payee_id"], p["currency"]): p for p in document["payees"]}
    own_account = {t.talent_id: t.talent_id for t in scenario.talents}
    for payee in scenario.payees:
        if payee.kind == "estate":
            for talent in payee.talent_ids:
                own_account[talent] = payee.payee_id
    talents = []
    for talent, currency in sorted(earned):
        account = own_account.get(talent, talent)
        summary = payee_rows.get((account, currency), {})
        talents.append(
            Row(
                talent,
                names.get(talent, talent),
                currency,
                earned[(talent, currency)],
                held[(talent, currency)],
                paid.get((account, currency), ZERO),
                _amount(summary.get("carried_forward", "0")),
            )
        )
    others = []
    kinds = {p.payee_id: p for p in scenario.payees}
    for (payee_id, currency), summary in sorted(payee_rows.items()):
        agent = kinds.get(payee_id)
        if agent is None or agent.kind != "agent":
            continue  # talents and estates are in the talent table
        others.append(
            Row(
                payee_id,
                agent.name,
                currency,
                _amount(summary["earned"]),
                ZERO,
                paid.get((payee_id, currency), ZERO),
                _amount(summary["carried_forward"]),
            )
        )
    return talents, others


def fmt(amount: Decimal, currency: str) -> str:
    digits = 0 if currency == "JPY" else 2
    return f"{amount:,.{digits}f}"


def table(rows: Sequence[Row], heading: str, earned_label: str = "earned") -> list[str]:
    head = (
        f"  {heading:<30} {'cur':<4} {earned_label:>12} {'held':>11} {'paid':>12}"
        f" {'carried fwd':>12}"
    )
    lines = [head, "  " + "-" * (len(head) - 2)]
    for r in rows:
        label = f"{r.who} {r.name}"[:30]
        lines.append(
            f"  {label:<30} {r.currency:<4} {fmt(r.earned, r.currency):>12}"
            f" {fmt(r.held, r.currency):>11} {fmt(r.paid, r.currency):>12}"
            f" {fmt(r.carried_forward, r.currency):>12}"
        )
    return lines


def violation_lines(document: Mapping[str, Any], alerts: Counter[str]) -> list[str]:
    lines = [f"  {'violation':<24} {'severity':<9} {'in statement':>12} {'alerts streamed':>16}"]
    seen = set()
    for v in document.get("violations", []):
        seen.add(v["kind"])
        lines.append(
            f"  {v['kind']:<24} {v['severity']:<9} {v['count']:>12} {alerts.get(v['kind'], 0):>16}"
        )
    for kind, count in sorted(alerts.items()):
        if kind not in seen:
            lines.append(f"  {kind:<24} {'':<9} {'-':>12} {count:>16}")
    if "UNREPORTED_RENDER" in seen and not alerts.get("UNREPORTED_RENDER"):
        lines.append(
            "  (UNREPORTED_RENDER is decided when the period closes; the close publishes no alerts)"
        )
    dlq = document.get("dlq", [])
    if dlq:
        lines.append("  dead letters: " + ", ".join(f"{d['reason']} {d['count']}" for d in dlq))
    return lines
