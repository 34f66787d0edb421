"""LicenceService over a real socket against real PostgreSQL: lifecycle, validation with
field paths, and the authorisation matrix both ways (every role on every RPC, allowed and
denied, plus cross-tenant and unauthenticated calls)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from residuals.codecs import licences as licence_codec
from residuals.domain.licence_spec import parse_licence
from residuals.platform.auth import MISSING_KEY_MESSAGE, REJECTED_KEY_MESSAGE
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_pb2, licence_service_pb2
from tests.support.bad_request import INJECTIONS, UNSTORABLE, bad_field, rpc_error, ts, violations
from tests.support.licensing import (
    CASES,
    Service,
    create_request,
    ensure_parties,
    keys_for_roles,
    new_prefix,
    reset_registry,
    start_service,
    variant,
)

ROLES = ("admin", "finance", "vendor", "talent", "suspender")
READERS = {"admin", "finance", "vendor", "talent"}  # not the suspender: it reads nothing


@dataclasses.dataclass
class World:
    service: Service
    keys: dict[str, str]
    other_keys: dict[str, str]

    def call(self, method: str, request: Any, role: str | None = "admin") -> Any:
        return self.service.call(method, request, self.keys[role] if role else None)

    def fresh(self, tenant: str = "A") -> str:
        """A new licence of tenant A (or B), created by admin; returns its id."""
        licence_id = f"LIC-{tenant}-{uuid.uuid4().hex[:8]}"
        self.call("CreateLicence", create_request(variant(licence_id, tenant=tenant)))
        return licence_id

    def suspended(self, tenant: str = "A") -> str:
        licence_id = self.fresh(tenant)
        self.call(
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="test"),
        )
        return licence_id

    def signing_key(self, vendor: str = "VEN-A") -> str:
        public = (
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        return self.call(
            "RegisterSigningKey",
            licence_service_pb2.RegisterSigningKeyRequest(vendor_id=vendor, public_key=public),
        ).key.key_id


@pytest.fixture(scope="module")
def world(stack: StackSettings) -> Iterator[World]:
    reset_registry(stack.dsn)
    started = start_service(stack, new_prefix(), relay=False)
    service = started.service
    try:
        from residuals.platform.auth import Principal, Role
        from tests.support.licensing import api_key

        bootstrap = api_key(stack.dsn, Principal("p-root", Role.ADMIN))
        for tenant in ("A", "B"):
            ensure_parties(service, bootstrap, variant(f"LIC-{tenant}", tenant=tenant))
        keys = keys_for_roles(stack.dsn, vendor="VEN-A", talent="TAL-A")
        other = keys_for_roles(stack.dsn, vendor="VEN-B", talent="TAL-B")
        yield World(service, keys, other)
    finally:
        started.close()


# --- lifecycle ---------------------------------------------------------------------------------


def test_every_case_licence_round_trips_through_the_registry(world: World) -> None:
    for path in sorted(CASES.glob("*.yaml")):
        for index, spec in enumerate(yaml.safe_load(path.read_text())["licences"]):
            licence = parse_licence(spec)
            ensure_parties(world.service, world.keys["admin"], licence)
            message = licence_codec.to_proto(licence)
            world.call("CreateLicence", create_request(licence))
            for version in message.versions[1:]:
                world.call(
                    "AmendLicence",
                    licence_service_pb2.AmendLicenceRequest(
                        licence_id=licence.licence_id,
                        terms=version,
                        effective_from=version.effective_from,
                    ),
                )
            got = world.call(
                "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=licence.licence_id)
            ).licence
            assert licence_codec.from_proto(got) == licence, f"{path.name}[{index}]"
            assert got.revision == len(licence.versions)
            assert all(v.recorded_by == "p-admin" for v in got.versions)


def test_create_is_idempotent_and_conflicts_are_already_exists(world: World) -> None:
    licence_id = world.fresh()
    again = world.call("CreateLicence", create_request(variant(licence_id)))
    assert again.licence.revision == 1
    different = create_request(variant(licence_id))
    different.terms.rates.view_cpm = "9.99"
    error = rpc_error(lambda: world.call("CreateLicence", different))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "amend it instead" in (error.details() or "")


def test_amend_with_mask_keeps_other_terms_and_history(world: World) -> None:
    licence_id = world.fresh()
    terms = licence_pb2.LicenceVersion()
    terms.rates.view_cpm = "6.00"
    terms.scope.channels_allowed.extend(["web"])
    effective = datetime(2026, 6, 1, tzinfo=UTC)
    amended = world.call(
        "AmendLicence",
        licence_service_pb2.AmendLicenceRequest(
            licence_id=licence_id,
            terms=terms,
            update_mask=field_mask_pb2.FieldMask(
                paths=["rates.view_cpm", "scope.channels_allowed"]
            ),
            effective_from=ts(effective),
            expected_revision=1,
            note="CPM up",
        ),
    ).licence
    v1, v2 = amended.versions
    assert (v1.rates.view_cpm, v2.rates.view_cpm) == ("4.00", "6.00")
    assert list(v2.scope.channels_allowed) == ["web"]
    assert v2.rates.render_tiers == v1.rates.render_tiers
    assert v2.note == "CPM up" and amended.revision == 2
    before = world.call(
        "GetLicence",
        licence_service_pb2.GetLicenceRequest(
            licence_id=licence_id, as_of=ts(effective - timedelta(seconds=1))
        ),
    )
    after = world.call(
        "GetLicence",
        licence_service_pb2.GetLicenceRequest(licence_id=licence_id, as_of=ts(effective)),
    )
    assert (before.in_force.version, after.in_force.version) == (1, 2)
    # Optimistic concurrency and ordering of amendments.
    stale = rpc_error(
        lambda: world.call(
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                terms=terms,
                update_mask=field_mask_pb2.FieldMask(paths=["rates.view_cpm"]),
                effective_from=ts(effective + timedelta(days=1)),
                expected_revision=1,
            ),
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    earlier = rpc_error(
        lambda: world.call(
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                terms=terms,
                update_mask=field_mask_pb2.FieldMask(paths=["rates.view_cpm"]),
                effective_from=ts(effective - timedelta(days=1)),
            ),
        )
    )
    assert earlier.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(earlier)[0][0] == "effective_from"


def test_suspend_reinstate_revoke_and_status(world: World) -> None:
    licence_id = world.fresh()
    # A talent may not backdate (test_licensing_backdating.py): a window ahead of now.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    end = start + timedelta(days=9)
    suspended = world.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(
            licence_id=licence_id, starts_at=ts(start), ends_at=ts(end), reason="dispute"
        ),
        "talent",
    ).licence
    (window,) = suspended.suspensions
    assert (window.reason, window.suspended_by, window.automatic) == ("dispute", "p-TAL-A", False)
    inside = world.call(
        "GetLicence",
        licence_service_pb2.GetLicenceRequest(
            licence_id=licence_id, as_of=ts(start + timedelta(days=1))
        ),
    ).licence
    assert inside.status == licence_pb2.LICENCE_STATUS_SUSPENDED
    # An open suspension, reinstated later.
    world.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="audit"),
    )
    twice = rpc_error(
        lambda: world.call(
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="again"),
        )
    )
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    reinstated = world.call(
        "ReinstateLicence",
        licence_service_pb2.ReinstateLicenceRequest(licence_id=licence_id, note="resolved"),
        "talent",
    ).licence
    assert reinstated.status == licence_pb2.LICENCE_STATUS_ACTIVE
    assert all(s.HasField("ends_at") for s in reinstated.suspensions)
    not_suspended = rpc_error(
        lambda: world.call(
            "ReinstateLicence", licence_service_pb2.ReinstateLicenceRequest(licence_id=licence_id)
        )
    )
    assert not_suspended.code() == grpc.StatusCode.FAILED_PRECONDITION
    revoked = world.call(
        "RevokeLicence",
        licence_service_pb2.RevokeLicenceRequest(
            licence_id=licence_id, wind_down_days=7, reason="talent withdrew consent"
        ),
        "talent",
    ).licence
    last = revoked.versions[-1]
    assert revoked.status == licence_pb2.LICENCE_STATUS_REVOKED
    assert last.wind_down_days == 7 and last.note == "talent withdrew consent"
    assert last.effective_from == last.revoked_at
    assert revoked.revision == 5  # create, suspend, suspend, reinstate, revoke
    again = rpc_error(
        lambda: world.call(
            "RevokeLicence", licence_service_pb2.RevokeLicenceRequest(licence_id=licence_id)
        )
    )
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A revocation is not undone by an amendment.
    undo = rpc_error(
        lambda: world.call(
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                terms=licence_codec.to_proto(variant(licence_id)).versions[0],
                effective_from=ts(datetime.now(UTC) + timedelta(days=1)),
                update_mask=field_mask_pb2.FieldMask(paths=["revoked_at"]),
            ),
        )
    )
    assert undo.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "terms.revoked_at" in (undo.details() or "")


def test_automatic_suspension_is_once_per_alert(world: World) -> None:
    licence_id = world.fresh()
    request = licence_service_pb2.SuspendLicenceRequest(
        licence_id=licence_id, reason="FORBIDDEN_CATEGORY", automatic=True, alert_id="al-1"
    )
    first = world.call("SuspendLicence", request).licence
    second = world.call("SuspendLicence", request).licence
    assert len(second.suspensions) == 1 and second.revision == first.revision == 2
    assert second.suspensions[0].automatic and second.suspensions[0].alert_id == "al-1"


def test_list_filters_pages_and_statuses(world: World) -> None:
    ids = sorted(world.fresh("B") for _ in range(5))
    world.call(
        "SuspendLicence", licence_service_pb2.SuspendLicenceRequest(licence_id=ids[0], reason="x")
    )
    seen: list[str] = []
    request = licence_service_pb2.ListLicencesRequest(vendor_id="VEN-B", page_size=2)
    pages = 0
    while True:
        page = world.call("ListLicences", request)
        pages += 1
        assert len(page.licences) <= 2
        seen += [lic.licence_id for lic in page.licences]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == ids and pages == 3
    suspended = world.call(
        "ListLicences",
        licence_service_pb2.ListLicencesRequest(
            vendor_id="VEN-B", statuses=[licence_pb2.LICENCE_STATUS_SUSPENDED]
        ),
    )
    assert [lic.licence_id for lic in suspended.licences] == [ids[0]]
    first = world.call(
        "ListLicences", licence_service_pb2.ListLicencesRequest(vendor_id="VEN-B", page_size=1)
    )
    foreign = rpc_error(
        lambda: world.call(
            "ListLicences",
            licence_service_pb2.ListLicencesRequest(
                vendor_id="VEN-A", page_size=1, page_token=first.next_page_token
            ),
        )
    )
    assert violations(foreign)[0][0] == "page_token"
    # Tenants see only their own without asking.
    vendor_view = world.call("ListLicences", licence_service_pb2.ListLicencesRequest(), "vendor")
    assert vendor_view.licences and {lic.vendor_id for lic in vendor_view.licences} == {"VEN-A"}
    talent_view = world.call("ListLicences", licence_service_pb2.ListLicencesRequest(), "talent")
    assert {lic.talent_id for lic in talent_view.licences} == {"TAL-A"}
    finance_view = world.call(
        "ListLicences", licence_service_pb2.ListLicencesRequest(page_size=1000), "finance"
    )
    assert {"VEN-A", "VEN-B"} <= {lic.vendor_id for lic in finance_view.licences}


def _forged_token(after: str) -> str:
    """A page token as an attacker would forge one for an unfiltered listing."""
    query = {"talent": "", "avatar": "", "vendor": "", "statuses": [], "as_of": ""}
    fingerprint = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    raw = json.dumps({"after": after, "query": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_list_refuses_bad_filters_and_page_tokens_precisely(world: World) -> None:
    everything = licence_service_pb2.ListLicencesRequest(page_size=1000)
    before = [lic.licence_id for lic in world.call("ListLicences", everything).licences]
    assert world.call("ListLicences", licence_service_pb2.ListLicencesRequest(page_size=1))
    for field in ("vendor_id", "talent_id", "avatar_id"):
        for value in (*INJECTIONS, *UNSTORABLE):
            request = licence_service_pb2.ListLicencesRequest(**{field: value})  # type: ignore[arg-type]
            assert bad_field(lambda r=request: world.call("ListLicences", r, "finance")) == field
    for token in (
        "nonsense",
        "%%%",
        "x" * 10_000,
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        _forged_token("a\x00b"),
        _forged_token("' OR 1=1 --"),
        _forged_token("x" * 10_000),
    ):
        request = licence_service_pb2.ListLicencesRequest(page_token=token)
        assert bad_field(lambda r=request: world.call("ListLicences", r)) == "page_token"
    # A well-formed forged token is just a position: it reveals nothing the caller may not see.
    resumed = world.call(
        "ListLicences", licence_service_pb2.ListLicencesRequest(page_token=_forged_token("LIC-A"))
    )
    assert all(lic.licence_id > "LIC-A" for lic in resumed.licences)
    unknown_status = licence_service_pb2.ListLicencesRequest(statuses=[99])  # type: ignore[list-item]
    assert bad_field(lambda: world.call("ListLicences", unknown_status)) == "statuses[0]"
    after = [lic.licence_id for lic in world.call("ListLicences", everything).licences]
    assert after == before


def test_caller_text_in_errors_is_escaped(world: World) -> None:
    error = rpc_error(
        lambda: world.call(
            "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id="\x1b]0;pwned\x07")
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "\x1b" not in details and "\\x1b]0;pwned\\x07" in details
    long = rpc_error(
        lambda: world.call(
            "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id="L" * 10_000)
        )
    )
    assert len(long.details() or "") < 400


def test_signing_keys_register_idempotently_and_revoke(world: World) -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    request = licence_service_pb2.RegisterSigningKeyRequest(public_key=public, key_id="vk-test-1")
    key = world.call("RegisterSigningKey", request, "vendor").key  # vendor defaults to itself
    assert (key.vendor_id, key.public_key) == ("VEN-A", public)
    assert world.call("RegisterSigningKey", request, "vendor").key == key
    other = licence_service_pb2.RegisterSigningKeyRequest(
        vendor_id="VEN-A", public_key=public, key_id="vk-test-2"
    )
    assert rpc_error(lambda: world.call("RegisterSigningKey", other)).code() == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    for bad, field in ((b"short", "public_key"), (public, "key_id")):
        request = licence_service_pb2.RegisterSigningKeyRequest(
            vendor_id="VEN-A", public_key=bad, key_id="bad id" if field == "key_id" else ""
        )
        error = rpc_error(lambda request=request: world.call("RegisterSigningKey", request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(error)[0][0] == field
    revoked = world.call(
        "RevokeSigningKey",
        licence_service_pb2.RevokeSigningKeyRequest(key_id="vk-test-1"),
        "vendor",
    ).key
    assert revoked.HasField("revoked_at")


def test_api_keys_created_work_and_revoked_stop_at_once(world: World) -> None:
    created = world.call(
        "CreateApiKey",
        licence_service_pb2.CreateApiKeyRequest(
            principal=licence_pb2.Principal(role=licence_pb2.ROLE_VENDOR, vendor_id="VEN-B"),
            description="ci",
        ),
    )
    key = created.secret
    assert key.startswith(f"rsd_{created.api_key.api_key_id}_")
    assert created.api_key.prefix and key.startswith(created.api_key.prefix)
    listing = world.service.call("ListLicences", licence_service_pb2.ListLicencesRequest(), key)
    assert {lic.vendor_id for lic in listing.licences} <= {"VEN-B"}
    world.call(
        "RevokeApiKey",
        licence_service_pb2.RevokeApiKeyRequest(api_key_id=created.api_key.api_key_id),
    )
    error = rpc_error(
        lambda: world.service.call("ListLicences", licence_service_pb2.ListLicencesRequest(), key)
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        REJECTED_KEY_MESSAGE,
    )
    for principal, field in (
        (licence_pb2.Principal(), "principal.role"),
        (licence_pb2.Principal(role=licence_pb2.ROLE_VENDOR), "principal.vendor_id"),
        (
            licence_pb2.Principal(role=licence_pb2.ROLE_ADMIN, talent_id="TAL-A"),
            "principal.talent_id",
        ),
    ):
        error = rpc_error(
            lambda principal=principal: world.call(
                "CreateApiKey", licence_service_pb2.CreateApiKeyRequest(principal=principal)
            )
        )
        assert violations(error)[0][0] == field


def test_parties_need_their_talent_and_are_idempotent(world: World) -> None:
    avatar = licence_pb2.Avatar(avatar_id="AVA-X", talent_id="TAL-NOBODY")
    error = rpc_error(
        lambda: world.call("CreateAvatar", licence_service_pb2.CreateAvatarRequest(avatar=avatar))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.details() or "").startswith("avatar.talent_id: talent TAL-NOBODY")
    talent = licence_pb2.Talent(talent_id="TAL-Z", display_name="Zed")
    first = world.call("CreateTalent", licence_service_pb2.CreateTalentRequest(talent=talent))
    assert (
        world.call("CreateTalent", licence_service_pb2.CreateTalentRequest(talent=talent)) == first
    )
    talent.display_name = "Zoe"
    error = rpc_error(
        lambda: world.call("CreateTalent", licence_service_pb2.CreateTalentRequest(talent=talent))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    # A licence naming an unregistered party says which field.
    licence = dataclasses.replace(variant("LIC-NOPAYEE"))
    request = create_request(licence)
    request.terms.splits[0].payee_id = "PAY-UNKNOWN"
    error = rpc_error(lambda: world.call("CreateLicence", request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.details() or "").startswith("terms.splits[0].payee_id: payee PAY-UNKNOWN")


def test_health_is_serving_and_public(world: World) -> None:
    stub = health_pb2_grpc.HealthStub(world.service.channel)
    reply = stub.Check(
        health_pb2.HealthCheckRequest(service="residuals.v1.LicenceService"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- validation: bad licences are rejected naming the field --------------------------------


def _bad(mutate: Callable[[licence_service_pb2.CreateLicenceRequest], None]) -> Any:
    request = create_request(variant(f"LIC-BAD-{uuid.uuid4().hex[:6]}"))
    mutate(request)
    return request


def _set_share(r: Any) -> None:
    r.terms.splits[0].share = "0.9"


BAD_LICENCES: list[tuple[str, Callable[[Any], None], str, str]] = [
    ("splits not summing to 1", _set_share, "terms.splits", "sum to 1"),
    (
        "tiers not ascending",
        lambda r: r.terms.rates.render_tiers.insert(
            0, licence_pb2.RenderTier(up_to=2000, unit_price="0.60")
        ),
        "terms.rates.render_tiers[1].up_to",
        "ascending",
    ),
    (
        "last tier not open",
        lambda r: setattr(r.terms.rates.render_tiers[1], "up_to", 5000),
        "terms.rates.render_tiers",
        "last tier must be open",
    ),
    ("unknown currency", lambda r: setattr(r, "currency_code", "USX"), "currency_code", "ISO 4217"),
    (
        "unknown territory",
        lambda r: r.terms.scope.territories_allowed.append("QQ"),
        "terms.scope.territories_allowed",
        "ISO 3166",
    ),
    (
        "unknown category",
        lambda r: r.terms.scope.categories_allowed.append("corprate_training"),
        "terms.scope.categories_allowed",
        "not a known category",
    ),
    (
        "unknown channel",
        lambda r: r.terms.scope.channels_allowed.append("tv"),
        "terms.scope.channels_allowed",
        "not a known channel",
    ),
    (
        "unknown channel multiplier",
        lambda r: r.terms.rates.channel_multipliers.__setitem__("radio", "2"),
        "terms.rates.channel_multipliers.radio",
        "not a known channel",
    ),
    (
        "negative money",
        lambda r: setattr(r.terms, "minimum_guarantee", "-5.00"),
        "terms.minimum_guarantee",
        "non-negative",
    ),
    (
        "not a decimal",
        lambda r: setattr(r.terms.rates, "view_cpm", "4,00"),
        "terms.rates.view_cpm",
        "not a decimal",
    ),
    (
        "term ends before it starts",
        lambda r: r.terms.ends_at.CopyFrom(ts(datetime(2025, 1, 1, tzinfo=UTC))),
        "terms.ends_at",
        "after starts_at",
    ),
    ("no start", lambda r: r.terms.ClearField("starts_at"), "terms.starts_at", "is required"),
    ("no licence id", lambda r: setattr(r, "licence_id", ""), "licence_id", "is required"),
    (
        "bad identifier",
        lambda r: setattr(r, "vendor_id", "VEN A"),
        "vendor_id",
        "not a valid identifier",
    ),
    (
        "duplicate payee",
        lambda r: r.terms.splits.add(payee_id=r.terms.splits[0].payee_id, share="0"),
        "terms.splits[1].payee_id",
        "appears twice",
    ),
    (
        "quota without metric",
        lambda r: r.terms.quotas.add(limit=10),
        "terms.quotas[0].metric",
        "is required",
    ),
    (
        "fee above 1",
        lambda r: setattr(r.terms, "platform_fee", "1.5"),
        "terms.platform_fee",
        "at most 1",
    ),
    (
        "category both allowed and forbidden",
        lambda r: r.terms.scope.categories_forbidden.append("product_demo"),
        "terms.scope.categories_forbidden",
        "both allowed and forbidden",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [(m, f, w) for _, m, f, w in BAD_LICENCES],
    ids=[name for name, *_ in BAD_LICENCES],
)
def test_bad_licences_are_rejected_naming_the_field(
    world: World, mutate: Callable[[Any], None], field: str, words: str
) -> None:
    error = rpc_error(lambda: world.call("CreateLicence", _bad(mutate)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    ((got_field, description),) = violations(error)
    assert got_field == field
    assert words in description
    assert (error.details() or "").startswith(f"{field}: ")


def test_approval_required_is_amendable_by_mask(world: World) -> None:
    """§5a: which categories need the talent's approval is a term like any other."""
    licence_id = world.fresh()
    terms = licence_pb2.LicenceVersion()
    terms.scope.approval_required.extend(["product_demo"])
    mask = field_mask_pb2.FieldMask(paths=["scope.approval_required"])
    amended = world.call(
        "AmendLicence",
        licence_service_pb2.AmendLicenceRequest(
            licence_id=licence_id,
            terms=terms,
            update_mask=mask,
            effective_from=ts(datetime(2026, 6, 1, tzinfo=UTC)),
        ),
    ).licence
    v1, v2 = amended.versions
    assert (list(v1.scope.approval_required), list(v2.scope.approval_required)) == (
        [],
        ["product_demo"],
    )
    assert list(v2.scope.categories_allowed) == list(v1.scope.categories_allowed)
    terms.scope.ClearField("approval_required")
    terms.scope.approval_required.extend(["news"])  # not an allowed category
    error = rpc_error(
        lambda: world.call(
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                terms=terms,
                update_mask=mask,
                effective_from=ts(datetime(2026, 7, 1, tzinfo=UTC)),
            ),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "approval_required" in (error.details() or "")


def test_bad_amendments_and_requests_name_the_field(world: World) -> None:
    licence_id = world.fresh()
    cases = [
        (
            licence_service_pb2.AmendLicenceRequest(licence_id=licence_id),
            "effective_from",
        ),
        (
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                effective_from=ts(datetime(2026, 7, 1, tzinfo=UTC)),
                update_mask=field_mask_pb2.FieldMask(paths=["rates.nonsense"]),
            ),
            "update_mask.paths[0]",
        ),
        (
            licence_service_pb2.AmendLicenceRequest(
                licence_id=licence_id,
                effective_from=ts(datetime(2026, 7, 1, tzinfo=UTC)),
                update_mask=field_mask_pb2.FieldMask(paths=["splits"]),
            ),
            "terms.splits",
        ),
    ]
    for request, field in cases:
        error = rpc_error(lambda request=request: world.call("AmendLicence", request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violations(error)[0][0] == field
    suspend = licence_service_pb2.SuspendLicenceRequest(
        licence_id=licence_id,
        starts_at=ts(datetime(2026, 5, 2, tzinfo=UTC)),
        ends_at=ts(datetime(2026, 5, 1, tzinfo=UTC)),
    )
    error = rpc_error(lambda: world.call("SuspendLicence", suspend))
    assert [f for f, _ in violations(error)] == ["reason", "ends_at"]


# --- the authorisation matrix --------------------------------------------------------------------

PUBLIC = Ed25519PrivateKey.generate


def _public() -> bytes:
    return PUBLIC().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _party_id() -> str:
    return f"X-{uuid.uuid4().hex[:8]}"


# rpc -> (request factory on the caller's own tenant, roles allowed)
MATRIX: dict[str, tuple[Callable[[World], Any], set[str]]] = {
    "CreateLicence": (
        lambda w: create_request(variant(f"LIC-A-{uuid.uuid4().hex[:8]}")),
        {"admin"},
    ),
    "AmendLicence": (
        lambda w: licence_service_pb2.AmendLicenceRequest(
            licence_id=w.fresh(),
            terms=licence_pb2.LicenceVersion(rates=licence_pb2.RateCard(view_cpm="5.00")),
            update_mask=field_mask_pb2.FieldMask(paths=["rates.view_cpm"]),
            effective_from=ts(datetime(2026, 9, 1, tzinfo=UTC)),
        ),
        {"admin"},
    ),
    "SuspendLicence": (
        lambda w: licence_service_pb2.SuspendLicenceRequest(licence_id=w.fresh(), reason="r"),
        {"admin", "talent"},
    ),
    "SuspendLicence/automatic": (
        lambda w: licence_service_pb2.SuspendLicenceRequest(
            licence_id=w.fresh(), reason="r", automatic=True, alert_id="a-1"
        ),
        {"admin", "suspender"},  # the suspender may call nothing else
    ),
    "ReinstateLicence": (
        lambda w: licence_service_pb2.ReinstateLicenceRequest(licence_id=w.suspended()),
        {"admin", "talent"},
    ),
    "RevokeLicence": (
        lambda w: licence_service_pb2.RevokeLicenceRequest(licence_id=w.fresh()),
        {"admin", "talent"},
    ),
    "GetLicence": (
        lambda w: licence_service_pb2.GetLicenceRequest(licence_id=w.fresh()),
        READERS,
    ),
    "ListLicences": (lambda w: licence_service_pb2.ListLicencesRequest(), READERS),
    "RegisterSigningKey": (
        lambda w: licence_service_pb2.RegisterSigningKeyRequest(
            vendor_id="VEN-A", public_key=_public()
        ),
        {"admin", "vendor"},
    ),
    "RevokeSigningKey": (
        lambda w: licence_service_pb2.RevokeSigningKeyRequest(key_id=w.signing_key()),
        {"admin", "vendor"},
    ),
    "CreateApiKey": (
        lambda w: licence_service_pb2.CreateApiKeyRequest(
            principal=licence_pb2.Principal(role=licence_pb2.ROLE_FINANCE)
        ),
        {"admin"},
    ),
    "RevokeApiKey": (
        lambda w: licence_service_pb2.RevokeApiKeyRequest(
            api_key_id=w.call(
                "CreateApiKey",
                licence_service_pb2.CreateApiKeyRequest(
                    principal=licence_pb2.Principal(role=licence_pb2.ROLE_FINANCE)
                ),
            ).api_key.api_key_id
        ),
        {"admin"},
    ),
    "CreateTalent": (
        lambda w: licence_service_pb2.CreateTalentRequest(
            talent=licence_pb2.Talent(talent_id=_party_id())
        ),
        {"admin"},
    ),
    "CreateAvatar": (
        lambda w: licence_service_pb2.CreateAvatarRequest(
            avatar=licence_pb2.Avatar(avatar_id=_party_id(), talent_id="TAL-A")
        ),
        {"admin"},
    ),
    "CreateVendor": (
        lambda w: licence_service_pb2.CreateVendorRequest(
            vendor=licence_pb2.Vendor(vendor_id=_party_id())
        ),
        {"admin"},
    ),
    "CreatePayee": (
        lambda w: licence_service_pb2.CreatePayeeRequest(
            payee=licence_pb2.Payee(payee_id=_party_id())
        ),
        {"admin"},
    ),
}


def _method(name: str) -> str:
    return name.partition("/")[0]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("rpc", sorted(MATRIX))
def test_authorisation_matrix(world: World, rpc: str, role: str) -> None:
    build, allowed = MATRIX[rpc]
    request = build(world)
    if role in allowed:
        world.call(_method(rpc), request, role)  # must not raise
        return
    error = rpc_error(lambda: world.call(_method(rpc), request, role))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    tenant = {"vendor": "vendor:VEN-A", "talent": "talent:TAL-A"}.get(role, role)
    assert (error.details() or "").startswith(f"{tenant} (principal ")
    assert " may not " in (error.details() or "")


# Cross-tenant: allowed roles acting on the *other* tenant's resources are refused.
CROSS_TENANT: list[tuple[str, str, Callable[[World], Any]]] = [
    (
        "vendor",
        "GetLicence",
        lambda w: licence_service_pb2.GetLicenceRequest(licence_id=w.fresh("B")),
    ),
    (
        "vendor",
        "GetLicence",
        lambda w: licence_service_pb2.GetLicenceRequest(licence_id="LIC-DOES-NOT-EXIST"),
    ),
    (
        "vendor",
        "ListLicences",
        lambda w: licence_service_pb2.ListLicencesRequest(vendor_id="VEN-B"),
    ),
    (
        "vendor",
        "RegisterSigningKey",
        lambda w: licence_service_pb2.RegisterSigningKeyRequest(
            vendor_id="VEN-B", public_key=_public()
        ),
    ),
    (
        "vendor",
        "RevokeSigningKey",
        lambda w: licence_service_pb2.RevokeSigningKeyRequest(key_id=w.signing_key("VEN-B")),
    ),
    (
        "talent",
        "GetLicence",
        lambda w: licence_service_pb2.GetLicenceRequest(licence_id=w.fresh("B")),
    ),
    (
        "talent",
        "ListLicences",
        lambda w: licence_service_pb2.ListLicencesRequest(talent_id="TAL-B"),
    ),
    (
        "talent",
        "SuspendLicence",
        lambda w: licence_service_pb2.SuspendLicenceRequest(licence_id=w.fresh("B"), reason="r"),
    ),
    (
        "talent",
        "SuspendLicence",
        lambda w: licence_service_pb2.SuspendLicenceRequest(licence_id="LIC-NONE", reason="r"),
    ),
    (
        "talent",
        "ReinstateLicence",
        lambda w: licence_service_pb2.ReinstateLicenceRequest(licence_id=w.suspended("B")),
    ),
    (
        "talent",
        "RevokeLicence",
        lambda w: licence_service_pb2.RevokeLicenceRequest(licence_id=w.fresh("B")),
    ),
]


@pytest.mark.parametrize(
    ("role", "rpc", "build"),
    CROSS_TENANT,
    ids=[f"{role}-{rpc}-{i}" for i, (role, rpc, _) in enumerate(CROSS_TENANT)],
)
def test_other_tenants_are_refused(
    world: World, role: str, rpc: str, build: Callable[[World], Any]
) -> None:
    request = build(world)
    error = rpc_error(lambda: world.call(rpc, request, role))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    # The same request works for the other tenant's own principal (or admin).
    if rpc == "GetLicence" and request.licence_id != "LIC-DOES-NOT-EXIST":
        world.service.call(rpc, request, world.other_keys[role])


@pytest.mark.parametrize("role", ["admin", "finance"])
def test_unknown_licence_is_not_found_for_readers_of_everything(world: World, role: str) -> None:
    error = rpc_error(
        lambda: world.call(
            "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id="LIC-NONE"), role
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


METHODS = list(licence_service_pb2.DESCRIPTOR.services_by_name["LicenceService"].methods)


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_every_rpc_needs_a_key(world: World, method: Any) -> None:
    request = getattr(licence_service_pb2, method.input_type.name)()
    error = rpc_error(lambda: world.call(method.name, request, None))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY_MESSAGE)
    forged = "rsd_0123456789abcdef_" + "A" * 43
    error = rpc_error(lambda: world.service.call(method.name, request, forged))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        REJECTED_KEY_MESSAGE,
    )


def test_matrix_covers_every_rpc() -> None:
    assert {_method(rpc) for rpc in MATRIX} == {m.name for m in METHODS}


def test_denials_are_counted_by_the_shared_interceptor(world: World) -> None:
    denied = world.service.grpc_registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "residuals.v1.LicenceService",
            "grpc_method": "CreateLicence",
            "grpc_type": "unary",
            "grpc_code": "PERMISSION_DENIED",
        },
    )
    assert denied == 4  # finance, vendor, talent, suspender in the matrix


