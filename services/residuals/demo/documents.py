"""The month's statements as the people paid read them, and one of them proved offline.

Each payee's statement is fetched from ``PayoutService.GetStatementDocument`` as PDF and
HTML into ``statements/<payee>/`` (an agent also gets one per client). Then one talent, with
their own API key, streams the evidence behind their statement
(``PayoutService.ExportEvidence``) and the bundle is verified offline exactly as
``residuals verify`` does: every signature and batch proof, the part recomputed by the
rules and compared with the hash printed in their document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from residuals.evidence.verify import Report, verify_bundle
from residuals.platform.auth import bearer_metadata
from residuals.v1 import payout_service_pb2, payout_service_pb2_grpc

FORMATS = (payout_service_pb2.DOCUMENT_FORMAT_PDF, payout_service_pb2.DOCUMENT_FORMAT_HTML)


class DocumentsError(RuntimeError):
    """A statement document or the evidence could not be had; the message names it."""


@dataclass(frozen=True)
class Written:
    payee_id: str
    talent_id: str  # the client, for an agent's per-client document
    path: Path
    sha256: str
    part_sha256: str


@dataclass
class Documents:
    written: list[Written] = field(default_factory=list)
    bundle: Path | None = None
    verified: Report | None = None
    shown_part_sha256: str = ""

    def summary(self, names: Mapping[str, str]) -> list[str]:
        lines = ["Statements people read (PayoutService.GetStatementDocument)"]
        for w in self.written:
            if w.path.suffix != ".pdf":
                continue
            who = names.get(w.payee_id, w.payee_id)
            client = f", client {names.get(w.talent_id, w.talent_id)}" if w.talent_id else ""
            lines.append(f"  {who}{client}: {w.path} (+ .html)")
        if self.verified is not None and self.bundle is not None:
            r = self.verified
            who = names.get(r.payee_id or "", r.payee_id or "the whole statement")
            verdict = "VERIFIED" if r.exit_code == 0 else "FAILED"
            lines += [
                f"Evidence for {who}'s statement (PayoutService.ExportEvidence, their own key):",
                f"  {self.bundle}",
                f"  residuals verify: {verdict} offline: every signature and batch proof, the"
                " statement recomputed by the rules",
                f"  sha256 {r.expected_sha256} = the hash printed in their PDF"
                + ("" if r.expected_sha256 == self.shown_part_sha256 else "  (DIFFERENT)"),
            ]
        return lines


def _call(what: str, call: Any) -> Any:
    try:
        return call()
    except grpc.RpcError as error:
        raise DocumentsError(
            f"PayoutService.{what}: {error.code().name}: {error.details()}"
        ) from None


def write_documents(
    address: str,
    finance_key: str,
    period: str,
    payees: Iterable[tuple[str, tuple[str, ...]]],
    out: Path,
) -> Documents:
    """PDF and HTML per payee (``(payee_id, client talent ids)``; clients only for agents)
    under ``out/<payee>/``."""
    documents = Documents()
    with grpc.insecure_channel(address) as channel:
        stub = payout_service_pb2_grpc.PayoutServiceStub(channel)
        md = bearer_metadata(finance_key)
        for payee_id, clients in payees:
            folder = out / payee_id
            folder.mkdir(parents=True, exist_ok=True)
            for talent_id in ("", *clients):
                for fmt in FORMATS:
                    request = payout_service_pb2.GetStatementDocumentRequest(
                        period=period, payee_id=payee_id, format=fmt, talent_id=talent_id
                    )
                    got = _call(
                        "GetStatementDocument",
                        lambda r=request: stub.GetStatementDocument(r, metadata=md, timeout=300),
                    )
                    path = folder / got.filename
                    path.write_bytes(got.content)
                    documents.written.append(
                        Written(payee_id, talent_id, path, got.sha256, got.part_sha256)
                    )
    return documents


def prove(address: str, talent_key: str, period: str, out: Path, documents: Documents) -> None:
    """The talent's own evidence, streamed to ``out`` and verified offline."""
    with grpc.insecure_channel(address) as channel:
        stub = payout_service_pb2_grpc.PayoutServiceStub(channel)
        request = payout_service_pb2.ExportEvidenceRequest(period=period)
        messages = _call(
            "ExportEvidence",
            lambda: list(
                stub.ExportEvidence(request, metadata=bearer_metadata(talent_key), timeout=300)
            ),
        )
    if not messages or not messages[0].filename:
        raise DocumentsError("PayoutService.ExportEvidence: an empty stream")
    out.mkdir(parents=True, exist_ok=True)
    path = out / messages[0].filename
    with path.open("wb") as f:
        for m in messages:
            f.write(m.data)
    report = verify_bundle(path)
    documents.bundle, documents.verified = path, report
    own = [w for w in documents.written if w.payee_id == report.payee_id and not w.talent_id]
    documents.shown_part_sha256 = own[0].part_sha256 if own else ""
