"""Backdating, the audit log and the suspender role, over a real socket against PostgreSQL.

Vendors may not void the signatures behind their own bills by backdating a key
revocation, talent may not reclassify billed usage by backdating a suspension,
reinstatement or revocation: beyond the skew (5 minutes) only admin may, with a reason,
and every such change is in the audit log (`residuals audit`) with its change or not at
all. The alerts service's key may record automatic suspensions and do nothing else.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.timestamp_pb2 import Timestamp

from residuals.alerts.suspension import GrpcLicenceRegistry, Outcome
from residuals.cli import main as residuals_main
from residuals.licensing import audit
from residuals.platform.auth import Principal, Role
from residuals.stack.settings import StackSettings
from residuals.v1 import alerts_pb2, common_pb2, licence_service_pb2
from tests.support.bad_request import bad_field, rpc_error, ts
from tests.support.licensing import (
    Service,
    api_key,
    create_request,
    ensure_parties,
    keys_for_roles,
    new_prefix,
    reset_registry,
    start_service,
    variant,
)

METHODS = list(licence_service_pb2.DESCRIPTOR.services_by_name["LicenceService"].methods)


@dataclass
class Env:
    service: Service
    keys: dict[str, str]
    dsn: str

    def call(self, method: str, request: Any, role: str = "admin") -> Any:
        return self.service.call(method, request, self.keys[role])

    def fresh(self, *, auto_suspend: bool = True) -> str:
        licence_id = f"LIC-A-{uuid.uuid4().hex[:8]}"
        request = create_request(variant(licence_id))
        request.terms.auto_suspend_on_critical = auto_suspend
        self.call("CreateLicence", request)
        return licence_id

    def signing_key(self) -> str:
        public = (
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        request = licence_service_pb2.RegisterSigningKeyRequest(
            vendor_id="VEN-A", public_key=public
        )
        return str(self.call("RegisterSigningKey", request).key.key_id)

    def audited(self, *, licence_id: str = "", key_id: str = "") -> list[audit.Entry]:
        with psycopg.connect(self.dsn) as conn:
            return audit.entries(conn, licence_id=licence_id, key_id=key_id)

    def key_revoked_at(self, key_id: str) -> datetime | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT revoked_at FROM vendor_signing_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(stack: StackSettings) -> Iterator[Env]:
    reset_registry(stack.dsn)
    started = start_service(stack, new_prefix(), relay=False)
    try:
        root = api_key(stack.dsn, Principal("p-root", Role.ADMIN))
        ensure_parties(started.service, root, variant("LIC-A"))
        keys = keys_for_roles(stack.dsn, vendor="VEN-A", talent="TAL-A")
        yield Env(started.service, keys, stack.dsn)
    finally:
        started.close()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- tenants ---------------------------------------------------------------------------------


def test_talent_and_vendors_cannot_backdate_beyond_the_skew(env: Env) -> None:
    licence_id = env.fresh()
    day_ago = ts(_now() - timedelta(days=1))
    suspended = env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="by admin"),
    ).licence
    key_id = env.signing_key()
    attempts = [
        (
            "talent",
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(
                licence_id=licence_id, reason="r", starts_at=day_ago
            ),
        ),
        (
            "talent",
            "ReinstateLicence",
            licence_service_pb2.ReinstateLicenceRequest(
                licence_id=licence_id, at=day_ago, note="a reason does not help"
            ),
        ),
        (
            "talent",
            "RevokeLicence",
            licence_service_pb2.RevokeLicenceRequest(
                licence_id=licence_id, revoked_at=day_ago, reason="r"
            ),
        ),
        (
            "vendor",
            "RevokeSigningKey",
            licence_service_pb2.RevokeSigningKeyRequest(
                key_id=key_id, revoked_at=day_ago, reason="r"
            ),
        ),
    ]
    for role, method, request in attempts:
        error = rpc_error(lambda m=method, r=request, who=role: env.call(m, r, who))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, (method, error.details())
        details = error.details() or ""
        tenant = "talent:TAL-A (principal p-TAL-A)" if role == "talent" else "vendor:VEN-A"
        assert details.startswith(tenant), details
        assert " may not backdate " in details and "only admin may" in details
    # Nothing happened: same revision, key still valid, only the admin's suspension audited.
    after = env.call(
        "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=licence_id)
    ).licence
    assert after.revision == suspended.revision
    assert env.key_revoked_at(key_id) is None
    assert [e.actor for e in env.audited(licence_id=licence_id)] == ["p-admin"]
    assert env.audited(key_id=key_id) == []


def test_within_the_skew_tenants_may_and_are_audited(env: Env) -> None:
    licence_id, quiet = env.fresh(), env.fresh()
    minute_ago = _now() - timedelta(minutes=1)
    window = env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(
            licence_id=licence_id, reason="saw it a minute ago", starts_at=ts(minute_ago)
        ),
        "talent",
    ).licence.suspensions[0]
    (entry,) = env.audited(licence_id=licence_id)
    assert (entry.actor, entry.actor_role, entry.action) == ("p-TAL-A", "talent", "suspend_licence")
    assert (entry.effective_at, entry.reason, entry.vendor_id) == (
        minute_ago,
        "saw it a minute ago",
        "VEN-A",
    )
    assert entry.detail["suspension_id"] == window.suspension_id
    assert 60 <= entry.backdated_seconds < 120
    # Not backdated and not admin: not audited.
    env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(licence_id=quiet, reason="now"),
        "talent",
    )
    assert env.audited(licence_id=quiet) == []
    backdated_key, current_key = env.signing_key(), env.signing_key()
    env.call(
        "RevokeSigningKey",
        licence_service_pb2.RevokeSigningKeyRequest(
            key_id=backdated_key, revoked_at=ts(minute_ago)
        ),
        "vendor",
    )
    now_request = licence_service_pb2.RevokeSigningKeyRequest(key_id=current_key)
    env.call("RevokeSigningKey", now_request, "vendor")
    (key_entry,) = env.audited(key_id=backdated_key)
    assert (key_entry.action, key_entry.vendor_id, key_entry.licence_id) == (
        "revoke_signing_key",
        "VEN-A",
        None,
    )
    assert env.key_revoked_at(backdated_key) == minute_ago
    assert env.audited(key_id=current_key) == []


# --- admin -----------------------------------------------------------------------------------


def test_admins_backdate_only_with_a_reason_and_every_change_is_audited(env: Env) -> None:
    licence_id = env.fresh()
    now = _now()
    ten, five, two = (now - timedelta(days=d) for d in (10, 5, 2))
    env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(
            licence_id=licence_id, reason="talent's complaint of 10 days ago", starts_at=ts(ten)
        ),
    )
    reinstate = licence_service_pb2.ReinstateLicenceRequest(licence_id=licence_id, at=ts(five))
    assert bad_field(lambda: env.call("ReinstateLicence", reinstate)) == "note"
    reinstate.note = "complaint withdrawn on day 5"
    env.call("ReinstateLicence", reinstate)
    revoke = licence_service_pb2.RevokeLicenceRequest(licence_id=licence_id, revoked_at=ts(two))
    error = rpc_error(lambda: env.call("RevokeLicence", revoke))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    # The age is measured when the server handles the call: a second or two after ``two``
    # on a busy machine.
    assert re.match(
        r"reason: is required when revoked_at is more than 0:05:00 in the past "
        r"\(2 days, 0:00:0\d ago\): backdated changes are audited with why",
        error.details() or "",
    ), error.details()
    revoke.reason = "consent withdrawn in writing on day 2"
    revoked = env.call("RevokeLicence", revoke).licence
    assert revoked.versions[-1].revoked_at == ts(two)
    key_id = env.signing_key()
    revoke_key = licence_service_pb2.RevokeSigningKeyRequest(key_id=key_id, revoked_at=ts(ten))
    assert bad_field(lambda: env.call("RevokeSigningKey", revoke_key)) == "reason"
    assert env.key_revoked_at(key_id) is None
    revoke_key.reason = "key leaked 10 days ago"
    env.call("RevokeSigningKey", revoke_key)
    entries = env.audited(licence_id=licence_id)
    assert [(e.action, e.effective_at, e.reason, e.actor) for e in entries] == [
        ("suspend_licence", ten, "talent's complaint of 10 days ago", "p-admin"),
        ("reinstate_licence", five, "complaint withdrawn on day 5", "p-admin"),
        ("revoke_licence", two, "consent withdrawn in writing on day 2", "p-admin"),
    ]
    assert entries[2].detail == {"version": len(revoked.versions), "wind_down_days": 0}
    (key_entry,) = env.audited(key_id=key_id)
    assert (key_entry.effective_at, key_entry.reason) == (ten, "key leaked 10 days ago")
    assert env.key_revoked_at(key_id) == ten
    # An admin change that is not backdated is audited too.
    current = env.fresh()
    env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(licence_id=current, reason="now, by admin"),
    )
    (now_entry,) = env.audited(licence_id=current)
    assert now_entry.backdated_seconds == 0 and now_entry.actor_role == "admin"


def test_an_audit_row_exists_only_with_its_change_and_is_append_only(env: Env) -> None:
    licence_id = env.fresh()
    not_suspended = licence_service_pb2.ReinstateLicenceRequest(
        licence_id=licence_id, at=ts(_now() - timedelta(days=3)), note="was never suspended"
    )
    error = rpc_error(lambda: env.call("ReinstateLicence", not_suspended))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert env.audited(licence_id=licence_id) == []
    env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="audited"),
    )
    with psycopg.connect(env.dsn) as conn:
        for statement in (
            "UPDATE audit_log SET reason = 'rewritten' WHERE licence_id = %s",
            "DELETE FROM audit_log WHERE licence_id = %s",
        ):
            refused = pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append")
            with refused, conn.transaction():
                conn.execute(statement, (licence_id,))
    assert [e.reason for e in env.audited(licence_id=licence_id)] == ["audited"]


# --- precise errors --------------------------------------------------------------------------


def _bad_time(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def test_bad_times_and_texts_name_their_field(env: Env) -> None:
    licence_id, key_id = env.fresh(), env.signing_key()
    far, negative_nanos = _bad_time(2**62), _bad_time(1_800_000_000, -1)
    cases = [
        (
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(
                licence_id=licence_id, reason="r", starts_at=far
            ),
            "starts_at",
        ),
        (
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(
                licence_id=licence_id, reason="r", ends_at=negative_nanos
            ),
            "ends_at",
        ),
        (
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="\x1b[2J"),
            "reason",
        ),
        (
            "ReinstateLicence",
            licence_service_pb2.ReinstateLicenceRequest(licence_id=licence_id, at=far),
            "at",
        ),
        (
            "RevokeLicence",
            licence_service_pb2.RevokeLicenceRequest(licence_id=licence_id, reason="x" * 5000),
            "reason",
        ),
        (
            "RevokeSigningKey",
            licence_service_pb2.RevokeSigningKeyRequest(key_id=key_id, revoked_at=negative_nanos),
            "revoked_at",
        ),
        (
            "GetLicence",
            licence_service_pb2.GetLicenceRequest(licence_id=licence_id, as_of=far),
            "as_of",
        ),
        ("ListLicences", licence_service_pb2.ListLicencesRequest(as_of=_bad_time(-1)), "as_of"),
        (
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(licence_id=licence_id, effective_from=far),
            "effective_from",
        ),
    ]
    for method, request, field in cases:
        assert bad_field(lambda m=method, r=request: env.call(m, r)) == field, method
    assert env.audited(licence_id=licence_id) == []


# --- the suspender ---------------------------------------------------------------------------


def _alert(licence_id: str) -> alerts_pb2.Alert:
    return alerts_pb2.Alert(
        alert_id=uuid.uuid4().hex,
        licence_id=licence_id,
        kind=common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY,
        severity=common_pb2.SEVERITY_CRITICAL,
    )


def test_the_alerts_client_suspends_with_the_suspender_key(env: Env) -> None:
    client = GrpcLicenceRegistry(env.service.channel, env.keys["suspender"], timeout=10)
    licence_id = env.fresh()
    alert = _alert(licence_id)
    first = client.suspend_for(alert)
    assert first.outcome is Outcome.SUSPENDED and first.suspension_id.startswith("SUS-")
    again = client.suspend_for(alert)  # a retry after a crash: the same window
    assert (again.outcome, again.suspension_id) == (Outcome.SUSPENDED, first.suspension_id)
    licence = env.call(
        "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=licence_id)
    ).licence
    (window,) = licence.suspensions
    assert (window.automatic, window.alert_id, window.suspended_by) == (
        True,
        alert.alert_id,
        "p-suspender",
    )
    assert licence.revision == 2  # created, suspended once
    assert client.suspend_for(_alert(licence_id)).outcome is Outcome.ALREADY
    assert env.audited(licence_id=licence_id) == []  # not backdated, not admin
    opted_out = env.fresh(auto_suspend=False)
    assert client.suspend_for(_alert(opted_out)).outcome is Outcome.SKIPPED
    untouched = env.call(
        "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=opted_out)
    ).licence
    assert (untouched.revision, len(untouched.suspensions)) == (1, 0)


def test_the_suspender_is_refused_everything_else(env: Env) -> None:
    licence_id = env.fresh()
    for method in METHODS:
        if method.name == "SuspendLicence":
            continue
        request = (
            getattr(licence_service_pb2, method.input_type.name)(licence_id=licence_id)
            if ("licence_id" in method.input_type.fields_by_name)
            else getattr(licence_service_pb2, method.input_type.name)()
        )
        error = rpc_error(lambda m=method.name, r=request: env.call(m, r, "suspender"))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, method.name
        assert (error.details() or "").startswith(
            "suspender (principal p-suspender) may not call"
            f" /residuals.v1.LicenceService/{method.name}: role suspender may call only"
        )
    by_hand = licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="manual")
    error = rpc_error(lambda: env.call("SuspendLicence", by_hand, "suspender"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not suspend by hand" in (error.details() or "")
    backdated = licence_service_pb2.SuspendLicenceRequest(
        licence_id=licence_id,
        reason="automatic",
        automatic=True,
        alert_id="al-1",
        starts_at=ts(_now() - timedelta(hours=1)),
    )
    error = rpc_error(lambda: env.call("SuspendLicence", backdated, "suspender"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not backdate starts_at" in (error.details() or "")
    assert (
        env.call(
            "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=licence_id)
        ).licence.revision
        == 1
    )


# --- residuals audit -------------------------------------------------------------------------


def test_residuals_audit_lists_with_filters(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", env.dsn)
    licence_id = env.fresh()
    start = _now() - timedelta(days=4)
    env.call(
        "SuspendLicence",
        licence_service_pb2.SuspendLicenceRequest(
            licence_id=licence_id, reason="chargeback dispute", starts_at=ts(start)
        ),
    )
    env.call(
        "ReinstateLicence",
        licence_service_pb2.ReinstateLicenceRequest(licence_id=licence_id, note="settled"),
        "talent",
    )
    capsys.readouterr()
    assert residuals_main(["audit", "--licence", licence_id, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e["actor"], e["reason"]) for e in lines] == [
        ("suspend_licence", "p-admin", "chargeback dispute"),
    ]  # the talent reinstated now: not backdated, not audited
    assert lines[0]["effective_at"] == start.isoformat()
    assert 4 * 86400 <= lines[0]["backdated_seconds"] < 4 * 86400 + 120
    assert residuals_main(["audit", "--licence", licence_id, "--actor", "p-TAL-A"]) == 0
    assert capsys.readouterr().err.strip() == "no audit entries match"
    tomorrow = (_now() + timedelta(days=1)).isoformat()
    assert residuals_main(["audit", "--since", tomorrow, "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert residuals_main(["audit", "--licence", licence_id]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "ID", "RECORDED_AT", "ACTOR", "ACTION", "SUBJECT", "EFFECTIVE_AT", "BACKDATED", "REASON",
    ]  # fmt: skip
    assert f"licence {licence_id}" in row and "4 days, 0:0" in row
    assert row.endswith("chargeback dispute")
    assert residuals_main(["audit", "--since", "yesterday"]) == 2
    assert "--since: 'yesterday' is not an ISO 8601 timestamp" in capsys.readouterr().err
