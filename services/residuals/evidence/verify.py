"""Offline verification of an evidence bundle (``residuals verify BUNDLE``).

With only the bundle - no database, no network, nothing from the service that made it -
one streaming pass checks:

1. **members**: each member's SHA-256 against the manifest; a member missing, added,
   changed or repeated is named;
2. **events**: every usage row's signature, per event (Ed25519 over the payload) or per
   batch (the RFC 9162 Merkle proof from the payload to the signed root), against the
   bundle's key for its ``key_id``, which must belong to the row's vendor and not be
   revoked at the row's receipt - :func:`~residuals.codecs.signed.evidence_problem`, the
   check the gateway, the meter and the ledger audit make; the payload must carry the
   row's identity, and rows must come in ledger arrival order;
3. **the statement**: the rows decoded exactly as the period close decoded them from the
   ledger (:func:`~residuals.ledger.rows.load_rows`), the licences chosen and priced as
   the close chose them (:class:`~residuals.domain.closing.RestateInputs`), and the part
   (:func:`~residuals.domain.parts.compute_part`) or the whole statement
   (:func:`~residuals.domain.statement.compute_statement`) recomputed by the rules; the
   SHA-256 of its canonical JSON must equal the manifest's expected hash and
   ``statement.json``; any difference is named (licence, line, field).

Every event that fails is named by vendor and event id, table, arrival sequence, member
and line. The bundle proves the statement it carries; that this is *the* statement is
shown by its SHA-256 (printed), which the readable statement document and the service
(``GetStatement``'s content hash, the document's ``part_sha256``) also show, and by the
vendors' keys, which the licensing registry publishes.

This module and what it imports hold no database or network code (a unit test checks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.protobuf.message import DecodeError

from residuals.codecs.licences import InvalidRecord
from residuals.codecs.licences import decode as decode_licence
from residuals.codecs.signed import SigningKeyRecord, evidence_problem
from residuals.domain.approvals import Approval
from residuals.domain.bounds import describe, printable
from residuals.domain.closing import RestateInputs, canonical_json
from residuals.domain.licences import Licence
from residuals.domain.parts import compute_part, part_licence_ids
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.evidence import format as bundle
from residuals.evidence.compare import differences
from residuals.ledger.rows import Loaded, StoredRow, load_rows
from residuals.v1 import usage_pb2

#: Events named in a report; the rest are counted (a bundle of a million forged events
#: must not make a report of a million lines).
MAX_NAMED = 1000
MAX_DIFFERENCES = 200


class UnreadableBundle(Exception):
    """The file is not a readable evidence bundle (exit code 2); the message says why."""


@dataclass(frozen=True, slots=True)
class EventFailure:
    """A row of the bundle that fails a check."""

    member: str
    line: int
    table: str
    arrival_seq: int | None
    vendor_id: str
    event_id: str
    reason: str

    def describe(self) -> str:
        where = f"{self.table} #{self.arrival_seq}, " if self.arrival_seq is not None else ""
        return f"{self.vendor_id}/{self.event_id} ({where}{self.member}:{self.line}): {self.reason}"

    def document(self) -> dict[str, Any]:
        return {
            "vendor_id": self.vendor_id,
            "event_id": self.event_id,
            "table": self.table,
            "arrival_seq": self.arrival_seq,
            "member": self.member,
            "line": self.line,
            "reason": self.reason,
        }


@dataclass
class Report:
    """What a verification found. Text from the bundle is escaped for a terminal."""

    bundle: str
    period: str = ""
    scope: str = ""
    payee_id: str | None = None
    created_at: str = ""
    expected_sha256: str = ""
    statement_sha256: str = ""
    recomputed_sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[EventFailure] = field(default_factory=list)
    failures_total: int = 0
    #: Member, manifest, licence and statement problems.
    problems: list[str] = field(default_factory=list)
    #: Where ``statement.json`` and the recomputation differ.
    differences: list[str] = field(default_factory=list)
    #: Rows the close could not use either (dead letters in the statement): not failures.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failures_total or self.problems or self.differences)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def fail(self, failure: EventFailure) -> None:
        self.failures_total += 1
        if len(self.failures) < MAX_NAMED:
            self.failures.append(failure)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "period": self.period,
            "scope": self.scope,
            "payee_id": self.payee_id,
            "created_at": self.created_at,
            "expected_sha256": self.expected_sha256,
            "statement_sha256": self.statement_sha256,
            "recomputed_sha256": self.recomputed_sha256,
            "counts": self.counts,
            "event_failures": [f.document() for f in self.failures],
            "event_failures_total": self.failures_total,
            "problems": self.problems,
            "differences": self.differences,
            "notes": self.notes,
        }


#: Called with the number of rows checked so far (after each events member).
Progress = Callable[[int], None]


def verify_bundle(path: str | Path, *, progress: Progress | None = None) -> Report:
    """Verify the bundle at ``path``; :class:`UnreadableBundle` when it cannot be read."""
    try:
        source = open(path, "rb")  # noqa: SIM115 - closed below, errors mapped
    except OSError as error:
        raise UnreadableBundle(f"cannot open {path}: {describe(error)}") from None
    with source:
        return verify_stream(source, str(path), progress=progress)


def verify_stream(
    source: IO[bytes], name: str = "-", *, progress: Progress | None = None
) -> Report:
    """Verify a bundle read from ``source`` (see the module docstring)."""
    report = Report(bundle=name)
    try:
        _Verification(report, progress).run(bundle.BundleReader(source))
    except bundle.FormatError as error:
        raise UnreadableBundle(f"not an evidence bundle: {error}") from None
    except bundle.READ_ERRORS as error:
        raise UnreadableBundle(f"damaged or not an evidence bundle: {describe(error)}") from None
    return report


class _Members:
    """The archive's members with one of look-ahead; unknown members are reported and
    skipped, known ones must come in the format's order."""

    def __init__(self, members: Iterator[tuple[str, bytes]], report: Report) -> None:
        self._members = members
        self._report = report
        self._next: tuple[str, bytes] | None = None

    def peek(self) -> str | None:
        while self._next is None:
            member = next(self._members, None)
            if member is None:
                return None
            if bundle.known_member(member[0]):
                self._next = member
            else:
                self._report.problems.append(
                    f"member {printable(member[0], 120)} is not part of the format"
                )
        return self._next[0]

    def take(self, name: str | None = None) -> tuple[str, bytes]:
        found = self.peek()
        if found is None or (name is not None and found != name):
            where = f"found {printable(found, 120)}" if found else "the archive ends"
            raise bundle.FormatError(f"{name} expected, {where}")
        member, self._next = self._next, None
        assert member is not None
        return member

    def take_json(self, name: str) -> Any:
        return bundle.parse_json(name, self.take(name)[1])

    def rest(self) -> Iterator[str]:
        while (name := self.peek()) is not None:
            self.take()
            yield name


