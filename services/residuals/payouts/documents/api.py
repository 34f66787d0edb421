"""The one entry point PayoutService and ``residuals finance statement`` call.

:func:`render_statement` turns a payee's part of a closed statement into a document in one
of four formats. JSON is the part itself as canonical JSON (what ``part_sha256`` is the
SHA-256 of, and what ``residuals verify`` checks an evidence bundle against); CSV, HTML and
PDF add names, breakdowns, misuse, payouts and daily charts (from the usage tallies the
close stored with the statement; recomputed from the stored events for a statement closed
before it stored them). An agent or estate paid for several talents gets one document per client
(``talent_id``: that talent's licences only, hashed as that client's part) besides the
roll-up of all of them (:func:`client_talent_ids` lists the clients).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from opentelemetry import trace

from residuals.payouts import store
from residuals.payouts.documents.formats import (
    csv_document,
    html_document,
    json_document,
    pdf_document,
)
from residuals.payouts.documents.gather import gather_view, statement_part
from residuals.payouts.sources import Conn, Sources


class DocumentFormat(StrEnum):
    PDF = "pdf"
    HTML = "html"
    JSON = "json"
    CSV = "csv"


CONTENT_TYPES: dict[DocumentFormat, str] = {
    DocumentFormat.PDF: "application/pdf",
    DocumentFormat.HTML: "text/html; charset=utf-8",
    DocumentFormat.JSON: "application/json",
    DocumentFormat.CSV: "text/csv",
}


@dataclass(frozen=True)
class RenderedDocument:
    content: bytes
    content_type: str
    filename: str
    #: Hex SHA-256 of the (client's) part's canonical JSON, as printed in the document.
    part_sha256: str
    #: The whole period statement's content hash.
    statement_sha256: str

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of ``content``."""
        return hashlib.sha256(self.content).hexdigest()


tracer = trace.get_tracer(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def document_filename(period: str, payee_id: str, fmt: DocumentFormat, talent_id: str = "") -> str:
    """``residuals-2026-10-payee-AGT-1[-talent-TAL-1].pdf`` (ids made file-name safe)."""
    client = f"-talent-{_UNSAFE.sub('_', talent_id)}" if talent_id else ""
    return f"residuals-{period}-payee-{_UNSAFE.sub('_', payee_id)}{client}.{fmt.value}"


def render_statement(
    conn: Conn,
    sources: Sources,
    stored: store.StoredStatement,
    payee_id: str,
    fmt: DocumentFormat | str,
    *,
    talent_id: str = "",
) -> RenderedDocument:
    """``payee_id``'s document of the closed statement ``stored`` in ``fmt``.

    Raises :class:`~residuals.payouts.documents.gather.NoStatementPart` (a LookupError)
    when the payee, or its client ``talent_id``, has no part in the statement, and
    ValueError for an unknown format."""
    kind = DocumentFormat(fmt)
    with tracer.start_as_current_span(
        "render_statement", attributes={"period": stored.period, "format": kind.value}
    ):
        part, _ = statement_part(stored, payee_id, talent_id)
        if kind is DocumentFormat.JSON:
            content = json_document(part)
        else:
            view = gather_view(conn, sources, stored, payee_id, talent_id=talent_id)
            if kind is DocumentFormat.CSV:
                content = csv_document(view)
            elif kind is DocumentFormat.HTML:
                content = html_document(view)
            else:
                content = pdf_document(view)
    return RenderedDocument(
        content=content,
        content_type=CONTENT_TYPES[kind],
        filename=document_filename(stored.period, payee_id, kind, talent_id),
        part_sha256=hashlib.sha256(json_document(part)).hexdigest(),
        statement_sha256=stored.content_hash,
    )
