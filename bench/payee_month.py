"""A month of one payee's usage stored straight into a fresh database's ledger tables,
signed as the SDK signs it: for benchmarks that need a payee with a million events.

    store_payee_month(dsn, events=1_000_000)

* the registry (through its own code): ``LICENCES`` USD licences of talent ``TAL-BENCH``
  (85 %, agent ``AGT-BENCH`` 15 %) with vendor ``VEN-BENCH``, and one licence of another
  talent whose few events make the payee's part a real selection; the vendor's signing
  key ``k-bench``;
* the ledger: renders (graduated tiers), views and ad impressions over October 2026 on web
  and social, some in an unlicensed territory (held), a duplicate re-send every 250
  events (``usage_repeats``, the same evidence again) and a retraction every 1,000;
  signed 256 to a signature over the batch's RFC 9162 Merkle root, each row with its
  proof (:func:`residuals.codecs.signing.sign_in_batches`, as ``publish_many`` signs);
  received two seconds after they occurred; COPYed in arrival order, 25,600 at a time,
  so memory stays flat.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs.signing import public_key_bytes, sign_in_batches
from residuals.codecs.timestamps import set_timestamp
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.licensing.registry import Registry
from residuals.platform.auth import Principal, Role
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.v1 import common_pb2, licence_service_pb2, usage_pb2
from tests.support.licensing import register_licences

PERIOD = Period(2026, 10)
PAYEE = "TAL-BENCH"
VENDOR = "VEN-BENCH"
KEY_ID = "k-bench"
LICENCES = 4
#: Events per COPY (a multiple of the SDK's 256 per signature).
CHUNK = 25_600
ADMIN = Principal("p-bench", Role.ADMIN)
_TOPIC = "bench.usage"


@dataclass(frozen=True)
class PayeeMonth:
    period: Period
    payee_id: str
    #: Rows stored: accepted identities (and retractions), re-sends, the other talent's.
    events: int
    repeats: int
    others: int


def licence_specs(count: int = LICENCES) -> list[dict[str, Any]]:
    """The payee's licences, then the other talent's (royalty-case shape)."""
    specs = []
    for n in range(count + 1):
        mine = n < count
        talent = PAYEE if mine else "TAL-OTHER"
        specs.append(
            {
                "licence_id": f"LIC-BENCH-{n}" if mine else "LIC-OTHER",
                "talent_id": talent,
                "avatar_id": f"AVA-BENCH-{n}",
                "vendor_id": VENDOR,
                "currency": "USD",
                "starts_at": "2026-01-01T00:00:00Z",
                "scope": {
                    "categories_allowed": ["product_demo", "education"],
                    "categories_forbidden": ["political"],
                    "territories_allowed": ["US", "GB", "DE"],
                    "channels_allowed": ["web", "social"],
                },
                "rates": {
                    "render_tiers": [
                        {"up_to": 10_000, "unit_price": "0.50"},
                        {"up_to": None, "unit_price": "0.40"},
                    ],
                    "view_cpm": "2.50",
                    "ad_revenue_share": "0.35",
                    "ad_floor_cpm": "1.00",
                    "channel_multipliers": {"social": "1.2"},
                },
                "platform_fee": "0.10",
                "splits": {talent: "0.85", "AGT-BENCH": "0.15"} if mine else {talent: "1"},
            }
        )
    return specs


def _message(n: int, licence: Licence, rng: random.Random) -> usage_pb2.UsageEvent:
    """Event ``n``: a render, view or ad impression of ``licence`` (valid, in the month)."""
    roll = rng.random()
    kind = "RENDER" if roll < 0.4 else "VIEW" if roll < 0.8 else "AD_IMPRESSION"
    message = usage_pb2.UsageEvent(
        event_id=f"ev-{n:08d}",
        vendor_id=VENDOR,
        kind=common_pb2.UsageKind.Value(f"USAGE_KIND_{kind}"),
        licence_id=licence.licence_id,
        avatar_id=licence.avatar_id,
        render_id=f"vid-{n // 8:07d}",
        category="product_demo" if n % 3 else "education",
        territory="FR" if n % 97 == 0 else ("US", "GB", "DE")[n % 3],
    )
    if kind != "RENDER":
        message.channel = "social" if n % 4 == 0 else "web"
        message.quantity = rng.randrange(100, 5000)
    else:
        message.quantity = rng.randrange(1, 4)
    if kind == "AD_IMPRESSION":
        message.ad_revenue = f"{rng.randrange(1, 5000) / 100:.2f}"
    return message


def _retraction(n: int, original: str) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        event_id=f"ret-{n:08d}",
        vendor_id=VENDOR,
        kind=common_pb2.UsageKind.Value("USAGE_KIND_RETRACTION"),
        original_event_id=original,
    )


def _messages(
    events: int, others: int, licences: list[Licence], seed: int
) -> Iterator[usage_pb2.UsageEvent]:
    """``events`` of the payee's licences and ``others`` of the last licence, interleaved,
    in arrival order (which is time order here)."""
    rng = random.Random(seed)
    start, span = PERIOD.start, int((PERIOD.end - PERIOD.start).total_seconds()) - 60
    mine, other = licences[:-1], licences[-1]
    total = events + others
    every_other = total // others if others else 0
    for n in range(total):
        if every_other and n % every_other == every_other - 1:
            licence = other
        else:
            licence = mine[n % len(mine)]
        if n % 1000 == 999:
            message = _retraction(n, f"ev-{n - 500:08d}")
        else:
            message = _message(n, licence, rng)
        set_timestamp(message.occurred_at, start + timedelta(seconds=span * n // total))
        yield message


#: arrival_seq is given, not drawn from the sequence: a re-send arrives right after its
#: original, across the two tables (the sequence is moved past the last one at the end).
_EVENT_COLUMNS = (
    "arrival_seq, vendor_id, event_id, licence_id, kind, occurred_at, payload, period,"
    " outcome, original_event_id, signature, key_id, signature_proof, received_at,"
    " source_topic, source_partition, source_offset"
)
_REPEAT_COLUMNS = (
    "arrival_seq, source_topic, source_partition, source_offset, vendor_id, event_id,"
    " licence_id, kind, outcome, decided_by, occurred_at, period, payload, signature, key_id,"
    " signature_proof, received_at"
)


def store_payee_month(
    dsn: str, events: int = 1_000_000, others: int = 10_000, seed: int = 17
) -> PayeeMonth:
    """Register the licences and key, then store ``events`` rows of the payee's licences
    and ``others`` of another talent's (see the module docstring)."""
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    licences = [parse_licence(spec) for spec in licence_specs()]
    db = Database(PostgresSettings(dsn=dsn, pool_min=1, pool_max=2), application_name="bench")
    db.open()
    try:
        registry = Registry(db)
        register_licences(registry, ADMIN, *licences)
        registry.register_signing_key(
            ADMIN,
            licence_service_pb2.RegisterSigningKeyRequest(
                vendor_id=VENDOR, key_id=KEY_ID, public_key=public_key_bytes(private)
            ),
        )
    finally:
        db.close()

    seq, repeats = 0, 0
    stream = _messages(events, others, licences, seed)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        while chunk := [m for _, m in zip(range(CHUNK), stream, strict=False)]:
            event_rows, repeat_rows = [], []
            for message, envelope in zip(
                chunk, sign_in_batches(chunk, KEY_ID, private), strict=True
            ):
                seq += 1
                row = _row(message, envelope)
                event_rows.append((seq, *row, _TOPIC, 0, seq))
                if seq % 250 == 0 and message.original_event_id == "":  # the SDK sent it again
                    seq += 1
                    repeats += 1
                    vendor, event_id, licence_id, kind, occurred, payload, period = row[:7]
                    repeat_rows.append(
                        (seq, _TOPIC, 0, seq, vendor, event_id, licence_id, kind, "DUPLICATE",
                         "meter", occurred, period, payload, *row[9:12], row[12] + _LATER)
                    )  # fmt: skip
            for table, columns, rows in (
                ("usage_events", _EVENT_COLUMNS, event_rows),
                ("usage_repeats", _REPEAT_COLUMNS, repeat_rows),
            ):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for values in rows:
                        copy.write_row(values)
        cur.execute("SELECT setval('ledger_arrival_seq', %s)", (seq,))
    return PayeeMonth(PERIOD, PAYEE, events + others, repeats, others)


_RECEIVED = timedelta(seconds=2)
_LATER = timedelta(seconds=1)


def _row(message: usage_pb2.UsageEvent, envelope: usage_pb2.SignedUsageEvent) -> tuple[Any, ...]:
    """A usage_events row's values from vendor_id to received_at (as the ledger writes)."""
    occurred = datetime.fromtimestamp(message.occurred_at.seconds, UTC)
    kind = common_pb2.UsageKind.Name(message.kind).removeprefix("USAGE_KIND_")
    if kind == "RETRACTION":
        outcome = "RETRACTED"
    else:
        outcome = "HELD" if message.territory == "FR" else "ACCEPTED"
    proof = envelope.batch.SerializeToString() if envelope.HasField("batch") else None
    return (
        VENDOR,
        message.event_id,
        message.licence_id,
        kind,
        occurred,
        envelope.payload,
        str(PERIOD),
        outcome,
        message.original_event_id or None,
        envelope.signature,
        KEY_ID,
        proof,
        occurred + _RECEIVED,
    )