def test_postgres_authenticator_sees_revocation_within_its_ttl(world: World) -> None:
    """Another process (e.g. the ingest gateway) caches keys; a revocation shows within TTL."""
    from residuals.licensing.directory import PostgresAuthenticator
    from residuals.platform.auth import parse_api_key

    created = world.call(
        "CreateApiKey",
        licence_service_pb2.CreateApiKeyRequest(
            principal=licence_pb2.Principal(role=licence_pb2.ROLE_VENDOR, vendor_id="VEN-A")
        ),
    )
    parsed = parse_api_key(created.secret)
    assert parsed is not None
    key_id, secret = parsed
    now = [0.0]
    gateway = PostgresAuthenticator(world.service.app.db, ttl_seconds=30, clock=lambda: now[0])
    principal = gateway.authenticate(key_id, secret)
    assert principal is not None and principal.vendor_id == "VEN-A"
    assert gateway.authenticate(key_id, secret[:-1] + ("x" if secret[-1] != "x" else "y")) is None
    world.call("RevokeApiKey", licence_service_pb2.RevokeApiKeyRequest(api_key_id=key_id))
    now[0] = 29.0
    assert gateway.authenticate(key_id, secret) == principal  # cached
    now[0] = 31.0
    assert gateway.authenticate(key_id, secret) is None
    assert gateway.authenticate("0123456789abcdef", secret) is None
