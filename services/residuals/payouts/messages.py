"""Stored statements and payouts → ``residuals.v1`` messages (PayoutService, the topic)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from residuals.codecs.money import to_money
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import kind_value
from residuals.payouts.store import PayoutRow, StoredStatement
from residuals.platform.telemetry import trace_context_message
from residuals.v1 import common_pb2, payouts_pb2

_STATES = {
    "PENDING": payouts_pb2.PAYOUT_STATE_PENDING,
    "PAID": payouts_pb2.PAYOUT_STATE_PAID,
    "FAILED": payouts_pb2.PAYOUT_STATE_FAILED,
    "RETRIED": payouts_pb2.PAYOUT_STATE_RETRIED,
}
STATE_NAMES = {v: k for k, v in _STATES.items()}


def _dec(text: Any) -> Decimal:
    return Decimal(str(text))


def _line(line: Mapping[str, Any], currency: str) -> payouts_pb2.StatementLine:
    message = payouts_pb2.StatementLine(
        kind=kind_value(line["kind"]),
        version=int(line["version"]),
        tier=int(line.get("tier") or 0),
        channel=line.get("channel") or "",
        units=int(line["units"]),
        rate=str(line.get("rate") or ""),
        amount=to_money(_dec(line["amount"]), currency),
    )
    if "revenue" in line:
        message.revenue.CopyFrom(to_money(_dec(line["revenue"]), currency))
    return message


def licence_to_proto(
    lic: Mapping[str, Any], talent_id: str, vendor_id: str
) -> payouts_pb2.LicenceStatement:
    cur = str(lic["currency"])
    ex = lic["excluded"]

    def money(name: str) -> common_pb2.Money:
        return to_money(_dec(lic[name]), cur)

    return payouts_pb2.LicenceStatement(
        licence_id=lic["licence_id"],
        talent_id=talent_id,
        vendor_id=vendor_id,
        currency_code=cur,
        lines=[_line(line, cur) for line in lic["lines"]],
        held=[
            payouts_pb2.HeldLine(
                violation=common_pb2.ViolationKind.Value("VIOLATION_KIND_" + h["violation"]),
                kind=kind_value(h["kind"]),
                units=int(h["units"]),
                amount=to_money(_dec(h["amount"]), cur),
            )
            for h in lic["held"]
        ],
        excluded=payouts_pb2.ExcludedCounts(
            duplicates=ex["duplicates"],
            ivt=ex["ivt"],
            non_viewable=ex["non_viewable"],
            retracted=ex["retracted"],
        ),
        earned=money("earned"),
        minimum_guarantee_topup=money("minimum_guarantee_topup"),
        gross=money("gross"),
        platform_fee=money("platform_fee"),
        net=money("net"),
        advance_recouped=money("advance_recouped"),
        vendor_invoice=money("vendor_invoice"),
        allocations=[
            payouts_pb2.Allocation(payee_id=a["payee_id"], amount=to_money(_dec(a["amount"]), cur))
            for a in lic["allocations"]
        ],
    )


def statement_to_proto(
    stored: StoredStatement, document: Mapping[str, Any] | None = None
) -> payouts_pb2.Statement:
    """The stored statement (or a filtered view of its ``document``) as a message."""
    doc = stored.document if document is None else document
    message = payouts_pb2.Statement(
        statement_id=stored.statement_id,
        period=stored.period,
        content_hash=stored.content_hash,
        adjustments_hash=stored.adjustments_hash,
    )
    for lic in doc["licences"]:
        meta = stored.licences.get(lic["licence_id"])
        message.licences.append(
            licence_to_proto(lic, meta.talent_id if meta else "", meta.vendor_id if meta else "")
        )
    for p in doc["payees"]:
        cur = p["currency"]
        carried = stored.carried_in.get((p["payee_id"], cur), Decimal(0))
        message.payees.append(
            payouts_pb2.PayeeSummary(
                payee_id=p["payee_id"],
                currency_code=cur,
                earned=to_money(_dec(p["earned"]), cur),
                carried_in=to_money(carried, cur),
                payable=to_money(_dec(p["payable"]), cur),
                carried_forward=to_money(_dec(p["carried_forward"]), cur),
            )
        )
    for v in doc["violations"]:
        message.violations.append(
            payouts_pb2.ViolationCount(
                kind=common_pb2.ViolationKind.Value("VIOLATION_KIND_" + v["kind"]),
                severity=common_pb2.Severity.Value("SEVERITY_" + v["severity"]),
                count=int(v["count"]),
            )
        )
    for d in doc["dlq"]:
        message.dlq.append(
            payouts_pb2.DeadLetterCount(
                reason=common_pb2.RejectReason.Value("REJECT_REASON_" + d["reason"]),
                count=int(d["count"]),
            )
        )
    visible = {lic["licence_id"] for lic in doc["licences"]}
    for a in stored.adjustments:
        if a.licence_id in visible:
            message.adjustments.append(
                payouts_pb2.AdjustmentLine(
                    adjusts_period=a.adjusts_period,
                    licence_id=a.licence_id,
                    section=a.section,
                    ref=a.ref,
                    units=a.units,
                    amount=to_money(a.amount, a.currency),
                )
            )
    set_timestamp(message.closed_at, stored.closed_at)
    return message


def payout_to_proto(row: PayoutRow) -> payouts_pb2.Payout:
    message = payouts_pb2.Payout(
        payout_id=row.payout_id,
        idempotency_key=row.idempotency_key,
        payee_id=row.payee_id,
        amount=to_money(row.amount, row.currency),
        state=_STATES[str(row.state)],
        period=row.period,
        statement_id=row.statement_id,
        attempts=row.attempts,
        failure_reason=row.failure_reason,
        sequence=row.sequence,
        rail=row.rail,
        rail_reference=row.rail_reference,
    )
    set_timestamp(message.created_at, row.created_at)
    set_timestamp(message.updated_at, row.updated_at)
    return message


def payout_event_bytes(row: PayoutRow) -> bytes:
    """The ``PayoutEvent`` record for the change that left the payout as ``row``."""
    event = payouts_pb2.PayoutEvent(payout=payout_to_proto(row), sequence=row.sequence)
    set_timestamp(event.emitted_at, datetime.now(UTC))
    trace = trace_context_message()
    if trace.traceparent:
        event.trace.CopyFrom(trace)
    return event.SerializeToString(deterministic=True)
