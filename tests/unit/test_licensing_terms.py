"""Licensing without servers: request terms -> spec -> domain, amendments by field mask,
registry rules, field paths, status, access policy and page tokens."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from residuals.codecs import licences as licence_codec
from residuals.codecs.timestamps import optional_datetime
from residuals.domain.licence_spec import SpecError, parse_licence
from residuals.domain.licences import Window
from residuals.licensing import access, registry, rules, terms
from residuals.licensing.errors import InvalidArgument
from residuals.licensing.snapshot import (
    LicenceRecord,
    Status,
    SuspensionRow,
    VersionRow,
    status_at,
    to_message,
)
from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.v1 import licence_pb2

CASES = sorted((Path(__file__).parents[1] / "data" / "royalty-cases").glob("*.yaml"))
SPECS = [
    (f"{case.stem}[{i}]", spec)
    for case in CASES
    for i, spec in enumerate(yaml.safe_load(case.read_text())["licences"])
]


def identity_of(licence: Any) -> terms.Identity:
    return terms.Identity(
        licence.licence_id,
        licence.talent_id,
        licence.avatar_id,
        licence.vendor_id,
        licence.currency,
    )


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_request_terms_validate_to_the_same_licence(name: str, spec: dict[str, Any]) -> None:
    """proto (what clients send) -> spec -> parse_licence gives the case's own licence."""
    licence = parse_licence(spec)
    message = licence_codec.to_proto(licence)
    versions: list[tuple[datetime | None, terms.Spec]] = []
    for version in message.versions:
        base = versions[-1][1] if versions else terms.blank_spec()
        update = licence_codec.request_spec(version)
        versions.append(
            (optional_datetime(version, "effective_from"), terms.apply_mask(base, update, []))
        )
    assert terms.validate(identity_of(licence), versions) == licence
    stored = [(v.effective_from, terms.complete_spec(v)) for v in licence.versions]
    assert terms.validate(identity_of(licence), stored) == licence


BASE = parse_licence(dict(SPECS[0][1]))
BASE_SPEC = terms.complete_spec(BASE.versions[0])


def test_mask_replaces_only_the_named_terms() -> None:
    update = {"rates": {"view_cpm": "9.00"}, "scope": {"channels_allowed": ["web"]}}
    merged = terms.apply_mask(BASE_SPEC, update, ["rates.view_cpm", "scope.channels_allowed"])
    assert merged["rates"]["view_cpm"] == "9.00"
    assert merged["rates"]["render_tiers"] == BASE_SPEC["rates"]["render_tiers"]
    assert merged["scope"]["channels_allowed"] == ["web"]
    assert merged["scope"]["categories_allowed"] == BASE_SPEC["scope"]["categories_allowed"]
    assert merged["splits"] == BASE_SPEC["splits"]
    assert BASE_SPEC["rates"]["view_cpm"] == "4.00"  # the base is not modified


def test_a_masked_term_absent_from_the_update_is_reset() -> None:
    merged = terms.apply_mask(
        BASE_SPEC, {}, ["rates.view_cpm", "ends_at", "auto_suspend_on_critical"]
    )
    assert merged["rates"]["view_cpm"] is None  # the parser's default (0) applies
    assert merged["ends_at"] is None
    assert merged["auto_suspend_on_critical"] is True
    merged = terms.apply_mask(BASE_SPEC, {}, ["splits"])
    with pytest.raises(SpecError, match="needs at least one payee"):
        terms.validate(identity_of(BASE), [(None, merged)])


def test_empty_mask_replaces_everything_but_keeps_a_revocation() -> None:
    revoked = {**BASE_SPEC, "revoked_at": "2026-05-01T00:00:00+00:00", "wind_down_days": 4}
    update = licence_codec.request_spec(licence_codec.to_proto(BASE).versions[0])
    merged = terms.apply_mask(revoked, update, [])
    assert (merged["revoked_at"], merged["wind_down_days"]) == ("2026-05-01T00:00:00+00:00", 4)
    merged = terms.apply_mask(revoked, {**update, "revoked_at": None}, [])
    assert merged["revoked_at"] is None  # explicitly given: taken (the registry then refuses)


def test_unknown_mask_paths_are_named() -> None:
    with pytest.raises(SpecError) as error:
        terms.apply_mask(BASE_SPEC, {}, ["rates.view_cpm", "version"])
    assert error.value.path == "update_mask.paths[1]"


@pytest.mark.parametrize(
    ("spec_path", "index", "expected"),
    [
        ("currency", 0, "currency_code"),
        ("licence_id", 0, "licence_id"),
        ("rates.render_tiers[1].up_to", 0, "terms.rates.render_tiers[1].up_to"),
        ("splits.AGT-ROSA", 0, "terms.splits[1].share"),
        ("splits.AGT-ROSA.payee_id", 0, "terms.splits[1].payee_id"),
        ("splits", 0, "terms.splits"),
        ("amendments[1].effective_from", 2, "effective_from"),
        ("amendments[1].scope.channels_allowed", 2, "terms.scope.channels_allowed"),
        ("amendments[0].scope", 2, "amendments[0].scope"),  # stored history: as is
    ],
)
def test_spec_paths_become_request_fields(spec_path: str, index: int, expected: str) -> None:
    payees = ["TAL-ANA", "AGT-ROSA"]
    assert terms.request_path(spec_path, new_version_index=index, payees=payees) == expected


