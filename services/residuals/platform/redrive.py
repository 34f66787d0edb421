"""Re-driving set-aside records, and printing them, as an operator does it.

Shared by ``residuals dlq redrive`` (dead letters of the meter's own defects back to the
usage topic) and ``residuals dlq quarantine redrive`` (quarantined records back to their
source topic). A record is produced with its key, value and headers to the partition it
was read from (keeps it with its key's other records whatever partitioner wrote them),
and the command waits for Kafka's acknowledgement before it marks anything re-driven.

Everything printed passes :func:`safe`: vendor-controlled text (ids, details, headers,
decoded payloads) can carry ANSI escapes, control characters or bidi overrides that would
rewrite an operator's terminal; they are escaped (:func:`~residuals.domain.bounds.printable`).
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from residuals.domain.bounds import printable
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import AcknowledgedProducer, DeliveryFailed, Outgoing

#: Longest vendor string printed in full (``show`` prints every field).
SHOW_LIMIT = 2000


class RedriveError(RuntimeError):
    """Kafka did not acknowledge a re-driven record (nothing is marked)."""


@dataclass(frozen=True)
class Landed:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Redriver:
    """An idempotent, acks=all producer that sends one record at a time and waits."""

    def __init__(self, kafka: KafkaSettings, timeout: float = 30.0) -> None:
        overrides: dict[str, Any] = {"linger.ms": 0}
        self.producer = AcknowledgedProducer(
            kafka, client_id="residuals-redrive", report_successes=True, **overrides
        )
        self.timeout = timeout

    def send(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Landed:
        """Produce and wait for the acknowledgement; raises :class:`RedriveError`."""
        record = Outgoing(
            topic,
            key,
            value,
            [(k.decode("utf-8", "backslashreplace"), v) for k, v in headers],
            partition,
        )
        receipt = self.producer.send_group([record])
        try:
            self.producer.acknowledge(self.timeout)
        except DeliveryFailed:
            raise RedriveError(f"no acknowledgement from Kafka within {self.timeout} s") from None
        if receipt.errors:
            raise RedriveError(f"Kafka refused the record: {receipt.errors[0][1]}")
        return Landed(*receipt.landed[0])


def operator() -> str:
    """Who re-drives: ``user@host`` of the shell running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return printable(f"{user}@{socket.gethostname()}", 128)


def safe(value: Any, limit: int = SHOW_LIMIT) -> Any:
    """``value`` (JSON-like) with every string, key and bytes escaped for a terminal."""
    if isinstance(value, (str, bytes)):
        return printable(value, limit)
    if isinstance(value, Mapping):
        return {printable(str(k), 200): safe(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe(v, limit) for v in value]
    return value


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], wide: str = "") -> str:
    """A plain text table of ``rows`` (values escaped); the ``wide`` column is cut at 80."""
    cells = [[printable(str(row.get(c, "")), 200) for c in columns] for row in rows]
    if wide in columns:
        i = list(columns).index(wide)
        for row in cells:
            if len(row[i]) > 80:
                row[i] = row[i][:77] + "..."
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