class _Verification:
    def __init__(self, report: Report, progress: Progress | None = None) -> None:
        self.report = report
        self.progress = progress
        self.keys: dict[str, SigningKeyRecord] = {}
        self.counts = {"events": 0, "dead_letters": 0, "keys": 0, "licences": 0, "approvals": 0}

    def run(self, reader: bundle.BundleReader) -> None:
        report = self.report
        members = _Members(iter(reader), report)
        statement_bytes = members.take(bundle.STATEMENT)[1]
        statement = bundle.parse_json(bundle.STATEMENT, statement_bytes)
        inputs = _mapping(members.take_json(bundle.INPUTS), bundle.INPUTS)
        self._keys(members.take_json(bundle.KEYS))
        loaded = load_rows(self._rows(members))
        licences = self._licences(members)
        approvals = self._approvals(members.take_json(bundle.APPROVALS))
        manifest = _mapping(members.take_json(bundle.MANIFEST), bundle.MANIFEST)
        for name in members.rest():
            report.problems.append(f"member {name} comes after the manifest")
        self._manifest(manifest, inputs, reader.members, licences)
        report.counts = {**self.counts, "members": len(reader.members)}
        report.statement_sha256 = hashlib.sha256(statement_bytes).hexdigest()
        self._recompute(inputs, statement, statement_bytes, loaded, licences, approvals)

    # --- members before the events -------------------------------------------------------

    def _keys(self, document: Any) -> None:
        if not isinstance(document, list):
            raise bundle.FormatError(f"{bundle.KEYS} is not a list of keys")
        for doc in document:
            try:
                key = bundle.key_from_document(doc)
            except bundle.FormatError as error:
                raise bundle.FormatError(f"{bundle.KEYS}: {error}") from None
            if key.key_id in self.keys:
                self.report.problems.append(f"key {printable(key.key_id)} is listed twice")
            self.keys[key.key_id] = key
        self.counts["keys"] = len(self.keys)

    # --- events --------------------------------------------------------------------------

    def _rows(self, members: _Members) -> Iterator[StoredRow]:
        """The events members' rows in order, each checked as it passes to the loader."""
        previous: int | None = None
        while (name := members.peek()) is not None and name.startswith(bundle.EVENTS_DIR):
            _, data = members.take()
            for number, line in bundle.lines(data):
                try:
                    row = bundle.row_from_document(json.loads(line))
                except ValueError as error:  # JSON, UTF-8 or a field: FormatError included
                    why = f"not an evidence row: {printable(str(error), 200)}"
                    self.report.fail(EventFailure(name, number, "?", None, "?", "?", why))
                    continue
                if previous is not None and row.arrival_seq <= previous:
                    self._fail(
                        name,
                        number,
                        row,
                        f"arrival_seq {row.arrival_seq} does not follow {previous}"
                        " (rows out of ledger order)",
                    )
                previous = row.arrival_seq
                if row.table == "dead_letters":
                    self.counts["dead_letters"] += 1
                else:
                    self.counts["events"] += 1
                    problem = self._signature_problem(row)
                    if problem is not None:
                        self._fail(name, number, row, problem)
                yield row
            if self.progress is not None:
                self.progress(self.counts["events"] + self.counts["dead_letters"])

    def _signature_problem(self, row: StoredRow) -> str | None:
        if row.received_at is None:
            return "the row has no received_at: its key cannot be judged at receipt"
        payload = row.payload or b""
        key = self.keys.get(row.key_id or "")
        problem = evidence_problem(
            payload,
            row.signature,
            row.key_id,
            row.signature_proof,
            key,
            vendor_id=row.vendor_id,
            at=row.received_at,
        )
        if problem is not None:
            return problem
        try:
            event = usage_pb2.UsageEvent.FromString(payload)
        except DecodeError:
            return None  # signed, yet not an event: the rules make it a dead letter (notes)
        if (event.vendor_id, event.event_id) != (row.vendor_id, row.event_id):
            return (
                f"the signed payload is event {printable(event.vendor_id, 64)}/"
                f"{printable(event.event_id, 64)}, not the row's"
            )
        return None

    def _fail(self, member: str, line: int, row: StoredRow, reason: str) -> None:
        self.report.fail(
            EventFailure(
                member,
                line,
                row.table,
                row.arrival_seq,
                printable(row.vendor_id, 128),
                printable(row.event_id, 128),
                printable(reason, 300),
            )
        )

    # --- members after the events --------------------------------------------------------

    def _licences(self, members: _Members) -> dict[str, tuple[str, Licence]]:
        """Licence id → (member, licence)."""
        found: dict[str, tuple[str, Licence]] = {}
        while (name := members.peek()) is not None and name.startswith(bundle.LICENCES_DIR):
            _, data = members.take()
            try:
                licence = decode_licence(data)
            except InvalidRecord as error:
                self.report.problems.append(f"{name} is not a licence record: {error}")
                continue
            if licence.licence_id in found:
                self.report.problems.append(
                    f"licence {printable(licence.licence_id)} is in the bundle twice"
                )
            found[licence.licence_id] = (name, licence)
        self.counts["licences"] = len(found)
        return found

    def _approvals(self, document: Any) -> list[Approval]:
        if not isinstance(document, list):
            raise bundle.FormatError(f"{bundle.APPROVALS} is not a list of approvals")
        try:
            approvals = [bundle.approval_from_document(doc) for doc in document]
        except bundle.FormatError as error:
            raise bundle.FormatError(f"{bundle.APPROVALS}: {error}") from None
        self.counts["approvals"] = len(approvals)
        return approvals

    def _manifest(
        self,
        manifest: Mapping[str, Any],
        inputs: Mapping[str, Any],
        read: list[bundle.Member],
        licences: Mapping[str, tuple[str, Licence]],
    ) -> None:
        report = self.report
        if manifest.get("format") != bundle.FORMAT or manifest.get("version") != bundle.VERSION:
            raise bundle.FormatError(
                f"{bundle.MANIFEST} is not {bundle.FORMAT} version {bundle.VERSION}"
                f" ({printable(str(manifest.get('format')), 40)}"
                f" version {printable(str(manifest.get('version')), 20)})"
            )
        report.period = printable(str(manifest.get("period")), 20)
        report.scope = printable(str(manifest.get("scope")), 20)
        payee = manifest.get("payee_id")
        report.payee_id = None if payee is None else printable(str(payee), 128)
        report.created_at = printable(str(manifest.get("created_at")), 40)
        report.expected_sha256 = printable(str(manifest.get("expected_sha256")), 64)
        for field_name in ("period", "payee_id"):
            if manifest.get(field_name) != inputs.get(field_name):
                report.problems.append(
                    f"the manifest and {bundle.INPUTS} name another {field_name}"
                )

        listed = _listed_members(manifest)
        seen: set[str] = set()
        for member in read:
            if member.name == bundle.MANIFEST:
                continue
            if member.name in seen:
                report.problems.append(f"member {printable(member.name)} is in the archive twice")
            seen.add(member.name)
            entry = listed.get(member.name)
            if entry is None:
                report.problems.append(f"member {printable(member.name)} is not in the manifest")
            elif entry.sha256 != member.sha256:
                report.problems.append(
                    f"{printable(member.name)} was changed: its SHA-256 is {member.sha256},"
                    f" the manifest's {printable(entry.sha256, 64)}"
                )
        for name, entry in listed.items():
            if name not in seen:
                rows = f" ({entry.rows:,} rows)" if entry.rows is not None else ""
                report.problems.append(f"member {printable(name)}{rows} is missing")

        counts = manifest.get("counts")
        if not isinstance(counts, dict):
            raise bundle.FormatError(f"{bundle.MANIFEST} has no counts")
        for name, count in self.counts.items():
            if counts.get(name) != count:
                report.problems.append(
                    f"the manifest counts {printable(str(counts.get(name)), 20)} {name},"
                    f" the bundle holds {count:,}"
                )
        wanted = manifest.get("licences")
        if not isinstance(wanted, dict):
            raise bundle.FormatError(f"{bundle.MANIFEST} has no licences")
        for licence_id, member in sorted(wanted.items()):
            if licence_id not in licences:
                report.problems.append(
                    f"licence {printable(str(licence_id))} ({printable(str(member))}) is missing"
                )

    # --- the statement -------------------------------------------------------------------

    def _recompute(
        self,
        inputs: Mapping[str, Any],
        statement: Any,
        statement_bytes: bytes,
        loaded: Loaded,
        licences: Mapping[str, tuple[str, Licence]],
        approvals: list[Approval],
    ) -> None:
        report = self.report
        try:
            period = Period.parse(str(inputs["period"]))
            restate = RestateInputs.parse(_mapping(inputs["statement_inputs"], "statement_inputs"))
            unusable = {str(k): str(v) for k, v in (inputs.get("unusable_licences") or {}).items()}
            payee = inputs.get("payee_id")
            part = None if payee is None else tuple(str(x) for x in inputs["licence_ids"])
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as error:
            raise bundle.FormatError(f"{bundle.INPUTS} is malformed: {describe(error)}") from None
        loaded.exclude_licences(unusable)
        report.notes.extend(d.detail for d in loaded.defects[:MAX_NAMED])
        events = loaded.items
        used = {getattr(e, "licence_id", None) or "" for e in events}
        registry = [licence for _, licence in licences.values()]
        if part is None:
            chosen = restate.priced(registry, period, restate.licences | used)
            document = compute_statement(
                period,
                chosen,
                events,
                thresholds=restate.thresholds,
                carried_in=restate.carried_in,
                approvals=approvals,
                approval_renders_in=restate.approval_renders_in,
            ).to_document()
        else:
            if isinstance(statement, dict) and part != part_licence_ids(statement, str(payee)):
                report.problems.append(
                    f"{bundle.INPUTS} names other licences than the part in {bundle.STATEMENT}"
                )
            document = compute_part(
                period,
                restate.priced(registry, period, set(part) | used),
                events,
                str(payee),
                part,
                thresholds=restate.thresholds,
                carried_in=restate.carried_in,
                approvals=approvals,
                approval_renders_in=restate.approval_renders_in,
            )
        recomputed = canonical_json(document)
        report.recomputed_sha256 = hashlib.sha256(recomputed).hexdigest()
        if report.statement_sha256 != report.expected_sha256:
            report.problems.append(
                f"{bundle.STATEMENT} is not the statement the manifest names: its SHA-256 is"
                f" {report.statement_sha256}"
            )
        if report.recomputed_sha256 != report.expected_sha256:
            report.problems.append(
                "the events, licences and inputs do not give the statement: recomputed"
                f" SHA-256 {report.recomputed_sha256}"
            )
        if recomputed != statement_bytes:
            found = differences(statement, document) or [
                f"{bundle.STATEMENT} is not in canonical form (the same values, other bytes)"
            ]
            if len(found) > MAX_DIFFERENCES:
                more = len(found) - MAX_DIFFERENCES
                found = [*found[:MAX_DIFFERENCES], f"… and {more:,} more differences"]
            report.differences = found


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise bundle.FormatError(f"{name} is not a JSON object")
    return value


def _listed_members(manifest: Mapping[str, Any]) -> dict[str, bundle.Member]:
    listed = manifest.get("members")
    if not isinstance(listed, list):
        raise bundle.FormatError(f"{bundle.MANIFEST} has no member list")
    out: dict[str, bundle.Member] = {}
    for doc in listed:
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise bundle.FormatError(f"{bundle.MANIFEST} lists a member without a name")
        rows, size = doc.get("rows"), doc.get("size")
        out[doc["name"]] = bundle.Member(
            doc["name"],
            size if isinstance(size, int) else -1,
            str(doc.get("sha256")),
            rows if isinstance(rows, int) else None,
        )
    return out
