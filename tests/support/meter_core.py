"""Fakes for the meter's per-record core (residuals.meter.core) without Kafka: signing keys,
a partition's state store and signed usage records (tests/unit/test_meter_core.py and
test_meter_tracing.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs.signing import VerifyingKey, sign_event, signing_key_record
from residuals.codecs.usage import from_domain
from residuals.meter.core import Record
from tests.support.builders import parsed

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


class Keys:
    def __init__(self) -> None:
        self.keys = {
            "k1": VerifyingKey.from_proto(signing_key_record("k1", "VEN-1", KEY)),
            "k2": VerifyingKey.from_proto(signing_key_record("k2", "VEN-2", OTHER)),
        }

    def verifying_key(self, key_id: str) -> VerifyingKey | None:
        return self.keys.get(key_id)


class State:
    """The partition's state; ``writes`` in order, like the changelog."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.writes: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.data[key] = value
        self.writes.append(key)


def record(
    raw: dict[str, Any],
    offset: int = 0,
    *,
    key_id: str = "k1",
    private: Ed25519PrivateKey = KEY,
    received: datetime | None = None,
    routing: str | None = None,
    tamper: bool = False,
    partition: int = 0,
) -> Record:
    signed = sign_event(from_domain(parsed(raw)), key_id, private)
    if tamper:
        signed.payload = signed.payload + b"\x00"
    occurred = parsed(raw).occurred_at
    when = received or occurred + timedelta(seconds=5)
    return Record(
        topic="usage",
        partition=partition,
        offset=offset,
        key=(routing or raw.get("licence_id") or "VEN-1").encode(),
        value=signed.SerializeToString(),
        timestamp=when,  # the broker's append time
    )
