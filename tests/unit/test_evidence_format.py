"""The evidence bundle format without a database: the streaming writer and reader, rows,
keys and approvals as JSON, a bundle assembled in memory that ``verify`` accepts (and
rejects once changed), and a verifier that imports no database or network code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.signing import public_key_bytes, sign_batch, sign_event
from residuals.codecs.usage import from_domain
from residuals.domain.approvals import Approval
from residuals.domain.closing import canonical_json, content_hash
from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.parts import part_document, part_hash
from residuals.domain.statement import compute_statement
from residuals.evidence import format as bundle
from residuals.evidence.assemble import NoPart, Subject, assemble
from residuals.evidence.verify import UnreadableBundle, verify_stream
from residuals.ledger.rows import StoredRow
from residuals.v1 import usage_pb2
from tests.support.builders import PERIOD, ev, licence, parsed

CREATED = datetime(2026, 11, 5, 9, 30, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RECORD = SigningKeyRecord("k1", "VEN-1", public_key_bytes(KEY))
ROOT = Path(__file__).resolve().parents[2]


def _archive(members: list[tuple[str, bytes]], manifest: dict[str, object]) -> list[bytes]:
    writer = bundle.BundleWriter(CREATED, chunk_bytes=64 * 1024)
    chunks: list[bytes] = []
    for name, data in members:
        chunks += writer.add(name, data)
    chunks += writer.finish(manifest)
    assert writer.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert writer.size == sum(map(len, chunks))
    return chunks


def test_the_writer_streams_bounded_pieces_the_reader_reads_back() -> None:
    big = os.urandom(300_000)  # incompressible: several pieces
    members = [("statement.json", b"{}"), ("events/000001.jsonl", big)]
    chunks = _archive(members, {"format": bundle.FORMAT})
    assert len(chunks) > 4 and all(len(c) <= 64 * 1024 for c in chunks)
    reader = bundle.BundleReader(io.BytesIO(b"".join(chunks)))
    read = list(reader)
    assert [name for name, _ in read] == ["statement.json", "events/000001.jsonl", "manifest.json"]
    assert read[1][1] == big
    manifest = json.loads(read[2][1])
    assert manifest["format"] == bundle.FORMAT
    assert manifest["members"] == [
        {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members
    ]
    assert [m.sha256 for m in reader.members[:2]] == [e["sha256"] for e in manifest["members"]]


def test_the_reader_refuses_what_is_not_a_plain_member(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        link = tarfile.TarInfo("statement.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(bundle.FormatError, match="is not a regular file"):
        list(bundle.BundleReader(io.BytesIO(raw.getvalue())))
    monkeypatch.setattr(bundle, "MAX_MEMBER_BYTES", 10)
    chunks = _archive([("statement.json", b"x" * 11)], {})
    with pytest.raises(bundle.FormatError, match="more than the 10 a bundle member may have"):
        list(bundle.BundleReader(io.BytesIO(b"".join(chunks))))


def test_rows_keys_and_approvals_round_trip_through_json() -> None:
    (single,) = sign_batch([from_domain(parsed(ev(event_id="a")))], "k1", KEY)
    batch = sign_batch([from_domain(parsed(ev(event_id=f"b{n}"))) for n in range(3)], "k1", KEY)
    received = datetime(2026, 10, 3, 12, 0, 1, 250_000, tzinfo=UTC)
    rows = [
        StoredRow("usage_events", 1, "VEN-1", "a", single.payload, None, None, "ACCEPTED",
                  received, single.signature, "k1", None),
        StoredRow("usage_repeats", 2, "VEN-1", "b1", batch[1].payload, None, None, None,
                  received, batch[1].signature, "k1", batch[1].batch.SerializeToString()),
        StoredRow("dead_letters", 3, "VEN-1", "d", None, "AVATAR_MISMATCH", "avatar", None,
                  received),
    ]  # fmt: skip
    for row in rows:
        assert bundle.row_from_document(json.loads(bundle.row_line(row))) == row
    revoked = SigningKeyRecord("k2", "VEN-2", bytes(32), received)
    for key in (RECORD, revoked):
        assert bundle.key_from_document(bundle.key_document(key)) == key
    approval = Approval("APR-1", "LIC-1", "product_demo", received, received + timedelta(1), 2)
    assert bundle.approval_from_document(bundle.approval_document(approval)) == approval

    line = json.loads(bundle.row_line(rows[1]))
    for field, value, problem in [
        ("table", "statements", "table 'statements' is not one of"),
        ("arrival_seq", "2", "arrival_seq is not an integer"),
        ("payload", "%%%", "payload is not base64"),
        ("received_at", "2026-10-03T12:00:00", "received_at has no time zone"),
        ("vendor_id", None, "vendor_id is not text"),
    ]:
        with pytest.raises(bundle.FormatError, match=problem):
            bundle.row_from_document({**line, field: value})


def test_file_names_say_period_and_payee_safely() -> None:
    assert bundle.filename("2026-10", None) == "residuals-2026-10-all.residuals-evidence.tar.gz"
    assert (
        bundle.filename("2026-10", "TAL-1") == "residuals-2026-10-TAL-1.residuals-evidence.tar.gz"
    )
    assert (
        bundle.filename("2026-10", "../x y") == "residuals-2026-10-.._x_y.residuals-evidence.tar.gz"
    )


# --- a bundle in memory ------------------------------------------------------------------------


def _month() -> tuple[list[Licence], list[UsageEvent], list[StoredRow]]:
    lics = [licence(), licence(licence_id="LIC-2", splits={"TAL-1": "0.5", "AGT-1": "0.5"})]
    events = [parsed(ev("RENDER", event_id=f"r{n}", quantity=n + 1)) for n in range(5)]
    events += [
        parsed(ev("VIEW", event_id=f"v{n}", licence_id="LIC-2", quantity=900)) for n in range(3)
    ]
    envelopes = sign_batch([from_domain(e) for e in events[:5]], "k1", KEY)
    envelopes += [sign_event(from_domain(e), "k1", KEY) for e in events[5:]]
    rows = [
        StoredRow(
            "usage_events", seq, e.vendor_id, e.event_id, env.payload, None, None, "ACCEPTED",
            e.occurred_at + timedelta(seconds=2), env.signature, env.key_id,
            env.batch.SerializeToString() if env.HasField("batch") else None,
        )
        for seq, (e, env) in enumerate(zip(events, envelopes, strict=True), start=1)
    ]  # fmt: skip
    return lics, events, rows


def _bundle(payee_id: str | None, rows: list[StoredRow] | None = None) -> bytes:
    lics, events, stored = _month()
    document = compute_statement(PERIOD, lics, events).to_document()
    inputs = {"licences": [lic.licence_id for lic in lics], "advance": {}, "thresholds": {}}
    subject = Subject.of(
        period=str(PERIOD),
        statement_id="st-2026-10",
        canonical=canonical_json(document).decode(),
        content_hash=content_hash(document),
        inputs=inputs,
        payee_id=payee_id,
    )
    writer = bundle.BundleWriter(CREATED)
    registry = {lic.licence_id: lic for lic in lics}
    chunks = assemble(
        writer,
        subject,
        keys=[RECORD],
        rows=stored if rows is None else rows,
        licences=lambda ids: [registry[i] for i in sorted(ids & registry.keys())],
        approvals=lambda chosen: [],
    )
    return b"".join(chunks)


def test_a_bundle_assembled_in_memory_verifies() -> None:
    lics, events, _ = _month()
    document = compute_statement(PERIOD, lics, events).to_document()
    for payee, expected in [
        (None, content_hash(document)),
        ("AGT-1", part_hash(part_document(document, "AGT-1"))),
    ]:
        report = verify_stream(io.BytesIO(_bundle(payee)))
        assert report.ok, report.to_json()
        assert report.expected_sha256 == report.recomputed_sha256 == expected
    with pytest.raises(NoPart):
        _bundle("NOBODY")


def test_a_changed_row_is_named_and_a_truncated_bundle_is_unreadable() -> None:
    _, _, rows = _month()
    forged = usage_pb2.UsageEvent.FromString(rows[6].payload or b"")
    forged.quantity = 90_000
    rows[6] = rows[6]._replace(payload=forged.SerializeToString(deterministic=True))
    report = verify_stream(io.BytesIO(_bundle(None, rows)))
    assert [(f.event_id, f.reason) for f in report.failures] == [
        ("v1", "signature does not match the payload for key 'k1'")
    ]
    data = _bundle(None)
    with pytest.raises(UnreadableBundle, match="damaged or not an evidence bundle"):
        verify_stream(io.BytesIO(data[:-20]))


def test_the_verifier_imports_no_database_or_network_code() -> None:
    code = (
        "import sys, residuals.cli.verify, residuals.evidence.verify\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    database_or_network = {
        "psycopg",
        "psycopg_pool",
        "confluent_kafka",
        "grpc",
        "faust",
        "aiokafka",
    }
    assert not loaded & database_or_network, loaded & database_or_network
