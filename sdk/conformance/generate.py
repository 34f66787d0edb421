#!/usr/bin/env python3
"""Writes the signing conformance vectors (``sdk/conformance/*.json``) with the Python SDK.

Every byte in the vectors comes from ``residuals_sdk``: its event builders
(``residuals_sdk.events``), its deterministic serialization and Ed25519 signing
(``residuals_sdk.signing``) and its Merkle tree (``residuals_sdk.merkle``). The rejection
cases are honest envelopes altered in one way each; what Residuals must answer for them
(reason and detail) is written here by hand and checked against the services' verifier by
``tests/unit/test_conformance_vectors.py``, which also checks that the files are what this
script generates now. The format is sdk/SIGNING.md; the files' schema is
sdk/conformance/README.md.

    python sdk/conformance/generate.py          # rewrite the files
    python sdk/conformance/generate.py --check  # exit 1 if a file is stale
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from residuals_sdk import events as build
from residuals_sdk import merkle
from residuals_sdk._proto import common_pb2, ingest_pb2, usage_pb2
from residuals_sdk.signing import SigningKey, payload_bytes, sign_batch, sign_event
from residuals_sdk.transports.kafka import USAGE_TOPIC, VENDOR_HEADER

HERE = Path(__file__).resolve().parent
FILES = ("keys.json", "events.json", "batches.json", "verifier.json")
FORMAT = "residuals.signing-conformance.v1"

VENDOR = "VEN-CONFORMANCE"
OTHER_VENDOR = "VEN-OTHER"
# RFC 8032 §7.1 test keys 1-3, so an Ed25519 library can be checked against the RFC first.
KEY = SigningKey.from_private_bytes(
    "key-conformance-1",
    bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
)
#: Registered to another vendor.
OTHER_VENDOR_KEY = SigningKey.from_private_bytes(
    "key-other-vendor",
    bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"),
)
#: Registered to VENDOR, revoked before RECEIVED_AT.
REVOKED_KEY = SigningKey.from_private_bytes(
    "key-conformance-revoked",
    bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7"),
)
#: Never registered: signs while claiming KEY's id.
UNREGISTERED_KEY = SigningKey.from_private_bytes(
    KEY.key_id, hashlib.sha256(b"residuals conformance: an unregistered key").digest()
)
REVOKED_AT = datetime(2026, 3, 1, tzinfo=UTC)
#: The receipt time the verifier cases are judged at (every event is inside the window).
RECEIVED_AT = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
TRACE = common_pb2.TraceContext(
    traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    tracestate="vendor=conformance",
)
BATCH_SIZES = (1, 2, 3, 5, 8)
SIGNATURE_BATCH_SIZE = 256


def _hex(data: bytes) -> str:
    return data.hex()


def _rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


# --- the events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    builder: Callable[..., usage_pb2.UsageEvent]
    arguments: dict[str, Any]
    trace: common_pb2.TraceContext | None = None


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


COMMON = {"vendor_id": VENDOR, "licence_id": "LIC-0001", "avatar_id": "AVA-0001"}
CASES = (
    Case(
        "render",
        "A render of one video: quantity 1 is the default and is not serialized.",
        build.render,
        {
            "event_id": "evt-render-0001",
            **COMMON,
            "render_id": "REN-0001",
            "category": "product_demo",
            "territory": "GB",
            "occurred_at": _at("2026-03-14T09:26:53.589793Z"),
        },
    ),
    Case(
        "render-quantity-approval",
        "A render of 3 videos under a talent's approval, at a whole second (nanos 0, not"
        " serialized).",
        build.render,
        {
            "event_id": "evt-render-0002",
            **COMMON,
            "render_id": "REN-0002",
            "category": "political",
            "territory": "US",
            "occurred_at": _at("2026-03-14T10:00:00Z"),
            "quantity": 3,
            "approval_id": "APR-0001",
        },
    ),
    Case(
        "view",
        "250 views on the web: viewable (default true) and ivt (default false) are absent.",
        build.view,
        {
            "event_id": "evt-view-0001",
            **COMMON,
            "render_id": "REN-0001",
            "category": "product_demo",
            "territory": "GB",
            "channel": "web",
            "occurred_at": _at("2026-03-14T11:00:00.000001Z"),
            "quantity": 250,
        },
    ),
    Case(
        "view-not-viewable-ivt",
        "Views that were not viewable and are invalid traffic: explicit false and true"
        " (optional fields, so false is serialized).",
        build.view,
        {
            "event_id": "evt-view-0002",
            **COMMON,
            "render_id": "REN-0001",
            "category": "product_demo",
            "territory": "FR",
            "channel": "social",
            "occurred_at": _at("2026-03-14T11:05:00.5Z"),
            "quantity": 1_000_000,
            "viewable": False,
            "ivt": True,
        },
    ),
    Case(
        "ad-impression-revenue",
        "1,000 ad impressions with revenue, a decimal string with 9 fraction digits, in EUR;"
        " its envelope carries a trace context (outside the signed payload).",
        build.ad_impression,
        {
            "event_id": "evt-imp-0001",
            **COMMON,
            "render_id": "REN-0001",
            "category": "product_demo",
            "territory": "DE",
            "channel": "broadcast",
            "ad_revenue": Decimal("1234.567890123"),
            "ad_revenue_currency": "EUR",
            "occurred_at": _at("2026-03-14T11:30:00.25Z"),
            "quantity": 1000,
        },
        TRACE,
    ),
    Case(
        "ad-impression-zero-revenue",
        'An ad impression that earned nothing: ad_revenue is "0" (set, since it is an'
        " optional field) and the currency is empty (the licence's).",
        build.ad_impression,
        {
            "event_id": "evt-imp-0002",
            **COMMON,
            "render_id": "REN-0002",
            "category": "political",
            "territory": "US",
            "channel": "web",
            "ad_revenue": "0",
            "occurred_at": _at("2026-03-14T11:31:00Z"),
        },
    ),
    Case(
        "retraction",
        "A retraction of evt-view-0001 naming the original's licence (the Kafka record key).",
        build.retraction,
        {
            "event_id": "evt-retract-0001",
            "vendor_id": VENDOR,
            "original_event_id": "evt-view-0001",
            "licence_id": "LIC-0001",
            "occurred_at": _at("2026-03-14T11:45:00Z"),
        },
    ),
    Case(
        "retraction-without-licence",
        "A retraction without a licence id: the Kafka record key is the vendor id.",
        build.retraction,
        {
            "event_id": "evt-retract-0002",
            "vendor_id": VENDOR,
            "original_event_id": "evt-render-0002",
            "occurred_at": _at("2026-03-14T11:46:00Z"),
        },
    ),
    Case(
        "unicode",
        "Non-ASCII ids: 2-, 3- and 4-byte UTF-8 (an emoji is one code point, two UTF-16 code"
        " units). Strings are serialized as UTF-8 without normalization.",
        build.view,
        {
            "event_id": "évènement-Ω-0001",
            "vendor_id": VENDOR,
            "licence_id": "LIC-0001",
            "avatar_id": "アバター-1",
            "render_id": "рендер-😀-7",
            "category": "product_demo",
            "territory": "JP",
            "channel": "social",
            "occurred_at": _at("2026-03-14T11:50:00.123456Z"),
            "quantity": 7,
        },
    ),
)


def _fields(event: usage_pb2.UsageEvent) -> dict[str, Any]:
    """The event's set fields, by proto field name, in field-number order (README)."""
    out: dict[str, Any] = {}
    for descriptor, value in event.ListFields():
        name = descriptor.name
        if name == "kind":
            out[name] = common_pb2.UsageKind.Name(value)
        elif name == "occurred_at":
            out[name] = {"seconds": value.seconds, "nanos": value.nanos}
        else:
            out[name] = value
    return out


