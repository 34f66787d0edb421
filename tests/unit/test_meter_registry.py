"""The meter's licence registry: raw records decoded once, shared parts, updates seen."""

from __future__ import annotations

from residuals.codecs import licences as codec
from residuals.meter.lookups import LicenceRegistry
from tests.support.builders import licence


def raw(**overrides: object) -> bytes:
    return codec.to_proto(licence(**overrides)).SerializeToString()


def test_warm_decodes_every_licence_once_and_lookups_then_decode_nothing() -> None:
    table = {f"LIC-{i}".encode(): raw(licence_id=f"LIC-{i}") for i in range(50)}
    registry = LicenceRegistry(table, cache_size=100)
    assert registry.warm() == 50
    assert registry.warm() == 0  # already decoded
    assert registry.get("LIC-7") is not None and registry.get("LIC-7").licence_id == "LIC-7"
    assert registry.decoded == 50


def test_warm_stops_at_the_cache_bound() -> None:
    table = {f"LIC-{i}".encode(): raw(licence_id=f"LIC-{i}") for i in range(30)}
    registry = LicenceRegistry(table, cache_size=10)
    assert registry.warm() == 10


def test_an_updated_record_is_decoded_again_on_the_next_lookup() -> None:
    table = {b"LIC-1": raw(platform_fee="0.10")}
    registry = LicenceRegistry(table)
    registry.warm()
    assert str(registry["LIC-1"].versions[0].platform_fee) == "0.10"
    table[b"LIC-1"] = raw(platform_fee="0.20")
    assert str(registry["LIC-1"].versions[0].platform_fee) == "0.20"


def test_licences_with_the_same_terms_share_their_decoded_scope_and_rate_card() -> None:
    a = codec.from_proto(codec.to_proto(licence(licence_id="LIC-A")))
    b = codec.from_proto(codec.to_proto(licence(licence_id="LIC-B")))
    c = codec.from_proto(
        codec.to_proto(licence(licence_id="LIC-C", scope={"channels_allowed": ["web"]}))
    )
    assert a.versions[0].scope is b.versions[0].scope
    assert a.versions[0].rates is b.versions[0].rates
    assert c.versions[0].scope is not a.versions[0].scope
    assert c.versions[0].scope.channels_allowed == frozenset({"web"})
    assert c.versions[0].rates is a.versions[0].rates
