"""The demo's hostile vendor: a licensee with Kafka write access that sends poison.

Vendors are the party whose misuse Residuals exists to catch, so in the middle of the
month one of them writes every refused record of :mod:`residuals.demo.hostile` straight
onto the usage topic with its own valid key: undecodable bytes, a tombstone, ids with NUL
bytes and terminal escapes, an ad revenue of ``9e999999``, timestamps in year 2^62,
another vendor's licence, forged receipt headers... Each must become a dead letter with
the reason the rules give, while the month's good events go on being rated and the
services never restart (the demo stops if one dies).

After the close the demo reads where each one landed in the ledger: the reason (it fails
if any differs from the expected one) and the period it counts in. Those counted in the
statement's period are dead letters of that statement like the forger's, so they join the
streaming-only rejections the offline replay adds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from residuals.demo.hostile import Hostile, Identity, corpus
from residuals.domain.events import Rejection
from residuals.domain.vocabulary import RejectReason
from residuals.ledger import directory as ledger
from residuals.platform.kafka import AcknowledgedProducer, Outgoing


@dataclass(frozen=True)
class Sent:
    """One hostile record on the usage topic."""

    case: Hostile
    partition: int
    offset: int


@dataclass(frozen=True)
class Landed:
    """Where a hostile record ended: its dead letter's reason and period."""

    sent: Sent
    reason: str
    period: str
    detail: str

    @property
    def as_expected(self) -> bool:
        return self.sent.case.reason is not None and self.reason == self.sent.case.reason.value


def poisoner(scenario: Any) -> Any:
    """The vendor that writes the poison: the first that publishes straight to Kafka."""
    return next(v for v in scenario.vendors if v.transport == "kafka")


def refused_cases(who: Identity, now: Any) -> list[Hostile]:
    """The corpus's records that must be refused (valid ones would be rated and billed)."""
    return [case for case in corpus(who, now) if case.reason is not None]


def send(
    producer: AcknowledgedProducer,
    topic: str,
    who: Identity,
    cases: Sequence[Hostile],
    timeout: float = 60.0,
) -> list[Sent]:
    """Produce ``cases`` as the vendor would (its vendor claim, the key it chose) and wait
    for Kafka's acknowledgements."""
    records = [
        Outgoing(
            topic,
            case.key or who.licence_id.encode(),
            case.value,
            [("residuals-vendor", who.vendor.encode()), *case.headers],
        )
        for case in cases
    ]
    receipt = producer.send_group(records)
    producer.acknowledge(timeout)
    if receipt.errors:
        failures = [f"{cases[i].name}: {error}" for i, error in receipt.errors]
        raise RuntimeError(f"hostile records not acknowledged: {failures[:3]}")
    return [Sent(case, receipt.landed[i][1], receipt.landed[i][2]) for i, case in enumerate(cases)]


def landed(
    database_url: str, topic: str, sent: Sequence[Sent], timeout: float = 60.0
) -> list[Landed]:
    """Each record's dead letter as the ledger stored it (waits for all of them)."""
    positions = [(s.partition, s.offset) for s in sent]
    deadline = time.monotonic() + timeout
    rows: dict[tuple[int, int], tuple[str, str, str]] = {}
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        while True:
            rows = {
                at: (row.reason, row.period, row.detail)
                for at, row in ledger.dead_letters_at(conn, topic, positions).items()
            }
            if len(rows) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return [
        Landed(s, *rows.get((s.partition, s.offset), ("MISSING", "", "not in the ledger")))
        for s in sent
    ]


def rejections(outcomes: Iterable[Landed], period: str, vendor_id: str) -> list[Rejection]:
    """The dead letters counted in ``period``'s statement, for the offline replay."""
    return [
        Rejection(RejectReason(o.reason), o.detail, vendor_id)
        for o in outcomes
        if o.period == period and o.reason != "MISSING"
    ]


def write(path: Path, outcomes: Iterable[Landed], period: str) -> None:
    with path.open("w", encoding="utf-8") as out:
        for o in outcomes:
            line = {
                "record": o.sent.case.name,
                "expected": o.sent.case.reason.value if o.sent.case.reason else None,
                "reason": o.reason,
                "period": o.period,
                "in_statement": o.period == period,
                "position": f"{o.sent.partition}:{o.sent.offset}",
                "detail": o.detail,
            }
            out.write(json.dumps(line, sort_keys=True) + "\n")


def summary(outcomes: Sequence[Landed], vendor_name: str) -> list[str]:
    """Lines for the demo's summary."""
    reasons = Counter(o.reason for o in outcomes)
    matched = sum(o.as_expected for o in outcomes)
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    return [
        f"Hostile vendor: {vendor_name} wrote {len(outcomes)} malformed or forged records"
        " straight to the usage topic",
        f"  {matched} of {len(outcomes)} dead-lettered with the reason the rules give"
        f" ({by_reason}); no service restarted; every good event still rated",
    ]
