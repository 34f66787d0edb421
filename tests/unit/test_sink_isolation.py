"""Bisection of a failed batch around its poison records, which errors a record can cause
(pure logic: a fake, atomic ``apply`` over integers), and when a sink is stalled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import psycopg
import psycopg.errors as pg
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from psycopg_pool import PoolTimeout

from residuals.platform.isolation import apply_isolating, is_record_error
from residuals.platform.sink import Fenced, KafkaPostgresSink, SinkMetrics, SinkSettings


class FakeStore:
    """Applies chunks atomically (like a savepoint): a chunk holding a poison record, or
    one of the ``together`` pairs at once, fails and leaves nothing behind."""

    def __init__(
        self,
        poison: set[int],
        *,
        error: Exception | None = None,
        together: set[frozenset[int]] | None = None,
    ) -> None:
        self.poison = poison
        self.error = error or psycopg.DataError("text fields cannot contain NUL (0x00) bytes")
        self.together = together or set()
        self.rows: list[int] = []
        self.calls: list[list[int]] = []

    def attempt(self, chunk: Sequence[int]) -> int:
        self.calls.append(list(chunk))
        if self.poison & set(chunk) or any(pair <= set(chunk) for pair in self.together):
            raise self.error
        self.rows.extend(chunk)
        return len(chunk)


def test_a_clean_batch_is_applied_in_one_attempt() -> None:
    store = FakeStore(poison=set())
    done = apply_isolating(range(10), store.attempt)
    assert done.applied == list(range(10)) and store.rows == list(range(10))
    assert done.results == [10] and done.poison == [] and done.attempts == 1


def test_one_poison_record_is_isolated_and_everything_else_applied_in_order() -> None:
    store = FakeStore(poison={37})
    done = apply_isolating(range(100), store.attempt)
    assert [record for record, _ in done.poison] == [37]
    assert isinstance(done.poison[0][1], psycopg.DataError)
    assert done.applied == [r for r in range(100) if r != 37] == store.rows
    assert sum(done.results) == 99
    # About two attempts per level of the bisection, not one per record.
    assert done.attempts <= 2 * math.ceil(math.log2(100)) + 1


def test_poison_at_the_edges_adjacent_and_everywhere() -> None:
    for poison in ({0}, {99}, {10, 11, 12}, {0, 50, 99}, set(range(100))):
        store = FakeStore(poison=poison)
        done = apply_isolating(range(100), store.attempt)
        assert [r for r, _ in done.poison] == sorted(poison)
        assert done.applied == store.rows == [r for r in range(100) if r not in poison]


def test_records_that_only_fail_together_are_all_applied() -> None:
    store = FakeStore(poison=set(), together={frozenset({3, 4})})
    done = apply_isolating(range(8), store.attempt)
    assert done.poison == [] and sorted(done.applied) == list(range(8))


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        pg.AdminShutdown("terminating connection due to administrator command"),
        pg.SerializationFailure("could not serialize access"),
        pg.InsufficientPrivilege("permission denied for table usage_events"),
        pg.UndefinedTable("relation does not exist"),
        psycopg.InterfaceError("the connection is closed"),
        PoolTimeout("couldn't get a connection after 30.00 sec"),
        ConnectionResetError("reset by peer"),
        Fenced("owned by epoch 3, not 2"),
    ],
)
def test_errors_no_record_causes_are_raised_not_bisected(error: Exception) -> None:
    assert not is_record_error(error)
    store = FakeStore(poison={5}, error=error)
    with pytest.raises(type(error)):
        apply_isolating(range(10), store.attempt)
    assert len(store.calls) == 1  # no bisection: the caller rolls back and retries


@pytest.mark.parametrize(
    "error",
    [
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        pg.UntranslatableCharacter("unsupported Unicode escape sequence"),
        pg.NumericValueOutOfRange("value overflows numeric format"),
        pg.UniqueViolation("duplicate key value"),
        pg.CheckViolation("new row violates check constraint"),
        pg.ProgramLimitExceeded("index row size 60016 exceeds btree maximum 2704"),
        pg.CardinalityViolation("ON CONFLICT DO UPDATE command cannot affect row a second time"),
        ValueError("year 0 is out of range"),
        OverflowError("timestamp out of range"),
        TypeError("'NoneType' object is not subscriptable"),
        DecodeError("Error parsing message"),
    ],
)
def test_errors_a_record_can_cause(error: Exception) -> None:
    assert is_record_error(error)


def test_a_transient_error_during_bisection_still_propagates() -> None:
    store = FakeStore(poison={7})
    calls = 0

    def flaky(chunk: Sequence[int]) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:  # the database goes away half-way through
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return store.attempt(chunk)

    with pytest.raises(psycopg.OperationalError):
        apply_isolating(range(16), flaky)


@given(
    size=st.integers(min_value=0, max_value=300),
    poison=st.sets(st.integers(min_value=0, max_value=299), max_size=40),
)
def test_every_record_is_applied_once_or_quarantined(size: int, poison: set[int]) -> None:
    poison = {p for p in poison if p < size}
    store = FakeStore(poison=poison)
    done = apply_isolating(list(range(size)), store.attempt)
    assert store.rows == done.applied == [r for r in range(size) if r not in poison]
    assert [r for r, _ in done.poison] == sorted(poison)
    assert sum(done.results) == size - len(poison)


def test_a_batch_pending_longer_than_the_stall_time_marks_the_sink_stalled() -> None:
    registry = CollectorRegistry()
    seen: list[bool] = []
    sink: KafkaPostgresSink[None] = KafkaPostgresSink(
        name="t",
        consumer=object(),
        db=cast(Any, None),  # never reached: no batch is processed here
        group_id="g",
        topics=["x"],
        apply=lambda _conn, _records: None,
        settings=SinkSettings(stall_seconds=60),
        on_stalled=seen.append,
        metrics=SinkMetrics(registry),
    )

    def gauge() -> float | None:
        return registry.get_sample_value("residuals_sink_stalled", {"sink": "t"})

    assert gauge() == 0 and not sink.check_stall(now=100.0)
    sink._pending_since = 100.0  # a batch first attempted at t=100 is still not committed
    assert not sink.check_stall(now=159.0) and seen == []
    assert sink.check_stall(now=160.0) and sink.check_stall(now=170.0)
    assert seen == [True] and gauge() == 1  # told once
    sink._pending_since = None  # it committed
    assert not sink.check_stall(now=171.0)
    assert seen == [True, False] and gauge() == 0
    assert (
        registry.get_sample_value(
            "residuals_quarantined_records_total", {"consumer": "t", "topic": "x"}
        )
        == 0
    )


def test_with_a_probe_the_good_records_are_applied_together_in_one_attempt() -> None:
    """A retraction and its original (here 10 and 90, which fail when applied apart:
    ``apart``) stay in one application when poison (55) sits between them."""
    store = FakeStore(poison={55})
    probed: list[list[int]] = []

    def probe(chunk: Sequence[int]) -> None:
        probed.append(list(chunk))
        if store.poison & set(chunk):
            raise store.error

    def attempt(chunk: Sequence[int]) -> int:
        if (10 in chunk) != (90 in chunk):
            raise AssertionError("the original and its retraction were split apart")
        return store.attempt(chunk)

    done = apply_isolating(list(range(100)), attempt, probe=probe)
    assert [r for r, _e in done.poison] == [55]
    assert store.rows == [r for r in range(100) if r != 55]
    assert done.results == [99]  # one application of the 99 good records
    assert probed  # poison found by probing, which applies nothing
    assert all(55 in chunk for chunk in store.calls[:1])


def test_records_failing_only_together_fall_back_to_halves_after_probing() -> None:
    store = FakeStore(poison={3}, together={frozenset({1, 6})})

    def probe(chunk: Sequence[int]) -> None:
        if store.poison & set(chunk) or any(p <= set(chunk) for p in store.together):
            raise store.error

    done = apply_isolating(list(range(8)), store.attempt, probe=probe)
    assert sorted(r for r, _e in done.poison) == [3]
    assert sorted(store.rows) == [0, 1, 2, 4, 5, 6, 7]
