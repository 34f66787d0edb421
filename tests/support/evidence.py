"""Evidence bundle helpers: a closed month whose ledger rows carry real signatures and
batch proofs (stored by the ledger writer's own store from the meter's records), and a
bundle rewritten as a tamperer would rewrite it.

The month (October 2026, vendor VEN-1 with two registered keys):

* LIC-1 (TAL-1): six renders signed as ONE batch (Merkle proofs, ``k-batch``), one of
  them (``r5``) approved under APR-1; ``x`` (per-event, ``k-single``) and a conflicting
  re-send of ``x`` naming LIC-3 (the ledger stores it under LIC-1, its payload names
  LIC-3: the part's bundle needs LIC-3's licence too); a dead letter;
* LIC-2 (TAL-1 25 %, AGT-1 75 %): four views signed one by one (``k-single``), and a
  retraction of ``v0`` that names no licence;
* LIC-3 (EST-1): four renders in a second batch (``k-batch``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs.signing import public_key_bytes, sign_batch, sign_event
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import from_domain
from residuals.domain.approvals import Approval
from residuals.domain.events import UsageEvent
from residuals.domain.period import Period
from residuals.evidence import format as bundle
from residuals.licensing.registry import Registry
from residuals.payouts import store
from residuals.payouts.adapters import stored_sources
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.sources import Sources
from residuals.platform.postgres import Database
from residuals.v1 import common_pb2, licence_pb2, licence_service_pb2, usage_pb2
from tests.support.builders import ev, licence, parsed
from tests.support.ledger import DLQ, USAGE, Ledger, Message, Outcome
from tests.support.payouts import ADMIN, record_request, register

OCT = Period(2026, 10)
LATER = datetime(2027, 6, 1, tzinfo=UTC)
KEYS = {
    "k-batch": Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
    "k-single": Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))),
}
APPROVAL = Approval("APR-1", "LIC-1", "product_demo", datetime(2026, 10, 1, tzinfo=UTC), None, 3)


@dataclass
class SignedMonth:
    dsn: str
    db: Database
    sources: Sources
    stored: store.StoredStatement
    #: event id -> the key that signed its (first) row.
    signed_by: dict[str, str]


def signed_month(dsn: str, db: Database) -> SignedMonth:
    """Register, ledger and close the month described in the module docstring."""
    registry = Registry(db)
    for payee in ("AGT-1", "EST-1"):
        registry.create_payee(ADMIN, licence_pb2.Payee(payee_id=payee))
    register(
        db,
        licence(licence_id="LIC-1", scope={"approval_required": ["product_demo"]}),
        licence(licence_id="LIC-2", splits={"TAL-1": "0.25", "AGT-1": "0.75"}),
        licence(licence_id="LIC-3", splits={"EST-1": "1"}),
    )
    for key_id, private in KEYS.items():
        registry.register_signing_key(
            ADMIN,
            licence_service_pb2.RegisterSigningKeyRequest(
                vendor_id="VEN-1", key_id=key_id, public_key=public_key_bytes(private)
            ),
        )
    record_request(dsn, APPROVAL)

    ledger = Ledger(dsn)
    signed_by: dict[str, str] = {}
    messages: list[Message] = []

    def add(event: UsageEvent, envelope: usage_pb2.SignedUsageEvent, **kw: Any) -> None:
        signed_by.setdefault(event.event_id, envelope.key_id)
        messages.append(ledger.rated(event, signed=envelope, **kw))

    def day(n: int) -> str:  # fixed times: scope order (hence the approval's renders) too
        return f"2026-10-{n:02d}T10:00:00Z"

    renders = [
        parsed(
            ev(
                "RENDER",
                event_id=f"r{n}",
                quantity=3 + n,
                approval_id="APR-1",
                occurred_at=day(2 + n),
            )
        )
        for n in range(6)
    ]
    for event, envelope in zip(renders, _batch(renders, "k-batch"), strict=True):
        add(event, envelope)
    views = [
        parsed(
            ev("VIEW", event_id=f"v{n}", licence_id="LIC-2", quantity=1500, occurred_at=day(3 + n))
        )
        for n in range(4)
    ]
    for event in views:
        add(event, sign_event(from_domain(event), "k-single", KEYS["k-single"]))
    est = [
        parsed(
            ev("RENDER", event_id=f"e{n}", licence_id="LIC-3", quantity=2, occurred_at=day(4 + n))
        )
        for n in range(4)
    ]
    for event, envelope in zip(est, _batch(est, "k-batch"), strict=True):
        add(event, envelope)
    first = parsed(ev("RENDER", event_id="x", quantity=1, approval_id="APR-1", occurred_at=day(20)))
    add(first, sign_event(from_domain(first), "k-single", KEYS["k-single"]))
    resend = parsed(ev("RENDER", event_id="x", licence_id="LIC-3", quantity=9, occurred_at=day(21)))
    add(resend, sign_event(from_domain(resend), "k-single", KEYS["k-single"]), partition=2)
    retraction = parsed(
        ev(
            "RETRACTION",
            event_id="ret-1",
            licence_id=None,
            avatar_id=None,
            render_id=None,
            category=None,
            territory=None,
            original_event_id="v0",
            occurred_at=day(22),
        )
    )
    add(
        retraction,
        sign_event(from_domain(retraction), "k-single", KEYS["k-single"]),
        outcome=Outcome.OUTCOME_RETRACTED,
    )
    messages.append(_dead_letter(ledger, "LIC-1"))
    ledger.apply(*messages)

    sources = stored_sources()
    with db.connection() as conn:
        close_period(conn, sources, OCT, policy=ClosePolicy(), closed_by="t", now=LATER)
        stored = store.get_statement(conn, str(OCT))
    assert stored is not None
    return SignedMonth(dsn, db, sources, stored, signed_by)


def _batch(events: list[UsageEvent], key_id: str) -> list[usage_pb2.SignedUsageEvent]:
    return sign_batch([from_domain(e) for e in events], key_id, KEYS[key_id])


def _dead_letter(ledger: Ledger, licence_id: str) -> Message:
    ledger.offset += 1
    letter = usage_pb2.DeadLetter(
        reason=common_pb2.RejectReason.Value("REJECT_REASON_AVATAR_MISMATCH"),
        detail="avatar AVA-9 is not the licence's",
        vendor_id="VEN-1",
        event_id="dead-1",
        licence_id=licence_id,
        original=b"\x00as received",
        source_topic=USAGE,
        source_partition=0,
        source_offset=ledger.offset,
    )
    set_timestamp(letter.received_at, datetime(2026, 10, 9, tzinfo=UTC))
    return Message(DLQ, 0, ledger.offset, letter.SerializeToString())


# --- rewriting bundles ---------------------------------------------------------------------


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with path.open("rb") as source:
        return list(bundle.BundleReader(source))


def write_members(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An archive of ``members`` as they are (tar.gz, like the writer's)."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return path


Edit = Callable[[str, bytes], bytes | None]


def tampered(source: Path, target: Path, edit: Edit, *, refresh: bool = True) -> Path:
    """``source`` with ``edit(name, data)`` applied to every member but the manifest
    (None drops the member). ``refresh``: a careful tamperer, who also rewrites the
    manifest's member hashes so they match; otherwise the manifest is left as it was."""
    members = read_members(source)
    manifest = json.loads(dict(members)[bundle.MANIFEST])
    out: list[tuple[str, bytes]] = []
    for name, data in members:
        if name == bundle.MANIFEST:
            continue
        changed = edit(name, data)
        if changed is not None:
            out.append((name, changed))
    if refresh:
        manifest["members"] = [
            {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in out
        ]
    out.append((bundle.MANIFEST, json.dumps(manifest).encode()))
    return write_members(target, out)


def edit_rows(
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> Edit:
    """An edit of every events row (``change`` returns the row, changed, or None to drop
    it); other members unchanged."""

    def edit(name: str, data: bytes) -> bytes | None:
        if not name.startswith(bundle.EVENTS_DIR):
            return data
        rows = [change(json.loads(line)) for line in data.splitlines() if line.strip()]
        kept = [json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows if row]
        return b"".join(kept) if kept else None

    return edit


def edit_member(wanted: str, change: Callable[[Any], Any]) -> Edit:
    """An edit of one JSON member's document."""

    def edit(name: str, data: bytes) -> bytes | None:
        if name != wanted:
            return data
        return json.dumps(change(json.loads(data)), sort_keys=True, separators=(",", ":")).encode()

    return edit