def _arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, datetime):
            out[name] = _rfc3339(value)
        elif isinstance(value, Decimal):
            out[name] = str(value)
        else:
            out[name] = value
    return out


def routing_key(event: usage_pb2.UsageEvent) -> str:
    return build.routing_key(event)


def _kafka_record(event: usage_pb2.UsageEvent, envelope: usage_pb2.SignedUsageEvent) -> Any:
    headers = []
    if envelope.trace.traceparent:
        headers.append({"name": "traceparent", "value": envelope.trace.traceparent})
        if envelope.trace.tracestate:
            headers.append({"name": "tracestate", "value": envelope.trace.tracestate})
    headers.append({"name": VENDOR_HEADER, "value": event.vendor_id})
    return {"topic": USAGE_TOPIC, "key": routing_key(event), "headers": headers}


def _json(message: Any) -> Any:
    return json_format.MessageToDict(message)


def _envelope(envelope: usage_pb2.SignedUsageEvent) -> dict[str, Any]:
    return {"envelope_hex": _hex(envelope.SerializeToString()), "envelope_json": _json(envelope)}


@dataclass
class Built:
    events: list[tuple[Case, usage_pb2.UsageEvent]] = field(default_factory=list)
    accept: list[dict[str, Any]] = field(default_factory=list)


