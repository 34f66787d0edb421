"""De-duplication by ``(vendor_id, event_id)`` and retractions (docs/ROYALTY-RULES.md §3).

The index itself is the caller's (a dict for a replay, a changelogged table in the meter);
these functions hold the rules so both decide alike.
"""

from __future__ import annotations

from enum import StrEnum

from residuals.domain.events import UsageEvent
from residuals.domain.vocabulary import Kind


class Repeat(StrEnum):
    NEW = "NEW"
    DUPLICATE = "DUPLICATE"  # same payload: dropped, counted in excluded.duplicates
    CONFLICT = "CONFLICT"  # different payload: dropped, DUPLICATE_CONFLICT (first wins)


def classify_repeat(first: UsageEvent | None, event: UsageEvent) -> Repeat:
    if first is None:
        return Repeat.NEW
    return Repeat.DUPLICATE if first == event else Repeat.CONFLICT


class Retraction(StrEnum):
    RETRACTS = "RETRACTS"  # removes the original from its period
    ALREADY_RETRACTED = "ALREADY_RETRACTED"  # a re-sent retraction: a duplicate
    UNKNOWN_ORIGINAL = "UNKNOWN_ORIGINAL"  # dead letter


def resolve_retraction(
    retraction: UsageEvent, original: UsageEvent | None, original_retracted: bool
) -> Retraction:
    """Judge a retraction against the original found under the same vendor's identity."""
    if (
        original is None
        or original.kind is Kind.RETRACTION
        or original.vendor_id != retraction.vendor_id
    ):
        return Retraction.UNKNOWN_ORIGINAL
    return Retraction.ALREADY_RETRACTED if original_retracted else Retraction.RETRACTS
