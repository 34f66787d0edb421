"""ApprovalService over a real socket on real PostgreSQL and Kafka: request, decide, read;
idempotency; authorisation both ways; field-precise refusals; the outbox record and audit
row of every change; and the resumable watch streams."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest

from residuals.codecs import approvals as approval_codec
from residuals.codecs.timestamps import to_datetime
from residuals.platform import topics
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2 as svc
from residuals.v1 import approvals_pb2
from tests.support.approvals import World, request_message, start_world
from tests.support.bad_request import bad_field, rpc_error, ts
from tests.support.licensing import consume_all

PENDING = approvals_pb2.APPROVAL_STATUS_PENDING
APPROVED = approvals_pb2.APPROVAL_STATUS_APPROVED
DENIED = approvals_pb2.APPROVAL_STATUS_DENIED


@pytest.fixture(scope="module")
def world(stack: StackSettings) -> Iterator[World]:
    yield from start_world(stack)


def approve(world: World, approval_id: str, role: str = "talent", tenant: str = "A", **kw: Any):
    return world.call(
        "ApproveUse", svc.ApproveUseRequest(approval_id=approval_id, **kw), role, tenant
    ).approval


def deny(world: World, approval_id: str, reason: str = "no", role: str = "talent", **kw: Any):
    return world.call(
        "DenyUse", svc.DenyUseRequest(approval_id=approval_id, reason=reason), role, **kw
    ).approval


def get(world: World, approval_id: str, role: str = "vendor", tenant: str = "A") -> Any:
    return world.call(
        "GetApproval", svc.GetApprovalRequest(approval_id=approval_id), role, tenant
    ).approval


def code(call: Any) -> grpc.StatusCode:
    return rpc_error(call).code()


# --- lifecycle -----------------------------------------------------------------------------


def test_request_list_approve_get(world: World) -> None:
    asked = world.request()
    assert asked.approval_id.startswith("apr-") and len(asked.approval_id) == 30
    assert (asked.status, asked.revision, asked.renders_requested) == (PENDING, 1, 3)
    assert (asked.talent_id, asked.vendor_id, asked.requested_by) == ("TAL-A", "VEN-A", "p-VEN-A")
    listed = world.call(
        "ListApprovals", svc.ListApprovalsRequest(statuses=[PENDING]), "talent"
    ).approvals
    assert asked.approval_id in [a.approval_id for a in listed]
    decided = approve(world, asked.approval_id, max_renders=2, note="final cut only")
    got = get(world, asked.approval_id)
    assert got == decided
    assert (got.status, got.revision, got.max_renders) == (APPROVED, 2, 2)
    assert got.sequence > asked.sequence
    assert got.valid_from == asked.requested_from and got.valid_until == asked.requested_until
    assert (got.reason, got.decided_by) == ("final cut only", "p-TAL-A")
    # The record the meter reads decodes strictly into the approval the rule uses.
    state = approval_codec.from_proto(got)
    assert state.approval is not None and state.approval.max_renders == 2


def test_defaults_and_deny_with_reason(world: World) -> None:
    asked = world.request(requested_from=None, requested_until=None, renders_requested=0)
    assert asked.renders_requested == 1 and not asked.HasField("requested_until")
    assert abs(to_datetime(asked.requested_from) - datetime.now(UTC)) < timedelta(seconds=30)
    denied = deny(world, asked.approval_id, "not this advertiser")
    assert (denied.status, denied.reason, denied.revision) == (DENIED, "not this advertiser", 2)
    assert not denied.HasField("valid_from") and denied.max_renders == 0
    # An open request approved without a window: open-ended from now.
    other = world.request(requested_from=None, requested_until=None)
    approved = approve(world, other.approval_id, role="admin")
    assert approved.HasField("valid_from") and not approved.HasField("valid_until")
    assert approved.max_renders == 3 and approved.decided_by == "p-admin"


def test_requests_are_idempotent_on_request_id(world: World) -> None:
    message = request_message()
    first = world.call("RequestApproval", message).approval
    again = world.call("RequestApproval", message).approval
    assert again == first
    open_ended = request_message(requested_from=None)
    assert (
        world.call("RequestApproval", open_ended).approval
        == world.call("RequestApproval", open_ended).approval
    )
    changed = svc.RequestApprovalRequest()
    changed.CopyFrom(message)
    changed.renders_requested = 4
    error = rpc_error(lambda: world.call("RequestApproval", changed))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.approval_id in (error.details() or "")


def test_decisions_are_final_and_replays_return_them(world: World) -> None:
    asked = world.request()
    approved = approve(world, asked.approval_id, max_renders=2)
    assert approve(world, asked.approval_id, max_renders=2) == approved
    assert approve(world, asked.approval_id) == approved  # sets nothing: the same decision
    for different in (
        lambda: approve(world, asked.approval_id, max_renders=3),
        lambda: approve(world, asked.approval_id, note="changed my mind"),
        lambda: deny(world, asked.approval_id),
    ):
        error = rpc_error(different)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already approved" in (error.details() or "")
    denied_request = world.request()
    denied = deny(world, denied_request.approval_id, "no thanks")
    assert deny(world, denied_request.approval_id, "no thanks") == denied
    for different in (
        lambda: approve(world, denied_request.approval_id),
        lambda: deny(world, denied_request.approval_id, "another reason"),
    ):
        error = rpc_error(different)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already denied" in (error.details() or "")
    assert get(world, denied_request.approval_id).revision == 2


# --- authorisation -------------------------------------------------------------------------


def test_permission_denied_across_roles_and_tenants(world: World) -> None:
    asked = world.request()
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert code(lambda: approve(world, asked.approval_id, tenant="B")) == denied
    assert code(lambda: deny(world, asked.approval_id, tenant="B")) == denied
    assert code(lambda: approve(world, asked.approval_id, role="vendor")) == denied
    assert code(lambda: approve(world, asked.approval_id, role="finance")) == denied
    assert code(lambda: world.request(licence_id="LIC-APR-B")) == denied
    assert code(lambda: world.request(licence_id="LIC-NOPE")) == denied
    assert code(lambda: world.call("RequestApproval", request_message(), "talent")) == denied
    assert code(lambda: get(world, asked.approval_id, tenant="B")) == denied
    assert code(lambda: get(world, asked.approval_id, "talent", "B")) == denied
    assert code(lambda: get(world, "apr-nope", "vendor")) == denied
    assert code(lambda: get(world, "apr-nope", "admin")) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: approve(world, "apr-nope", role="admin")) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: approve(world, "apr-nope")) == denied
    unknown = request_message(licence_id="LIC-NOPE")
    assert code(lambda: world.call("RequestApproval", unknown, "admin")) == (
        grpc.StatusCode.NOT_FOUND
    )
    # Reads: each tenant its own, finance and admin everything.
    assert get(world, asked.approval_id, "talent").approval_id == asked.approval_id
    assert get(world, asked.approval_id, "finance").approval_id == asked.approval_id
    for tenant, role in (("B", "vendor"), ("B", "talent")):
        listed = world.call("ListApprovals", svc.ListApprovalsRequest(), role, tenant)
        assert all(a.licence_id == "LIC-APR-B" for a in listed.approvals)
    assert (
        code(
            lambda: world.call(
                "ListApprovals", svc.ListApprovalsRequest(licence_id="LIC-APR-A"), "vendor", "B"
            )
        )
        == denied
    )
    assert code(lambda: get(world, asked.approval_id, "suspender")) == denied


def test_list_pages_in_sequence_order_with_bound_tokens(world: World) -> None:
    for _ in range(3):
        world.request()
    request = svc.ListApprovalsRequest(licence_id="LIC-APR-A", page_size=2)
    seen: list[Any] = []
    while True:
        page = world.call("ListApprovals", request, "admin")
        seen += page.approvals
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    sequences = [a.sequence for a in seen]
    assert sequences == sorted(sequences) and len(sequences) >= 3
    first = world.call("ListApprovals", svc.ListApprovalsRequest(page_size=1), "admin")
    foreign = svc.ListApprovalsRequest(statuses=[PENDING], page_token=first.next_page_token)
    assert bad_field(lambda: world.call("ListApprovals", foreign, "admin")) == "page_token"
    assert (
        bad_field(
            lambda: world.call("ListApprovals", svc.ListApprovalsRequest(page_size=1001), "admin")
        )
        == "page_size"
    )


# --- validation ----------------------------------------------------------------------------


def test_invalid_arguments_name_the_field(world: World) -> None:
    now = datetime.now(UTC)
    cases = {
        "requested_from": request_message(requested_from=ts(now - timedelta(hours=1))),
        "requested_until": request_message(
            requested_from=ts(now + timedelta(hours=2)),
            requested_until=ts(now + timedelta(hours=1)),
        ),
        "use.script_sha256": request_message(
            use=approvals_pb2.UseDescription(brief="x", script_sha256="ABC")
        ),
        "use.media_sha256": request_message(
            use=approvals_pb2.UseDescription(brief="x", media_sha256="f" * 63)
        ),
        "use.brief": request_message(use=approvals_pb2.UseDescription(brief="x" * 2001)),
        "use.territories[0]": request_message(use=approvals_pb2.UseDescription(territories=["XX"])),
        "use.channels[0]": request_message(use=approvals_pb2.UseDescription(channels=["tv"])),
        "renders_requested": request_message(renders_requested=1_000_001),
        "request_id": request_message(request_id="bad id"),
        "category": request_message(category=""),
    }
    for field, message in cases.items():
        assert bad_field(lambda m=message: world.call("RequestApproval", m)) == field, field
    past_until = request_message(
        requested_from=None, requested_until=ts(now - timedelta(minutes=1))
    )
    assert bad_field(lambda: world.call("RequestApproval", past_until)) == "requested_until"
    # Within the skew the start is clamped to now, not refused.
    clamped = world.request(requested_from=ts(now - timedelta(seconds=30)))
    assert to_datetime(clamped.requested_from) >= now

    asked = world.request()
    decisions = {
        "valid_from": {"valid_from": ts(now - timedelta(hours=1))},
        "valid_until": {"valid_until": ts(now - timedelta(minutes=1))},
        "max_renders": {"max_renders": 1_000_001},
        "note": {"note": "\x1b]0;pwned\x07"},
    }
    for field, kw in decisions.items():
        assert bad_field(lambda kw=kw: approve(world, asked.approval_id, **kw)) == field, field
    inverted = {
        "valid_from": ts(now + timedelta(hours=3)),
        "valid_until": ts(now + timedelta(hours=2)),
    }
    assert bad_field(lambda: approve(world, asked.approval_id, **inverted)) == "valid_until"
    assert bad_field(lambda: deny(world, asked.approval_id, "")) == "reason"
    assert bad_field(lambda: deny(world, asked.approval_id, "  ")) == "reason"
    assert get(world, asked.approval_id).status == PENDING


def test_category_preconditions(world: World) -> None:
    for category, words in (
        ("adult", "forbidden"),
        ("news", "not licensed"),
        ("product_demo", "needs no approval"),
    ):
        error = rpc_error(lambda c=category: world.request(category=c))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, category
        assert words in (error.details() or ""), error.details()
    assert world.request(category="insurance").status == PENDING


# --- outbox and audit ------------------------------------------------------------------------


def test_every_change_is_published_and_audited(world: World, stack: StackSettings) -> None:
    asked = world.request()
    approve(world, asked.approval_id, max_renders=1)
    refused = world.request()
    deny(world, refused.approval_id, "off brand")
    with psycopg.connect(world.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE topic = %s", (topics.APPROVALS.name,)
        ).fetchone()
        assert row is not None
        total = int(row[0])
        audit = conn.execute(
            "SELECT action, licence_id, actor, detail->>'approval_id', reason FROM audit_log"
            " WHERE detail->>'approval_id' = ANY(%s) ORDER BY id",
            ([asked.approval_id, refused.approval_id],),
        ).fetchall()
    assert audit == [
        ("request_approval", "LIC-APR-A", "p-VEN-A", asked.approval_id, ""),
        ("approve_use", "LIC-APR-A", "p-TAL-A", asked.approval_id, ""),
        ("request_approval", "LIC-APR-A", "p-VEN-A", refused.approval_id, ""),
        ("deny_use", "LIC-APR-A", "p-TAL-A", refused.approval_id, "off brand"),
    ]
    records = consume_all(stack, topics.APPROVALS.qualified(world.prefix), expect=total)
    assert len(records) == total, "one record per change, exactly once"
    by_key: dict[str, list[Any]] = {}
    for record in records:
        state = approval_codec.decode(record.value())
        assert record.key().decode() == state.approval_id
        by_key.setdefault(state.approval_id, []).append(state)
    assert [(s.status, s.revision) for s in by_key[asked.approval_id]] == [
        ("pending", 1),
        ("approved", 2),
    ]
    assert [(s.status, s.revision) for s in by_key[refused.approval_id]] == [
        ("pending", 1),
        ("denied", 2),
    ]
    approved_state = by_key[asked.approval_id][-1].approval
    assert approved_state is not None and approved_state.max_renders == 1


# --- watch streams -----------------------------------------------------------------------------


def _next_approval(stream: Any) -> Any:
    """The next approval of a stream, skipping heartbeats."""
    for item in stream:
        if item.HasField("approval"):
            return item.approval
    raise AssertionError("stream ended")


def _head(world: World) -> int:
    with psycopg.connect(world.dsn) as conn:
        row = conn.execute("SELECT coalesce(max(sequence), 0) FROM approvals").fetchone()
    assert row is not None
    return int(row[0])


def test_watch_backlog_live_and_resume(world: World) -> None:
    cursor = _head(world)
    first, second = world.request(), world.request()
    world.request(tenant="B")  # outside vendor A's view
    stream = world.stream(
        "WatchApprovals", svc.WatchApprovalsRequest(after_sequence=cursor, heartbeat_seconds=1)
    )
    try:
        got = [_next_approval(stream), _next_approval(stream)]
        assert [a.approval_id for a in got] == [first.approval_id, second.approval_id]
        decided = approve(world, first.approval_id)  # while connected
        live = _next_approval(stream)
        assert (live.approval_id, live.status, live.sequence) == (
            first.approval_id,
            APPROVED,
            decided.sequence,
        )
        last = live.sequence
    finally:
        stream.cancel()
    third = world.request()
    deny(world, second.approval_id, "no")
    resumed = world.stream(
        "WatchApprovals", svc.WatchApprovalsRequest(after_sequence=last, heartbeat_seconds=1)
    )
    try:
        got = [_next_approval(resumed), _next_approval(resumed)]
        assert [(a.approval_id, a.status) for a in got] == [
            (third.approval_id, PENDING),
            (second.approval_id, DENIED),
        ]
    finally:
        resumed.cancel()


def test_watch_heartbeats_and_tenant_filtering(world: World) -> None:
    cursor = _head(world)
    mine = world.request()
    world.request(tenant="B")
    # Vendor B sees only heartbeats for A's change, whose cursor still moves past it.
    stream = world.stream(
        "WatchApprovals",
        svc.WatchApprovalsRequest(after_sequence=cursor, heartbeat_seconds=1),
        "vendor",
        "B",
    )
    try:
        item = next(stream)
        assert item.HasField("approval") and item.approval.licence_id == "LIC-APR-B"
        beat = next(stream)
        assert beat.HasField("heartbeat") and beat.heartbeat.latest_sequence >= mine.sequence
    finally:
        stream.cancel()
    # The talent's inbox: pending requests of their licences only.
    approve(world, mine.approval_id)
    pending = world.request()
    inbox = world.stream(
        "WatchApprovalRequests",
        svc.WatchApprovalRequestsRequest(
            after_sequence=cursor, pending_only=True, heartbeat_seconds=1
        ),
        "talent",
    )
    try:
        assert _next_approval(inbox).approval_id == pending.approval_id
        assert next(inbox).HasField("heartbeat")
    finally:
        inbox.cancel()
    # live_only: nothing from before, then a heartbeat at the head.
    live = world.stream(
        "WatchApprovalRequests",
        svc.WatchApprovalRequestsRequest(live_only=True, heartbeat_seconds=1),
        "admin",
    )
    try:
        first = next(live)
        assert first.HasField("heartbeat") and first.heartbeat.latest_sequence == _head(world)
    finally:
        live.cancel()
    denied = rpc_error(
        lambda: world.stream("WatchApprovalRequests", svc.WatchApprovalRequestsRequest())
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    other = rpc_error(
        lambda: world.stream(
            "WatchApprovals", svc.WatchApprovalsRequest(licence_id="LIC-APR-B"), "talent"
        )
    )
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED


def test_streams_release_their_connections(world: World) -> None:
    def watchers() -> int:
        with psycopg.connect(world.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'approval-watch'"
            ).fetchone()
        assert row is not None
        return int(row[0])

    from tests.support.waiting import wait_until

    stream = world.stream(
        "WatchApprovals", svc.WatchApprovalsRequest(live_only=True, heartbeat_seconds=1)
    )
    assert next(stream).HasField("heartbeat")
    assert watchers() >= 1
    stream.cancel()
    wait_until(lambda: watchers() == 0, 10, "watch connection closed")


# --- pre-flight ----------------------------------------------------------------------------------


def test_check_use_is_wired_to_the_preflight(world: World) -> None:
    from residuals.v1 import common_pb2

    asked = world.request()

    def check(**fields: Any) -> Any:
        request = svc.CheckUseRequest(
            licence_id="LIC-APR-A",
            avatar_id="AVA-A",
            kind=common_pb2.USAGE_KIND_RENDER,
            category="political",
            territory="US",
            occurred_at=ts(datetime.now(UTC) + timedelta(hours=2)),
            **fields,
        )
        return world.call("CheckUse", request)

    assert check().verdict == svc.USE_VERDICT_NEEDS_APPROVAL
    approve(world, asked.approval_id, max_renders=2)
    allowed = check(approval_id=asked.approval_id)
    assert allowed.verdict == svc.USE_VERDICT_ALLOW, allowed.explanation
    assert allowed.approved_renders_remaining == 2
    other = world.request(tenant="B")
    refused = rpc_error(
        lambda: world.call(
            "CheckUse",
            svc.CheckUseRequest(
                licence_id=other.licence_id,
                avatar_id="AVA-B",
                kind=common_pb2.USAGE_KIND_RENDER,
                category="political",
                territory="US",
            ),
        )
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
