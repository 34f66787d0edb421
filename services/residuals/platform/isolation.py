"""Isolating poison records in a failed batch (pure logic, shared by every sink).

A sink applies a batch of records in one transaction. When that fails because of what a
record holds (bytes that do not decode, a NUL byte PostgreSQL refuses, a value out of a
column's range, a 60,000-character key no index can hold), retrying the batch fails the
same way forever and stops the line for everyone. :func:`apply_isolating` bisects instead:
each half is applied on its own, down to single records, so every record that can be
applied is, and each record that fails alone is returned as poison for the caller to
quarantine. Errors a record cannot cause (the database or network unavailable, the
worker fenced, a missing grant) are not bisected: they propagate and the caller retries
the whole batch with back-off, because retrying is what fixes them.

``attempt`` must be atomic (a savepoint): a failed attempt leaves nothing behind, so a
record is applied at most once. Records keep their order: the first half is applied
before the second.

With a ``probe`` (an attempt that always rolls back), the bisection only *finds* the
poison, and the other records are then applied together in one attempt, exactly as they
would have been without it: records that belong together (a retraction and the original
it withdraws, in one batch) are never split into separate applications. Only if that
attempt still fails (records that fail together but not alone) does the batch fall back
to applying its halves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psycopg

T = TypeVar("T")
R = TypeVar("R")

#: SQLSTATE classes a record's content can cause: cardinality violation (21), data
#: exception (22: bad encoding, NUL, out of range), integrity constraint violation (23),
#: program limit exceeded (54: e.g. an index row too large for a 60,000-character key).
RECORD_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "54"})


class Retryable(RuntimeError):
    """A failure no record causes (a fenced worker...): retried, never isolated."""


def is_record_error(error: BaseException) -> bool:
    """Whether ``error`` may be caused by the records applied (isolating them helps).

    Not: PostgreSQL errors of other classes (connection 08, serialization 40, resources 53,
    operator 57, privileges and schema 42 ...), client-side connection errors
    (``OperationalError``/``InterfaceError`` without a SQLSTATE), ``OSError`` and anything
    that is not an ``Exception``, and :class:`Retryable` errors (a fenced worker).
    Everything else a decoder or a write raises (``ValueError``, ``TypeError``, protobuf's
    ``DecodeError``, psycopg's client-side ``DataError`` for a NUL byte...) is.
    """
    if not isinstance(error, Exception) or isinstance(error, (OSError, MemoryError, Retryable)):
        return False
    if isinstance(error, psycopg.Error):
        if error.sqlstate:
            return error.sqlstate[:2] in RECORD_SQLSTATE_CLASSES
        return isinstance(error, (psycopg.DataError, psycopg.IntegrityError))
    return True


@dataclass
class Isolation(Generic[T, R]):
    """What :func:`apply_isolating` did: records applied (in order), the result of each
    successful attempt, and the records that failed alone with their error."""

    applied: list[T] = field(default_factory=list)
    results: list[R] = field(default_factory=list)
    poison: list[tuple[T, Exception]] = field(default_factory=list)
    attempts: int = 0


def apply_isolating(
    records: Sequence[T],
    attempt: Callable[[Sequence[T]], R],
    *,
    probe: Callable[[Sequence[T]], object] | None = None,
    record_error: Callable[[BaseException], bool] = is_record_error,
) -> Isolation[T, R]:
    """Apply ``records`` with ``attempt``, bisecting around records that make it fail.

    Raises whatever ``attempt`` raised when ``record_error`` says a record cannot have
    caused it (nothing of the batch is then to be kept: the caller rolls back).
    """
    out: Isolation[T, R] = Isolation()

    def whole(chunk: Sequence[T]) -> Exception | None:
        """Apply ``chunk`` in one attempt: None if it applied, else the error a record
        may have caused (any other error propagates)."""
        out.attempts += 1
        try:
            out.results.append(attempt(chunk))
        except Exception as error:
            if not record_error(error):
                raise
            return error
        out.applied.extend(chunk)
        return None

    if records and probe is not None:
        if whole(records) is None:
            return out
        # Probe by position, so equal records are told apart.
        batch = list(records)
        found = apply_isolating(
            range(len(batch)),
            lambda positions: probe([batch[i] for i in positions]),
            record_error=record_error,
        )
        out.attempts += found.attempts
        out.poison = [(batch[i], error) for i, error in found.poison]
        bad = {i for i, _error in found.poison}
        records = [record for i, record in enumerate(batch) if i not in bad]
        if not records or whole(records) is None:
            return out
        # Records that fail together but not alone: apply what can be, half by half.
        rest = apply_isolating(records, attempt, record_error=record_error)
        out.attempts += rest.attempts
        out.applied, out.results = rest.applied, rest.results
        out.poison.extend(rest.poison)
        return out

    def run(chunk: Sequence[T]) -> None:
        error = whole(chunk)
        if error is None:
            return
        if len(chunk) == 1:
            out.poison.append((chunk[0], error))
            return
        middle = len(chunk) // 2
        run(chunk[:middle])
        run(chunk[middle:])

    if records:
        run(list(records))
    return out
