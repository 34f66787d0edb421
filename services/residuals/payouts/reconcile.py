"""Reconciliation: prove events = ledger = statements = payouts for a closed period.

Every check recomputes one side independently of how it was written and compares it with
what is stored; a difference names the item. Checks (docs/ARCHITECTURE.md invariants):

1. accepted = ledgered + held + dead + duplicates (the ledger writer's tables);
2. every journal entry balances (two or more postings summing to zero);
3. the stored statement rows and hash equal its canonical JSON;
4. the statement equals a recomputation by ``compute_statement`` from the stored events
   (up to the statement's cut-off) and licence versions (same hash), and each closed
   period it corrected equals its statement plus adjustments;
5. the journal equals the statement: entries derived from the document and its
   adjustments equal the posted ones, account by account;
6. payouts equal payables, paid payouts are in the journal, and payee balances equal
   allocations minus payouts (the carried-forward amounts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from residuals.domain import journal
from residuals.domain.adjustments import (
    AdjustmentLine,
    diff_items,
    statement_items,
    with_adjustments,
)
from residuals.domain.closing import canonical_json, content_hash
from residuals.domain.licences import Licence
from residuals.domain.money import ZERO
from residuals.domain.payouts import PayoutState
from residuals.domain.period import Period
from residuals.payouts import store
from residuals.payouts.close import restate, restate_statement
from residuals.payouts.sources import Conn, Sources


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    expected: str = ""
    actual: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Report:
    period: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        lines = [f"Reconciliation of {self.period}"]
        for c in self.checks:
            mark = "ok  " if c.ok else "FAIL"
            lines.append(f"  [{mark}] {c.name}")
            if not c.ok or c.detail:
                if c.expected or c.actual:
                    lines.append(f"         expected {c.expected}, actual {c.actual}")
                if c.detail:
                    lines.extend(f"         {d}" for d in c.detail.splitlines())
        failed = [c.name for c in self.checks if not c.ok]
        if failed:
            lines.append(f"{len(failed)} difference(s): " + "; ".join(failed))
        else:
            lines.append("reconciled: no differences")
        return "\n".join(lines)


def _limit(items: list[str], n: int = 20) -> str:
    more = f"\n… and {len(items) - n} more" if len(items) > n else ""
    return "\n".join(items[:n]) + more


def reconcile(conn: Conn, sources: Sources, period: Period) -> Report:
    key = str(period)
    stored = store.get_statement(conn, key)
    if stored is None:
        return Report(key, (Check("period is closed", False, "a statement", "none",
                                  f"{key} has not been closed"),))  # fmt: skip
    licences = sources.licences.licences(conn)
    again = restate_statement(conn, sources, stored, licences)
    checks = [
        _events_check(conn, sources, period, again.outcomes),
        _balance_check(conn),
        _rows_check(conn, stored),
        *_recompute_checks(conn, sources, stored, licences, again.to_document()),
        _journal_check(conn, stored),
        *_payout_checks(conn, stored),
    ]
    return Report(key, tuple(checks))


def _events_check(
    conn: Conn, sources: Sources, period: Period, outcomes: Mapping[str, int]
) -> Check:
    """The ledger's own split of the period's records, and the rules' view of the same."""
    a = sources.events.accounting(conn, period)
    total = a.ledgered + a.held + a.dead + a.duplicates
    problems = list(a.problems)
    rules = {
        "accepted identities": (outcomes.get("accepted", 0), a.ledgered + a.held),
        "dead letters": (outcomes.get("dead", 0), a.dead),
        "duplicates and conflicts": (
            outcomes.get("duplicate", 0) + outcomes.get("conflict", 0),
            a.duplicates,
        ),
    }
    problems += [
        f"{name}: the rules count {want}, the ledger {have}"
        for name, (want, have) in rules.items()
        if want != have
    ]
    detail = "\n".join(
        [x for x in (", ".join(f"{k} {v}" for k, v in a.detail.items()), *problems) if x]
    )
    return Check(
        "accepted = ledgered + held + dead + duplicates",
        a.accepted == total and not problems,
        f"{a.accepted} accepted",
        f"{a.ledgered} + {a.held} + {a.dead} + {a.duplicates} = {total}",
        detail,
    )


