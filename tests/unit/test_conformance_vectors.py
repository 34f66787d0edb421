"""The signing conformance vectors (sdk/conformance/) are fresh, and both sides honour them.

Other-language SDKs (TypeScript first) test against these files, so they must be exactly
what the Python SDK produces today (regenerated in memory and compared), every byte must
follow sdk/SIGNING.md as written (re-derived here from the specification with hashlib and
a hand-written protobuf encoder, not only with the SDK), the services' signer must make
the same envelopes, and the services' verifier must admit every positive vector and
refuse every negative one with the stated reason and detail, at the gateway and the meter
alike (both call :func:`residuals.admission.admit`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from residuals_sdk import events as sdk_events
from residuals_sdk import merkle as sdk_merkle
from residuals_sdk import signing as sdk_signing
from residuals_sdk._proto import common_pb2 as sdk_common_pb2
from residuals_sdk._proto import ingest_pb2 as sdk_ingest_pb2
from residuals_sdk._proto import usage_pb2 as sdk_usage_pb2
from residuals_sdk.transports.kafka import USAGE_TOPIC, VENDOR_HEADER

from residuals.admission import Admitted, Refused, admit
from residuals.codecs import merkle, signed, signing
from residuals.codecs.signed import SigningKeyRecord, signature_problem
from residuals.codecs.usage import payload_bytes
from residuals.v1 import common_pb2, usage_pb2

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
CONFORMANCE = ROOT / "sdk" / "conformance"
README = (CONFORMANCE / "README.md").read_text(encoding="utf-8")
SPEC = (ROOT / "sdk/SIGNING.md").read_text(encoding="utf-8")


@cache
def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "conformance_generate", CONFORMANCE / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> Any:
    return json.loads((CONFORMANCE / name).read_text(encoding="utf-8"))


KEYS = _load("keys.json")
EVENTS = _load("events.json")["events"]
BATCHES = _load("batches.json")
VERIFIER = _load("verifier.json")
EVENT_BY_NAME = {entry["name"]: entry for entry in EVENTS}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _sdk_key() -> sdk_signing.SigningKey:
    signing_key = KEYS["signing_key"]
    return sdk_signing.SigningKey.from_private_bytes(
        signing_key["key_id"], bytes.fromhex(signing_key["seed_hex"])
    )


def _private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["signing_key"]["seed_hex"]))


# --- the files ------------------------------------------------------------------------------


def test_the_vector_files_are_what_the_generator_makes_now() -> None:
    """Regenerated in memory with today's SDK: a stale file fails here (the fix is
    ``python sdk/conformance/generate.py``, after making sure the change is intended)."""
    files = _generator().build_files()
    on_disk = sorted(p.name for p in CONFORMANCE.glob("*.json"))
    assert on_disk == sorted(files)
    for name, text in files.items():
        assert (CONFORMANCE / name).read_text(encoding="utf-8") == text, (
            f"sdk/conformance/{name} is stale: run python sdk/conformance/generate.py"
        )


def test_the_readme_documents_every_file_key_and_check() -> None:
    documents = [_load(name) for name in _generator().FILES]
    keys: set[str] = set()
    # Their members are protobuf's or the SDK builder's names, not the vector schema's.
    opaque = {"fields", "arguments", "envelope_json", "publish_batch_request_json", "trace"}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                keys.add(key)
                if key not in opaque:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for document in documents:
        walk(document)
    for name in _generator().FILES:
        assert f"`{name}`" in README
    missing = sorted(key for key in keys if f"`{key}`" not in README)
    assert missing == [], f"sdk/conformance/README.md does not describe {missing}"
    checks = {case["expect"]["check"] for case in VERIFIER["reject"]}
    assert sorted(c for c in checks if f"`{c}`" not in README) == []
    assert "sdk/conformance" in SPEC


def test_case_names_are_unique() -> None:
    for cases in (EVENTS, BATCHES["batches"], VERIFIER["accept"], VERIFIER["reject"]):
        names = [case["name"] for case in cases]
        assert len(names) == len(set(names))
    assert {"render", "view", "ad-impression-revenue", "retraction", "unicode"} <= set(
        EVENT_BY_NAME
    )
    assert [b["leaf_count"] for b in BATCHES["batches"]] == [1, 2, 3, 5, 8]


# --- keys -----------------------------------------------------------------------------------


def test_the_signing_key_is_rfc_8032_test_1() -> None:
    signing_key = KEYS["signing_key"]
    assert signing_key["seed_hex"] == (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    )
    assert signing_key["public_key_hex"] == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert _sdk_key().public_key_bytes().hex() == signing_key["public_key_hex"]
    assert signing.public_key_bytes(_private_key()).hex() == signing_key["public_key_hex"]
    # RFC 8032 §7.1 test 1: the empty message's signature.
    assert _sdk_key().sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    registered = {k["key_id"]: k for k in KEYS["registry"]}
    assert registered[signing_key["key_id"]]["public_key_hex"] == signing_key["public_key_hex"]
    assert registered[signing_key["key_id"]]["revoked_at"] is None


# --- serialization, by the SDK and by the specification -------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(body)) + body if wire_type == 2 else body)


def _encode_by_the_spec(fields: dict[str, Any]) -> bytes:
    """sdk/SIGNING.md's canonical encoding, by hand: fields in field-number order, proto3
    defaults of plain fields omitted, ``optional`` fields present whenever set."""
    out = b""
    for descriptor in usage_pb2.UsageEvent.DESCRIPTOR.fields_by_number.values():
        if descriptor.name not in fields:
            continue
        value = fields[descriptor.name]
        if descriptor.name == "kind":
            out += _field(descriptor.number, 0, _varint(common_pb2.UsageKind.Value(value)))
        elif descriptor.name == "occurred_at":
            stamp = b""
            if value["seconds"]:
                stamp += _field(1, 0, _varint(value["seconds"]))
            if value["nanos"]:
                stamp += _field(2, 0, _varint(value["nanos"]))
            out += _field(descriptor.number, 2, stamp)
        elif isinstance(value, bool):
            out += _field(descriptor.number, 0, _varint(int(value)))
        elif isinstance(value, int):
            out += _field(descriptor.number, 0, _varint(value))
        else:
            out += _field(descriptor.number, 2, value.encode("utf-8"))
    return out


def _event_from_fields(fields: dict[str, Any]) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent()
    for name, value in fields.items():
        if name == "kind":
            event.kind = common_pb2.UsageKind.Value(value)
        elif name == "occurred_at":
            event.occurred_at.seconds = value["seconds"]
            event.occurred_at.nanos = value["nanos"]
        else:
            setattr(event, name, value)
    return event


def _built_by_the_sdk(entry: dict[str, Any]) -> sdk_usage_pb2.UsageEvent:
    builder = entry["builder"]
    module, _, function = builder["function"].rpartition(".")
    assert module == "residuals_sdk.events"
    arguments = dict(builder["arguments"])
    arguments["occurred_at"] = _time(arguments["occurred_at"])
    event: sdk_usage_pb2.UsageEvent = getattr(sdk_events, function)(**arguments)
    return event


@pytest.mark.parametrize("entry", EVENTS, ids=lambda e: e["name"])
def test_payload_bytes_follow_the_sdk_and_the_specification(entry: dict[str, Any]) -> None:
    payload = bytes.fromhex(entry["payload_hex"])
    numbers = [usage_pb2.UsageEvent.DESCRIPTOR.fields_by_name[n].number for n in entry["fields"]]
    assert numbers == sorted(numbers), "fields are listed in field-number order"
    event = _built_by_the_sdk(entry)
    assert sdk_signing.payload_bytes(event) == payload
    assert payload_bytes(_event_from_fields(entry["fields"])) == payload
    assert _encode_by_the_spec(entry["fields"]) == payload
    assert usage_pb2.UsageEvent.FromString(payload) == _event_from_fields(entry["fields"])
    assert entry["leaf_hash_hex"] == hashlib.sha256(b"\x00" + payload).hexdigest()


@pytest.mark.parametrize("entry", EVENTS, ids=lambda e: e["name"])
def test_per_event_envelopes_are_the_sdks_and_the_services(entry: dict[str, Any]) -> None:
    payload = bytes.fromhex(entry["payload_hex"])
    signature = bytes.fromhex(entry["signature_hex"])
    envelope_bytes = bytes.fromhex(entry["envelope_hex"])
    public_key = bytes.fromhex(KEYS["signing_key"]["public_key_hex"])
    assert _sdk_key().sign(payload) == signature
    assert sdk_signing.verify_signature(public_key, payload, signature)

    trace = entry["trace"]
    sdk_trace = json_format.ParseDict(trace, sdk_common_pb2.TraceContext()) if trace else None
    sdk_envelope = sdk_signing.sign_event(_built_by_the_sdk(entry), _sdk_key(), sdk_trace)
    assert sdk_envelope.SerializeToString() == envelope_bytes
    service_trace = json_format.ParseDict(trace, common_pb2.TraceContext()) if trace else None
    service_envelope = signing.sign_event(
        _event_from_fields(entry["fields"]), _sdk_key().key_id, _private_key(), service_trace
    )
    assert service_envelope.SerializeToString() == envelope_bytes

    envelope = usage_pb2.SignedUsageEvent.FromString(envelope_bytes)
    assert envelope.payload == payload and envelope.signature == signature
    assert envelope.key_id == KEYS["signing_key"]["key_id"]
    assert not envelope.HasField("batch")
    assert envelope.HasField("trace") == (trace is not None)
    _check_json_form(entry["envelope_json"], envelope_bytes)
    _check_kafka_record(entry["kafka_record"], envelope, entry["fields"])


def _check_json_form(document: dict[str, Any], envelope_bytes: bytes) -> None:
    """The proto3 JSON form carries the same bytes (base64), and parses back to them."""
    parsed = json_format.ParseDict(document, usage_pb2.SignedUsageEvent())
    assert parsed.SerializeToString() == envelope_bytes
    envelope = usage_pb2.SignedUsageEvent.FromString(envelope_bytes)
    assert json_format.MessageToDict(envelope) == document


def _check_kafka_record(
    record: dict[str, Any], envelope: usage_pb2.SignedUsageEvent, fields: dict[str, Any]
) -> None:
    assert record["topic"] == USAGE_TOPIC
    assert record["key"] == (fields.get("licence_id") or fields["vendor_id"])
    headers = [(h["name"], h["value"]) for h in record["headers"]]
    expected = []
    if envelope.trace.traceparent:
        expected.append(("traceparent", envelope.trace.traceparent))
        if envelope.trace.tracestate:
            expected.append(("tracestate", envelope.trace.tracestate))
    assert headers == [*expected, (VENDOR_HEADER, fields["vendor_id"])]


# --- batches --------------------------------------------------------------------------------


def _root_by_the_spec(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written from sdk/SIGNING.md."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    left, right = _root_by_the_spec(leaves[:k]), _root_by_the_spec(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def _path_by_the_spec(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, leaf to root."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if index < k:
        return [*_path_by_the_spec(index, leaves[:k]), _root_by_the_spec(leaves[k:])]
    return [*_path_by_the_spec(index - k, leaves[k:]), _root_by_the_spec(leaves[:k])]


@pytest.mark.parametrize("batch", BATCHES["batches"], ids=lambda b: b["name"])
def test_batches_follow_the_sdk_and_the_specification(batch: dict[str, Any]) -> None:
    n = batch["leaf_count"]
    entries = [EVENT_BY_NAME[name] for name in batch["events"]]
    assert [e["name"] for e in entries] == [e["name"] for e in EVENTS[:n]]
    payloads = [bytes.fromhex(e["payload_hex"]) for e in entries]
    leaves = [hashlib.sha256(b"\x00" + p).digest() for p in payloads]
    assert [h.hex() for h in leaves] == batch["leaf_hashes_hex"]
    root = bytes.fromhex(batch["root_hex"])
    assert _root_by_the_spec(leaves) == root
    sdk_root, sdk_paths = sdk_merkle.tree(payloads)
    service_root, service_paths = merkle.tree(payloads)
    assert sdk_root == service_root == root
    assert sdk_paths == service_paths

    assert bytes.fromhex(BATCHES["batch_domain_hex"]) == b"residuals.usage-batch.v1\n"
    message = bytes.fromhex(batch["signed_message_hex"])
    if n == 1:
        assert batch["signature_covers"] == "payload"
        assert message == payloads[0]
    else:
        assert batch["signature_covers"] == "batch_message"
        assert message == b"residuals.usage-batch.v1\n" + struct.pack(">Q", n) + root
        assert message == sdk_merkle.batch_message(n, root) == merkle.batch_message(n, root)
        assert len(message) == 25 + 8 + 32
        with pytest.raises(DecodeError):  # sdk/SIGNING.md: never also a payload
            usage_pb2.UsageEvent.FromString(message)
    signature = bytes.fromhex(batch["signature_hex"])
    assert _sdk_key().sign(message) == signature

    sdk_envelopes = sdk_signing.sign_batch([_built_by_the_sdk(e) for e in entries], _sdk_key())
    service_envelopes = signing.sign_batch(
        [_event_from_fields(e["fields"]) for e in entries], _sdk_key().key_id, _private_key()
    )
    for index, leaf in enumerate(batch["leaves"]):
        envelope_bytes = bytes.fromhex(leaf["envelope_hex"])
        assert sdk_envelopes[index].SerializeToString() == envelope_bytes
        assert service_envelopes[index].SerializeToString() == envelope_bytes
        envelope = usage_pb2.SignedUsageEvent.FromString(envelope_bytes)
        assert envelope.payload == payloads[index] and envelope.signature == signature
        path = [bytes.fromhex(h) for h in leaf["audit_path_hex"]]
        assert (leaf["leaf_index"], leaf["leaf_count"]) == (index, n)
        assert path == _path_by_the_spec(index, leaves) == sdk_paths[index]
        assert len(path) == merkle.path_length(index, n)
        if n == 1:
            assert not envelope.HasField("batch") and path == []
        else:
            assert envelope.batch.leaf_index == index and envelope.batch.leaf_count == n
            assert list(envelope.batch.audit_path) == path
            assert merkle.root_from_path(payloads[index], index, n, path) == root
        _check_json_form(leaf["envelope_json"], envelope_bytes)
        _check_kafka_record(leaf["kafka_record"], envelope, entries[index]["fields"])

    request = json_format.ParseDict(
        batch["publish_batch_request_json"], sdk_ingest_pb2.PublishBatchRequest()
    )
    assert [e.SerializeToString() for e in request.events] == [
        bytes.fromhex(leaf["envelope_hex"]) for leaf in batch["leaves"]
    ]


# --- the services' verifier -----------------------------------------------------------------


def _registry() -> dict[str, SigningKeyRecord]:
    records = {}
    for key in KEYS["registry"]:
        revoked = _time(key["revoked_at"]) if key["revoked_at"] else None
        records[key["key_id"]] = SigningKeyRecord(
            key["key_id"], key["vendor_id"], bytes.fromhex(key["public_key_hex"]), revoked
        )
    return records


def _admit(case: dict[str, Any], *, record_key: str | None) -> Admitted | Refused:
    return admit(
        bytes.fromhex(case["envelope_hex"]),
        keys=_registry().get,
        licences=None,
        received_at=_time(VERIFIER["received_at"]),
        vendor_id=case["authenticated_vendor"],
        routing_key=record_key.encode("utf-8") if record_key is not None else None,
    )


@pytest.fixture(autouse=True)
def _no_remembered_roots() -> None:
    """Each case verifies its batch root itself, not through an earlier case's success."""
    signed.VERIFIED.clear()


