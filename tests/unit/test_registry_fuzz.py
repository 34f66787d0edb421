"""Property-based fuzzing of the consumer-side registry decoders (licences, signing keys).

Whatever bytes arrive on ``residuals.licences.v1`` or ``residuals.signing-keys.v1`` -
random bytes, a good record with bytes flipped, inserted or cut, or a good record whose
fields were set to random values of their wire types - decoding either returns a licence
(key) whose every amount is finite and bounded and every time inside the era, or raises
:class:`InvalidRecord`. Nothing else: no crash, no NaN reaching money.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residuals.codecs import licences as codec
from residuals.codecs.licences import InvalidRecord
from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.signing import signing_key_record
from residuals.domain.bounds import decimal_problem, time_problem
from residuals.domain.licences import Licence
from residuals.v1 import licence_pb2
from tests.support.builders import licence

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD_LICENCE = codec.to_proto(
    licence(
        quotas=[{"metric": "RENDER", "limit": 100, "on_exceed": "alert"}],
        splits={"TAL-1": "0.5", "AGT-1": "0.5"},
        suspensions=[{"from": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00Z"}],
    )
)
GOOD_KEY = signing_key_record("vk-1", "VEN-1", Ed25519PrivateKey.generate())

# --- what a decoded value may be -------------------------------------------------------------


def assert_bounded(value: Any, path: str = "licence") -> None:
    """Every Decimal finite and within the bounds, every datetime inside the era."""
    if isinstance(value, Decimal):
        assert decimal_problem(value) is None, f"{path} = {value}"
    elif isinstance(value, datetime):
        assert time_problem(value) is None, f"{path} = {value}"
    elif isinstance(value, (tuple, list, frozenset)):
        for i, item in enumerate(value):
            assert_bounded(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            assert_bounded(item, f"{path}.{k}")
    elif hasattr(value, "__slots__") or hasattr(value, "__dataclass_fields__"):
        for name in getattr(value, "__dataclass_fields__", {}):
            if not name.startswith("_"):
                assert_bounded(getattr(value, name), f"{path}.{name}")


def check_licence(raw: bytes) -> None:
    try:
        decoded = codec.decode(raw)
    except InvalidRecord:
        return
    assert isinstance(decoded, Licence)
    assert decoded.versions, "a licence has at least one version"
    assert_bounded(decoded)
    for version in decoded.versions:
        assert sum(share for _, share in version.splits) == 1
        assert version.rates.ad_revenue_share <= 1 and version.platform_fee <= 1
        assert version.wind_down_ends is None or time_problem(version.wind_down_ends) is None
        assert version.rates.render_tiers and version.rates.render_tiers[-1].up_to is None
        decoded.version_at(version.starts_at)


def check_key(raw: bytes) -> None:
    try:
        decoded = codec.decode_signing_key(raw)
    except InvalidRecord:
        return
    assert isinstance(decoded, SigningKeyRecord)
    assert decoded.key_id and decoded.vendor_id and len(decoded.public_key) == 32
    assert decoded.revoked_at is None or time_problem(decoded.revoked_at) is None


# --- mutations ------------------------------------------------------------------------------

DECIMALISH = st.one_of(
    st.sampled_from(
        ["", "0", "1", "0.5", "NaN", "sNaN", "-0", "Infinity", "-Infinity", "9e999999",
         "1E+2", "1_000", " 1 ", "\u0661", "1" * 19, "0." + "1" * 10, "-1", ".5", "5."]
    ),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"[0-9]{0,22}(\.[0-9]{0,12})?", fullmatch=True),
    st.text(max_size=24),
)  # fmt: skip
SECONDS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 300_000_000_000),
    st.sampled_from([0, 946_684_799, 946_684_800, 253_402_300_799, 253_402_300_800, 2**62]),
)
NANOS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-1, 0, 999_999_999, 10**9]))
INTEGERS = {
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-(2**31), 2**31 - 1),
}


def _scalar(data: st.DataObject, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return data.draw(st.one_of(DECIMALISH, st.text(max_size=200)))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return data.draw(st.binary(max_size=64))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return data.draw(st.booleans())
    return data.draw(INTEGERS[field.type])


def mutate(data: st.DataObject, message: Message, depth: int = 0) -> None:
    """Set up to three random fields of ``message`` (or of a message inside it) to random
    values of their wire types."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        message.seconds = data.draw(SECONDS)  # type: ignore[attr-defined]
        message.nanos = data.draw(NANOS)  # type: ignore[attr-defined]
        return
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from(list(message.DESCRIPTOR.fields)))
        target = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target[data.draw(st.text(max_size=20))] = data.draw(DECIMALISH)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                action = data.draw(st.sampled_from(["add", "clear", "existing"]))
                if action == "clear" or depth > 3:
                    message.ClearField(field.name)
                    continue
                item = (
                    target.add()
                    if action == "add" or not target
                    else data.draw(st.sampled_from(list(target)))
                )
                mutate(data, item, depth + 1)
            elif depth > 3 or (data.draw(st.booleans()) and depth > 1):
                message.ClearField(field.name)
            else:
                mutate(data, target, depth + 1)
        elif field.is_repeated:
            target.append(_scalar(data, field))
        else:
            setattr(message, field.name, _scalar(data, field))


def byte_mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    def apply(edits: list[tuple[str, int, bytes]]) -> bytes:
        out = bytearray(raw)
        for op, at, chunk in edits:
            at = at % (len(out) + 1)
            if op == "flip" and at < len(out):
                out[at] ^= chunk[0] if chunk else 0xFF
            elif op == "insert":
                out[at:at] = chunk
            elif op == "cut":
                del out[at : at + len(chunk) + 1]
        return bytes(out)

    edit = st.tuples(
        st.sampled_from(["flip", "insert", "cut"]),
        st.integers(0, 10_000),
        st.binary(min_size=1, max_size=8),
    )
    return st.lists(edit, min_size=1, max_size=6).map(apply)


# --- the properties -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_anything_but_invalid_record(raw: bytes) -> None:
    check_licence(raw)
    check_key(raw)


@FUZZ
@given(byte_mutations(GOOD_LICENCE.SerializeToString()))
def test_a_licence_record_with_bytes_flipped_inserted_or_cut(raw: bytes) -> None:
    check_licence(raw)


@FUZZ
@given(st.data())
def test_a_licence_record_with_random_field_values(data: st.DataObject) -> None:
    message = licence_pb2.Licence()
    message.CopyFrom(GOOD_LICENCE)
    mutate(data, message)
    check_licence(message.SerializeToString())


@FUZZ
@given(byte_mutations(GOOD_KEY.SerializeToString()))
def test_a_key_record_with_bytes_flipped_inserted_or_cut(raw: bytes) -> None:
    check_key(raw)


@FUZZ
@given(st.data())
def test_a_key_record_with_random_field_values(data: st.DataObject) -> None:
    message = licence_pb2.VendorSigningKey()
    message.CopyFrom(GOOD_KEY)
    mutate(data, message)
    check_key(message.SerializeToString())


def test_the_good_records_decode() -> None:
    """The fuzzed seeds are themselves good (so mutations start from a valid record)."""
    assert codec.decode(GOOD_LICENCE.SerializeToString()).versions[0].quotas
    assert codec.decode_signing_key(GOOD_KEY.SerializeToString()).key_id == "vk-1"
