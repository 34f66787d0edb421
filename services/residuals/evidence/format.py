"""The evidence bundle format (version 1): what each member holds, and how to write and
read it as a stream.

A bundle is a gzip-compressed POSIX tar archive (``….residuals-evidence.tar.gz``) whose
members come in this order, so a reader can check everything in one pass while it reads,
and a writer never needs more memory than one member:

``statement.json``
    What the bundle proves: a payee's part of the statement (``domain.parts``) or the
    whole §10 document, as canonical JSON (sorted keys, no spaces, UTF-8) - the bytes
    whose SHA-256 is the part's ``part_sha256`` or the statement's ``content_hash``.
``inputs.json``
    What the rules need besides the events: the statement's stored inputs
    (``statement_inputs``: thresholds, carried-in balances, advances, approval render
    counts, the statement's licences), the period, the payee and the part's licences
    (``licence_ids``; null for a whole statement), and licences the registry could not
    load at the export (``unusable_licences``: their events count as UNPROCESSABLE, as the
    close counted them).
``keys.json``
    The vendors' Ed25519 public keys that signed the events: ``key_id``, ``vendor_id``,
    ``public_key`` (raw 32 bytes, base64), ``revoked_at`` (ISO 8601 or null). Before the
    events, so each event is verified as it is read.
``events/000001.jsonl`` …
    The ledger rows the statement was computed from, in ledger arrival order
    (``arrival_seq``), at most :data:`ROWS_PER_MEMBER` per member. A usage row
    (``usage_events``: an accepted identity; ``usage_repeats``: a re-send) has
    ``table``, ``arrival_seq``, ``vendor_id``, ``event_id``, ``received_at``, ``outcome``,
    ``payload`` (base64: the exact bytes the vendor signed, a ``residuals.v1.UsageEvent``),
    ``signature`` (base64), ``key_id`` and ``proof`` (base64 of the serialized
    ``residuals.v1.BatchProof`` when the vendor signed a batch's RFC 9162 Merkle root,
    else null). A dead letter (``dead_letters``) has ``reason`` and ``detail`` instead of
    the payload and signature: the rules only count it.
``licences/000001.pb`` …
    One ``residuals.v1.Licence`` each (``codecs.licences.to_proto``, deterministic
    serialization): every version and suspension window of every licence the
    computation needs, the part's and those of rows that only decide identities.
``approvals.json``
    The granted approvals (§5a) of those licences: ``approval_id``, ``licence_id``,
    ``category``, ``valid_from``, ``valid_until``, ``max_renders``.
``manifest.json``
    Last, because it holds the SHA-256 of every member before it: ``format``,
    ``version``, ``created_at``, ``period``, ``scope`` (``payee`` or ``statement``),
    ``payee_id``, ``expected_sha256`` (the hash ``statement.json`` must have and the
    recomputation must give), ``statement_id`` and ``statement_content_hash`` (the whole
    statement's, for reference), ``counts``, ``licences`` (licence id → member) and
    ``members`` (name, size, sha256; and rows for event members).

Nothing here touches a database or the network: the offline verifier
(:mod:`residuals.evidence.verify`) reads bundles with it on a laptop.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from residuals.codecs.signed import SigningKeyRecord
from residuals.domain.approvals import Approval
from residuals.ledger.rows import TABLES, StoredRow

FORMAT = "residuals-evidence"
VERSION = 1
SUFFIX = ".residuals-evidence.tar.gz"
#: Rows per events member: a member is built in memory (tar headers need its size), so
#: this bounds the writer's memory (~10 MB with batch proofs) whatever the row count.
ROWS_PER_MEMBER = 10_000
#: A reader refuses larger members (a hostile bundle must not make it allocate gigabytes).
MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: Size of the pieces the writer hands out (a gRPC message each, well below 4 MiB).
CHUNK_BYTES = 256 * 1024
#: zlib level: 6 is gzip's default, a fair trade of CPU for size on signatures and proofs.
COMPRESS_LEVEL = 6

STATEMENT = "statement.json"
INPUTS = "inputs.json"
KEYS = "keys.json"
APPROVALS = "approvals.json"
MANIFEST = "manifest.json"
EVENTS_DIR = "events/"
LICENCES_DIR = "licences/"
_NUMBERED = re.compile(r"(events/[0-9]{6,}\.jsonl|licences/[0-9]{6,}\.pb)")


class FormatError(ValueError):
    """The bytes are not an evidence bundle of this format; the message says where."""


def events_member(number: int) -> str:
    """``events/000001.jsonl`` for ``number`` 1."""
    return f"{EVENTS_DIR}{number:06d}.jsonl"


def licence_member(number: int) -> str:
    return f"{LICENCES_DIR}{number:06d}.pb"


def known_member(name: str) -> bool:
    """Whether ``name`` is a member name this format uses."""
    return name in (STATEMENT, INPUTS, KEYS, APPROVALS, MANIFEST) or bool(_NUMBERED.fullmatch(name))


def filename(period: str, payee_id: str | None) -> str:
    """The suggested file name: ``residuals-2026-10-TAL-1.residuals-evidence.tar.gz``
    (``all`` for a whole statement; characters unsafe in file names become ``_``)."""
    who = re.sub(r"[^A-Za-z0-9._-]", "_", payee_id)[:64] if payee_id else "all"
    return f"residuals-{period}-{who}{SUFFIX}"


def json_bytes(document: Any) -> bytes:
    """Readable, stable JSON for the metadata members (sorted keys, UTF-8, one line)."""
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def parse_json(name: str, data: bytes) -> Any:
    """A JSON member's document; :class:`FormatError` naming the member."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{name} is not JSON: {error}") from None