def _balance_check(conn: Conn) -> Check:
    rows = conn.execute(
        "SELECT e.entry_id, count(p.entry_id), coalesce(sum(p.amount), 0)"
        " FROM journal_entries e LEFT JOIN journal_postings p USING (entry_id)"
        " GROUP BY e.entry_id HAVING count(p.entry_id) < 2 OR coalesce(sum(p.amount), 0) <> 0"
        " ORDER BY e.entry_id"
    ).fetchall()
    total = conn.execute("SELECT count(*) FROM journal_entries").fetchone()
    bad = [f"entry {r[0]}: {r[1]} postings summing to {r[2]}" for r in rows]
    return Check(
        "every journal entry balances",
        not bad,
        f"{total[0] if total else 0} balanced entries",
        f"{len(bad)} unbalanced",
        _limit(bad),
    )


def _rows_check(conn: Conn, stored: store.StoredStatement) -> Check:
    doc = stored.document
    problems: list[str] = []
    if content_hash(doc) != stored.content_hash:
        problems.append("content_hash is not the SHA-256 of the stored canonical JSON")
    if canonical_json(doc).decode("utf-8") != stored.canonical_json:
        problems.append("stored JSON is not canonical")
    sid = stored.statement_id
    expected: dict[tuple[str, ...], Decimal] = {}
    for lic in doc["licences"]:
        lid = lic["licence_id"]
        for name in (
            "earned",
            "gross",
            "platform_fee",
            "net",
            "advance_recouped",
            "vendor_invoice",
        ):
            expected[("licence", lid, name)] = Decimal(lic[name])
        for n, line in enumerate(lic["lines"], start=1):
            expected[("line", lid, str(n))] = Decimal(line["amount"])
        for h in lic["held"]:
            expected[("held", lid, h["violation"], h["kind"])] = Decimal(h["amount"])
        for a in lic["allocations"]:
            expected[("allocation", lid, a["payee_id"])] = Decimal(a["amount"])
    for p in doc["payees"]:
        expected[("payable", p["payee_id"], p["currency"])] = Decimal(p["payable"])
    actual: dict[tuple[str, ...], Decimal] = {}
    for r in conn.execute(
        "SELECT licence_id, earned, gross, platform_fee, net, advance_recouped, vendor_invoice"
        " FROM statement_licences WHERE statement_id = %s",
        (sid,),
    ):
        for name, value in zip(
            ("earned", "gross", "platform_fee", "net", "advance_recouped", "vendor_invoice"),
            r[1:],
            strict=True,
        ):
            actual[("licence", r[0], name)] = value
    for r in conn.execute(
        "SELECT licence_id, line_no, amount FROM statement_lines WHERE statement_id = %s", (sid,)
    ):
        actual[("line", r[0], str(r[1]))] = r[2]
    for r in conn.execute(
        "SELECT licence_id, violation, kind, amount FROM statement_held WHERE statement_id = %s",
        (sid,),
    ):
        actual[("held", r[0], r[1], r[2])] = r[3]
    for r in conn.execute(
        "SELECT licence_id, payee_id, amount FROM statement_allocations WHERE statement_id = %s",
        (sid,),
    ):
        actual[("allocation", r[0], r[1])] = r[2]
    for r in conn.execute(
        "SELECT payee_id, currency, payable FROM statement_balances WHERE statement_id = %s",
        (sid,),
    ):
        actual[("payable", r[0], r[1])] = r[2]
    for k in sorted(set(expected) | set(actual)):
        if expected.get(k) != actual.get(k):
            want, have = expected.get(k, "absent"), actual.get(k, "absent")
            problems.append(f"{'/'.join(k)}: document {want}, row {have}")
    return Check(
        "statement rows equal the statement document (and its hash)",
        not problems,
        stored.content_hash[:16],
        "differs" if problems else stored.content_hash[:16],
        _limit(problems),
    )


