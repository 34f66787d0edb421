"""Pre-flight CheckUse over a real PostgreSQL: the licence from the registry, the approval
from the approvals table, the quota used and the approved renders from the ledger's rows,
in one round trip or from the state cache, which drops what PostgreSQL notifies as changed;
tenants see only their own licences."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from residuals.codecs.timestamps import set_timestamp
from residuals.domain.licence_spec import parse_licence
from residuals.licensing.errors import InvalidArgument, NotFound
from residuals.licensing.metrics import PreflightMetrics
from residuals.licensing.preflight import Preflight
from residuals.licensing.preflight_cache import PER_LICENCE, StateCache
from residuals.licensing.registry import Registry
from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2, common_pb2, licence_service_pb2
from tests.support.licensing import create_request, register_licences
from tests.support.payouts import migrated_database
from tests.support.waiting import wait_until

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
ADMIN = Principal("p-admin", Role.ADMIN)
VENDOR = Principal("p-ven", Role.VENDOR, vendor_id="VEN-VOXA")
OTHER_VENDOR = Principal("p-other", Role.VENDOR, vendor_id="VEN-OTHER")
TALENT = Principal("p-tal", Role.TALENT, talent_id="TAL-MAI")

LICENCE = {
    "licence_id": "LIC-MAI-VOXA",
    "version": 1,
    "talent_id": "TAL-MAI",
    "avatar_id": "AVA-MAI-1",
    "vendor_id": "VEN-VOXA",
    "currency": "USD",
    "starts_at": "2026-01-01T00:00:00Z",
    "scope": {
        "categories_allowed": ["education", "insurance"],
        "categories_forbidden": ["political"],
        "approval_required": ["insurance"],
        "territories_allowed": ["*"],
        "channels_allowed": ["web"],
    },
    "rates": {"render_tiers": [{"up_to": None, "unit_price": "1.00"}], "view_cpm": "4.00"},
    "quotas": [{"metric": "RENDER", "limit": 100, "on_exceed": "block"}],
    "splits": {"TAL-MAI": "1"},
}


@dataclass
class World:
    dsn: str
    preflight: Preflight
    metrics: PreflightMetrics


@pytest.fixture(scope="module")
def world(stack: StackSettings) -> Iterator[World]:
    with migrated_database(stack) as dsn:
        # As the licensing service's own role: the grants are part of what is tested.
        settings = PostgresSettings(
            dsn=dsn, pool_min=1, pool_max=4, user=database_role("licensing")
        )
        db = Database(settings, application_name="licensing").open()
        try:
            register_licences(Registry(db, clock=lambda: NOW), ADMIN, parse_licence(LICENCE))
            with psycopg.connect(dsn, autocommit=True) as conn:
                _approval(conn, "apr-ok", "approved", max_renders=3)
                _approval(conn, "apr-wait", "pending")
                _totals(conn, units_priced=97)
                for i in range(2):
                    _render(conn, f"r{i}", "apr-ok", "ACCEPTED")
                _render(conn, "r-held", "apr-ok", "HELD", violation="UNAPPROVED_USE")
            metrics = PreflightMetrics(CollectorRegistry())
            # As the service runs it: the state kept in memory, dropped on notifications.
            cache = StateCache(db.connect).start()
            preflight = Preflight(db, clock=lambda: NOW, metrics=metrics, cache=cache)
            yield World(dsn, preflight, metrics)
            preflight.close()
        finally:
            db.close()


def _approval(
    conn: psycopg.Connection, approval_id: str, status: str, max_renders: int = 1
) -> None:
    approved = status == "approved"
    conn.execute(
        "INSERT INTO approvals (approval_id, licence_id, talent_id, vendor_id, request_id,"
        " category, renders_requested, requested_from, status, valid_from, valid_until,"
        " max_renders, requested_at, requested_by, decided_at, decided_by, sequence)"
        " VALUES (%s, 'LIC-MAI-VOXA', 'TAL-MAI', 'VEN-VOXA', %s, 'insurance', 1,"
        " '2026-11-01', %s, %s, %s, %s, '2026-11-01', 'p-ven', %s, %s,"
        " nextval('approval_change_seq'))",
        (
            approval_id,
            approval_id,
            status,
            "2026-11-05" if approved else None,
            "2026-11-20" if approved else None,
            max_renders if approved else None,
            "2026-11-02" if approved else None,
            "p-tal" if approved else None,
        ),
    )


def _totals(conn: psycopg.Connection, units_priced: int) -> None:
    conn.execute(
        "INSERT INTO ledger_totals (licence_id, period, kind, currency, units_priced)"
        " VALUES ('LIC-MAI-VOXA', '2026-11', 'RENDER', 'USD', %s)",
        (units_priced,),
    )


def _render(
    conn: psycopg.Connection, event_id: str, approval_id: str, outcome: str, violation: str = ""
) -> None:
    conn.execute(
        "INSERT INTO usage_events (vendor_id, event_id, licence_id, kind, occurred_at, payload,"
        " quantity, approval_id, outcome, violation)"
        " VALUES ('VEN-VOXA', %s, 'LIC-MAI-VOXA', 'RENDER', '2026-11-06', '', 1, %s, %s, %s)",
        (event_id, approval_id, outcome, violation or None),
    )


def check(world: World, principal: Principal = VENDOR, **fields: object) -> object:
    request = approval_service_pb2.CheckUseRequest(
        licence_id="LIC-MAI-VOXA",
        avatar_id="AVA-MAI-1",
        kind=common_pb2.USAGE_KIND_RENDER,
        category="education",
        territory="GB",
    )
    for name, value in fields.items():
        if isinstance(value, datetime):
            set_timestamp(getattr(request, name), value)
        else:
            setattr(request, name, value)
    return world.preflight.check_use(principal, request)


def test_an_in_scope_render_is_allowed_with_the_quota_left(world: World) -> None:
    response = check(world)
    assert response.verdict == approval_service_pb2.USE_VERDICT_ALLOW
    assert response.quota_remaining == 3  # 100 - the 97 priced this period
    assert not response.HasField("approved_renders_remaining")
    assert response.licence_version == 1


def test_past_the_quota_the_use_is_denied_as_quota_exceeded(world: World) -> None:
    response = check(world, quantity=4)
    assert response.verdict == approval_service_pb2.USE_VERDICT_DENY
    assert response.violation == common_pb2.VIOLATION_KIND_QUOTA_EXCEEDED


def test_a_forbidden_category_is_denied_with_the_violation(world: World) -> None:
    response = check(world, category="political")
    assert response.verdict == approval_service_pb2.USE_VERDICT_DENY
    assert response.violation == common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY


def test_an_approval_required_category_needs_an_approval(world: World) -> None:
    asked = world.metrics.verdicts.labels("NEEDS_APPROVAL")._value.get()
    response = check(world, category="insurance")
    assert world.metrics.verdicts.labels("NEEDS_APPROVAL")._value.get() == asked + 1
    assert response.verdict == approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL
    assert response.violation == common_pb2.VIOLATION_KIND_UNAPPROVED_USE
    assert "approval" in response.explanation


def test_a_live_approval_allows_and_counts_its_renders(world: World) -> None:
    response = check(world, category="insurance", approval_id="apr-ok")
    assert response.verdict == approval_service_pb2.USE_VERDICT_ALLOW
    # max 3, two approved renders stored (the held one used none)
    assert response.approved_renders_remaining == 1


def test_pending_unknown_and_out_of_window_approvals_need_approval(world: World) -> None:
    for approval_id in ("apr-wait", "apr-nobody"):
        response = check(world, category="insurance", approval_id=approval_id)
        assert response.verdict == approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL
    late = check(
        world,
        category="insurance",
        approval_id="apr-ok",
        occurred_at=datetime(2026, 11, 21, tzinfo=UTC),
    )
    assert late.verdict == approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL
    assert not late.HasField("approved_renders_remaining")


def test_tenants_see_only_their_own_licences(world: World) -> None:
    assert check(world, TALENT).verdict == approval_service_pb2.USE_VERDICT_ALLOW
    with pytest.raises(PermissionDenied):
        check(world, OTHER_VENDOR)
    with pytest.raises(PermissionDenied):
        check(world, OTHER_VENDOR, licence_id="LIC-NOBODY")
    with pytest.raises(NotFound):
        check(world, ADMIN, licence_id="LIC-NOBODY")


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"kind": common_pb2.USAGE_KIND_RETRACTION}, "kind"),
        ({"category": ""}, "category"),
        ({"kind": common_pb2.USAGE_KIND_VIEW}, "channel"),
        ({"quantity": 1_000_001}, "quantity"),
        ({"avatar_id": "AVA-SOMEONE-ELSE"}, "avatar_id"),
        ({"territory": "G\x00B"}, "territory"),
    ],
)
def test_bad_requests_name_the_field(world: World, fields: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check(world, **fields)
    assert [v.field for v in raised.value.violations] == [path]


def test_a_licence_amendment_is_seen_by_the_next_check(world: World) -> None:
    db = world.preflight.db
    registry = Registry(db, clock=lambda: NOW)
    terms = create_request(parse_licence(LICENCE)).terms
    terms.scope.approval_required.remove("insurance")
    request = licence_service_pb2.AmendLicenceRequest(licence_id="LIC-MAI-VOXA", terms=terms)
    request.update_mask.paths.append("scope.approval_required")
    set_timestamp(request.effective_from, datetime(2026, 11, 10, 0, 0, tzinfo=UTC))
    assert check(world, category="insurance").verdict == (
        approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL
    )
    registry.amend_licence(ADMIN, request)
    cache_of(world).sync()  # another connection's commit: seen once its notification is
    response = check(world, category="insurance")
    assert response.verdict == approval_service_pb2.USE_VERDICT_ALLOW
    assert response.licence_version == 2


def test_a_lost_connection_fails_the_check_and_the_next_one_connects_again(
    world: World,
) -> None:
    assert check(world, category="education").verdict == approval_service_pb2.USE_VERDICT_ALLOW
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'licensing'"
            " AND pid <> pg_backend_pid()"
        )
    # The handler maps this to UNAVAILABLE (grpc_errors.handle); the connection is dropped.
    with pytest.raises(psycopg.OperationalError):
        check(world, category="education")
    assert check(world, category="education").verdict == approval_service_pb2.USE_VERDICT_ALLOW


# --- the state cache ------------------------------------------------------------------------


def cache_of(world: World) -> StateCache:
    """The world's cache, listening (a test before may have cut its connection)."""
    cache = world.preflight.cache
    assert cache is not None
    wait_until(lambda: cache.live, 10, "the pre-flight cache to listen")
    return cache


