"""The meter's state encodings round-trip, in both counter forms, and expire correctly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from residuals.meter.state import PeriodCounters, counters_key, expired


@pytest.mark.parametrize(
    "counters",
    [
        PeriodCounters(41, 7, {}, set(), 3),
        PeriodCounters(-1, 0, {}, set(), -1),
        PeriodCounters(2**40, 10**6, {"RENDER": 180}, {"RENDER"}, 5),
        PeriodCounters(9, 1, {"VIEW": 2}, set(), 0),
    ],
)
def test_counters_round_trip(counters: PeriodCounters) -> None:
    assert PeriodCounters.decode(counters.encode()) == counters


@pytest.mark.parametrize(
    "counters",
    [
        None,
        PeriodCounters(41, 7, {}, set(), 3),
        PeriodCounters(2**40, 10**6, {"RENDER": 180}, {"RENDER"}, 5),
        PeriodCounters(9, 1, {"VIEW": 2}, set(), 0),
    ],
)
@pytest.mark.parametrize("approvals", [None, {"APR-1": 2}])
def test_the_meters_shortcuts_match_decode_to_domain_and_from_domain_encode(
    counters: PeriodCounters | None, approvals: dict[str, int] | None
) -> None:
    raw = counters.encode() if counters is not None else None
    since = datetime(2026, 10, 2, tzinfo=UTC)
    expected = PeriodCounters.decode(raw).to_domain("2026-10", since, approvals)
    domain = PeriodCounters.decode_domain(raw, "2026-10", since, approvals)
    assert domain == expected
    domain.billed_renders += 3
    expected.billed_renders += 3
    assert PeriodCounters.encode_domain(domain, 77, 4) == (
        PeriodCounters.from_domain(expected, 77, 4).encode()
    )


def test_counters_without_quota_state_are_packed_and_with_it_json() -> None:
    assert PeriodCounters(1, 2, {}, set(), 0).encode()[:1] == b"P"
    assert PeriodCounters(1, 2, {"RENDER": 1}, set(), 0).encode()[:1] == b"{"


def test_counters_written_as_json_by_an_earlier_version_still_decode() -> None:
    legacy = b'{"o":12,"r":4,"p":2}'
    assert PeriodCounters.decode(legacy) == PeriodCounters(12, 4, {}, set(), 2)


def test_packed_counters_of_old_periods_expire() -> None:
    old = counters_key("LIC-1", "2026-08")
    current = counters_key("LIC-1", "2026-11")
    value = PeriodCounters(5, 1, {}, set(), 4).encode()
    cutoff = datetime(2026, 10, 20, tzinfo=UTC)
    assert expired([(old, value), (current, value)], cutoff) == [(4, old)]


@settings(max_examples=500, deadline=None)
@given(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**62),
    st.dictionaries(st.text(max_size=12), st.integers(0, 2**40), max_size=4),
    st.sets(st.text(max_size=12), max_size=4),
    st.integers(-1, 2**31 - 1),
)
def test_counters_json_is_what_json_dumps_writes(
    through: int, renders: int, used: dict[str, int], near: set[str], partition: int
) -> None:
    counters = PeriodCounters(through, renders, used, near, partition)
    doc: dict[str, object] = {"o": through, "r": renders, "p": partition}
    if used:
        doc["q"] = used
    if near:
        doc["n"] = sorted(near)
    if used or near:
        assert counters.encode() == json.dumps(doc, separators=(",", ":")).encode()
        assert PeriodCounters.decode(counters.encode()) == counters