def _recompute_checks(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    licences: list[Licence],
    again: Mapping[str, Any],
) -> list[Check]:
    diffs = diff_items(stored.period, statement_items(stored.document), statement_items(again))
    problems = [
        f"{d.licence_id} {d.section} {d.ref}: recomputation differs by {d.units} units, "
        f"{d.amount} {d.currency}"
        for d in diffs
    ]
    same = content_hash(again) == stored.content_hash
    if not same and not problems:
        problems.append("documents differ outside amounts (counts, violations or payees)")
    checks = [
        Check(
            "statement equals compute_statement on the stored events",
            same,
            stored.content_hash[:16],
            content_hash(again)[:16],
            _limit(problems),
        )
    ]
    adjust_problems: list[str] = []
    corrected = stored.inputs.get("corrected_periods") or []
    for target in sorted(corrected):
        closed = store.get_statement(conn, target)
        if closed is None:
            adjust_problems.append(f"adjusts {target}, which has no statement")
            continue
        upto = _adjustments_through(conn, target, stored.period)
        baseline = with_adjustments(statement_items(closed.document), upto)
        restated = restate(conn, sources, closed, licences, through=Period.parse(stored.period))
        for d in diff_items(target, baseline, statement_items(restated)):
            adjust_problems.append(
                f"{target} {d.licence_id} {d.section} {d.ref}: off by {d.units} units, "
                f"{d.amount} {d.currency}"
            )
    if corrected:
        checks.append(
            Check(
                "closed periods plus adjustments equal their recomputation",
                not adjust_problems,
                f"{len(corrected)} period(s) corrected",
                f"{len(adjust_problems)} difference(s)",
                _limit(adjust_problems),
            )
        )
    return checks


def _adjustments_through(conn: Conn, target: str, through: str) -> list[AdjustmentLine]:
    """Adjustments of ``target`` posted by statements up to and including ``through``."""
    return [
        AdjustmentLine(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6])
        for r in conn.execute(
            "SELECT a.adjusts_period, a.licence_id, a.currency, a.section, a.ref, a.units,"
            " a.amount FROM statement_adjustments a JOIN statements s USING (statement_id)"
            " WHERE a.adjusts_period = %s AND s.period <= %s ORDER BY s.period, a.line_no",
            (target, through),
        )
    ]


def _sum(entries: Iterable[journal.JournalEntry]) -> dict[tuple[str, str], Decimal]:
    return {k: v for k, v in journal.balances(entries).items() if v != 0}


def _journal_check(conn: Conn, stored: store.StoredStatement) -> Check:
    vendors = {m.licence_id: m.vendor_id for m in stored.licences.values()}
    posted = [
        e
        for e in store.entries(conn, statement_id=stored.statement_id)
        if e.kind in ("statement", "held", "adjustment")
    ]
    for adj in stored.adjustments:
        if adj.licence_id not in vendors:
            vendors[adj.licence_id] = _vendor_of(conn, adj.licence_id)
    derived = journal.statement_entries(stored.document, vendors) + journal.adjustment_entries(
        stored.period, stored.adjustments, vendors
    )
    want, have = _sum(derived), _sum(posted)
    problems = [
        f"{account} {currency}: statement says {want.get((account, currency), ZERO)}, "
        f"journal has {have.get((account, currency), ZERO)}"
        for account, currency in sorted(set(want) | set(have))
        if want.get((account, currency), ZERO) != have.get((account, currency), ZERO)
    ]
    ids_want = {e.entry_id for e in derived}
    ids_have = {e.entry_id for e in posted}
    problems += [f"entry {i} missing from the journal" for i in sorted(ids_want - ids_have)]
    problems += [f"entry {i} not explained by the statement" for i in sorted(ids_have - ids_want)]
    return Check(
        "journal equals the statement (account by account)",
        not problems,
        f"{len(derived)} entries",
        f"{len(posted)} entries",
        _limit(problems),
    )


