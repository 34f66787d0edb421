"""Evidence bundles over the real ledger and registry tables: a payee's bundle and the whole
statement's round-trip through ``residuals verify``; a changed payload, key, statement line
or a removed event fails it, naming what fails; a damaged archive is unreadable (exit 2).

The month (tests/support/evidence.py) has batch-signed renders with Merkle proofs,
per-event signatures under a second key, an approval, a conflicting re-send naming another
licence, a retraction naming none, and a dead letter, all stored by the ledger writer's
own store and closed by the period close.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.cli import main
from residuals.codecs.signing import public_key_bytes
from residuals.domain.parts import part_document, part_hash
from residuals.evidence import format as bundle
from residuals.evidence.export import NoPart, evidence_chunks, open_export, write_evidence
from residuals.evidence.verify import Report, verify_bundle
from residuals.licensing.registry import Registry
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_service_pb2, usage_pb2
from tests.support.evidence import (
    SignedMonth,
    edit_member,
    edit_rows,
    read_members,
    signed_month,
    tampered,
    write_members,
)
from tests.support.payouts import ADMIN, migrated_database


@pytest.fixture(scope="module")
def month(stack: StackSettings) -> Iterator[SignedMonth]:
    """One closed month for every test here. The tests change bundles, not the tables (but
    for a key revoked after the fact, which must change nothing)."""
    with migrated_database(stack) as dsn:
        db = Database(PostgresSettings(dsn=dsn, pool_min=1, pool_max=2), application_name="t")
        db.open()
        try:
            yield signed_month(dsn, db)
        finally:
            db.close()


@pytest.fixture(scope="module")
def bundles(month: SignedMonth, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundles of TAL-1, AGT-1 and EST-1 and of the whole statement (key None: "all")."""
    folder = tmp_path_factory.mktemp("bundles")
    out = {}
    with month.db.connection() as conn:
        for payee in ("TAL-1", "AGT-1", "EST-1", None):
            summary = write_evidence(conn, month.sources, month.stored, payee, folder)
            assert summary.path is not None
            out[payee or "all"] = Path(summary.path)
    return out


def _verified(path: Path) -> Report:
    report = verify_bundle(path)
    assert report.ok, report.to_json()
    return report


