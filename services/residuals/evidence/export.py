"""Export an evidence bundle of a closed statement, or of one payee's part of it, streamed
from the ledger and the licence registry (format: :mod:`residuals.evidence.format`).

The rows are exactly those the statement was computed from: the selection of
:func:`residuals.ledger.history.load_period` (the whole period, or with the part's
licence ids the part's rows plus the rows that decide their identities), read through a
server-side cursor with their signature evidence (:func:`~residuals.ledger.history.stream_rows`)
and assembled one events member at a time (:func:`~residuals.evidence.assemble.assemble`).
The archive is handed out in pieces of about 256 KiB as it is made, so memory stays
bounded whatever the number of events: a gRPC stream (``PayoutService.ExportEvidence``)
or a file can take a bundle of millions.

Licences and approvals are read as the period close reads them (the ``Sources``
adapters), keys through the licensing directory, so ``residuals verify`` recomputes the
statement the close stored. Everything is read in one transaction of the caller's
connection (a savepoint when one is open).

For the gRPC servicer::

    with db.connection() as conn:
        export = open_export(conn, sources, stored, payee_id)  # NoPart before any byte
        export.filename                                        # for the first message
        with closing(export.chunks()) as chunks:               # ~256 KiB each
            for chunk in chunks: ...
        export.summary.sha256                                  # for the last message

The iterator holds a transaction (or savepoint) and a cursor open on ``conn`` while it is
read: exhaust or close it (``contextlib.closing``, as above, also when the client goes
away) before the connection goes back to the pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from residuals.domain.approvals import Approval
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.evidence import format as bundle
from residuals.evidence.assemble import NoPart, Progress, Subject, assemble
from residuals.ledger import audit, history
from residuals.payouts.sources import Conn, Sources
from residuals.payouts.store import StoredStatement

__all__ = [
    "EvidenceExport",
    "ExportSummary",
    "NoPart",
    "Progress",
    "evidence_chunks",
    "open_export",
    "write_evidence",
]


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    filename: str
    period: str
    payee_id: str | None
    #: Usage rows (accepted identities and re-sends) and dead letters.
    events: int
    dead_letters: int
    keys: int
    licences: int
    approvals: int
    members: int
    #: The archive's size in bytes and hex SHA-256.
    size: int
    sha256: str
    #: What ``statement.json`` hashes to and the events must recompute: the part's
    #: ``part_sha256``, or the statement's content hash.
    expected_sha256: str
    #: Where :func:`write_evidence` put it.
    path: str | None = None


class EvidenceExport:
    """One bundle being exported. :attr:`filename` and :attr:`expected_sha256` are known
    before the first byte; :attr:`summary` once :meth:`chunks` is exhausted."""

    def __init__(
        self,
        conn: Conn,
        sources: Sources,
        stored: StoredStatement,
        payee_id: str | None = None,
        *,
        created_at: datetime | None = None,
        progress: Progress | None = None,
        chunk_bytes: int = bundle.CHUNK_BYTES,
    ) -> None:
        self.conn = conn
        self.chunk_bytes = chunk_bytes
        self.sources = sources
        self.subject = Subject.of(
            period=stored.period,
            statement_id=stored.statement_id,
            canonical=stored.canonical_json,
            content_hash=stored.content_hash,
            inputs=stored.inputs,
            payee_id=payee_id,
        )
        self.created_at = created_at or datetime.now(UTC)
        self.progress = progress
        self.filename = self.subject.filename
        self.expected_sha256 = self.subject.expected_sha256
        self.summary: ExportSummary | None = None

    def chunks(self) -> Generator[bytes, None, None]:
        """The archive's bytes in order; sets :attr:`summary` after the last. Closing the
        iterator early ends its transaction (or savepoint) and closes the cursor."""
        subject, conn = self.subject, self.conn
        period = Period.parse(subject.period)
        writer = bundle.BundleWriter(self.created_at, chunk_bytes=self.chunk_bytes)
        rows = history.stream_rows(conn, period, subject.licence_ids)
        # The cursor is closed inside the transaction, also when the reader stops early.
        with conn.transaction(), closing(rows):
            registry = {lic.licence_id: lic for lic in self.sources.licences.licences(conn)}
            keys = audit.registered_keys(
                conn, history.signing_key_ids(conn, period, subject.licence_ids)
            )

            def licences(ids: set[str]) -> list[Licence]:
                return [registry[i] for i in sorted(ids & registry.keys())]

            def approvals(chosen: Sequence[Licence]) -> Sequence[Approval]:
                # As the close priced them: the part's licences, or every chosen licence.
                ids = subject.licence_ids or [lic.licence_id for lic in chosen]
                return self.sources.approvals.approvals(conn, list(ids))

            counts = yield from assemble(
                writer,
                subject,
                keys=keys.values(),
                rows=rows,
                licences=licences,
                approvals=approvals,
                unusable=_unusable(self.sources),
                progress=self.progress,
            )
        self.summary = ExportSummary(
            filename=self.filename,
            period=subject.period,
            payee_id=subject.payee_id,
            events=counts.events,
            dead_letters=counts.dead_letters,
            keys=counts.keys,
            licences=counts.licences,
            approvals=counts.approvals,
            members=len(writer.members),
            size=writer.size,
            sha256=writer.sha256,
            expected_sha256=subject.expected_sha256,
        )


def _unusable(sources: Sources) -> dict[str, str]:
    """Licences the registry could not load (licence id → why): the close made their
    events UNPROCESSABLE dead letters, and so must the verifier. Only the registry adapter
    knows them (``adapters.LicensingLicences.unusable``, filled by ``licences()``)."""
    found = getattr(getattr(sources.licences, "unusable", None), "licences", None)
    return dict(found) if isinstance(found, dict) else {}


def open_export(
    conn: Conn,
    sources: Sources,
    stored: StoredStatement,
    payee_id: str | None = None,
    *,
    created_at: datetime | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = bundle.CHUNK_BYTES,
) -> EvidenceExport:
    """An export of ``payee_id``'s part of ``stored`` (None or empty: the whole
    statement), in pieces of ``chunk_bytes``. Raises :class:`NoPart` at once when the
    payee has no part."""
    return EvidenceExport(
        conn,
        sources,
        stored,
        payee_id,
        created_at=created_at,
        progress=progress,
        chunk_bytes=chunk_bytes,
    )


def evidence_chunks(
    conn: Conn, sources: Sources, stored: StoredStatement, payee_id: str | None = None
) -> Iterator[bytes]:
    """The bundle's bytes in ~256 KiB pieces (:class:`NoPart` is raised by this call,
    not at the first piece)."""
    return open_export(conn, sources, stored, payee_id).chunks()


def write_evidence(
    conn: Conn,
    sources: Sources,
    stored: StoredStatement,
    payee_id: str | None,
    path: Path,
    *,
    created_at: datetime | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the bundle to ``path`` (a directory: the suggested file name in it). The
    file appears only once complete (written beside it, then renamed)."""
    export = open_export(conn, sources, stored, payee_id, created_at=created_at, progress=progress)
    target = path / export.filename if path.is_dir() else path
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            for chunk in export.chunks():
                out.write(chunk)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    assert export.summary is not None
    return dataclasses.replace(export.summary, path=str(target))
