"""The pure checks of approvals (licensing/approvals.py): windows, use descriptions,
categories, ids and page tokens, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from residuals.domain.licence_spec import parse_licence
from residuals.licensing import approvals, rules
from residuals.platform.errors import InvalidArgument
from residuals.v1 import approvals_pb2

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
H = timedelta(hours=1)


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


def test_requested_window_defaults_clamps_and_refuses() -> None:
    assert approvals.requested_window(None, None, NOW, SKEW) == approvals.Window(NOW, None)
    late = NOW - timedelta(minutes=2)
    assert approvals.requested_window(late, NOW + H, NOW, SKEW).starts == NOW
    assert approvals.requested_window(NOW + H, NOW + 2 * H, NOW, SKEW) == approvals.Window(
        NOW + H, NOW + 2 * H
    )
    for start, end, field in (
        (NOW - H, None, "requested_from"),
        (NOW + 2 * H, NOW + H, "requested_until"),
        (NOW + H, NOW + H, "requested_until"),
        (None, NOW - timedelta(seconds=1), "requested_until"),
        (late, NOW - timedelta(minutes=1), "requested_until"),
    ):
        with pytest.raises(InvalidArgument) as error:
            approvals.requested_window(start, end, NOW, SKEW)
        assert field_of(error) == field, (start, end)


def test_decision_window() -> None:
    asked = approvals.Window(NOW + H, NOW + 5 * H)
    assert approvals.decision_window(None, None, asked, NOW, SKEW) == asked
    started = approvals.Window(NOW - H, None)
    assert approvals.decision_window(None, None, started, NOW, SKEW) == approvals.Window(NOW, None)
    within = NOW - timedelta(minutes=1)
    assert approvals.decision_window(within, None, asked, NOW, SKEW).starts == NOW
    narrowed = approvals.decision_window(NOW + 2 * H, NOW + 3 * H, asked, NOW, SKEW)
    assert narrowed == approvals.Window(NOW + 2 * H, NOW + 3 * H)
    ended = approvals.Window(NOW - 3 * H, NOW - H)
    for valid_from, valid_until, window, field in (
        (NOW - H, None, asked, "valid_from"),
        (None, NOW - timedelta(seconds=1), asked, "valid_until"),
        (NOW + 3 * H, NOW + 2 * H, asked, "valid_until"),
        (None, None, ended, "valid_until"),
    ):
        with pytest.raises(InvalidArgument) as error:
            approvals.decision_window(valid_from, valid_until, window, NOW, SKEW)
        assert field_of(error) == field


def test_use_description_bounds_and_normalises() -> None:
    use = approvals_pb2.UseDescription(
        brief="  spot  ",
        script_sha256="a" * 64,
        territories=["US", "GB", "US"],
        channels=["web"],
    )
    assert approvals.use_description(use) == {
        "brief": "spot",
        "script_sha256": "a" * 64,
        "media_sha256": "",
        "territories": ["GB", "US"],
        "channels": ["web"],
    }
    for bad, field in (
        (approvals_pb2.UseDescription(script_sha256="A" * 64), "use.script_sha256"),
        (approvals_pb2.UseDescription(media_sha256="a" * 65), "use.media_sha256"),
        (approvals_pb2.UseDescription(brief="x" * 2001), "use.brief"),
        (approvals_pb2.UseDescription(brief="a\x00b"), "use.brief"),
        (approvals_pb2.UseDescription(territories=["US", "us"]), "use.territories[1]"),
        (approvals_pb2.UseDescription(channels=["radio"]), "use.channels[0]"),
    ):
        with pytest.raises(InvalidArgument) as error:
            approvals.use_description(bad)
        assert field_of(error) == field


def test_renders_and_categories() -> None:
    assert approvals.renders(0, "renders_requested", 1) == 1
    assert approvals.renders(0, "max_renders", 7) == 7
    assert approvals.renders(1_000_000, "max_renders", 1) == 1_000_000
    with pytest.raises(InvalidArgument):
        approvals.renders(1_000_001, "max_renders", 1)
    with pytest.raises(InvalidArgument):
        approvals.category("politics")
    version = parse_licence(
        {
            "licence_id": "L",
            "talent_id": "T",
            "avatar_id": "A",
            "vendor_id": "V",
            "currency": "USD",
            "starts_at": "2026-01-01T00:00:00Z",
            "scope": {
                "categories_allowed": ["political", "product_demo"],
                "categories_forbidden": ["adult"],
                "approval_required": ["political"],
                "territories_allowed": ["*"],
            },
            "rates": {"render_tiers": [{"up_to": None, "unit_price": "1"}]},
            "splits": {"T": "1"},
        }
    ).latest
    assert approvals.category_problem(version, "political") is None
    assert "forbidden" in (approvals.category_problem(version, "adult") or "")
    assert "not licensed" in (approvals.category_problem(version, "news") or "")
    assert "needs no approval" in (approvals.category_problem(version, "product_demo") or "")


def test_approval_ids_are_identifiers_and_unique() -> None:
    ids = {approvals.new_approval_id(NOW) for _ in range(1000)}
    assert len(ids) == 1000
    for approval_id in ids:
        assert approval_id.startswith("apr-") and len(approval_id) == 30
        rules.check_identifier("approval_id", approval_id)
    later = approvals.new_approval_id(NOW + timedelta(milliseconds=1))
    assert later > max(ids)


def test_page_tokens_are_bound_to_their_filters() -> None:
    token = approvals.encode_page_token(42, "abc")
    assert approvals.decode_page_token(token, "abc") == 42
    assert approvals.decode_page_token("", "abc") == 0
    for bad, fingerprint in (
        (token, "other"),
        ("not-base64!", "abc"),
        (approvals.encode_page_token(-1, "abc"), "abc"),
    ):
        with pytest.raises(InvalidArgument) as error:
            approvals.decode_page_token(bad, fingerprint)
        assert field_of(error) == "page_token"
