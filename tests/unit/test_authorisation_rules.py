"""The pure rules of issue 14 item 5: backdating, the role matrix, stream caps, bad requests.

No server here: the same rules are exercised over real sockets in
tests/integration/test_licensing_backdating.py, test_auth_interceptor.py and the
services' integration tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2

from residuals.alerts.store import MAX_SEQUENCE, page_token, parse_page_token
from residuals.licensing import access, backdating
from residuals.licensing.settings import LicensingSettings
from residuals.platform.auth import (
    ROLE_METHODS,
    PermissionDenied,
    Principal,
    Role,
    may_call,
)
from residuals.platform.config import ConfigError, load
from residuals.platform.errors import (
    InvalidArgument,
    echo,
    enum_filters,
    period_field,
    text_field,
    text_fields,
    timestamp_field,
)
from residuals.platform.grpc_server import GrpcSettings
from residuals.platform.limits import StreamSlots
from residuals.v1 import licence_service_pb2

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
PRINCIPALS = {
    Role.ADMIN: Principal("p-admin", Role.ADMIN),
    Role.FINANCE: Principal("p-fin", Role.FINANCE),
    Role.VENDOR: Principal("p-acme", Role.VENDOR, vendor_id="acme"),
    Role.TALENT: Principal("p-tal", Role.TALENT, talent_id="TAL-A"),
    Role.SUSPENDER: Principal("svc-alerts", Role.SUSPENDER),
}


# --- backdating ---------------------------------------------------------------------------


def _check(role: Role, ago: timedelta, reason: str = "") -> bool:
    timing = backdating.Timing("starts_at", NOW - ago, NOW)
    return backdating.check(
        PRINCIPALS[role], timing, skew=SKEW, reason_field="reason", reason=reason
    )


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ADMIN])
def test_non_admins_may_not_backdate_beyond_the_skew(role: Role) -> None:
    assert _check(role, timedelta(0)) is False  # now: allowed, not audited
    assert _check(role, -timedelta(days=3)) is False  # the future: not backdating
    assert _check(role, SKEW) is True  # within the skew: allowed, audited
    assert _check(role, timedelta(seconds=1)) is True
    with pytest.raises(PermissionDenied) as refused:
        _check(role, SKEW + timedelta(seconds=1), reason="a reason does not help")
    message = str(refused.value)
    assert message.startswith(PRINCIPALS[role].describe())
    assert "may not backdate starts_at to 2026-12-07T11:54:59+00:00 (0:05:01 ago)" in message
    assert "only admin" in message and "0:05:00" in message


def test_admins_may_backdate_with_a_reason_and_are_always_audited() -> None:
    assert _check(Role.ADMIN, timedelta(0)) is True  # every admin change is audited
    assert _check(Role.ADMIN, -timedelta(days=1)) is True
    assert _check(Role.ADMIN, SKEW) is True  # within the skew: no reason needed
    assert _check(Role.ADMIN, timedelta(days=280), reason="court order 12/34") is True
    for blank in ("", "   "):
        with pytest.raises(InvalidArgument) as invalid:
            _check(Role.ADMIN, timedelta(days=280), reason=blank)
        ((violation),) = invalid.value.violations
        assert violation.field == "reason"
        assert "is required when starts_at is more than 0:05:00 in the past" in (
            violation.description
        )
        assert "280 days, 0:00:00 ago" in violation.description


def test_a_zero_skew_refuses_any_backdating() -> None:
    timing = backdating.Timing("revoked_at", NOW - timedelta(microseconds=1), NOW)
    with pytest.raises(PermissionDenied):
        backdating.check(
            PRINCIPALS[Role.VENDOR], timing, skew=timedelta(0), reason_field="reason", reason=""
        )
    assert backdating.Timing("at", NOW + timedelta(hours=1), NOW).backdated_by == timedelta(0)


def test_the_skew_is_five_minutes_unless_configured() -> None:
    settings = load(LicensingSettings, {})
    assert settings.backdate_skew_seconds == 300 == backdating.DEFAULT_SKEW.total_seconds()
    configured = load(LicensingSettings, {"LICENSING_BACKDATE_SKEW_SECONDS": "30"})
    assert configured.backdate_skew_seconds == 30
    with pytest.raises(ConfigError, match="LICENSING_BACKDATE_SKEW_SECONDS"):
        load(LicensingSettings, {"LICENSING_BACKDATE_SKEW_SECONDS": "-1"})


# --- the role matrix ---------------------------------------------------------------------

SUSPEND = "/residuals.v1.LicenceService/SuspendLicence"
OTHER_METHODS = [
    "/residuals.v1.LicenceService/GetLicence",
    "/residuals.v1.LicenceService/ListLicences",
    "/residuals.v1.LicenceService/RevokeLicence",
    "/residuals.v1.LicenceService/ReinstateLicence",
    "/residuals.v1.LicenceService/CreateApiKey",
    "/residuals.v1.LicenceService/RevokeSigningKey",
    "/residuals.v1.AlertService/WatchAlerts",
    "/residuals.v1.AlertService/ResolveAlert",
    "/residuals.v1.PayoutService/GetStatement",
    "/residuals.v1.PayoutService/ListPayouts",
    "/residuals.v1.IngestService/PublishBatch",
]


def test_the_suspender_may_call_only_suspend_licence() -> None:
    suspender = PRINCIPALS[Role.SUSPENDER]
    assert ROLE_METHODS[Role.SUSPENDER] == frozenset({SUSPEND})
    assert may_call(suspender, SUSPEND)
    assert not [m for m in OTHER_METHODS if may_call(suspender, m)]
    # The other roles are restricted by the handlers, not by this list.
    for role in (Role.ADMIN, Role.FINANCE, Role.VENDOR, Role.TALENT):
        assert all(may_call(PRINCIPALS[role], m) for m in [SUSPEND, *OTHER_METHODS])


# (role, automatic) -> allowed to suspend
SUSPEND_MATRIX = {
    (Role.ADMIN, False): True,
    (Role.ADMIN, True): True,
    (Role.TALENT, False): True,
    (Role.TALENT, True): False,
    (Role.SUSPENDER, False): False,
    (Role.SUSPENDER, True): True,
    (Role.VENDOR, False): False,
    (Role.VENDOR, True): False,
    (Role.FINANCE, False): False,
    (Role.FINANCE, True): False,
}


def test_suspend_matrix_covers_every_role() -> None:
    assert {role for role, _ in SUSPEND_MATRIX} == set(Role)


@pytest.mark.parametrize(("role", "automatic"), sorted(SUSPEND_MATRIX))
def test_who_may_suspend(role: Role, automatic: bool) -> None:
    principal = PRINCIPALS[role]
    if SUSPEND_MATRIX[(role, automatic)]:
        access.require_suspend(principal, automatic=automatic)
        return
    with pytest.raises(PermissionDenied) as refused:
        access.require_suspend(principal, automatic=automatic)
    assert str(refused.value).startswith(f"{principal.describe()} may not ")


def test_the_suspender_reads_nothing_and_manages_nothing() -> None:
    suspender = PRINCIPALS[Role.SUSPENDER]
    for gate in (
        lambda: access.require_reader(suspender),
        lambda: access.require_admin(suspender, "create licences"),
        lambda: access.require_talent_or_admin(suspender, "revoke licences"),
        lambda: access.require_vendor_or_admin(suspender, "acme", "revoke signing keys"),
    ):
        with pytest.raises(PermissionDenied):
            gate()
    # ...but acts on any licence's automatic suspension (unknown ids: NOT_FOUND).
    assert access.sees_licence(suspender, vendor_id="v", talent_id="t")
    assert access.may_read_everything(suspender)


# --- stream caps -------------------------------------------------------------------------


def test_stream_slots_cap_each_principal_and_the_total() -> None:
    slots = StreamSlots(per_principal=2, total=3)
    assert slots.acquire("a") is None and slots.acquire("a") is None
    refused = slots.acquire("a")
    assert refused is not None and "GRPC_MAX_STREAMS_PER_PRINCIPAL=2" in refused
    assert refused.startswith("a already has 2 open streams")
    assert slots.acquire("b") is None  # another caller is still served
    full = slots.acquire("c")
    assert full is not None and "GRPC_MAX_STREAMS=3" in full
    assert (slots.open_streams("a"), slots.open_streams()) == (2, 3)
    slots.release("a")
    assert slots.acquire("c") is None
    for who in ("a", "b", "c"):
        slots.release(who)
    assert slots.open_streams() == 0 and slots.open_streams("a") == 0
    slots.release("nobody")  # never negative
    assert slots.open_streams() == 0


def test_grpc_limits_leave_threads_for_unary_calls() -> None:
    default = GrpcSettings()
    assert (default.max_workers, default.stream_limit, default.rpc_limit) == (16, 12, 64)
    assert default.max_streams_per_principal == 4
    assert GrpcSettings(max_workers=4).stream_limit == 3
    assert GrpcSettings(max_workers=2).stream_limit == 1
    explicit = GrpcSettings(max_workers=8, max_streams=5, max_concurrent_rpcs=10)
    assert (explicit.stream_limit, explicit.rpc_limit) == (5, 10)
    with pytest.raises(ConfigError, match="GRPC_MAX_STREAMS=8 must be below GRPC_MAX_WORKERS=8"):
        GrpcSettings(max_workers=8, max_streams=8)


# --- bad requests ------------------------------------------------------------------------

HOSTILE_BUT_PRINTABLE = ["' OR 1=1 --", "%", "_", "'; DROP TABLE licences; --", "é€😀"]


def test_text_fields_refuse_what_cannot_be_stored_or_shown() -> None:
    for text in HOSTILE_BUT_PRINTABLE:
        assert text_field("filter.vendor_id", text) == text  # bound as a parameter
    for text, words in (
        ("a\x00b", "U+0000"),
        ("\x1b[2J", "U+001B"),
        ("x" * 10_000, "10,000 characters, the limit is 128"),
        ("line\n", "U+000A"),
    ):
        with pytest.raises(InvalidArgument) as invalid:
            text_field("filter.vendor_id", text)
        assert str(invalid.value).startswith("filter.vendor_id: ")
        assert words in str(invalid.value)
    with pytest.raises(InvalidArgument, match=r"^filter.licence_ids\[1\]: "):
        text_fields("filter.licence_ids", ["ok", "bad\x00"])


def test_enum_filters_refuse_unknown_numbers_and_drop_unspecified() -> None:
    assert enum_filters("states", [0, 1, 2], [1, 2, 3]) == [1, 2]
    with pytest.raises(InvalidArgument, match=r"^states\[1\]: 99 is not a known value$"):
        enum_filters("states", [1, 99], [1, 2, 3])


def test_periods_and_timestamps_name_their_field() -> None:
    assert str(period_field("period", "2026-10")) == "2026-10"
    for bad in ("2026-13", "x" * 500, "\x1b[31m"):
        with pytest.raises(InvalidArgument) as invalid:
            period_field("filter.period", bad)
        text = str(invalid.value)
        assert text.startswith("filter.period: ") and "\x1b" not in text and len(text) < 150
    request = licence_service_pb2.SuspendLicenceRequest()
    assert timestamp_field(request, "starts_at") is None
    request.starts_at.CopyFrom(Timestamp(seconds=1_800_000_000))
    assert timestamp_field(request, "starts_at") == datetime.fromtimestamp(1_800_000_000, UTC)
    for seconds, nanos in ((2**62, 0), (1_800_000_000, -1), (-1, 0)):
        request.starts_at.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
        with pytest.raises(InvalidArgument, match=r"^starts_at: "):
            timestamp_field(request, "starts_at")


def test_invalid_argument_carries_bad_request_details() -> None:
    error = InvalidArgument.field("page_token", "is not a token this service issued")
    status = error.status()
    assert status.code.name == "INVALID_ARGUMENT"
    assert status.details == "page_token: is not a token this service issued"
    ((_, packed),) = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    decoded = status_pb2.Status.FromString(packed)
    assert decoded.code == code_pb2.INVALID_ARGUMENT
    detail = error_details_pb2.BadRequest()
    assert decoded.details[0].Unpack(detail)
    assert [(v.field, v.description) for v in detail.field_violations] == [
        ("page_token", "is not a token this service issued")
    ]


def test_echo_escapes_and_bounds_caller_text() -> None:
    assert echo("LIC-1") == "'LIC-1'"
    shown = echo("\x1b]0;pwned\x07" + "y" * 200)
    assert "\x1b" not in shown and "\x07" not in shown and "\\x1b" in shown
    assert len(shown) < 100


def test_alert_page_tokens_are_strict() -> None:
    assert parse_page_token(page_token(MAX_SEQUENCE)) == MAX_SEQUENCE
    import base64

    def forged(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    for bad in (
        forged("alerts:0"),
        forged("alerts:-1"),
        forged(f"alerts:{MAX_SEQUENCE + 1}"),
        forged("alerts: 1"),
        forged("alerts:+1"),
        forged("alerts:1_0"),
        forged("alerts:١٢"),
        forged("alerts:1 OR 1=1"),
        forged("payouts:1"),
        "%%%",
        "\x00",
    ):
        with pytest.raises(ValueError, match="is not a token this service issued"):
            parse_page_token(bad)


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("localhost:50051", True),
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("licensing.residuals.svc:50051", False),
        ("10.0.0.5:50051", False),
        ("[2001:db8::1]:50051", False),
        ("localhost.evil.example:50051", False),
    ],
)
def test_operator_commands_use_tls_to_anything_but_this_machine(
    address: str, local: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpc

    from residuals.platform import grpc_server

    opened: list[str] = []
    monkeypatch.setattr(grpc, "secure_channel", lambda *a, **k: opened.append("tls"))
    monkeypatch.setattr(grpc, "insecure_channel", lambda *a, **k: opened.append("plain"))
    assert grpc_server.is_loopback(address) is local
    grpc_server.operator_channel(address)
    grpc_server.operator_channel(address, plaintext=True)
    assert opened == (["plain", "plain"] if local else ["tls", "plain"])