# --- rows, keys and approvals as JSON --------------------------------------------------------


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(bytes(data)).decode("ascii")


def _unb64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{field} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise FormatError(f"{field} is not base64") from None


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise FormatError(f"{field} is not an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FormatError(f"{field} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise FormatError(f"{field} has no time zone")
    return parsed


def _optional_time(value: Any, field: str) -> datetime | None:
    return None if value is None else _time(value, field)


def _text(doc: Mapping[str, Any], field: str, *, optional: bool = False) -> Any:
    value = doc.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FormatError(f"{field} is not text")
    return value


def _int(doc: Mapping[str, Any], field: str) -> int:
    value = doc.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{field} is not an integer")
    return value


def row_document(row: StoredRow) -> dict[str, Any]:
    """A ledger row as an events line (see the module docstring)."""
    received = None if row.received_at is None else row.received_at.isoformat()
    if row.table == "dead_letters":
        return {
            "table": row.table,
            "arrival_seq": row.arrival_seq,
            "vendor_id": row.vendor_id,
            "event_id": row.event_id,
            "received_at": received,
            "reason": row.reason,
            "detail": row.detail,
        }
    return {
        "table": row.table,
        "arrival_seq": row.arrival_seq,
        "vendor_id": row.vendor_id,
        "event_id": row.event_id,
        "received_at": received,
        "outcome": row.outcome,
        "payload": _b64(row.payload),
        "signature": _b64(row.signature),
        "key_id": row.key_id,
        "proof": _b64(row.signature_proof),
    }


def row_line(row: StoredRow) -> bytes:
    """One events line (JSON, newline-terminated)."""
    return json.dumps(row_document(row), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def row_from_document(doc: Any) -> StoredRow:
    """An events line's row; :class:`FormatError` saying which field is wrong."""
    if not isinstance(doc, dict):
        raise FormatError("the line is not a JSON object")
    table = doc.get("table")
    if table not in TABLES:
        raise FormatError(f"table {table!r:.40} is not one of {', '.join(TABLES)}")
    seq = _int(doc, "arrival_seq")
    vendor_id, event_id = _text(doc, "vendor_id"), _text(doc, "event_id")
    received = _optional_time(doc.get("received_at"), "received_at")
    if table == "dead_letters":
        reason, detail = _text(doc, "reason"), _text(doc, "detail")
        return StoredRow(table, seq, vendor_id, event_id, None, reason, detail, None, received)
    proof = doc.get("proof")
    signature = doc.get("signature")
    return StoredRow(
        table,
        seq,
        vendor_id,
        event_id,
        _unb64(doc.get("payload"), "payload"),
        None,
        None,
        _text(doc, "outcome", optional=True),
        received,
        None if signature is None else _unb64(signature, "signature"),
        _text(doc, "key_id", optional=True),
        None if proof is None else _unb64(proof, "proof"),
    )


def key_document(key: SigningKeyRecord) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "vendor_id": key.vendor_id,
        "public_key": _b64(key.public_key),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
    }


def key_from_document(doc: Any) -> SigningKeyRecord:
    """A key of ``keys.json``. Its bytes are not checked here: a key that is not an
    Ed25519 key fails every signature it is named by, which is where it is reported."""
    if not isinstance(doc, dict):
        raise FormatError("a key is not a JSON object")
    return SigningKeyRecord(
        key_id=_text(doc, "key_id"),
        vendor_id=_text(doc, "vendor_id"),
        public_key=_unb64(doc.get("public_key"), "public_key"),
        revoked_at=_optional_time(doc.get("revoked_at"), "revoked_at"),
    )


def approval_document(approval: Approval) -> dict[str, Any]:
    until = approval.valid_until
    return {
        "approval_id": approval.approval_id,
        "licence_id": approval.licence_id,
        "category": approval.category,
        "valid_from": approval.valid_from.isoformat(),
        "valid_until": None if until is None else until.isoformat(),
        "max_renders": approval.max_renders,
    }


def approval_from_document(doc: Any) -> Approval:
    if not isinstance(doc, dict):
        raise FormatError("an approval is not a JSON object")
    return Approval(
        approval_id=_text(doc, "approval_id"),
        licence_id=_text(doc, "licence_id"),
        category=_text(doc, "category"),
        valid_from=_time(doc.get("valid_from"), "valid_from"),
        valid_until=_optional_time(doc.get("valid_until"), "valid_until"),
        max_renders=_int(doc, "max_renders"),
    )


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A member as the manifest lists it (``rows`` for events members only)."""

    name: str
    size: int
    sha256: str
    rows: int | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "size": self.size, "sha256": self.sha256}
        if self.rows is not None:
            doc["rows"] = self.rows
        return doc


class _Pending:
    """The compressed bytes not yet handed out (the tar and gzip layers write here)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        """GzipFile flushes its file object; there is nothing below to flush."""


class BundleWriter:
    """Writes members into a tar.gz stream and hands the archive out in pieces.

    Each member is hashed as it is added; :meth:`finish` writes the manifest (the
    caller's fields plus every member's name, size and SHA-256) and ends the archive.
    Only the member being added and the compressed bytes not yet taken are in memory.
    """

    def __init__(self, created_at: datetime, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.created_at = created_at
        self.chunk_bytes = chunk_bytes
        self.members: list[Member] = []
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._pending = _Pending()
        mtime = int(created_at.timestamp())
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=self._pending, mtime=mtime
        )
        # Closed by finish(): the archive lives as long as the writer.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=self._gzip, mode="w|", format=tarfile.PAX_FORMAT
        )
        self._mtime = mtime

    def add(self, name: str, data: bytes, *, rows: int | None = None) -> Iterator[bytes]:
        """Add a member; yields the archive's bytes that became ready."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self._mtime
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # Push the member's compressed bytes out now (a sync flush costs a few bytes), so
        # a stream's reader receives the archive as it is made, member by member.
        self._gzip.flush()
        self.members.append(Member(name, len(data), hashlib.sha256(data).hexdigest(), rows))
        yield from self._take(final=False)

    def finish(self, manifest: Mapping[str, Any]) -> Iterator[bytes]:
        """Write ``manifest.json`` (``manifest`` plus ``members``), end the archive and
        yield the rest of its bytes; :attr:`sha256` is then the archive's hash."""
        document = {**manifest, "members": [m.document() for m in self.members]}
        data = json.dumps(document, sort_keys=True, ensure_ascii=False, indent=1).encode()
        yield from self.add(MANIFEST, data)
        self._tar.close()
        self._gzip.close()
        yield from self._take(final=True)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes handed out so far (the whole archive after finish)."""
        return self._sha256.hexdigest()

    def _take(self, *, final: bool) -> Iterator[bytes]:
        buffer = self._pending.buffer
        ready = len(buffer) if final else len(buffer) - len(buffer) % self.chunk_bytes
        for start in range(0, ready, self.chunk_bytes):
            chunk = bytes(buffer[start : min(start + self.chunk_bytes, ready)])
            self._sha256.update(chunk)
            self.size += len(chunk)
            yield chunk
        del buffer[:ready]


# --- reading ---------------------------------------------------------------------------------


class BundleReader:
    """Reads a bundle's members in archive order, one at a time, hashing each.

    Decompression is streaming (:class:`gzip.GzipFile`, which checks the CRC at the end),
    so a reader holds one member at most. Raises :class:`FormatError` for a member that
    is not a regular file or is larger than :data:`MAX_MEMBER_BYTES`; a damaged archive
    raises what ``gzip``, ``zlib`` and ``tarfile`` raise (see :data:`READ_ERRORS`).
    """

    def __init__(self, source: IO[bytes]) -> None:
        # Both only wrap ``source``, which the caller closes.
        self._gzip = gzip.GzipFile(fileobj=source, mode="rb")
        self._tar = tarfile.open(fileobj=self._gzip, mode="r|")  # noqa: SIM115
        self.members: list[Member] = []

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for info in self._tar:
            if not info.isfile():
                raise FormatError(f"member {info.name!r:.80} is not a regular file")
            if info.size > MAX_MEMBER_BYTES:
                raise FormatError(
                    f"member {info.name!r:.80} is {info.size:,} bytes, more than the "
                    f"{MAX_MEMBER_BYTES:,} a bundle member may have"
                )
            stream = self._tar.extractfile(info)
            assert stream is not None  # a regular file
            data = stream.read()
            self.members.append(Member(info.name, len(data), hashlib.sha256(data).hexdigest()))
            yield info.name, data
        # Read to the end, so gzip checks the CRC and length of everything.
        while self._gzip.read(1 << 16):
            pass


#: What reading a damaged archive raises (besides :class:`FormatError`).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile, truncated files
    EOFError,  # "Compressed file ended before the end-of-stream marker was reached"
    zlib.error,  # damaged deflate data
    tarfile.TarError,
)


def lines(data: bytes) -> Iterable[tuple[int, bytes]]:
    """An events member's non-empty lines, numbered from 1."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line
