"""The month end, as a finance team runs it over ``PayoutService``.

Close the period (an admin may close before the grace period ends: the demo's month is
over when its events are ledgered), export the statement as CSV and JSON, pay the payouts
through the payouts service's rail (the file rail: one instruction file per payout in the
output folder), and reconcile events = ledger = statements = payouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from residuals.codecs.money import from_money
from residuals.platform.auth import bearer_metadata
from residuals.v1 import payout_service_pb2, payout_service_pb2_grpc, payouts_pb2


class FinanceError(RuntimeError):
    """A month-end step failed; the message names it."""


@dataclass(frozen=True)
class Paid:
    payout_id: str
    payee_id: str
    currency: str
    amount: Decimal
    state: str
    rail_reference: str


@dataclass(frozen=True)
class MonthEnd:
    statement_id: str
    content_hash: str
    document: dict[str, Any]
    files: list[tuple[Path, str]]  # (path, sha256)
    payouts: list[Paid]
    reconciled: bool
    checks: list[tuple[bool, str, str]]  # (ok, name, detail)


class FinanceClient:
    def __init__(self, address: str, admin_key: str, finance_key: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = payout_service_pb2_grpc.PayoutServiceStub(self.channel)
        self.admin = bearer_metadata(admin_key)
        self.finance = bearer_metadata(finance_key)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, metadata: Any, timeout: float = 300) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise FinanceError(
                f"PayoutService.{method}: {error.code().name}: {error.details()}"
            ) from None

    def month_end(self, period: str, statements_dir: Path) -> MonthEnd:
        ps = payout_service_pb2
        closed = self._call(
            "ClosePeriod", ps.ClosePeriodRequest(period=period, force=True), self.admin
        ).statement
        statements_dir.mkdir(parents=True, exist_ok=True)
        files: list[tuple[Path, str]] = []
        document: dict[str, Any] = {}
        for fmt in (ps.EXPORT_FORMAT_JSON, ps.EXPORT_FORMAT_CSV):
            exported = self._call(
                "ExportStatement",
                ps.ExportStatementRequest(period=period, format=fmt),
                self.finance,
            )
            path = statements_dir / exported.filename
            path.write_bytes(exported.content)
            files.append((path, exported.sha256))
            if fmt == ps.EXPORT_FORMAT_JSON:
                document = json.loads(exported.content)
        if not document:
            raise FinanceError("the JSON export was empty")
        paid = self._call("PayPayouts", ps.PayPayoutsRequest(period=period), self.finance)
        payouts = [
            Paid(
                p.payout_id,
                p.payee_id,
                p.amount.currency_code,
                from_money(p.amount),
                payouts_pb2.PayoutState.Name(p.state).removeprefix("PAYOUT_STATE_"),
                p.rail_reference,
            )
            for p in paid.payouts
        ]
        report = self._call("Reconcile", ps.ReconcileRequest(period=period), self.finance)
        checks = [(c.ok, c.name, c.detail) for c in report.checks]
        return MonthEnd(
            statement_id=closed.statement_id,
            content_hash=closed.content_hash,
            document=document,
            files=files,
            payouts=payouts,
            reconciled=bool(report.ok) and bool(checks),
            checks=checks,
        )