def _manifest(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(dict(read_members(path))[bundle.MANIFEST])
    return document


def test_payee_and_whole_statement_bundles_round_trip_through_verify(
    month: SignedMonth, bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    document = month.stored.document
    for payee in ("TAL-1", "AGT-1", "EST-1"):
        report = _verified(bundles[payee])
        assert report.expected_sha256 == part_hash(part_document(document, payee))
        assert report.recomputed_sha256 == report.expected_sha256
        assert (report.scope, report.payee_id, report.period) == ("payee", payee, "2026-10")
    whole = _verified(bundles["all"])
    assert whole.expected_sha256 == month.stored.content_hash
    assert whole.counts["events"] == month.stored.event_count - whole.counts["dead_letters"]
    assert whole.counts == {
        "events": 17,
        "dead_letters": 1,
        "keys": 2,
        "licences": 3,
        "approvals": 1,
        "members": 9,
    }

    # TAL-1's part: LIC-1 and LIC-2 rows, the retraction naming no licence, the re-send
    # naming LIC-3 (so LIC-3's licence comes too), batch proofs and per-event signatures.
    manifest = _manifest(bundles["TAL-1"])
    assert manifest["licence_ids"] == ["LIC-1", "LIC-2"]
    assert sorted(manifest["licences"]) == ["LIC-1", "LIC-2", "LIC-3"]
    rows = _rows(bundles["TAL-1"])
    assert {r["event_id"] for r in rows} >= {"r0", "v0", "ret-1", "x", "dead-1"}
    assert not {r["event_id"] for r in rows} & {"e0", "e1"}
    proofs = [r for r in rows if r.get("proof")]
    assert {r["key_id"] for r in proofs} == {"k-batch"}
    assert usage_pb2.BatchProof.FromString(base64.b64decode(proofs[0]["proof"])).leaf_count == 6
    assert [r["table"] for r in rows if r["event_id"] == "x"] == ["usage_events", "usage_repeats"]
    # EST-1's part has no row of LIC-1 or LIC-2.
    assert {r["event_id"][0] for r in _rows(bundles["EST-1"])} == {"e"}

    # The command: exit 0, a short report; --json for machines.
    assert main(["verify", str(bundles["TAL-1"])]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and part_hash(part_document(document, "TAL-1")) in out
    assert main(["verify", "--json", str(bundles["all"])]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def _rows(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for name, data in read_members(path)
        if name.startswith(bundle.EVENTS_DIR)
        for line in data.splitlines()
    ]


def test_a_key_revoked_after_the_events_still_verifies_them(
    month: SignedMonth, tmp_path: Path
) -> None:
    """Signatures are judged at receipt: revoking a key later voids nothing it signed."""
    Registry(month.db).revoke_signing_key(
        ADMIN, licence_service_pb2.RevokeSigningKeyRequest(key_id="k-single")
    )
    with month.db.connection() as conn:
        path = write_evidence(conn, month.sources, month.stored, "TAL-1", tmp_path).path
    assert path is not None
    keys = json.loads(dict(read_members(Path(path)))[bundle.KEYS])
    assert [k["revoked_at"] is not None for k in keys] == [False, True]
    _verified(Path(path))
    # A key revoked before the events were received does not verify them.
    early = tampered(
        Path(path),
        tmp_path / "early.tar.gz",
        edit_member(bundle.KEYS, lambda ks: [{**k, "revoked_at": "2026-10-01T00:00:00+00:00"}
                                             if k["key_id"] == "k-single" else k for k in ks]),
    )  # fmt: skip
    report = verify_bundle(early)
    named = {f.event_id for f in report.failures}
    assert named == {"v0", "v1", "v2", "v3", "x", "ret-1"}
    assert all("was revoked at 2026-10-01" in f.reason for f in report.failures)


def test_a_modified_payload_fails_naming_that_event(
    month: SignedMonth, bundles: dict[str, Path], tmp_path: Path
) -> None:
    def inflate(row: dict[str, Any]) -> dict[str, Any]:
        if row["event_id"] == "r2":
            event = usage_pb2.UsageEvent.FromString(base64.b64decode(row["payload"]))
            event.quantity = 500
            row["payload"] = base64.b64encode(event.SerializeToString(deterministic=True)).decode()
        return row

    for refresh in (True, False):
        path = tampered(
            bundles["TAL-1"], tmp_path / f"payload-{refresh}.tar.gz", edit_rows(inflate),
            refresh=refresh,
        )  # fmt: skip
        report = verify_bundle(path)
        assert report.exit_code == 1
        ((failure),) = report.failures
        assert (failure.vendor_id, failure.event_id) == ("VEN-1", "r2")
        assert failure.table == "usage_events"
        assert failure.reason == (
            "batch signature does not match the root proven for leaf 2 of 6 for key 'k-batch'"
        )
        assert report.differences == [  # r2 was held (APR-1 covers r0 only): 5 -> 500 units
            'licences[LIC-1].held[held/UNAPPROVED_USE/RENDER].amount: statement.json "62.00",'
            ' recomputed "1052.00"',
            "licences[LIC-1].held[held/UNAPPROVED_USE/RENDER].units: statement.json 31,"
            " recomputed 526",
        ]
        changed = [p for p in report.problems if "was changed" in p]
        if refresh:
            assert not changed
        else:
            ((problem),) = changed
            assert problem.startswith("events/000001.jsonl was changed: its SHA-256 is ")


def test_a_modified_key_fails_naming_the_events_it_signed(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = base64.b64encode(public_key_bytes(Ed25519PrivateKey.from_private_bytes(bytes(32))))

    def swap(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**k, "public_key": other.decode()} if k["key_id"] == "k-single" else k for k in keys
        ]

    path = tampered(bundles["all"], tmp_path / "key.tar.gz", edit_member(bundle.KEYS, swap))
    report = verify_bundle(path)
    assert sorted(f.event_id for f in report.failures) == sorted(
        ["v0", "v1", "v2", "v3", "x", "x", "ret-1"]
    )
    assert all(f.reason == "signature does not match the payload for key 'k-single'"
               for f in report.failures)  # fmt: skip
    assert not report.differences  # the events are the same; their signatures are not
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "VEN-1/v2 (usage_events #" in out


def test_a_modified_statement_line_fails_naming_the_line(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    def overstate(part: dict[str, Any]) -> dict[str, Any]:
        (lic,) = part["licences"]  # AGT-1 is paid by LIC-2 only
        line = lic["lines"][0]
        line["units"] += 1000
        return part

    edit = edit_member(bundle.STATEMENT, overstate)
    path = tampered(bundles["AGT-1"], tmp_path / "line.tar.gz", edit)
    report = verify_bundle(path)
    assert not report.failures
    assert report.differences == [
        "licences[LIC-2].lines[VIEW/v1/web].units: statement.json 5500, recomputed 4500"
    ]
    assert report.recomputed_sha256 == _manifest(bundles["AGT-1"])["expected_sha256"]
    assert any(p.startswith("statement.json is not the statement the manifest names")
               for p in report.problems)  # fmt: skip


def test_a_removed_event_fails(
    month: SignedMonth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle, "ROWS_PER_MEMBER", 4)
    with month.db.connection() as conn:
        path = Path(write_evidence(conn, month.sources, month.stored, "TAL-1", tmp_path).path or "")
    names = [name for name, _ in read_members(path)]
    assert names[3:6] == ["events/000001.jsonl", "events/000002.jsonl", "events/000003.jsonl"]
    _verified(path)

    # One row dropped, the manifest's hashes made to match: the statement no longer follows.
    dropped = tampered(
        path, tmp_path / "row.tar.gz", edit_rows(lambda r: None if r["event_id"] == "v3" else r)
    )
    report = verify_bundle(dropped)
    assert not report.failures
    assert "licences[LIC-2].lines[VIEW/v1/web].units: statement.json 4500, recomputed 3000" in (
        report.differences
    )
    assert any(p.startswith("the manifest counts") for p in report.problems)

    # A whole member removed, the manifest untouched: named, and the statement differs.
    removed = tampered(
        path,
        tmp_path / "member.tar.gz",
        lambda name, data: None if name == "events/000002.jsonl" else data,
        refresh=False,
    )
    report = verify_bundle(removed)
    assert "member events/000002.jsonl (4 rows) is missing" in report.problems
    assert report.differences and report.exit_code == 1


def test_a_damaged_archive_is_unreadable(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bundles["EST-1"].read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": bytes(flipped),
        "not gzip": b"PK\x03\x04 a zip file",
        "empty": b"",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.tar.gz"
        path.write_bytes(content)
        assert main(["verify", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"residuals verify: {path}: "), err
        assert "Traceback" not in err
    no_manifest = write_members(
        tmp_path / "no-manifest.tar.gz",
        [(n, d) for n, d in read_members(bundles["EST-1"]) if n != bundle.MANIFEST],
    )
    assert main(["verify", "--json", str(no_manifest)]) == 2
    shown = json.loads(capsys.readouterr().out)
    assert shown["exit_code"] == 2 and "manifest.json expected" in shown["error"]
    assert main(["verify", str(tmp_path / "missing.tar.gz")]) == 2


def test_exports_stream_and_refuse_a_payee_without_a_part(month: SignedMonth) -> None:
    """As the payouts service exports (its own database role), in pieces."""
    settings = PostgresSettings(
        dsn=month.dsn, pool_min=1, pool_max=1, user=database_role("payouts")
    )
    with Database(settings, application_name="t").open() as service, service.connection() as conn:
        with pytest.raises(NoPart, match="payee NOBODY has no part"):
            evidence_chunks(conn, month.sources, month.stored, "NOBODY")
        export = open_export(conn, month.sources, month.stored, "EST-1")
        assert export.filename == "residuals-2026-10-EST-1.residuals-evidence.tar.gz"
        chunks = list(export.chunks())
    assert export.summary is not None
    assert sum(map(len, chunks)) == export.summary.size
    assert all(len(c) <= bundle.CHUNK_BYTES for c in chunks)
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == export.summary.sha256


def test_an_export_stopped_midway_leaves_the_connection_usable(
    month: SignedMonth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gRPC client that goes away closes the iterator: the cursor and the reads end."""
    monkeypatch.setattr(bundle, "ROWS_PER_MEMBER", 2)
    with month.db.connection() as conn:
        chunks = open_export(conn, month.sources, month.stored, None, chunk_bytes=512).chunks()
        with closing(chunks):
            first = [next(chunks) for _ in range(3)]
            assert all(len(c) == 512 for c in first)
            assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (1,)  # midway
        assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
        again = open_export(conn, month.sources, month.stored, None).chunks()
        assert sum(map(len, again)) > 0


def test_finance_evidence_writes_a_bundle_verify_accepts(
    month: SignedMonth,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", month.dsn)
    assert main(["finance", "evidence", "--period", "2026-10", "--payee", "TAL-1",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    path = tmp_path / "residuals-2026-10-TAL-1.residuals-evidence.tar.gz"
    assert out.splitlines()[0] == str(path)
    assert main(["verify", str(path)]) == 0
    assert main(["finance", "evidence", "--period", "2026-11", "--out", str(tmp_path)]) == 1
    assert "2026-11 has no statement" in capsys.readouterr().err
    assert main(["finance", "evidence", "--period", "2026-10", "--payee", "NOBODY",
                 "--out", str(tmp_path / "x.tar.gz")]) == 1  # fmt: skip
    assert not (tmp_path / "x.tar.gz").exists()
    with psycopg.connect(month.dsn) as conn:  # the export wrote nothing
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