def test_a_repeated_check_is_answered_from_memory(world: World) -> None:
    cache = cache_of(world)
    cache.sync()
    first = check(world, category="insurance", approval_id="apr-ok")
    hits = cache.hits
    again = check(world, category="insurance", approval_id="apr-ok")
    assert cache.hits == hits + 1
    assert again == first


def test_running_totals_written_elsewhere_are_seen_after_their_notification(
    world: World,
) -> None:
    cache = cache_of(world)
    before = check(world).quota_remaining
    renders = check(world, category="insurance", approval_id="apr-ok")
    assert renders.approved_renders_remaining == 1
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE ledger_totals SET units_priced = units_priced + 2"
            " WHERE licence_id = 'LIC-MAI-VOXA' AND period = '2026-11' AND kind = 'RENDER'"
        )
        try:
            cache.sync()
            assert check(world).quota_remaining == before - 2
            # A rendered use naming the approval is counted with its licence's totals.
            _render(conn, "r-late", "apr-ok", "ACCEPTED")
            conn.execute(
                "UPDATE ledger_totals SET events = events + 1 WHERE licence_id = 'LIC-MAI-VOXA'"
            )
            cache.sync()
            used_up = check(world, category="insurance", approval_id="apr-ok")
            assert used_up.approved_renders_remaining == 0  # max 3: the third is stored
        finally:
            conn.execute("DELETE FROM usage_events WHERE event_id = 'r-late'")
            conn.execute(
                "UPDATE ledger_totals SET units_priced = units_priced - 2"
                " WHERE licence_id = 'LIC-MAI-VOXA' AND period = '2026-11' AND kind = 'RENDER'"
            )
    cache.sync()
    assert check(world).quota_remaining == before