def _vendor_of(conn: Conn, licence_id: str) -> str:
    row = conn.execute(
        "SELECT vendor_id FROM statement_licences WHERE licence_id = %s LIMIT 1", (licence_id,)
    ).fetchone()
    return str(row[0]) if row else ""


def _payout_checks(conn: Conn, stored: store.StoredStatement) -> list[Check]:
    doc = stored.document
    payable = {
        (p["payee_id"], p["currency"]): Decimal(p["payable"])
        for p in doc["payees"]
        if Decimal(p["payable"]) > 0
    }
    payouts = store.list_payouts(conn, period=stored.period, limit=1_000_000)
    paid_out = {(p.payee_id, p.currency): p.amount for p in payouts}
    problems = [
        f"{payee} {cur}: payable {payable.get((payee, cur), ZERO)}, "
        f"payout {paid_out.get((payee, cur), ZERO)}"
        for payee, cur in sorted(set(payable) | set(paid_out))
        if payable.get((payee, cur), ZERO) != paid_out.get((payee, cur), ZERO)
    ]
    paid_entries = {
        e.entry_id: e
        for e in store.entries(conn)
        if e.kind == "payout_paid" and e.period == stored.period
    }
    for p in payouts:
        has_entry = f"{p.idempotency_key}:paid" in paid_entries
        if (p.state is PayoutState.PAID) != has_entry:
            problems.append(f"payout {p.payout_id} is {p.state} but the journal "
                            f"{'has' if has_entry else 'lacks'} its payment")  # fmt: skip
    checks = [
        Check(
            "payouts equal payables (and paid payouts are in the journal)",
            not problems,
            f"{len(payable)} payable",
            f"{len(payouts)} payouts",
            _limit(problems),
        )
    ]
    latest = store.closed_periods(conn)
    if latest and latest[-1] == stored.period:
        balance = journal.carried_in(store.balances(conn, journal.payee_payable("")))
        forward = {
            (p["payee_id"], p["currency"]): Decimal(p["carried_forward"])
            for p in doc["payees"]
            if Decimal(p["carried_forward"]) != 0
        }
        diff = [
            f"{payee} {cur}: carried forward {forward.get((payee, cur), ZERO)}, "
            f"payee balance {balance.get((payee, cur), ZERO)}"
            for payee, cur in sorted(set(forward) | set(balance))
            if forward.get((payee, cur), ZERO) != balance.get((payee, cur), ZERO)
        ]
        checks.append(
            Check(
                "payee balances equal allocations minus payouts (carried forward)",
                not diff,
                f"{len(forward)} balances",
                f"{len(balance)} balances",
                _limit(diff),
            )
        )
    unpaid = {(p.payee_id, p.currency): ZERO for p in store.list_payouts(conn, limit=1_000_000)}
    for p in store.list_payouts(conn, limit=1_000_000):
        if p.state is not PayoutState.PAID:
            unpaid[(p.payee_id, p.currency)] += p.amount
    clearing = store.balances(conn, journal.payout_clearing(""))
    in_transit = {
        (acct.removeprefix(journal.payout_clearing("")), cur): -amount
        for (acct, cur), amount in clearing.items()
    }
    transit_diff = [
        f"{payee} {cur}: unpaid payouts {unpaid.get((payee, cur), ZERO)}, "
        f"clearing balance {in_transit.get((payee, cur), ZERO)}"
        for payee, cur in sorted(set(unpaid) | set(in_transit))
        if unpaid.get((payee, cur), ZERO) != in_transit.get((payee, cur), ZERO)
    ]
    checks.append(
        Check(
            "unpaid payouts equal the payout clearing balances",
            not transit_diff,
            detail=_limit(transit_diff),
        )
    )
    return checks


def report_document(report: Report) -> Mapping[str, Any]:
    return {
        "period": report.period,
        "ok": report.ok,
        "checks": [c.__dict__ for c in report.checks],
    }