def _events(built: Built) -> dict[str, Any]:
    entries = []
    for case in CASES:
        event = case.builder(**case.arguments)
        built.events.append((case, event))
        payload = payload_bytes(event)
        envelope = sign_event(event, KEY, case.trace)
        entries.append(
            {
                "name": case.name,
                "description": case.description,
                "builder": {
                    "function": f"residuals_sdk.events.{case.builder.__name__}",
                    "arguments": _arguments(case.arguments),
                },
                "fields": _fields(event),
                "payload_hex": _hex(payload),
                "leaf_hash_hex": _hex(merkle.leaf_hash(payload)),
                "signature_hex": _hex(envelope.signature),
                "trace": _json(case.trace) if case.trace is not None else None,
                **_envelope(envelope),
                "kafka_record": _kafka_record(event, envelope),
            }
        )
        built.accept.append(
            _verify_case(
                f"event/{case.name}",
                f"events.json {case.name!r}: a per-event signature.",
                envelope,
                record_key=routing_key(event),
            )
        )
    return {
        "format": FORMAT,
        "key_id": KEY.key_id,
        "description": "UsageEvents built with the Python SDK, their payload bytes and"
        " per-event envelopes signed with keys.json's signing key.",
        "events": entries,
    }


def _batches(built: Built) -> dict[str, Any]:
    entries = []
    for size in BATCH_SIZES:
        chosen = built.events[:size]
        events = [event for _, event in chosen]
        payloads = [payload_bytes(e) for e in events]
        root, paths = merkle.tree(payloads)
        envelopes = sign_batch(events, KEY)
        per_event = size == 1
        message = payloads[0] if per_event else merkle.batch_message(size, root)
        assert all(e.signature == envelopes[0].signature for e in envelopes)
        leaves = []
        for index, ((case, event), envelope) in enumerate(zip(chosen, envelopes, strict=True)):
            leaves.append(
                {
                    "event": case.name,
                    "leaf_index": index,
                    "leaf_count": size,
                    "audit_path_hex": [_hex(h) for h in paths[index]],
                    **_envelope(envelope),
                    "kafka_record": _kafka_record(event, envelope),
                }
            )
            built.accept.append(
                _verify_case(
                    f"batch-{size}/{index}",
                    f"batches.json size {size}, leaf {index} ({case.name}).",
                    envelope,
                    record_key=routing_key(event),
                )
            )
        entries.append(
            {
                "name": f"batch-{size}",
                "leaf_count": size,
                "signature_covers": "payload" if per_event else "batch_message",
                "events": [case.name for case, _ in chosen],
                "leaf_hashes_hex": [_hex(merkle.leaf_hash(p)) for p in payloads],
                "root_hex": _hex(root),
                "signed_message_hex": _hex(message),
                "signature_hex": _hex(envelopes[0].signature),
                "leaves": leaves,
                "publish_batch_request_json": _json(
                    ingest_pb2.PublishBatchRequest(events=envelopes)
                ),
            }
        )
    return {
        "format": FORMAT,
        "key_id": KEY.key_id,
        "batch_domain_hex": _hex(merkle.BATCH_DOMAIN),
        "description": "sign_batch over the first leaf_count events of events.json, in that"
        " order. A batch of one is signed per event (no proof), as the SDK does.",
        "batches": entries,
    }


# --- the verifier's cases --------------------------------------------------------------