def test_an_approval_decided_elsewhere_is_seen_after_its_notification(world: World) -> None:
    cache = cache_of(world)
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        _approval(conn, "apr-later", "pending")
        cache.sync()
        # (The licence no longer needs approval for insurance since the amendment test: the
        # approval's renders show whether it is known as approved.)
        asked = check(world, category="insurance", approval_id="apr-later")
        assert not asked.HasField("approved_renders_remaining")
        conn.execute(
            "UPDATE approvals SET status = 'approved', valid_from = '2026-11-05',"
            " valid_until = '2026-11-20', max_renders = 5, decided_at = '2026-11-02',"
            " decided_by = 'p-tal' WHERE approval_id = 'apr-later'"
        )
    cache.sync()
    approved = check(world, category="insurance", approval_id="apr-later")
    assert approved.approved_renders_remaining == 5


def test_a_fill_that_raced_a_drop_is_not_kept(world: World) -> None:
    """A query answered before a change, stored after the change's drop, would keep the
    old state for good: it is refused."""
    cache = cache_of(world)
    key = ("LIC-MAI-VOXA", "", "2026-11", "RENDER")
    check(world)
    assert cache.get(*key) is not None
    ticket = cache.ticket()
    stale = cache.get(*key)
    assert stale is not None
    cache.forget_licence("LIC-MAI-VOXA")
    cache.store(ticket, *key, stale)
    assert cache.get(*key) is None
    check(world)  # a fresh fill is kept
    assert cache.get(*key) is not None


