"""gRPC ``PayoutService``: period close, statements, exports, payouts, reconciliation.

Thin: each method checks who is calling (:mod:`residuals.payouts.access`), calls the same
functions the CLI uses, and translates their results and refusals to gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from residuals.codecs.timestamps import set_timestamp
from residuals.domain.payouts import PayoutState
from residuals.domain.period import Period
from residuals.payouts import access, export, store
from residuals.payouts.close import ClosePolicy, CloseRefused, close_period
from residuals.payouts.messages import STATE_NAMES, payout_to_proto, statement_to_proto
from residuals.payouts.metrics import PayoutMetrics
from residuals.payouts.paying import pay_payouts
from residuals.payouts.rails import PaymentRail
from residuals.payouts.reconcile import reconcile
from residuals.payouts.sources import Sources
from residuals.platform.auth import Role, current_principal, require_role
from residuals.platform.errors import (
    InvalidArgument,
    enum_filters,
    period_field,
    text_field,
    text_fields,
)
from residuals.platform.postgres import Database
from residuals.v1 import common_pb2, payout_service_pb2, payout_service_pb2_grpc, payouts_pb2

log = logging.getLogger(__name__)

MAX_PAGE = 500


def servicer_descriptor() -> ServiceDescriptor:
    return payout_service_pb2.DESCRIPTOR.services_by_name["PayoutService"]


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("abort returned")


def _period(text: str, context: grpc.ServicerContext, *, field: str = "period") -> Period:
    return period_field(field, text)


#: Wire format -> the documents package's format name.
_DOCUMENT_FORMATS = {
    payout_service_pb2.DOCUMENT_FORMAT_PDF: "pdf",
    payout_service_pb2.DOCUMENT_FORMAT_HTML: "html",
    payout_service_pb2.DOCUMENT_FORMAT_JSON: "json",
    payout_service_pb2.DOCUMENT_FORMAT_CSV: "csv",
}

#: Largest sequence a cursor may name (PostgreSQL bigint).
MAX_SEQUENCE = 2**63 - 1


def _page_size(requested: int) -> int:
    return min(requested or 100, MAX_PAGE)


class PayoutServicer(payout_service_pb2_grpc.PayoutServiceServicer):
    def __init__(
        self,
        db: Database,
        sources: Sources,
        rail: PaymentRail,
        policy: ClosePolicy,
        metrics: PayoutMetrics,
        *,
        heartbeat_seconds: float = 15.0,
        poll_seconds: float = 0.25,
        stopping: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.sources = sources
        self.rail = rail
        self.policy = policy
        self.metrics = metrics
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.stopping = stopping or threading.Event()

    # --- close and statements --------------------------------------------------------------

    def ClosePeriod(
        self, request: payout_service_pb2.ClosePeriodRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.ClosePeriodResponse:
        principal = require_role(Role.FINANCE, Role.ADMIN)
        if request.force:
            require_role(Role.ADMIN)
        period = _period(request.period, context)
        try:
            with self.db.connection() as conn:
                result = close_period(
                    conn,
                    self.sources,
                    period,
                    policy=self.policy,
                    closed_by=principal.principal_id,
                    force=request.force,
                    dry_run=request.dry_run,
                )
        except CloseRefused as refused:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(refused))
        if not result.already_closed and not result.dry_run:
            self.metrics.closed(result)
            self.metrics.refresh_states(self.db)
        return payout_service_pb2.ClosePeriodResponse(
            statement=statement_to_proto(result.statement), already_closed=result.already_closed
        )

    def _stored(self, period: str, context: grpc.ServicerContext) -> store.StoredStatement:
        key = str(_period(period, context))
        with self.db.connection() as conn:
            stored = store.get_statement(conn, key)
        if stored is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"{key} has no statement (not closed)")
        return stored

    def _view(
        self, stored: store.StoredStatement, f: payout_service_pb2.StatementFilter
    ) -> dict[str, Any]:
        return access.statement_view(
            current_principal(),
            stored,
            licence_ids=tuple(text_fields("filter.licence_ids", f.licence_ids)),
            talent_id=text_field("filter.talent_id", f.talent_id),
            vendor_id=text_field("filter.vendor_id", f.vendor_id),
            payee_id=text_field("filter.payee_id", f.payee_id),
        )

    def GetStatement(
        self, request: payout_service_pb2.GetStatementRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.GetStatementResponse:
        stored = self._stored(request.period, context)
        view = self._view(stored, request.filter)
        return payout_service_pb2.GetStatementResponse(statement=statement_to_proto(stored, view))

    def ListStatements(
        self, request: payout_service_pb2.ListStatementsRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.ListStatementsResponse:
        current_principal()
        for name in ("from_period", "to_period"):
            value = getattr(request, name)
            if value:
                _period(value, context, field=name)
        if request.page_token:
            _period(request.page_token, context, field="page_token")
        size = _page_size(request.page_size)
        with self.db.connection() as conn:
            rows = store.list_statements(
                conn, request.from_period, request.to_period, size + 1, request.page_token
            )
        response = payout_service_pb2.ListStatementsResponse()
        for statement_id, period, digest, closed_at, count in rows[:size]:
            summary = response.statements.add(
                statement_id=statement_id, period=period, content_hash=digest, licence_count=count
            )
            set_timestamp(summary.closed_at, closed_at)
        if len(rows) > size:
            response.next_page_token = rows[size - 1][1]
        return response

    def ExportStatement(
        self, request: payout_service_pb2.ExportStatementRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.ExportStatementResponse:
        stored = self._stored(request.period, context)
        view = self._view(stored, request.filter)
        visible = {lic["licence_id"] for lic in view["licences"]}
        adjustments = [a for a in stored.adjustments if a.licence_id in visible]
        if request.format == payout_service_pb2.EXPORT_FORMAT_CSV:
            file = export.csv_export(view, adjustments)
        elif request.format == payout_service_pb2.EXPORT_FORMAT_JSON:
            file = export.json_export(view, stored.period)
        else:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "format: choose CSV or JSON")
        return payout_service_pb2.ExportStatementResponse(
            content=file.content,
            content_type=file.content_type,
            filename=file.filename,
            sha256=file.sha256,
        )

    def GetStatementDocument(
        self,
        request: payout_service_pb2.GetStatementDocumentRequest,
        context: grpc.ServicerContext,
    ) -> payout_service_pb2.GetStatementDocumentResponse:
        from residuals.payouts.documents.api import render_statement
        from residuals.payouts.documents.gather import NoStatementPart, client_talent_ids

        principal = current_principal()
        payee = access.document_payee(principal, text_field("payee_id", request.payee_id))
        talent_id = text_field("talent_id", request.talent_id)
        fmt = _DOCUMENT_FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument.field("format", "choose PDF, HTML, JSON or CSV")
        stored = self._stored(request.period, context)
        with self.db.connection() as conn:
            if talent_id and talent_id not in client_talent_ids(conn, payee):
                _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"talent {talent_id} is not a client of payee {payee}",
                )
            try:
                document = render_statement(
                    conn, self.sources, stored, payee, fmt, talent_id=talent_id
                )
            except NoStatementPart as missing:
                _abort(context, grpc.StatusCode.NOT_FOUND, str(missing))
        return payout_service_pb2.GetStatementDocumentResponse(
            content=document.content,
            content_type=document.content_type,
            filename=document.filename,
            sha256=document.sha256,
            part_sha256=document.part_sha256,
            statement_sha256=document.statement_sha256,
        )

    def ExportEvidence(
        self, request: payout_service_pb2.ExportEvidenceRequest, context: grpc.ServicerContext
    ) -> Iterator[payout_service_pb2.ExportEvidenceResponse]:
        """The bundle streamed as it is read from the ledger (a server-side cursor): memory
        stays flat however many events the part has; the last message carries the SHA-256."""
        from residuals.evidence.export import NoPart, open_export

        payee = access.evidence_payee(current_principal(), text_field("payee_id", request.payee_id))
        stored = self._stored(request.period, context)
        with self.db.connection() as conn:
            try:
                bundle = open_export(conn, self.sources, stored, payee)
            except NoPart as missing:
                _abort(context, grpc.StatusCode.NOT_FOUND, str(missing))
            first = True
            with closing(bundle.chunks()) as chunks:
                for data in chunks:
                    if not context.is_active():
                        return
                    message = payout_service_pb2.ExportEvidenceResponse(data=data)
                    if first:
                        message.filename, first = bundle.filename, False
                    yield message
            summary = bundle.summary
        assert summary is not None
        final = payout_service_pb2.ExportEvidenceResponse(sha256=summary.sha256)
        if first:
            final.filename = bundle.filename
        yield final

    # --- payouts ----------------------------------------------------------------------------

    def ListPayouts(
        self, request: payout_service_pb2.ListPayoutsRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.ListPayoutsResponse:
        payee = access.payout_scope(current_principal(), text_field("payee_id", request.payee_id))
        if request.period:
            _period(request.period, context)
        states = [
            PayoutState(STATE_NAMES[s])
            for s in enum_filters("states", request.states, list(STATE_NAMES))
        ]
        text_field("page_token", request.page_token)
        size = _page_size(request.page_size)
        with self.db.connection() as conn:
            rows = store.list_payouts(
                conn,
                period=request.period,
                payee_id=payee,
                states=states,
                after=request.page_token,
                limit=size + 1,
            )
        response = payout_service_pb2.ListPayoutsResponse(
            payouts=[payout_to_proto(r) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = rows[size - 1].payout_id
        return response

    def PayPayouts(
        self, request: payout_service_pb2.PayPayoutsRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.PayPayoutsResponse:
        require_role(Role.FINANCE, Role.ADMIN)
        if request.period:
            _period(request.period, context)
        report = pay_payouts(
            self.db,
            self.rail,
            period=request.period,
            payout_ids=text_fields("payout_ids", request.payout_ids),
        )
        self.metrics.refresh_states(self.db)
        return payout_service_pb2.PayPayoutsResponse(
            payouts=[payout_to_proto(p) for p in report.payouts],
            paid=report.paid,
            failed=report.failed,
        )

    def WatchPayouts(
        self, request: payout_service_pb2.WatchPayoutsRequest, context: grpc.ServicerContext
    ) -> Iterator[payout_service_pb2.WatchPayoutsResponse]:
        payee = access.payout_scope(current_principal(), text_field("payee_id", request.payee_id))
        if request.period:
            _period(request.period, context)
        if request.after_sequence > MAX_SEQUENCE:
            raise InvalidArgument.field(
                "after_sequence", f"is beyond the largest sequence ({MAX_SEQUENCE})"
            )
        heartbeat = float(request.heartbeat_seconds) or self.heartbeat_seconds
        cursor = request.after_sequence
        last_sent = time.monotonic()
        while context.is_active() and not self.stopping.is_set():
            with self.db.connection() as conn:
                batch = store.payout_events_after(
                    conn, cursor, payee_id=payee, period=request.period
                )
                head = store.latest_sequence(conn) if not batch else 0
            for sequence, payload in batch:
                event = payouts_pb2.PayoutEvent.FromString(payload)
                event.payout.sequence = sequence
                cursor = sequence
                last_sent = time.monotonic()
                yield payout_service_pb2.WatchPayoutsResponse(payout=event.payout)
            if batch:
                continue
            if time.monotonic() - last_sent >= heartbeat:
                beat = common_pb2.Heartbeat(latest_sequence=max(head, cursor))
                set_timestamp(beat.server_time, datetime.now(UTC))
                last_sent = time.monotonic()
                yield payout_service_pb2.WatchPayoutsResponse(heartbeat=beat)
            self.stopping.wait(self.poll_seconds)

    # --- reconciliation ------------------------------------------------------------------------

    def Reconcile(
        self, request: payout_service_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> payout_service_pb2.ReconcileResponse:
        require_role(Role.FINANCE, Role.ADMIN)
        with self.db.connection() as conn:
            if request.period:
                periods = [_period(request.period, context)]
            else:
                periods = [Period.parse(p) for p in store.closed_periods(conn)]
            reports = [reconcile(conn, self.sources, p) for p in periods]
        response = payout_service_pb2.ReconcileResponse(ok=all(r.ok for r in reports))
        for report in reports:
            for check in report.checks:
                response.checks.add(
                    name=f"{report.period}: {check.name}",
                    ok=check.ok,
                    expected=check.expected,
                    actual=check.actual,
                    detail=check.detail,
                )
            self.metrics.reconciled(report)
        return response