def test_proto_splits_are_checked_for_presence_and_duplicates() -> None:
    message = licence_codec.to_proto(BASE).versions[0]
    message.splits.add(payee_id="TAL-ANA", share="0")
    with pytest.raises(SpecError) as error:
        licence_codec.request_spec(message)
    assert (error.value.path, error.value.message) == (
        "splits[2].payee_id",
        "'TAL-ANA' appears twice",
    )
    del message.splits[2]
    message.splits[0].share = ""
    with pytest.raises(SpecError, match="is required"):
        licence_codec.request_spec(message)


def test_a_request_with_an_unknown_quota_enum_is_refused_naming_the_field() -> None:
    message = licence_codec.to_proto(BASE).versions[0]
    message.quotas.add(metric=42, limit=5)  # type: ignore[arg-type]
    with pytest.raises(SpecError) as error:
        licence_codec.request_spec(message)
    assert error.value.path == "quotas[0].metric"
    del message.quotas[0]
    message.quotas.add(metric=1, limit=5, on_exceed=9)  # type: ignore[arg-type]
    with pytest.raises(SpecError) as error:
        licence_codec.request_spec(message)
    assert error.value.path == "quotas[0].on_exceed"


def test_unset_terms_mean_the_same_in_a_request_and_in_a_record() -> None:
    """The domain's defaults are stated once: a request leaving a term unset and a record
    carrying the same proto read to the same version."""
    from residuals.domain.licence_spec import parse_licence

    message = licence_codec.to_proto(BASE)
    version = message.versions[0]
    version.rates.unlicensed_use_multiplier = ""
    version.ClearField("auto_suspend_on_critical")
    version.quotas.add(metric=1, limit=5)  # type: ignore[arg-type]
    from_record = licence_codec.from_proto(message).versions[0]
    identity = terms.Identity(
        BASE.licence_id, BASE.talent_id, BASE.avatar_id, BASE.vendor_id, BASE.currency
    )
    spec = terms.licence_spec(identity, [(None, licence_codec.request_spec(version))])
    from_request = parse_licence(spec, path="").versions[0]
    assert from_request.rates.unlicensed_use_multiplier == 2
    assert from_request.auto_suspend_on_critical is True
    assert from_request.quotas == from_record.quotas
    assert from_request.rates == from_record.rates
    assert from_request.auto_suspend_on_critical == from_record.auto_suspend_on_critical


def _scoped(**scope: Any) -> Any:
    version = BASE.versions[0]
    return dataclasses.replace(version, scope=dataclasses.replace(version.scope, **scope))


@pytest.mark.parametrize(
    ("version", "path", "words"),
    [
        (
            _scoped(categories_allowed=frozenset({"cooking"})),
            "scope.categories_allowed",
            "known category",
        ),
        (
            _scoped(categories_forbidden=frozenset({"nope"})),
            "scope.categories_forbidden",
            "known category",
        ),
        (_scoped(territories_allowed=frozenset({"UK"})), "scope.territories_allowed", "ISO 3166-1"),
        (
            _scoped(territories_forbidden=frozenset({"*"})),
            "scope.territories_forbidden",
            "cannot be",
        ),
        (_scoped(channels_allowed=frozenset({"tv"})), "scope.channels_allowed", "known channel"),
        (
            _scoped(approval_required=frozenset({"astrology"})),
            "scope.approval_required",
            "known category",
        ),
        (
            _scoped(categories_forbidden=frozenset({"product_demo"})),
            "scope.categories_forbidden",
            "both allowed and forbidden",
        ),
    ],
)
def test_registry_rules(version: Any, path: str, words: str) -> None:
    with pytest.raises(SpecError) as error:
        rules.check_version(version, "amendments[0].")
    assert error.value.path == f"amendments[0].{path}"
    assert words in error.value.message


def test_registry_vocabulary_covers_every_case() -> None:
    for _, spec in SPECS:
        rules.check_licence(parse_licence(spec))
    assert len(rules.COUNTRIES) == 249 and {"US", "GB", "DE", "JP"} <= rules.COUNTRIES
    assert "UK" not in rules.COUNTRIES


@pytest.mark.parametrize("value", ["", "a b", "-x", "x/y", "é", "x" * 129])
def test_identifiers_are_refused(value: str) -> None:
    with pytest.raises(SpecError):
        rules.check_identifier("licence_id", value)