def test_without_its_notifications_the_cache_is_bypassed_until_it_listens_again(
    world: World,
) -> None:
    cache = cache_of(world)
    check(world)
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    wait_until(lambda: not cache.live, 10, "the cache to notice its connection is gone")
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE ledger_totals SET units_priced = 99"
            " WHERE licence_id = 'LIC-MAI-VOXA' AND period = '2026-11' AND kind = 'RENDER'"
        )
        try:
            # Read through while deaf: the change is seen although no notification came.
            assert check(world).quota_remaining == 1
        finally:
            conn.execute(
                "UPDATE ledger_totals SET units_priced = 97"
                " WHERE licence_id = 'LIC-MAI-VOXA' AND period = '2026-11' AND kind = 'RENDER'"
            )
    wait_until(lambda: cache.live, 10, "the cache to listen again")
    assert check(world).quota_remaining == 3
    hits = cache.hits
    check(world)
    assert cache.hits == hits + 1


def test_made_up_approval_ids_and_times_do_not_grow_a_licences_entry(world: World) -> None:
    """A caller picks approval ids and use times at will: unknown approvals are not kept,
    and a licence keeps a bounded number of periods and approvals."""
    cache = cache_of(world)
    for i in range(3 * PER_LICENCE):
        check(
            world, approval_id=f"apr-made-up-{i}", occurred_at=datetime(2001 + i, 1, 2, tzinfo=UTC)
        )
    known = cache._licences["LIC-MAI-VOXA"]
    assert len(known.quota) <= PER_LICENCE
    assert not any(a.startswith("apr-made-up") for a in known.renders)
    assert not any(a.startswith("apr-made-up") for a in cache._approvals)
