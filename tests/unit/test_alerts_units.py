"""Pure parts of the alerts service: filters and scoping, header parsing, page tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from residuals.alerts.consumer import published_at
from residuals.alerts.query import AlertQuery, ChangeKey, scoped_query
from residuals.alerts.store import page_token, parse_page_token
from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.v1 import alerts_pb2, common_pb2

KEY = ChangeKey("FORBIDDEN_CATEGORY", 4, "open", "LIC-1", "TAL-1", "VEN-1", "AVA-1", "2026-10")


def test_published_at_reads_the_meters_millis_and_the_gateways_rfc3339() -> None:
    moment = datetime(2026, 10, 3, 12, 0, 1, 250_000, tzinfo=UTC)
    millis = str(int(moment.timestamp() * 1000)).encode()
    assert published_at([("residuals-published-at", millis)]) == moment
    assert published_at([("residuals-received-at", b"2026-10-03T12:00:01.25Z")]) == moment
    assert published_at([("traceparent", b"00-...")]) is None
    assert published_at([("residuals-published-at", b"soon")]) is None
    assert published_at(None) is None


def test_query_matches_the_same_changes_in_memory_as_in_sql() -> None:
    query = AlertQuery(min_severity=4, kinds=frozenset({"FORBIDDEN_CATEGORY"}), talent_id="TAL-1")
    assert query.matches(KEY)
    assert not query.matches(KEY._replace(severity=3))
    assert not query.matches(KEY._replace(talent_id="TAL-2"))
    sql, params = query.where("c")
    assert sql == "c.severity >= %s AND c.kind = ANY(%s::text[]) AND c.talent_id = %s"
    assert params == [4, ["FORBIDDEN_CATEGORY"], "TAL-1"]
    assert AlertQuery().where("a") == ("TRUE", [])


def test_scoping_pins_talent_and_vendor_and_refuses_other_tenants() -> None:
    talent = Principal("p", Role.TALENT, talent_id="TAL-1")
    vendor = Principal("v", Role.VENDOR, vendor_id="VEN-1")
    finance = Principal("f", Role.FINANCE)
    empty = alerts_pb2.AlertFilter()
    assert scoped_query(empty, talent).talent_id == "TAL-1"
    assert scoped_query(empty, vendor).vendor_id == "VEN-1"
    assert scoped_query(empty, finance) == AlertQuery()
    with pytest.raises(PermissionDenied):
        scoped_query(alerts_pb2.AlertFilter(talent_id="TAL-2"), talent)
    with pytest.raises(PermissionDenied):
        scoped_query(alerts_pb2.AlertFilter(vendor_id="VEN-2"), vendor)
    narrowed = scoped_query(
        alerts_pb2.AlertFilter(
            severities=[common_pb2.SEVERITY_CRITICAL],
            kinds=[common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY],
            states=[alerts_pb2.ALERT_STATE_OPEN],
        ),
        finance,
    )
    assert narrowed.severities == {4}
    assert narrowed.kinds == {"FORBIDDEN_CATEGORY"}
    assert narrowed.states == {"open"}


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    assert parse_page_token(page_token(42)) == 42
    assert parse_page_token("") is None
    for bad in ("nonsense", page_token(1)[:-2] + "!!"):
        with pytest.raises(ValueError):
            parse_page_token(bad)