def test_every_positive_vector_is_a_verifier_accept_case() -> None:
    accepted = {case["envelope_hex"] for case in VERIFIER["accept"]}
    positives = {e["envelope_hex"] for e in EVENTS} | {
        leaf["envelope_hex"] for b in BATCHES["batches"] for leaf in b["leaves"]
    }
    assert positives <= accepted
    assert all(case["expect"]["result"] == "accept" for case in VERIFIER["accept"])
    assert all(case["expect"]["result"] == "reject" for case in VERIFIER["reject"])


@pytest.mark.parametrize("case", VERIFIER["accept"], ids=lambda c: c["name"])
def test_the_verifier_admits_every_accept_case(case: dict[str, Any]) -> None:
    """At the meter (record key checked) and at the gateway (no record key)."""
    for record_key in {case["record_key"], None}:
        verdict = _admit(case, record_key=record_key)
        assert isinstance(verdict, Admitted), verdict
        assert verdict.vendor_id == case["expect"]["vendor_id"]
        assert verdict.envelope.SerializeToString() == bytes.fromhex(case["envelope_hex"])
    envelope = usage_pb2.SignedUsageEvent.FromString(bytes.fromhex(case["envelope_hex"]))
    key = _registry()[envelope.key_id]
    assert (
        signature_problem(
            envelope,
            key,
            vendor_id=case["authenticated_vendor"],
            at=_time(VERIFIER["received_at"]),
        )
        is None
    )


@pytest.mark.parametrize("case", VERIFIER["reject"], ids=lambda c: c["name"])
def test_the_verifier_refuses_every_reject_case_as_stated(case: dict[str, Any]) -> None:
    expect = case["expect"]
    verdict = _admit(case, record_key=case["record_key"])
    assert isinstance(verdict, Refused), verdict
    assert (verdict.reason.value, verdict.detail) == (expect["reason"], expect["detail"])
    if expect["reason"] == "BAD_SIGNATURE":
        envelope = usage_pb2.SignedUsageEvent.FromString(bytes.fromhex(case["envelope_hex"]))
        problem = signature_problem(
            envelope,
            _registry().get(envelope.key_id),
            vendor_id=case["authenticated_vendor"],
            at=_time(VERIFIER["received_at"]),
        )
        assert problem == expect["detail"]
    if expect["check"] != "record_key":  # the gateway has no record key: same verdict
        again = _admit(case, record_key=None)
        assert isinstance(again, Refused)
        assert (again.reason.value, again.detail) == (expect["reason"], expect["detail"])