def _verify_case(
    name: str,
    description: str,
    envelope: usage_pb2.SignedUsageEvent | bytes,
    *,
    record_key: str | None,
    vendor: str | None = VENDOR,
    expect: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    raw = envelope if isinstance(envelope, bytes) else envelope.SerializeToString()
    case: dict[str, Any] = {
        "name": name,
        "description": description,
        "envelope_hex": _hex(raw),
        "authenticated_vendor": vendor,
        "record_key": record_key,
    }
    if expect is None:
        case["expect"] = {"result": "accept", "vendor_id": VENDOR}
    else:
        reason, check, detail = expect
        case["expect"] = {"result": "reject", "reason": reason, "check": check, "detail": detail}
    return case


def _copy(envelope: usage_pb2.SignedUsageEvent) -> usage_pb2.SignedUsageEvent:
    out = usage_pb2.SignedUsageEvent()
    out.CopyFrom(envelope)
    return out


def _tampered(payload: bytes) -> bytes:
    """``payload`` with one letter of its event id changed (still a valid UsageEvent)."""
    at = payload.index(b"evt-") + 4
    return payload[:at] + bytes([payload[at] ^ 0x01]) + payload[at + 1 :]


def _noncanonical(event: usage_pb2.UsageEvent) -> bytes:
    """The same field values serialized in descending field-number order."""
    parts = [
        payload_bytes(usage_pb2.UsageEvent(**{descriptor.name: value}))
        for descriptor, value in event.ListFields()
    ]
    return b"".join(reversed(parts))


def _hand_batch(
    payloads: Sequence[bytes],
    index: int,
    key: SigningKey,
    *,
    message: Callable[[int, bytes], bytes] = merkle.batch_message,
    leaf: Callable[[bytes], bytes] = merkle.leaf_hash,
) -> usage_pb2.SignedUsageEvent:
    """A batch envelope signed over ``message(leaf_count, root)``: a signer's mistakes."""
    hashes = [leaf(p) for p in payloads]

    def root(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return hashes[lo]
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
        return merkle.node_hash(root(lo, mid), root(mid, hi))

    _, paths = merkle.tree(payloads)  # the honest path; only the root's leaf hash differs
    signature = key.sign(message(len(payloads), root(0, len(payloads))))
    return usage_pb2.SignedUsageEvent(
        payload=payloads[index],
        signature=signature,
        key_id=key.key_id,
        batch=usage_pb2.BatchProof(
            leaf_index=index, leaf_count=len(payloads), audit_path=paths[index]
        ),
    )


def _verifier(built: Built) -> dict[str, Any]:
    events = dict((case.name, event) for case, event in built.events)
    render = events["render"]
    render_key = routing_key(render)
    single = sign_event(render, KEY)
    five = [e for _, e in built.events[:5]]
    batch5 = sign_batch(five, KEY)
    payloads5 = [payload_bytes(e) for e in five]
    leaf2 = batch5[2]
    key_of_2 = routing_key(five[2])
    three = sign_batch([e for _, e in built.events[:3]], KEY)
    bad_sig = "BAD_SIGNATURE"
    k = KEY.key_id
    accept = list(built.accept)
    reject: list[dict[str, Any]] = []

    def add_reject(
        name: str,
        description: str,
        envelope: usage_pb2.SignedUsageEvent | bytes,
        expect: tuple[str, str, str],
        *,
        record_key: str | None = render_key,
        vendor: str | None = VENDOR,
    ) -> None:
        reject.append(
            _verify_case(
                name, description, envelope, record_key=record_key, vendor=vendor, expect=expect
            )
        )

    # Accepted although the SDK never makes them.
    payload = _noncanonical(render)
    accept.append(
        _verify_case(
            "noncanonical-payload",
            "The render's fields serialized in descending field-number order and signed as"
            " they are: the receiver verifies the bytes as sent and never re-serializes.",
            usage_pb2.SignedUsageEvent(payload=payload, signature=KEY.sign(payload), key_id=k),
            record_key=render_key,
        )
    )
    payload = payload_bytes(render)
    proof1 = usage_pb2.BatchProof(leaf_index=0, leaf_count=1)
    accept.append(
        _verify_case(
            "single-leaf-batch-proof",
            "A batch of one with an explicit proof (leaf_count 1, empty audit_path): the root"
            " is the leaf hash and the signature covers the batch message. The SDK signs a"
            " lone event per event instead; a verifier must accept both.",
            usage_pb2.SignedUsageEvent(
                payload=payload,
                signature=KEY.sign(merkle.batch_message(1, merkle.leaf_hash(payload))),
                key_id=k,
                batch=proof1,
            ),
            record_key=render_key,
        )
    )
    payload = payload_bytes(render) + bytes.fromhex("98061a")  # field 99, varint 26
    accept.append(
        _verify_case(
            "unknown-payload-field",
            "A payload with a field number this contract does not know (99, varint): a newer"
            " signer's field is signed, kept and otherwise ignored.",
            usage_pb2.SignedUsageEvent(payload=payload, signature=KEY.sign(payload), key_id=k),
            record_key=render_key,
        )
    )
    accept.append(
        _verify_case(
            "gateway-no-record-key",
            "The render's envelope as the gateway judges it: no Kafka record key to check.",
            single,
            record_key=None,
        )
    )
    accept.append(
        _verify_case(
            "meter-no-vendor-header",
            "The render's envelope on Kafka without a residuals-vendor header: the vendor is"
            " the signing key's.",
            single,
            record_key=render_key,
            vendor=None,
        )
    )

    # Envelope-level problems, in the verifier's order.
    envelope = _copy(single)
    envelope.key_id = ""
    add_reject(
        "no-key-id",
        "The render's envelope without key_id.",
        envelope,
        (bad_sig, "key_id_missing", "envelope has no key_id"),
    )
    envelope = _copy(single)
    envelope.key_id = "key\n1"
    add_reject(
        "key-id-not-printable",
        "A key_id with a control character: refused before any key lookup.",
        envelope,
        ("MALFORMED", "key_id_malformed", "key_id contains the non-printable character U+000A"),
    )
    envelope = _copy(single)
    envelope.signature = envelope.signature[:63]
    add_reject(
        "signature-63-bytes",
        "The render's signature without its last byte.",
        envelope,
        (bad_sig, "signature_length", "signature is 63 bytes, Ed25519 needs 64"),
    )
    envelope = _copy(single)
    envelope.key_id = "key-never-registered"
    add_reject(
        "unknown-key",
        "A key_id that no registered key has.",
        envelope,
        (bad_sig, "unknown_key", "unknown signing key 'key-never-registered'"),
    )
    add_reject(
        "key-of-another-vendor",
        "A valid envelope of VEN-OTHER's key, sent by an authenticated VEN-CONFORMANCE.",
        sign_event(render, OTHER_VENDOR_KEY),
        (
            bad_sig,
            "key_vendor",
            f"signing key {OTHER_VENDOR_KEY.key_id!r} is not registered to vendor {VENDOR!r}",
        ),
    )
    add_reject(
        "authenticated-as-another-vendor",
        "The render's valid envelope, but the caller authenticated as VEN-OTHER (API key or"
        " residuals-vendor header).",
        single,
        (bad_sig, "key_vendor", f"signing key {k!r} is not registered to vendor {OTHER_VENDOR!r}"),
        vendor=OTHER_VENDOR,
    )
    add_reject(
        "revoked-key",
        "A valid signature by a key revoked before the receipt time.",
        sign_event(render, REVOKED_KEY),
        (
            bad_sig,
            "key_revoked",
            f"signing key {REVOKED_KEY.key_id!r} was revoked at 2026-03-01T00:00:00Z",
        ),
    )

    # Per-event signatures.
    envelope = _copy(single)
    envelope.payload = _tampered(envelope.payload)
    add_reject(
        "tampered-payload",
        "The render's envelope with one bit of the payload's event_id flipped.",
        envelope,
        (bad_sig, "signature", f"signature does not match the payload for key {k!r}"),
    )
    add_reject(
        "signed-by-another-key",
        "The render signed by an unregistered key that claims the registered key's id.",
        sign_event(render, UNREGISTERED_KEY),
        (bad_sig, "signature", f"signature does not match the payload for key {k!r}"),
    )
    envelope = _copy(leaf2)
    envelope.ClearField("batch")
    add_reject(
        "batch-signature-without-proof",
        "Leaf 2 of batch-5 with its proof removed: a batch signature is never a per-event one.",
        envelope,
        (bad_sig, "signature", f"signature does not match the payload for key {k!r}"),
        record_key=key_of_2,
    )
    envelope = _copy(single)
    envelope.batch.CopyFrom(proof1)
    add_reject(
        "event-signature-with-proof",
        "The render's per-event signature with a single-leaf proof added: the signature does"
        " not cover the batch message.",
        envelope,
        (
            bad_sig,
            "batch_signature",
            f"batch signature does not match the root proven for leaf 0 of 1 for key {k!r}",
        ),
    )

    # Batch proofs: structure first, then the signature over the recomputed root.
    def batch_reject(
        name: str,
        description: str,
        change: Callable[[usage_pb2.SignedUsageEvent], None],
        check: str,
        detail: str,
    ) -> None:
        envelope = _copy(leaf2)
        change(envelope)
        add_reject(name, description, envelope, (bad_sig, check, detail), record_key=key_of_2)

    def leaf_count(n: int) -> Callable[[usage_pb2.SignedUsageEvent], None]:
        def change(envelope: usage_pb2.SignedUsageEvent) -> None:
            envelope.batch.leaf_count = n

        return change

    def leaf_index(n: int) -> Callable[[usage_pb2.SignedUsageEvent], None]:
        def change(envelope: usage_pb2.SignedUsageEvent) -> None:
            envelope.batch.leaf_index = n

        return change

    def path(change_path: Callable[[list[bytes]], list[bytes]]) -> Any:
        def change(envelope: usage_pb2.SignedUsageEvent) -> None:
            new = change_path(list(envelope.batch.audit_path))
            del envelope.batch.audit_path[:]
            envelope.batch.audit_path.extend(new)

        return change

    batch_reject(
        "leaf-count-zero",
        "Leaf 2 of batch-5 claiming leaf_count 0.",
        leaf_count(0),
        "leaf_count_zero",
        "batch leaf_count is 0",
    )
    batch_reject(
        "leaf-index-not-below-count",
        "Leaf 2 of batch-5 claiming leaf_index 5.",
        leaf_index(5),
        "leaf_index_range",
        "batch leaf_index 5 is not below leaf_count 5",
    )
    batch_reject(
        "audit-path-hash-31-bytes",
        "Leaf 2 of batch-5 with the last byte of audit_path[1] removed.",
        path(lambda p: [p[0], p[1][:31], p[2]]),
        "audit_path_hash_length",
        "batch audit_path[1] is 31 bytes, SHA-256 needs 32",
    )
    batch_reject(
        "audit-path-short",
        "Leaf 2 of batch-5 with its last audit path hash removed.",
        path(lambda p: p[:-1]),
        "audit_path_length",
        "batch audit_path has 2 hashes, leaf 2 of 5 needs 3",
    )
    batch_reject(
        "audit-path-long",
        "Leaf 2 of batch-5 with the root appended to its audit path.",
        path(lambda p: [*p, merkle.tree(payloads5)[0]]),
        "audit_path_length",
        "batch audit_path has 4 hashes, leaf 2 of 5 needs 3",
    )
    batch_reject(
        "audit-path-empty",
        "Leaf 2 of batch-5 with no audit path.",
        path(lambda p: []),
        "audit_path_length",
        "batch audit_path has 0 hashes, leaf 2 of 5 needs 3",
    )
    batch_reject(
        "audit-path-reversed",
        "Leaf 2 of batch-5 with its audit path root-to-leaf instead of leaf-to-root.",
        path(lambda p: p[::-1]),
        "batch_signature",
        f"batch signature does not match the root proven for leaf 2 of 5 for key {k!r}",
    )
    batch_reject(
        "wrong-leaf-index",
        "Leaf 2 of batch-5 claiming leaf_index 3 (same path length, another root).",
        leaf_index(3),
        "batch_signature",
        f"batch signature does not match the root proven for leaf 3 of 5 for key {k!r}",
    )
    batch_reject(
        "wrong-leaf-count",
        "Leaf 2 of batch-5 claiming leaf_count 6: same path length and root, but the signed"
        " message binds the count.",
        leaf_count(6),
        "batch_signature",
        f"batch signature does not match the root proven for leaf 2 of 6 for key {k!r}",
    )
    envelope = _copy(three[1])
    envelope.payload = _tampered(envelope.payload)
    add_reject(
        "batch-tampered-payload",
        "Leaf 1 of batch-3 with one bit of the payload's event_id flipped.",
        envelope,
        (
            bad_sig,
            "batch_signature",
            f"batch signature does not match the root proven for leaf 1 of 3 for key {k!r}",
        ),
        record_key=routing_key(built.events[1][1]),
    )
    mistakes: list[tuple[str, str, dict[str, Any]]] = [
        (
            "wrong-domain-prefix",
            'Signed over "residuals.usage-batch.v2\\n" || leaf_count || root.',
            {"message": lambda n, r: b"residuals.usage-batch.v2\n" + n.to_bytes(8, "big") + r},
        ),
        (
            "domain-prefix-without-newline",
            'Signed over "residuals.usage-batch.v1" (no trailing newline) || leaf_count || root.',
            {"message": lambda n, r: b"residuals.usage-batch.v1" + n.to_bytes(8, "big") + r},
        ),
        (
            "leaf-count-little-endian",
            "Signed with leaf_count as 8 bytes little-endian.",
            {"message": lambda n, r: merkle.BATCH_DOMAIN + n.to_bytes(8, "little") + r},
        ),
        (
            "root-signed-bare",
            "Signed over the root alone, without domain and leaf_count.",
            {"message": lambda n, r: r},
        ),
        (
            "leaf-hash-without-prefix",
            "Leaves hashed as SHA-256(payload), without the 0x00 prefix.",
            {"leaf": lambda p: hashlib.sha256(p).digest()},
        ),
        (
            "batch-signed-by-another-key",
            "The honest batch message signed by an unregistered key that claims the"
            " registered key's id.",
            {"key": UNREGISTERED_KEY},
        ),
    ]
    for name, description, how in mistakes:
        key = how.pop("key", KEY)
        add_reject(
            name,
            f"Leaf 2 of batch-5's events: {description}",
            _hand_batch(payloads5, 2, key, **how),
            (
                bad_sig,
                "batch_signature",
                f"batch signature does not match the root proven for leaf 2 of 5 for key {k!r}",
            ),
            record_key=key_of_2,
        )

    # After the signature: the payload itself, then the vendor and the record key.
    payload = bytes.fromhex("0801")  # field 1 (event_id, a string) sent as a varint
    add_reject(
        "payload-field-wrong-wire-type",
        "A validly signed payload whose event_id (field 1, a string) is sent as a varint.",
        usage_pb2.SignedUsageEvent(payload=payload, signature=KEY.sign(payload), key_id=k),
        (
            "MALFORMED",
            "payload_malformed",
            "payload is not a UsageEvent: payload: field event_id (1) has the wrong wire type 0",
        ),
    )
    other = usage_pb2.UsageEvent()
    other.CopyFrom(render)
    other.vendor_id = OTHER_VENDOR
    add_reject(
        "payload-names-another-vendor",
        "A validly signed render whose payload names VEN-OTHER.",
        sign_event(other, KEY),
        (
            "VENDOR_MISMATCH",
            "vendor_mismatch",
            f"payload names vendor {OTHER_VENDOR!r}, the event is signed by {VENDOR!r}",
        ),
    )
    add_reject(
        "record-key-not-licence",
        "The render's valid envelope on Kafka under the record key LIC-9999.",
        single,
        (
            "MALFORMED",
            "record_key",
            "record key 'LIC-9999' is not the event's licence 'LIC-0001'",
        ),
        record_key="LIC-9999",
    )
    return {
        "format": FORMAT,
        "description": "Envelopes a Residuals verifier judges with keys.json's registry at"
        " received_at: every accept case is admitted, every reject case refused with reason.",
        "received_at": _rfc3339(RECEIVED_AT),
        "accept": accept,
        "reject": reject,
    }


def _keys() -> dict[str, Any]:
    def key(signing: SigningKey, vendor: str, revoked: datetime | None) -> dict[str, Any]:
        return {
            "key_id": signing.key_id,
            "vendor_id": vendor,
            "public_key_hex": _hex(signing.public_key_bytes()),
            "revoked_at": _rfc3339(revoked) if revoked else None,
        }

    seed = KEY.private_key.private_bytes_raw()
    return {
        "format": FORMAT,
        "description": "The signing key of every positive vector (RFC 8032 section 7.1 test"
        " 1), and the registry the verifier cases are judged against.",
        "signing_key": {
            "key_id": KEY.key_id,
            "vendor_id": VENDOR,
            "seed_hex": _hex(seed),
            "public_key_hex": _hex(KEY.public_key_bytes()),
            "public_key_base64": base64.b64encode(KEY.public_key_bytes()).decode("ascii"),
        },
        "unregistered_seed_hex": _hex(UNREGISTERED_KEY.private_key.private_bytes_raw()),
        "registry": [
            key(KEY, VENDOR, None),
            key(OTHER_VENDOR_KEY, OTHER_VENDOR, None),
            key(REVOKED_KEY, VENDOR, REVOKED_AT),
        ],
    }


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def build_files() -> dict[str, str]:
    """Every vector file's text, by file name (what :func:`main` writes)."""
    built = Built()
    events = _events(built)
    batches = _batches(built)
    return {
        "keys.json": _text(_keys()),
        "events.json": _text(events),
        "batches.json": _text(batches),
        "verifier.json": _text(_verifier(built)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build_files().items():
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run python sdk/conformance/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
