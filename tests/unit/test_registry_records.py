"""Licence and signing-key records as readers decode them: strict, total, the field named;
and the meter's registries, which skip poison and keep serving the last good version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from residuals.codecs import licences as codec
from residuals.codecs.licences import InvalidRecord
from residuals.codecs.signing import signing_key_record
from residuals.codecs.timestamps import set_timestamp
from residuals.meter.lookups import KeyRegistry, LicenceRegistry
from residuals.platform.config import KafkaSettings
from residuals.platform.quarantine import Quarantined
from residuals.platform.replica import TopicReplica
from residuals.v1 import licence_pb2
from tests.support.builders import licence

Mutation = Callable[[licence_pb2.Licence], None]


def message(**overrides: Any) -> licence_pb2.Licence:
    return codec.to_proto(licence(**overrides))


def amended() -> licence_pb2.Licence:
    """Two versions, the second in force from June."""
    m = message()
    second = m.versions.add()
    second.CopyFrom(m.versions[0])
    second.version = 2
    set_timestamp(second.effective_from, datetime(2026, 6, 1, tzinfo=UTC))
    return m


def _rate(field: str, text: str) -> Mutation:
    return lambda m: setattr(m.versions[0].rates, field, text)


def _stamp(path: Callable[[licence_pb2.Licence], Any], seconds: int, nanos: int = 0) -> Mutation:
    def mutate(m: licence_pb2.Licence) -> None:
        stamp = path(m)
        stamp.seconds, stamp.nanos = seconds, nanos

    return mutate


def _set(path: Callable[[licence_pb2.Licence], Any], name: str, value: Any) -> Mutation:
    return lambda m: setattr(path(m), name, value)


def _v0(m: licence_pb2.Licence) -> licence_pb2.LicenceVersion:
    return m.versions[0]


# (mutation, the field the error must name, words of the problem)
BAD: dict[str, tuple[Mutation, str, str]] = {
    "NaN rate": (_rate("view_cpm", "NaN"), "versions[0].rates.view_cpm", "not a plain"),
    "infinite rate": (_rate("view_cpm", "Infinity"), "versions[0].rates.view_cpm", "not a plain"),
    "negative rate": (_rate("view_cpm", "-1"), "versions[0].rates.view_cpm", "non-negative"),
    "exponent": (_rate("view_cpm", "9e999999"), "versions[0].rates.view_cpm", "not a plain"),
    "underscores": (_rate("ad_floor_cpm", "1_000"), "versions[0].rates.ad_floor_cpm", "plain"),
    "spaces": (_rate("ad_floor_cpm", " 1"), "versions[0].rates.ad_floor_cpm", "plain"),
    "arabic digits": (_rate("view_cpm", "\u0661"), "versions[0].rates.view_cpm", "plain"),
    "19 integer digits": (_rate("view_cpm", "1" * 19), "versions[0].rates.view_cpm", "integer"),
    "10 fraction digits": (
        _rate("view_cpm", "0.0000000001"),
        "versions[0].rates.view_cpm",
        "fraction",
    ),
    "huge text": (_rate("view_cpm", "1" * 100_000), "versions[0].rates.view_cpm", "plain"),
    "share above 1": (
        _rate("ad_revenue_share", "1.5"),
        "versions[0].rates.ad_revenue_share",
        "more than 1",
    ),
    "bad multiplier": (
        lambda m: m.versions[0].rates.channel_multipliers.__setitem__("web", "x"),
        "versions[0].rates.channel_multipliers.web",
        "plain",
    ),
    "bad penalty": (
        _rate("unlicensed_use_multiplier", "NaN"),
        "versions[0].rates.unlicensed_use_multiplier",
        "plain",
    ),
    "bad tier price": (
        lambda m: setattr(m.versions[0].rates.render_tiers[0], "unit_price", "-0.5"),
        "versions[0].rates.render_tiers[0].unit_price",
        "non-negative",
    ),
    "no tiers": (
        lambda m: m.versions[0].rates.ClearField("render_tiers"),
        "versions[0].rates.render_tiers",
        "at least one",
    ),
    "tiers descending": (
        lambda m: setattr(m.versions[0].rates.render_tiers[0], "up_to", 0),
        "versions[0].rates.render_tiers[0].up_to",
        "ascending",
    ),
    "last tier bounded": (
        lambda m: setattr(m.versions[0].rates.render_tiers[1], "up_to", 99),
        "versions[0].rates.render_tiers[1].up_to",
        "last tier must be open",
    ),
    "fee above 1": (_set(_v0, "platform_fee", "2"), "versions[0].platform_fee", "more than 1"),
    "bad guarantee": (
        _set(_v0, "minimum_guarantee", "NaN"),
        "versions[0].minimum_guarantee",
        "plain",
    ),
    "bad advance": (
        _set(_v0, "advance_outstanding", "1e3"),
        "versions[0].advance_outstanding",
        "plain",
    ),
    "shares not summing to 1": (
        lambda m: setattr(m.versions[0].splits[0], "share", "0.9"),
        "versions[0].splits",
        "sum to 1",
    ),
    "no payee": (lambda m: m.versions[0].ClearField("splits"), "versions[0].splits", "payee"),
    "payee twice": (
        lambda m: m.versions[0].splits.add(payee_id="TAL-1", share="0"),
        "versions[0].splits[1].payee_id",
        "twice",
    ),
    "no versions": (lambda m: m.ClearField("versions"), "versions", "at least one"),
    "versions out of order": (
        lambda m: setattr(m.versions[1], "version", 1),
        "versions[1].version",
        "ascending",
    ),
    "amendment without effective_from": (
        lambda m: m.versions[1].ClearField("effective_from"),
        "versions[1].effective_from",
        "required",
    ),
    "no start": (lambda m: m.versions[0].ClearField("starts_at"), "versions[0].starts_at", "req"),
    "negative nanos": (
        _stamp(lambda m: m.versions[0].starts_at, 1_800_000_000, -1),
        "versions[0].starts_at",
        "nanos",
    ),
    "seconds 2^62": (
        _stamp(lambda m: m.versions[0].ends_at, 2**62),
        "versions[0].ends_at",
        "outside",
    ),
    "1970": (_stamp(lambda m: m.versions[0].revoked_at, 0), "versions[0].revoked_at", "outside"),
    "wind-down past 9999": (
        _set(_v0, "wind_down_days", 4_000_000),
        "versions[0].wind_down_days",
        "9999",
    ),
    "unknown metric": (
        lambda m: m.versions[0].quotas.add(metric=42, limit=1),  # type: ignore[arg-type]
        "versions[0].quotas[0].metric",
        "not a known metric",
    ),
    "unknown on_exceed": (
        lambda m: m.versions[0].quotas.add(metric=1, limit=1, on_exceed=9),  # type: ignore[arg-type]
        "versions[0].quotas[0].on_exceed",
        "not a known",
    ),
    "control character in scope": (
        lambda m: m.versions[0].scope.categories_allowed.append("a\x1b[2J"),
        "versions[0].scope.categories_allowed",
        "non-printable",
    ),
    "suspension without start": (
        lambda m: m.suspensions.add(automatic=True),
        "suspensions[0].starts_at",
        "required",
    ),
    "unknown currency": (_set(lambda m: m, "currency_code", "XXX"), "currency_code", "ISO 4217"),
    "NUL in licence id": (_set(lambda m: m, "licence_id", "LIC\x00"), "licence_id", "U+0000"),
    "long vendor id": (_set(lambda m: m, "vendor_id", "v" * 60_000), "vendor_id", "60,000"),
    "no talent": (_set(lambda m: m, "talent_id", ""), "talent_id", "required"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_licence_record_raises_one_error_naming_the_field(name: str) -> None:
    mutate, field, words = BAD[name]
    m = amended()
    mutate(m)
    with pytest.raises(InvalidRecord) as raised:
        codec.decode(m.SerializeToString())
    assert raised.value.field == field
    assert words in raised.value.problem


def test_a_field_with_the_wrong_wire_type_is_refused_not_read_as_its_default() -> None:
    # field 6 (versions) as a varint: plain FromString reads "no versions" and keeps it unknown
    raw = message().SerializeToString() + bytes([0x30, 0x05])
    with pytest.raises(InvalidRecord, match="versions: was sent with the wrong wire type"):
        codec.decode(raw)
    # inside a version: field 3 (scope) as a varint
    m = message()
    m.versions[0].ClearField("scope")
    bad_version = m.versions[0].SerializeToString() + bytes([0x18, 0x01])
    m.ClearField("versions")
    raw = m.SerializeToString() + bytes([0x32, *_varint(len(bad_version))]) + bad_version
    with pytest.raises(InvalidRecord, match=r"versions\[0\].scope: was sent with the wrong"):
        codec.decode(raw)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def test_unknown_field_numbers_are_allowed_for_newer_writers() -> None:
    raw = message().SerializeToString() + bytes([0xF8, 0x07, 0x01])  # field 127, varint
    assert codec.decode(raw) == licence()


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\xff", b"\x32\x05\x08"])
def test_bytes_that_are_not_a_record_name_the_record(raw: bytes) -> None:
    with pytest.raises(InvalidRecord) as raised:
        codec.decode(raw)
    assert raised.value.field == "(record)"


def test_good_records_decode_to_bounded_exact_licences() -> None:
    decoded = codec.decode(amended().SerializeToString())
    assert [v.version for v in decoded.versions] == [1, 2]
    assert decoded.versions[0].rates.view_cpm == Decimal("2.00")
    assert decoded.latest.splits == (("TAL-1", Decimal("1")),)


def key(key_id: str = "vk-1", vendor_id: str = "VEN-1") -> licence_pb2.VendorSigningKey:
    return signing_key_record(key_id, vendor_id, Ed25519PrivateKey.generate())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda k: setattr(k, "public_key", b"short"), "public_key"),
        (lambda k: setattr(k, "key_id", ""), "key_id"),
        (lambda k: setattr(k, "vendor_id", "\x1b]0;owned\x07"), "vendor_id"),
        (lambda k: setattr(k.revoked_at, "nanos", -1), "revoked_at"),
        (lambda k: setattr(k.created_at, "seconds", 2**62), "created_at"),
    ],
)
def test_a_bad_key_record_raises_one_error_naming_the_field(mutate: Any, field: str) -> None:
    record = key()
    mutate(record)
    with pytest.raises(InvalidRecord) as raised:
        codec.decode_signing_key(record.SerializeToString())
    assert raised.value.field == field


# --- the registries ------------------------------------------------------------------------


def raw(**overrides: Any) -> bytes:
    return message(**overrides).SerializeToString()


def poisoned(**overrides: Any) -> bytes:
    m = message(**overrides)
    m.versions[0].rates.view_cpm = "NaN"
    return m.SerializeToString()


def test_over_a_plain_table_a_bad_update_keeps_the_last_good_version_while_cached() -> None:
    table = {b"LIC-1": raw(platform_fee="0.10"), b"LIC-2": poisoned(licence_id="LIC-2")}
    registry = LicenceRegistry(table)
    assert registry["LIC-1"].latest.platform_fee == Decimal("0.10")
    table[b"LIC-1"] = poisoned()
    assert registry["LIC-1"].latest.platform_fee == Decimal("0.10")
    assert registry.get("LIC-2") is None  # never good: unknown
    table[b"LIC-3"] = raw(licence_id="LIC-OTHER")  # a record under another licence's key
    assert registry.get("LIC-3") is None


@dataclass
class FakeMessage:
    """A consumed record as confluent-kafka hands it over (unit tests only)."""

    _key: bytes | None
    _value: bytes | None
    _offset: int

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return "residuals.licences.v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None


def replica(quarantined: list[Quarantined] | None) -> TopicReplica:
    return TopicReplica(
        KafkaSettings(bootstrap_servers="unused:9092"),
        "residuals.licences.v1",
        name="meter-licences",
        quarantine=None if quarantined is None else quarantined.append,
    )


def test_the_licence_replica_quarantines_poison_and_keeps_the_last_good_version() -> None:
    quarantined: list[Quarantined] = []
    table = replica(quarantined)
    registry = LicenceRegistry(table)  # installs its record check on the replica
    good = raw(platform_fee="0.10")
    records = [
        (b"LIC-1", good),
        (b"LIC-1", poisoned()),  # NaN rate
        (b"LIC-1", None),  # tombstone: licences are never deleted
        (None, good),  # no key
        (b"\xff\xfe", good),  # garbage key
        (b"LIC-2", good),  # another licence's record
        (b"LIC-9", b"\x0a\xff garbage"),  # not a record: unknown, never good
    ]
    for offset, (k, v) in enumerate(records):
        table._apply(FakeMessage(k, v, offset))
    assert registry["LIC-1"].latest.platform_fee == Decimal("0.10")
    assert registry.get("LIC-2") is None and registry.get("LIC-9") is None
    assert set(table) == {b"LIC-1"}
    assert [q.offset for q in quarantined] == [1, 2, 3, 4, 5, 6]
    assert {q.consumer for q in quarantined} == {"meter-licences"}
    assert "versions[0].rates.view_cpm" in quarantined[0].error
    assert "tombstone" in quarantined[1].error
    assert quarantined[1].value is None and quarantined[0].value == poisoned()
    assert table.poisoned == 6 and table.records == 7
    # the next good update is taken
    table._apply(FakeMessage(b"LIC-1", raw(platform_fee="0.20"), 7))
    assert registry["LIC-1"].latest.platform_fee == Decimal("0.20")
    assert registry.warm() == 0  # decoded as they arrived


def test_without_a_publisher_poison_is_counted_in_the_quarantine_metric() -> None:
    table = replica(None)
    keys = KeyRegistry(table)
    labels = {"consumer": "meter-licences", "topic": "residuals.licences.v1"}
    before = REGISTRY.get_sample_value("residuals_quarantined_records_total", labels) or 0
    good = key("vk-1").SerializeToString()
    table._apply(FakeMessage(b"vk-1", good, 0))
    table._apply(FakeMessage(b"vk-1", None, 1))
    table._apply(FakeMessage(b"vk-2", good, 2))
    after = REGISTRY.get_sample_value("residuals_quarantined_records_total", labels)
    assert after == before + 2
    assert keys.verifying_key("vk-1") is not None
    assert keys.verifying_key("vk-2") is None


def test_a_failing_quarantine_callback_does_not_stop_the_reader() -> None:
    def broken(_record: Quarantined) -> None:
        raise RuntimeError("broker down")

    table = TopicReplica(
        KafkaSettings(bootstrap_servers="unused:9092"),
        "t",
        name="meter-licences",
        quarantine=broken,
    )
    registry = LicenceRegistry(table)
    table._apply(FakeMessage(b"LIC-1", b"garbage", 0))
    table._apply(FakeMessage(b"LIC-1", raw(), 1))
    assert registry["LIC-1"] == licence()
