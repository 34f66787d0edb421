"""Builders of the ledger writer's input for tests: records exactly as the meter publishes
them (RatedUsage / DeadLetter bytes), as confluent-kafka presents them when consumed, for
a vendor and period unique to each test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs.signing import sign_event
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import from_domain
from residuals.domain.events import UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.ledger.store import LedgerStore
from residuals.platform.roles import role_dsn
from residuals.v1 import common_pb2, usage_pb2

USAGE, RATED, DLQ = "t.usage", "t.rated", "t.dlq"
KEY = Ed25519PrivateKey.generate()
Outcome = usage_pb2.RatedUsage.Outcome


@dataclass
class Message:
    """A consumed record as confluent-kafka presents it."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes
    _headers: list[tuple[str, bytes]] | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def key(self) -> bytes | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)

    def error(self) -> None:
        return None


class Ledger:
    """A unique vendor and period per test, and helpers to build the meter's records.

    ``dsn`` is the tables' owner (set-up, checks, tampering); the store writes as the
    ledger writer's own role (``service_dsn``, by default ``residuals_ledger``)."""

    def __init__(self, dsn: str, service_dsn: str | None = None) -> None:
        self.dsn = dsn
        self.service_dsn = service_dsn or role_dsn(dsn, "ledger")
        self.run = uuid.uuid4().hex[:8]
        self.vendor = f"VEN@{self.run}"
        n = int(self.run, 16)
        self.period = Period(2100 + n % 500, 1 + n % 11)  # never the last month of a year
        self.store = LedgerStore(usage_topic=USAGE, rated_topic=RATED, dlq_topic=DLQ)
        self.offset = 0

    def when(self, day: int = 3) -> datetime:
        return self.period.start + timedelta(days=day - 1, hours=1)

    def event(self, event_id: str, **fields: Any) -> UsageEvent:
        raw: dict[str, Any] = {
            "event_id": event_id,
            "vendor_id": self.vendor,
            "kind": "RENDER",
            "licence_id": f"LIC@{self.run}",
            "avatar_id": "AVA-1",
            "render_id": f"r-{event_id}",
            "category": "product_demo",
            "territory": "US",
            "occurred_at": self.when(),
        }
        raw.update(fields)
        event = parse_event({k: v for k, v in raw.items() if v is not None})
        assert isinstance(event, UsageEvent)
        return event

    def rated(
        self,
        event: UsageEvent,
        outcome: int = Outcome.OUTCOME_ACCEPTED,
        *,
        partition: int = 0,
        offset: int | None = None,
        amount: str = "1.00",
        signed: usage_pb2.SignedUsageEvent | None = None,
    ) -> Message:
        """The meter's record of ``event``; ``signed`` is the vendor's envelope of it
        (default: signed on its own with ``KEY``)."""
        if offset is None:
            self.offset += 1
            offset = self.offset
        message = from_domain(event)
        if signed is None:
            signed = sign_event(message, "k1", KEY)
        rated = usage_pb2.RatedUsage(
            outcome=outcome,
            authenticated_vendor_id=event.vendor_id,
            units_priced=event.quantity if outcome == Outcome.OUTCOME_ACCEPTED else 0,
            estimated_amount=amount if outcome == Outcome.OUTCOME_ACCEPTED else "0",
            held_amount="0",
            currency_code="USD",
            licence_version=1,
            source_partition=partition,
            source_offset=offset,
            retracted_event_id=event.original_event_id or "",
        )
        rated.event.CopyFrom(message)
        rated.signed.CopyFrom(signed)
        set_timestamp(rated.received_at, event.occurred_at + timedelta(seconds=3))
        published = str(int(datetime.now(UTC).timestamp() * 1000)).encode()
        return Message(
            RATED,
            partition,
            offset,
            rated.SerializeToString(),
            [("residuals-published-at", published)],
        )

    def dead(self, reason: str, offset: int) -> Message:
        letter = usage_pb2.DeadLetter(
            reason=common_pb2.RejectReason.Value("REJECT_REASON_" + reason),
            detail="bad",
            vendor_id=self.vendor,
            event_id=f"d-{offset}",
            original=b"\x00junk",
            source_topic=USAGE,
            source_partition=0,
            source_offset=offset,
        )
        set_timestamp(letter.received_at, self.when())
        return Message(DLQ, 0, offset, letter.SerializeToString())

    def apply(self, *messages: Message) -> Any:
        with psycopg.connect(self.service_dsn) as conn:
            return self.store.apply(conn, list(messages))

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def totals(self) -> dict[str, int]:
        row = self.rows(
            "SELECT sum(events), sum(units_priced), sum(duplicates), sum(conflicts), "
            "sum(retracted), sum(estimated_amount), sum(adjustments) FROM ledger_totals "
            "WHERE licence_id = %s",
            f"LIC@{self.run}",
        )[0]
        names = ("events", "units", "duplicates", "conflicts", "retracted", "amount", "adj")
        return {n: (v if n == "amount" else int(v or 0)) for n, v in zip(names, row, strict=True)}

    def cleanup(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            for table in ("usage_events", "usage_repeats", "dead_letters"):
                conn.execute(f"DELETE FROM {table} WHERE vendor_id = %s", (self.vendor,))
            conn.execute("DELETE FROM ledger_totals WHERE licence_id = %s", (f"LIC@{self.run}",))
            conn.execute(
                "DELETE FROM closed_periods WHERE period IN (%s, %s)",
                (str(self.period), str(self.period.next())),
            )
