"""A corpus of hostile usage records: what an attacker with an ordinary vendor key can send.

Each :class:`Hostile` is one record's bytes (value, key, headers) with the verdict every
reader must reach: the reject reason, or None when the record is valid (a hostile header
around a valid event must change nothing). The demo's hostile vendor writes the refused
ones straight onto the usage topic; the unit tier runs the corpus through the gateway's
and the meter's admission (they must agree on every record); the end-to-end poison test
publishes it between good events on the real stack.

Everything is built for one vendor (``vendor``, signing with ``key``) and its licence
(``licence_id``, avatar ``avatar_id``, ``currency``); ``other_licence`` belongs to
another vendor, whose key is ``other_key``. Cases that need a revoked key are left out
when the identity has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs import receipt
from residuals.codecs.signing import sign_batch, sign_event
from residuals.codecs.timestamps import set_timestamp
from residuals.domain.vocabulary import RejectReason
from residuals.v1 import common_pb2, usage_pb2

R = RejectReason


@dataclass(frozen=True)
class Hostile:
    name: str
    value: bytes | None
    #: The reason every reader must give, or None: the record is valid and is rated.
    reason: RejectReason | None
    #: Extra Kafka headers (a vendor writing to the topic directly can set any).
    headers: tuple[tuple[str, bytes], ...] = ()
    #: The record key when it is not the licence id (the meter checks routing).
    key: bytes | None = None
    #: Only the meter sees it (Kafka-level: a tombstone, headers, the record key).
    kafka_only: bool = False


@dataclass
class Identity:
    """Who the corpus is built for."""

    vendor: str
    key_id: str
    key: Ed25519PrivateKey
    licence_id: str
    avatar_id: str
    other_vendor: str
    other_key_id: str
    other_key: Ed25519PrivateKey
    other_licence: str
    revoked_key_id: str = ""
    revoked_key: Ed25519PrivateKey | None = None
    #: The licence's currency (revenue in another one is CURRENCY_MISMATCH).
    currency: str = "USD"
    #: Makes every event id of one corpus unique (several runs share a ledger).
    prefix: str = ""
    _n: list[int] = field(default_factory=lambda: [0])

    def event_id(self, name: str) -> str:
        self._n[0] += 1
        return f"{self.prefix}{name}-{self._n[0]}"


def corpus(who: Identity, now: datetime) -> list[Hostile]:
    """Every hostile record, built to be judged at about ``now``."""

    def event(
        name: str, kind: int = common_pb2.USAGE_KIND_RENDER, **fields: object
    ) -> usage_pb2.UsageEvent:
        message = usage_pb2.UsageEvent(
            event_id=who.event_id(name),
            vendor_id=who.vendor,
            kind=kind,  # type: ignore[arg-type]
            licence_id=who.licence_id,
            avatar_id=who.avatar_id,
            render_id=f"vid-{name}",
            category="product_demo",
            territory="GB",
        )
        if kind in (common_pb2.USAGE_KIND_VIEW, common_pb2.USAGE_KIND_AD_IMPRESSION):
            message.channel = "web"
        if kind == common_pb2.USAGE_KIND_AD_IMPRESSION:
            message.ad_revenue = "1.25"
        set_timestamp(message.occurred_at, now - timedelta(minutes=1))
        occurred = fields.pop("occurred_at", None)
        if isinstance(occurred, datetime):
            set_timestamp(message.occurred_at, occurred)
        for key, value in fields.items():
            setattr(message, key, value)
        return message

    def signed(
        message: usage_pb2.UsageEvent,
        key_id: str | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> usage_pb2.SignedUsageEvent:
        return sign_event(message, key_id or who.key_id, key or who.key)

    def sign_bytes(payload: bytes) -> bytes:
        envelope = usage_pb2.SignedUsageEvent(
            payload=payload, signature=who.key.sign(payload), key_id=who.key_id
        )
        return envelope.SerializeToString()

    def ok(name: str, message: usage_pb2.UsageEvent) -> bytes:
        return signed(message).SerializeToString()

    def mutate(name: str, change: Callable[[usage_pb2.SignedUsageEvent], None]) -> bytes:
        envelope = signed(event(name))
        change(envelope)
        return envelope.SerializeToString()

    def raw_timestamp(name: str, seconds: int, nanos: int) -> bytes:
        message = event(name)
        message.occurred_at.seconds = seconds
        message.occurred_at.nanos = nanos
        return ok(name, message)

    batch = sign_batch([event("batch-a"), event("batch-b"), event("batch-c")], who.key_id, who.key)
    moved = usage_pb2.SignedUsageEvent()
    moved.CopyFrom(batch[1])
    moved.batch.leaf_index = 2
    short_path = usage_pb2.SignedUsageEvent()
    short_path.CopyFrom(batch[0])
    short_path.batch.audit_path[0] = short_path.batch.audit_path[0][:31]

    mistyped_envelope = ok("mistyped-envelope", event("mistyped-envelope")) + b"\x18\x05"
    mistyped_payload = sign_bytes(event("mistyped-payload").SerializeToString() + b"\x5a\x01x")
    unsigned_payload = usage_pb2.SignedUsageEvent(
        payload=event("short-sig").SerializeToString(), signature=b"\x01" * 10, key_id=who.key_id
    ).SerializeToString()
    tampered = signed(event("tampered"))
    tampered.payload = tampered.payload.replace(b"GB", b"US")
    garbage_trace = signed(event("garbage-trace"))
    garbage_trace.trace.traceparent = "00-\x00\x1b[31m" + "f" * 9000
    garbage_trace.trace.tracestate = "\x00" * 100
    valid = ok("valid-with-forged-headers", event("valid-with-forged-headers"))
    forged_stamp = receipt.stamp(b"\x00" * 32, now + timedelta(days=30000), valid)

    cases = [
        # --- bytes -------------------------------------------------------------------------
        Hostile("tombstone", None, R.MALFORMED, kafka_only=True),
        Hostile("garbage bytes", b"\xff\xfe\xfd\x00\x01", R.MALFORMED),
        Hostile("empty record", b"", R.BAD_SIGNATURE),
        Hostile("oversized record", b"\x0a" + b"\xff" * 70_000, R.OVERSIZED),
        Hostile("envelope field with the wrong wire type", mistyped_envelope, R.MALFORMED),
        Hostile(
            "key id with a NUL byte",
            mutate("nul-key", lambda e: setattr(e, "key_id", "k\x00")),
            R.MALFORMED,
        ),
        Hostile(
            "key id of 5,000 characters",
            mutate("long-key", lambda e: setattr(e, "key_id", "k" * 5000)),
            R.MALFORMED,
        ),
        # --- signatures ----------------------------------------------------------------------
        Hostile(
            "unknown signing key",
            mutate("unknown-key", lambda e: setattr(e, "key_id", "no-such-key")),
            R.BAD_SIGNATURE,
        ),
        Hostile(
            "another vendor's key",
            signed(
                event("other-key", vendor_id=who.other_vendor, licence_id=who.other_licence),
                who.other_key_id,
                who.other_key,
            ).SerializeToString(),
            R.BAD_SIGNATURE,
        ),
        Hostile("tampered payload", tampered.SerializeToString(), R.BAD_SIGNATURE),
        Hostile("10-byte signature", unsigned_payload, R.BAD_SIGNATURE),
        Hostile("batch proof moved to another leaf", moved.SerializeToString(), R.BAD_SIGNATURE),
        Hostile("batch proof with a 31-byte hash", short_path.SerializeToString(), R.BAD_SIGNATURE),
        Hostile("replayed batch member", batch[2].SerializeToString(), None),
        # --- payload decoding ----------------------------------------------------------------
        Hostile("signed garbage payload", sign_bytes(b"\xff\xff\xff\xff"), R.MALFORMED),
        Hostile("payload field with the wrong wire type", mistyped_payload, R.MALFORMED),
        Hostile("occurred_at nanos -1", raw_timestamp("nanos", 1_790_000_000, -1), R.MALFORMED),
        Hostile("occurred_at seconds 2^62", raw_timestamp("huge", 2**62, 0), R.MALFORMED),
        Hostile(
            "occurred_at in 1999",
            ok("y1999", event("y1999", occurred_at=datetime(1999, 12, 31, tzinfo=now.tzinfo))),
            R.MALFORMED,
        ),
        Hostile("unknown kind 99", ok("kind99", event("kind99", kind=99)), R.MALFORMED),
        Hostile("unspecified kind", ok("kind0", event("kind0", kind=0)), R.MALFORMED),
        # --- ids and labels ------------------------------------------------------------------
        Hostile(
            "event id with a NUL byte",
            ok("nul", event("nul", event_id="ev\x00il")),
            R.MALFORMED,
        ),
        Hostile(
            "event id of 60,000 characters",
            ok("long", event("long", event_id="e" * 60_000)),
            R.MALFORMED,
        ),
        Hostile(
            "render id with terminal escapes",
            ok("ansi", event("ansi", render_id="vid\x1b[2J\x1b[31mPWNED")),
            R.MALFORMED,
        ),
        Hostile(
            "category with a bidi override",
            ok("bidi", event("bidi", category="product_demo\u202e")),
            R.MALFORMED,
        ),
        Hostile(
            "SQL in the territory",
            ok("sql", event("sql", territory="GB'; DROP TABLE usage_events; --")),
            None,  # printable and short: an ordinary territory value, parameterised everywhere
        ),
        # --- amounts and quantities ----------------------------------------------------------
        Hostile(
            "ad revenue 9e999999",
            ok("exp", event("exp", common_pb2.USAGE_KIND_AD_IMPRESSION, ad_revenue="9e999999")),
            R.MALFORMED,
        ),
        Hostile(
            "ad revenue NaN",
            ok("nan", event("nan", common_pb2.USAGE_KIND_AD_IMPRESSION, ad_revenue="NaN")),
            R.MALFORMED,
        ),
        Hostile(
            "ad revenue 1e58",
            ok("1e58", event("1e58", common_pb2.USAGE_KIND_AD_IMPRESSION, ad_revenue="1e58")),
            R.MALFORMED,
        ),
        Hostile(
            "ad revenue with 10 fraction digits",
            ok(
                "frac",
                event("frac", common_pb2.USAGE_KIND_AD_IMPRESSION, ad_revenue="0.0000000001"),
            ),
            R.MALFORMED,
        ),
        Hostile(
            "negative ad revenue",
            ok("neg", event("neg", common_pb2.USAGE_KIND_AD_IMPRESSION, ad_revenue="-5")),
            R.MALFORMED,
        ),
        Hostile("quantity 0", ok("q0", event("q0", quantity=0)), R.INVALID_QUANTITY),
        Hostile(
            "quantity 2,000,000", ok("q2m", event("q2m", quantity=2_000_000)), R.INVALID_QUANTITY
        ),
        # --- time ----------------------------------------------------------------------------
        Hostile(
            "a day in the future",
            ok("future", event("future", occurred_at=now + timedelta(days=1))),
            R.IN_FUTURE,
        ),
        Hostile(
            "200 days old",
            ok("old", event("old", occurred_at=now - timedelta(days=200))),
            R.TOO_LATE,
        ),
        # --- tenancy -------------------------------------------------------------------------
        Hostile(
            "unknown licence",
            ok("nolic", event("nolic", licence_id="LIC-NOPE")),
            R.UNKNOWN_LICENCE,
            key=b"LIC-NOPE",
        ),
        Hostile(
            "another vendor's licence",
            ok("cross", event("cross", licence_id=who.other_licence)),
            R.VENDOR_MISMATCH,
            key=who.other_licence.encode(),
        ),
        Hostile(
            "payload names another vendor",
            ok("spoof", event("spoof", vendor_id=who.other_vendor)),
            R.VENDOR_MISMATCH,
        ),
        Hostile(
            "another avatar",
            ok("avatar", event("avatar", avatar_id="AVA-SOMEONE-ELSE")),
            R.AVATAR_MISMATCH,
        ),
        Hostile(
            "revenue in another currency",
            ok(
                "ccy",
                event(
                    "ccy",
                    common_pb2.USAGE_KIND_AD_IMPRESSION,
                    ad_revenue="1.00",
                    ad_revenue_currency="JPY" if who.currency != "JPY" else "USD",
                ),
            ),
            R.CURRENCY_MISMATCH,
        ),
        Hostile("render without render_id", ok("norid", event("norid", render_id="")), R.MALFORMED),
        Hostile(
            "retraction without original",
            ok("noorig", event("noorig", common_pb2.USAGE_KIND_RETRACTION)),
            R.MALFORMED,
        ),
        # --- envelope extras and Kafka-level tricks -------------------------------------------
        Hostile("garbage trace context", garbage_trace.SerializeToString(), None),
        Hostile(
            "forged receipt headers around a valid event",
            valid,
            None,
            headers=(
                ("residuals-received-at", b"2100-01-01T00:00:00+00:00"),
                ("residuals-receipt", forged_stamp),
                ("traceparent", b"\x00\xff" * 40),
            ),
            kafka_only=True,
        ),
        Hostile(
            "record key that is not the event's licence",
            ok("misrouted", event("misrouted")),
            R.MALFORMED,
            key=b"LIC-SOMEWHERE-ELSE",
            kafka_only=True,
        ),
        Hostile(
            "non-UTF-8 vendor claim header",
            ok("badclaim", event("badclaim")),
            R.BAD_SIGNATURE,
            headers=(("residuals-vendor", b"\xff\xfe"),),
            kafka_only=True,
        ),
    ]
    if who.revoked_key is not None:
        cases.append(
            Hostile(
                "revoked signing key",
                signed(event("revoked"), who.revoked_key_id, who.revoked_key).SerializeToString(),
                R.BAD_SIGNATURE,
            )
        )
    return cases
