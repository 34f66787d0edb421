"""A talent's statement evidence and documents over PayoutService on a real gRPC socket,
from a month whose ledger rows carry real signatures and batch proofs: a talent gets their
own (never another payee's), finance any payee's or the whole statement's, a vendor none;
the streamed bundle is byte for byte what its SHA-256 says and verifies offline."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from residuals.evidence.verify import verify_bundle
from residuals.payouts.adapters import stored_sources
from residuals.platform.auth import Principal, Role, StaticAuthenticator, bearer_metadata
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.stack.settings import StackSettings
from residuals.v1 import payout_service_pb2 as ps
from residuals.v1 import payout_service_pb2_grpc
from tests.support.evidence import SignedMonth, signed_month
from tests.support.payouts import migrated_database, running_payouts


@dataclass
class Env:
    month: SignedMonth
    stub: payout_service_pb2_grpc.PayoutServiceStub
    keys: dict[str, str]

    def md(self, who: str) -> Any:
        return bearer_metadata(self.keys[who])


@pytest.fixture(scope="module")
def env(stack: StackSettings) -> Iterator[Env]:
    auth = StaticAuthenticator()
    keys = {
        "finance": auth.add(Principal("p-fin", Role.FINANCE)),
        "tal": auth.add(Principal("p-tal", Role.TALENT, talent_id="TAL-1")),
        "agent": auth.add(Principal("p-agt", Role.TALENT, talent_id="AGT-1")),
        "vendor": auth.add(Principal("p-ven", Role.VENDOR, vendor_id="VEN-1")),
    }
    with migrated_database(stack) as dsn:
        db = Database(PostgresSettings(dsn=dsn, pool_min=1, pool_max=2), application_name="t")
        db.open()
        try:
            month = signed_month(dsn, db)
        finally:
            db.close()
        with running_payouts(
            stack, dsn, "statements", sources=stored_sources(), authenticator=auth, pool_max=4
        ) as app:
            channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
            try:
                yield Env(month, payout_service_pb2_grpc.PayoutServiceStub(channel), keys)
            finally:
                channel.close()


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def _download(env: Env, who: str, tmp: Path, **request: Any) -> tuple[Path, list[Any]]:
    messages = list(
        env.stub.ExportEvidence(ps.ExportEvidenceRequest(**request), metadata=env.md(who))
    )
    data = b"".join(m.data for m in messages)
    assert messages[0].filename.endswith(".residuals-evidence.tar.gz")
    assert messages[-1].sha256 == hashlib.sha256(data).hexdigest()
    assert all(not m.sha256 for m in messages[:-1]) and all(not m.filename for m in messages[1:])
    path = tmp / messages[0].filename
    path.write_bytes(data)
    return path, messages


def test_a_talent_streams_their_own_evidence_and_it_verifies(env: Env, tmp_path: Path) -> None:
    path, _ = _download(env, "tal", tmp_path, period="2026-10")
    report = verify_bundle(path)
    assert report.exit_code == 0, report
    assert report.payee_id == "TAL-1"
    again, _ = _download(env, "finance", tmp_path / "..", period="2026-10", payee_id="TAL-1")
    assert verify_bundle(again).expected_sha256 == report.expected_sha256


def test_finance_streams_the_whole_statement(env: Env, tmp_path: Path) -> None:
    path, _ = _download(env, "finance", tmp_path, period="2026-10")
    report = verify_bundle(path)
    assert report.exit_code == 0, report
    assert report.payee_id is None
    assert report.expected_sha256 == env.month.stored.content_hash


def test_who_may_not_have_evidence(env: Env) -> None:
    def export(who: str, **request: Any) -> grpc.StatusCode:
        return _code(
            lambda: list(
                env.stub.ExportEvidence(ps.ExportEvidenceRequest(**request), metadata=env.md(who))
            )
        )

    assert export("tal", period="2026-10", payee_id="AGT-1") is grpc.StatusCode.PERMISSION_DENIED
    assert export("vendor", period="2026-10") is grpc.StatusCode.PERMISSION_DENIED
    assert export("finance", period="2026-10", payee_id="NOBODY") is grpc.StatusCode.NOT_FOUND
    assert export("finance", period="2026-11") is grpc.StatusCode.NOT_FOUND
    assert export("finance", period="2026-13") is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        _code(lambda: list(env.stub.ExportEvidence(ps.ExportEvidenceRequest(period="2026-10"))))
        is grpc.StatusCode.UNAUTHENTICATED
    )


def _document(env: Env, who: str, **request: Any) -> Any:
    return env.stub.GetStatementDocument(
        ps.GetStatementDocumentRequest(**request), metadata=env.md(who), timeout=120
    )


def test_statement_documents_by_role(env: Env, tmp_path: Path) -> None:
    pdf = _document(env, "tal", period="2026-10", format=ps.DOCUMENT_FORMAT_PDF)
    assert pdf.content.startswith(b"%PDF-") and pdf.content_type == "application/pdf"
    assert pdf.sha256 == hashlib.sha256(pdf.content).hexdigest()
    assert pdf.statement_sha256 == env.month.stored.content_hash
    part = _document(env, "tal", period="2026-10", format=ps.DOCUMENT_FORMAT_JSON)
    assert part.part_sha256 == pdf.part_sha256 == hashlib.sha256(part.content).hexdigest()
    # the hash the talent's document prints is what their evidence proves
    bundle, _ = _download(env, "tal", tmp_path, period="2026-10")
    assert verify_bundle(bundle).expected_sha256 == pdf.part_sha256

    html = _document(
        env, "finance", period="2026-10", payee_id="AGT-1", format=ps.DOCUMENT_FORMAT_HTML
    )
    assert html.content_type.startswith("text/html") and b"AGT-1" in html.content
    own = _document(env, "agent", period="2026-10", format=ps.DOCUMENT_FORMAT_HTML)
    assert own.part_sha256 == html.part_sha256

    def code(who: str, **request: Any) -> grpc.StatusCode:
        return _code(lambda: _document(env, who, **request))

    pdf_fmt = ps.DOCUMENT_FORMAT_PDF
    assert code("tal", period="2026-10", payee_id="AGT-1", format=pdf_fmt) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code("vendor", period="2026-10", format=pdf_fmt) is grpc.StatusCode.PERMISSION_DENIED
    assert code("finance", period="2026-10", format=pdf_fmt) is grpc.StatusCode.INVALID_ARGUMENT
    assert code("tal", period="2026-10") is grpc.StatusCode.INVALID_ARGUMENT  # no format
    assert code("finance", period="2026-10", payee_id="NOBODY", format=pdf_fmt) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert code("agent", period="2026-10", talent_id="TAL-9", format=pdf_fmt) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert code("tal", period="2026-11", format=pdf_fmt) is grpc.StatusCode.NOT_FOUND