def test_status_at() -> None:
    licence = parse_licence(dict(dict(SPECS)["06-amendment-and-revocation[0]"]))
    assert status_at(licence, datetime(2026, 2, 1, tzinfo=UTC)) is Status.PENDING
    assert status_at(licence, datetime(2026, 10, 1, tzinfo=UTC)) is Status.ACTIVE
    assert status_at(licence, datetime(2026, 10, 20, tzinfo=UTC)) is Status.REVOKED
    active = parse_licence(dict(SPECS[0][1]))
    suspended = dataclasses.replace(
        active,
        suspensions=(Window(datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)),),
    )
    assert status_at(suspended, datetime(2026, 5, 1, 12, tzinfo=UTC)) is Status.SUSPENDED
    assert status_at(suspended, datetime(2026, 5, 2, tzinfo=UTC)) is Status.ACTIVE
    assert status_at(active, datetime(2027, 1, 1, tzinfo=UTC)) is Status.EXPIRED
    for status in Status:
        assert Status.from_proto(status.proto) is status


def test_snapshot_carries_registry_facts() -> None:
    licence = parse_licence(dict(SPECS[0][1]))
    recorded = datetime(2026, 1, 2, tzinfo=UTC)
    record = LicenceRecord(
        identity=identity_of(licence),
        revision=7,
        created_at=recorded,
        created_by="p-admin",
        versions=(
            VersionRow(
                1, None, terms.complete_spec(licence.versions[0]), recorded, "p-admin", "hi"
            ),
        ),
        suspensions=(
            SuspensionRow(
                "S1",
                datetime(2026, 3, 1, tzinfo=UTC),
                None,
                "critical",
                automatic=True,
                alert_id="al-9",
                suspended_by="svc",
            ),
        ),
    )
    message = to_message(record, datetime(2026, 3, 2, tzinfo=UTC))
    assert message.revision == 7 and message.status == licence_pb2.LICENCE_STATUS_SUSPENDED
    assert message.versions[0].recorded_by == "p-admin" and message.versions[0].note == "hi"
    (window,) = message.suspensions
    assert (window.suspension_id, window.alert_id, window.automatic) == ("S1", "al-9", True)
    assert not window.HasField("ends_at")
    assert licence_codec.from_proto(message).versions == licence.versions


ADMIN = Principal("a", Role.ADMIN)
FINANCE = Principal("f", Role.FINANCE)
VENDOR = Principal("v", Role.VENDOR, vendor_id="VEN-A")
TALENT = Principal("t", Role.TALENT, talent_id="TAL-A")


def test_access_policy() -> None:
    for principal in (ADMIN, FINANCE):
        assert access.sees_licence(principal, vendor_id="X", talent_id="Y")
    assert access.sees_licence(VENDOR, vendor_id="VEN-A", talent_id="Y")
    assert not access.sees_licence(VENDOR, vendor_id="VEN-B", talent_id="TAL-A")
    assert access.sees_licence(TALENT, vendor_id="X", talent_id="TAL-A")
    assert not access.sees_licence(TALENT, vendor_id="VEN-A", talent_id="TAL-B")
    access.require_admin(ADMIN, "x")
    for principal in (FINANCE, VENDOR, TALENT):
        with pytest.raises(PermissionDenied, match="only admin may"):
            access.require_admin(principal, "create licences")
    access.require_talent_or_admin(TALENT, "suspend licences")
    with pytest.raises(PermissionDenied, match="only admin or the licence's talent"):
        access.require_talent_or_admin(VENDOR, "suspend licences")
    with pytest.raises(PermissionDenied, match="not a licence of talent TAL-A"):
        access.check_talent_owns(TALENT, "LIC-B", "TAL-B")
    access.require_vendor_or_admin(VENDOR, "VEN-A", "register signing keys")
    with pytest.raises(PermissionDenied, match="only its own signing keys"):
        access.require_vendor_or_admin(VENDOR, "VEN-B", "register signing keys")
    with pytest.raises(PermissionDenied):
        access.require_vendor_or_admin(FINANCE, "VEN-A", "register signing keys")


def test_page_tokens_are_bound_to_their_query() -> None:
    token = registry._encode_token("LIC-9", "abc")
    assert registry._decode_token(token, "abc") == "LIC-9"
    assert registry._decode_token("", "abc") == ""
    with pytest.raises(InvalidArgument, match="different filters"):
        registry._decode_token(token, "abd")
    with pytest.raises(InvalidArgument, match="page_token: is not a token"):
        registry._decode_token("%%%not-base64", "abc")


def test_future_times_compare_in_utc() -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    spec = {**BASE_SPEC, "ends_at": later.astimezone().isoformat()}
    licence = terms.validate(identity_of(BASE), [(None, spec)])
    assert licence.versions[0].ends_at == later


def test_a_stored_licence_stays_readable_under_tighter_rules() -> None:
    """Reads parse only; the registry's write-time rules (vocabulary, identifier formats)
    judge new licences and versions, never one already recorded."""
    licence = parse_licence(SPECS[0][1])
    stored = terms.complete_spec(licence.versions[0])
    stored["scope"]["categories_allowed"] = ["a-category-since-retired"]
    with pytest.raises(SpecError, match="categories_allowed"):
        terms.validate(identity_of(licence), [(None, stored)])
    read = terms.read(identity_of(licence), [(None, stored)])
    assert read.versions[0].scope.categories_allowed == {"a-category-since-retired"}
