"""Batch signatures: one Ed25519 signature over the Merkle root of many events.

The tree is RFC 9162's (checked against the Certificate Transparency reference vectors);
the SDK's builder and the services' must agree for every tree shape; the shared verifier
(``codecs.signed.signature_problem``, used by the gateway and the meter) must accept
exactly the honest envelopes and name what is wrong with the others; the root's
signature is verified once per process, and never remembered when it failed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from residuals_sdk import SigningKey
from residuals_sdk import merkle as sdk_merkle
from residuals_sdk import signing as sdk_signing

from residuals.codecs import merkle, signed
from residuals.codecs.signed import SigningKeyRecord, VerifiedSignatures, signature_problem
from residuals.codecs.signing import VerifyingKey, sign_batch, sign_event, signing_key_record
from residuals.codecs.usage import from_domain
from residuals.meter.core import Meter, Record
from residuals.v1 import common_pb2, usage_pb2
from tests.support.builders import ev, licence, parsed

NOW = datetime(2026, 10, 7, 12, 0, tzinfo=UTC)
SDK_KEY = SigningKey.from_private_bytes("k1", bytes(range(32)))
KEY: Ed25519PrivateKey = SDK_KEY.private_key
RECORD = VerifyingKey.from_proto(signing_key_record("k1", "VEN-1", KEY))

# The Certificate Transparency reference tree (RFC 6962 = RFC 9162 §2.1 hashing): the test
# data of google/certificate-transparency's merkle_tree_test, reused by transparency-dev.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, audit path)
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    signed.VERIFIED.clear()


def payloads(n: int) -> list[bytes]:
    return [f"payload {i} of {n}".encode() * (1 + i % 3) for i in range(n)]


def render(i: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        event_id=f"e-{i}", vendor_id="VEN-1", licence_id="LIC-1", avatar_id="AVA-1"
    )


def copy_of(envelope: usage_pb2.SignedUsageEvent) -> usage_pb2.SignedUsageEvent:
    out = usage_pb2.SignedUsageEvent()
    out.CopyFrom(envelope)
    return out


def problem(envelope: usage_pb2.SignedUsageEvent, key: SigningKeyRecord = RECORD) -> str | None:
    return signature_problem(envelope, key, vendor_id="VEN-1", at=NOW)


# --- the tree ------------------------------------------------------------------------------


def test_roots_and_proofs_match_the_certificate_transparency_reference() -> None:
    for n in range(1, 9):
        assert merkle.tree(CT_LEAVES[:n])[0].hex() == CT_ROOTS[n - 1]
        assert sdk_merkle.tree(CT_LEAVES[:n])[0].hex() == CT_ROOTS[n - 1]
    for index, size, path in CT_INCLUSION:
        root, paths = merkle.tree(CT_LEAVES[:size])
        assert [h.hex() for h in paths[index]] == path
        assert [h.hex() for h in sdk_merkle.tree(CT_LEAVES[:size])[1][index]] == path
        proof = [bytes.fromhex(h) for h in path]
        assert merkle.root_from_path(CT_LEAVES[index], index, size, proof) == root


def test_every_leaf_of_every_tree_up_to_40_proves_the_root_and_nothing_else() -> None:
    for n in range(1, 41):
        data = payloads(n)
        root, paths = merkle.tree(data)
        assert sdk_merkle.tree(data) == (root, paths)  # SDK and services build the same
        for i in range(n):
            path = paths[i]
            assert len(path) == merkle.path_length(i, n)
            assert merkle.root_from_path(data[i], i, n, path) == root
            assert merkle.root_from_path(data[i] + b"!", i, n, path) != root
            with pytest.raises(merkle.ProofError, match="needs"):
                merkle.root_from_path(data[i], i, n, [*path, root])
            if path:
                with pytest.raises(merkle.ProofError, match="needs"):
                    merkle.root_from_path(data[i], i, n, path[:-1])
                flipped = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
                assert merkle.root_from_path(data[i], i, n, flipped) != root
            for j in range(n):  # another position: a wrong root or a wrong-length path
                if j == i:
                    continue
                with contextlib.suppress(merkle.ProofError):
                    assert merkle.root_from_path(data[i], j, n, path) != root


def test_malformed_proofs_are_refused_with_what_is_wrong() -> None:
    root, paths = merkle.tree(payloads(5))
    cases: list[tuple[int, int, list[bytes], str]] = [
        (0, 0, [], "leaf_count is 0"),
        (5, 5, paths[4], "leaf_index 5 is not below leaf_count 5"),
        (1, 5, [paths[1][0], b"short", paths[1][2]], r"audit_path\[1\] is 5 bytes"),
        (4, 5, [], "audit_path has 0 hashes, leaf 4 of 5 needs 1"),
        (0, 1, [root], "audit_path has 1 hashes, leaf 0 of 1 needs 0"),
    ]
    for index, count, path, detail in cases:
        with pytest.raises(merkle.ProofError, match=detail):
            merkle.root_from_path(b"x", index, count, path)


def test_batch_message_is_domain_separated_and_binds_the_size() -> None:
    message = merkle.batch_message(256, b"\x07" * 32)
    assert message == b"residuals.usage-batch.v1\n" + bytes(6) + b"\x01\x00" + b"\x07" * 32
    assert sdk_merkle.batch_message(256, b"\x07" * 32) == message


# --- envelopes and the shared verifier -----------------------------------------------------


def test_sdk_and_services_make_identical_envelopes() -> None:
    events = [render(i) for i in range(7)]
    traces = [common_pb2.TraceContext(traceparent=f"00-{i:032x}-{i:016x}-01") for i in range(7)]
    ours = sign_batch(events, "k1", KEY, traces)
    theirs = sdk_signing.sign_batch(events, SDK_KEY, traces)
    assert [e.SerializeToString() for e in ours] == [e.SerializeToString() for e in theirs]
    assert {e.signature for e in ours} == {ours[0].signature}  # one signature for all
    assert [e.batch.leaf_index for e in ours] == list(range(7))
    assert {e.batch.leaf_count for e in ours} == {7}
    assert ours[3].trace.traceparent == traces[3].traceparent
    # One event alone keeps the plain per-event envelope.
    alone = sdk_signing.sign_batch([render(0)], SDK_KEY)
    assert alone == [sdk_signing.sign_event(render(0), SDK_KEY)]
    assert not alone[0].HasField("batch")
    assert sign_batch([render(0)], "k1", KEY) == [sign_event(render(0), "k1", KEY)]


def test_sdk_batches_of_every_size_verify_with_the_services_verifier() -> None:
    for n in range(1, 41):
        for envelope in sdk_signing.sign_batch([render(i) for i in range(n)], SDK_KEY):
            assert problem(envelope) is None, (n, envelope.batch)


def _tamper_cases() -> list[tuple[str, Callable[[usage_pb2.SignedUsageEvent], None], str]]:
    def payload(e: usage_pb2.SignedUsageEvent) -> None:
        e.payload = render(99).SerializeToString()

    def path_element(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.audit_path[1] = bytes(32)

    def upper_path_element(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.audit_path[3] = bytes(32)  # above the level where proven paths are shared

    def short_element(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.audit_path[0] = bytes(31)

    def lengths_that_add_up(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.audit_path[0] = bytes(31)  # 31 + 33 = 2 x 32: each length is checked
        e.batch.audit_path[1] = bytes(33)

    def index(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.leaf_index = 4  # a real position of the tree, with the path of leaf 5

    def index_past_count(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.leaf_index = 11

    def count(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.leaf_count = 12  # same path length for leaf 5: only the signature can tell

    def count_zero(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.leaf_count = 0

    def path_too_long(e: usage_pb2.SignedUsageEvent) -> None:
        e.batch.audit_path.append(bytes(32))

    def signature(e: usage_pb2.SignedUsageEvent) -> None:
        e.signature = bytes([e.signature[0] ^ 1]) + e.signature[1:]

    def proof_dropped(e: usage_pb2.SignedUsageEvent) -> None:
        e.ClearField("batch")

    mismatch = "batch signature does not match the root proven for leaf"
    return [
        ("payload", payload, mismatch + " 5 of 11 for key 'k1'"),
        ("path element", path_element, mismatch),
        ("upper path element", upper_path_element, mismatch),
        ("short path element", short_element, r"audit_path\[0\] is 31 bytes, SHA-256 needs 32"),
        (
            "lengths that add up",
            lengths_that_add_up,
            r"audit_path\[0\] is 31 bytes, SHA-256 needs 32",
        ),
        ("index", index, mismatch + " 4 of 11"),
        ("index past count", index_past_count, "leaf_index 11 is not below leaf_count 11"),
        ("count", count, mismatch + " 5 of 12"),
        ("count zero", count_zero, "batch leaf_count is 0"),
        ("path too long", path_too_long, "audit_path has 5 hashes, leaf 5 of 11 needs 4"),
        ("signature", signature, mismatch),
        ("proof dropped", proof_dropped, "signature does not match the payload for key 'k1'"),
    ]


@pytest.mark.parametrize(
    ("change", "detail"),
    [(change, detail) for _, change, detail in _tamper_cases()],
    ids=[name for name, _, _ in _tamper_cases()],
)
def test_tampered_batch_envelopes_are_refused_with_the_reason(
    change: Callable[[usage_pb2.SignedUsageEvent], None], detail: str
) -> None:
    envelopes = sign_batch([render(i) for i in range(11)], "k1", KEY)
    assert problem(envelopes[5]) is None  # the honest one first: the root is now cached
    bad = copy_of(envelopes[5])
    change(bad)
    found = problem(bad)
    assert found is not None
    assert re.search(detail, found), found


@pytest.mark.parametrize(
    ("change", "detail"),
    [(change, detail) for _, change, detail in _tamper_cases()],
    ids=[name for name, _, _ in _tamper_cases()],
)
def test_tampered_envelopes_are_refused_after_a_neighbour_proved_the_shared_path(
    change: Callable[[usage_pb2.SignedUsageEvent], None], detail: str
) -> None:
    envelopes = sign_batch([render(i) for i in range(11)], "k1", KEY)
    assert problem(envelopes[4]) is None  # leaves 4 to 7 share the path above level 2
    assert problem(envelopes[5]) is None
    bad = copy_of(envelopes[5])
    change(bad)
    found = problem(bad)
    assert found is not None
    assert re.search(detail, found), found


def test_a_path_joining_a_proven_one_is_not_hashed_to_the_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envelopes = sign_batch([render(i) for i in range(16)], "k1", KEY)
    assert problem(envelopes[0]) is None
    whole: list[int] = []
    real = merkle.root_from_path

    def counting(payload: bytes, index: int, count: int, path: Any) -> bytes:
        whole.append(index)
        return real(payload, index, count, path)

    monkeypatch.setattr(merkle, "root_from_path", counting)
    assert all(problem(e) is None for e in envelopes[1:8])
    assert whole == [4]  # leaves 1-3 join leaf 0's path two levels up, 5-7 leaf 4's
    signed.VERIFIED.clear()
    assert problem(envelopes[1]) is None and whole == [4, 1]


def test_key_checks_apply_to_every_event_even_after_the_root_is_cached() -> None:
    envelopes = sign_batch([render(i) for i in range(4)], "k1", KEY)
    assert problem(envelopes[0]) is None
    revoked = SigningKeyRecord("k1", "VEN-1", RECORD.public_key, NOW - timedelta(seconds=1))
    assert "was revoked" in (problem(envelopes[1], revoked) or "")
    assert "not registered to vendor 'VEN-2'" in (
        signature_problem(envelopes[1], RECORD, vendor_id="VEN-2", at=NOW) or ""
    )
    other = Ed25519PrivateKey.generate()
    impostor = VerifyingKey.from_proto(signing_key_record("k1", "VEN-1", other))
    assert "batch signature does not match" in (problem(envelopes[1], impostor) or "")
    assert problem(envelopes[2]) is None


def test_a_root_is_verified_once_and_failures_are_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = signed._verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        calls.append(message)
        return real(public_key, message, signature)

    monkeypatch.setattr(signed, "_verify", counting)
    envelopes = sign_batch([render(i) for i in range(40)], "k1", KEY)
    assert all(problem(e) is None for e in envelopes)
    assert len(calls) == 1
    forged = copy_of(envelopes[0])
    forged.signature = bytes(64)
    assert problem(forged) is not None and problem(forged) is not None
    assert len(calls) == 3  # each failure verified again
    assert problem(envelopes[7]) is None and len(calls) == 3


def test_the_verified_cache_is_bounded() -> None:
    cache = VerifiedSignatures(size=2)
    public = RECORD.public_key
    messages = [b"m0", b"m1", b"m2"]
    for m in messages:
        assert cache.verify(public, m, KEY.sign(m))
    assert len(cache) == 2
    assert not cache.verify(public, b"m3", KEY.sign(b"m2"))
    assert len(cache) == 2


# --- the meter -------------------------------------------------------------------------------


class Keys:
    def verifying_key(self, key_id: str) -> VerifyingKey | None:
        return RECORD if key_id == "k1" else None


class State:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.data[key] = value


def records(raws: list[dict[str, Any]]) -> list[Record]:
    envelopes = sign_batch([from_domain(parsed(r)) for r in raws], "k1", KEY)
    out = []
    for offset, (raw, envelope) in enumerate(zip(raws, envelopes, strict=True)):
        when = parsed(raw).occurred_at + timedelta(seconds=5)
        out.append(
            Record(
                topic="usage",
                partition=0,
                offset=offset,
                key=b"LIC-1",
                value=envelope.SerializeToString(),
                timestamp=when,
                headers={"residuals-vendor": b"VEN-1"},
            )
        )
    return out


def test_the_meter_accepts_batch_signed_events_and_dead_letters_tampered_ones() -> None:
    lic = licence()
    meter, state = Meter({lic.licence_id: lic}, Keys()), State()
    batch = records([ev("RENDER", occurred_at="2026-10-05T10:00:00Z") for _ in range(6)])
    decisions = [meter.process(r, state) for r in batch[:5]]
    assert [d.outcome for d in decisions] == ["accepted"] * 5
    rated = decisions[2].rated
    assert rated is not None and rated.authenticated_vendor_id == "VEN-1"
    assert rated.signed.batch.leaf_index == 2 and rated.signed.batch.leaf_count == 6

    envelope = usage_pb2.SignedUsageEvent.FromString(batch[5].value)
    envelope.batch.leaf_index = 4
    tampered = replace(batch[5], value=envelope.SerializeToString())
    dead = meter.process(tampered, state).dead
    assert dead is not None
    assert dead.reason == common_pb2.REJECT_REASON_BAD_SIGNATURE
    assert "batch signature does not match the root proven for leaf 4 of 6" in dead.detail
    assert dead.original == tampered.value
