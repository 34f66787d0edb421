"""A bundle's members, assembled in the format's order from what a statement was computed
from: the pure half of the export.

:mod:`~residuals.evidence.export` reads the ledger and the registry and hands the rows,
keys, licences and approvals to :func:`assemble`; tests and tools that hold them in memory
build bundles the same way. Rows are consumed as a stream: one events member at a time is
in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from residuals.codecs.licences import to_proto as licence_record
from residuals.codecs.signed import SigningKeyRecord
from residuals.domain.approvals import Approval
from residuals.domain.closing import RestateInputs, canonical_json
from residuals.domain.licences import Licence
from residuals.domain.parts import part_document, part_hash, part_licence_ids
from residuals.evidence import format as bundle
from residuals.ledger.rows import StoredRow
from residuals.v1 import usage_pb2

#: Called with the number of rows written so far (after each events member, and at the end).
Progress = Callable[[int], None]


class NoPart(LookupError):
    """The payee has no part in the statement: no licence of it allocates to them."""


@dataclass(frozen=True)
class Subject:
    """What a bundle proves: a closed statement, or one payee's part of it."""

    period: str
    payee_id: str | None
    #: The part's licences (None: the whole statement).
    licence_ids: tuple[str, ...] | None
    #: ``statement.json``: canonical JSON, whose SHA-256 is :attr:`expected_sha256`.
    statement: bytes
    expected_sha256: str
    statement_id: str
    statement_content_hash: str
    #: The statement's stored inputs (``statements.inputs``).
    inputs: Mapping[str, Any]

    @classmethod
    def of(
        cls,
        *,
        period: str,
        statement_id: str,
        canonical: str,
        content_hash: str,
        inputs: Mapping[str, Any],
        payee_id: str | None = None,
    ) -> Subject:
        """The stored statement (its canonical JSON and content hash) when ``payee_id``
        is None or empty, else the payee's part of it; :class:`NoPart` when no licence of
        the statement allocates to the payee."""
        whole = canonical.encode("utf-8")
        if not payee_id:
            return cls(period, None, None, whole, content_hash, statement_id, content_hash, inputs)
        document = json.loads(canonical)
        licence_ids = part_licence_ids(document, payee_id)
        if not licence_ids:
            raise NoPart(
                f"payee {payee_id} has no part in the statement of {period}"
                " (no licence of it allocates to them)"
            )
        part = part_document(document, payee_id, licence_ids)
        return cls(
            period,
            payee_id,
            licence_ids,
            canonical_json(part),
            part_hash(part),
            statement_id,
            content_hash,
            inputs,
        )

    @property
    def filename(self) -> str:
        return bundle.filename(self.period, self.payee_id)


@dataclass
class Counts:
    """What went into a bundle (the manifest's ``counts``)."""

    rows: int = 0
    events: int = 0
    dead_letters: int = 0
    keys: int = 0
    licences: int = 0
    approvals: int = 0
    #: The licences the rows name, so the bundle carries every licence the rules will
    #: look up (a re-send or a shared identity's first send may name one outside a part).
    named: set[str] = field(default_factory=set)

    def count(self, row: StoredRow) -> None:
        self.rows += 1
        if row.payload is None:
            self.dead_letters += 1
            return
        self.events += 1
        try:
            licence_id = usage_pb2.UsageEvent.FromString(row.payload).licence_id
        except DecodeError:
            return  # a row the rules make a dead letter: it names no licence they use
        if licence_id:
            self.named.add(licence_id)

    def document(self) -> dict[str, int]:
        return {
            "events": self.events,
            "dead_letters": self.dead_letters,
            "keys": self.keys,
            "licences": self.licences,
            "approvals": self.approvals,
        }


def assemble(
    writer: bundle.BundleWriter,
    subject: Subject,
    *,
    keys: Iterable[SigningKeyRecord],
    rows: Iterable[StoredRow],
    licences: Callable[[set[str]], Sequence[Licence]],
    approvals: Callable[[Sequence[Licence]], Sequence[Approval]],
    unusable: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Generator[bytes, None, Counts]:
    """Write the bundle of ``subject`` and yield its bytes as they become ready.

    ``rows`` are the statement's rows in arrival order, signed by ``keys``;
    ``licences(ids)`` gives the registered licences among ``ids`` (the statement's, or the
    part's, and those the rows name), ``approvals(licences)`` the approvals granted for
    them; ``unusable`` the licences the registry could not load (id → why). Returns the
    counts."""
    counts = Counts()
    yield from writer.add(bundle.STATEMENT, subject.statement)
    inputs = {
        "period": subject.period,
        "payee_id": subject.payee_id,
        "licence_ids": None if subject.licence_ids is None else list(subject.licence_ids),
        "statement_inputs": dict(subject.inputs),
        "unusable_licences": dict(sorted((unusable or {}).items())),
    }
    yield from writer.add(bundle.INPUTS, bundle.json_bytes(inputs))
    documents = [bundle.key_document(k) for k in sorted(keys, key=lambda k: k.key_id)]
    counts.keys = len(documents)
    yield from writer.add(bundle.KEYS, bundle.json_bytes(documents))
    yield from _events(writer, rows, counts, progress)

    if subject.licence_ids is None:
        wanted = set(RestateInputs.parse(subject.inputs).licences)
    else:
        wanted = set(subject.licence_ids)
    chosen = sorted(licences(wanted | counts.named), key=lambda lic: lic.licence_id)
    placed: dict[str, str] = {}
    for number, licence in enumerate(chosen, start=1):
        name = bundle.licence_member(number)
        yield from writer.add(name, licence_record(licence).SerializeToString(deterministic=True))
        placed[licence.licence_id] = name
    counts.licences = len(chosen)
    granted = approvals(chosen)
    counts.approvals = len(granted)
    documents = [bundle.approval_document(a) for a in granted]
    yield from writer.add(bundle.APPROVALS, bundle.json_bytes(documents))
    yield from writer.finish(
        {
            "format": bundle.FORMAT,
            "version": bundle.VERSION,
            "created_at": writer.created_at.isoformat(),
            "period": subject.period,
            "scope": "statement" if subject.payee_id is None else "payee",
            "payee_id": subject.payee_id,
            "licence_ids": inputs["licence_ids"],
            "expected_sha256": subject.expected_sha256,
            "statement_id": subject.statement_id,
            "statement_content_hash": subject.statement_content_hash,
            "counts": counts.document(),
            "licences": placed,
        }
    )
    return counts


def _events(
    writer: bundle.BundleWriter,
    rows: Iterable[StoredRow],
    counts: Counts,
    progress: Progress | None,
) -> Generator[bytes, None, None]:
    lines: list[bytes] = []
    members = 0
    for row in rows:
        lines.append(bundle.row_line(row))
        counts.count(row)
        if len(lines) == bundle.ROWS_PER_MEMBER:
            members += 1
            yield from writer.add(bundle.events_member(members), b"".join(lines), rows=len(lines))
            lines.clear()
            if progress is not None:
                progress(counts.rows)
    if lines:
        members += 1
        yield from writer.add(bundle.events_member(members), b"".join(lines), rows=len(lines))
    if progress is not None:
        progress(counts.rows)
