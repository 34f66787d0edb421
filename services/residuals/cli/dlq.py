"""``residuals dlq list|show|redrive`` and ``residuals dlq quarantine``: as an operator.

``list`` scans ``residuals.usage.dlq.v1`` (from ``--since``, or the beginning) up to its end
as of the start of the command, filtering by vendor, reason and time; ``show`` prints one
record with its original decoded as far as it goes (envelope, signed payload as JSON), or
as hex when it cannot be decoded. Records that are not DeadLetters at all (a poison record
written by something else) are listed as ``UNDECODABLE`` rather than stopping the scan.
Reading never commits offsets: it uses no consumer group state. Everything printed is
escaped for the terminal (vendor ids and details can carry ANSI escapes, control
characters and bidi overrides): :func:`residuals.platform.redrive.safe`.

``redrive`` produces the original record of dead letters of reason ``UNPROCESSABLE`` (the
meter's own defect, not a verdict on the record) back to the usage topic once the defect
is fixed, waits for Kafka's acknowledgement and marks the ledger's row re-driven; a dead
letter already re-driven is refused unless ``--force``. ``quarantine`` is
:mod:`residuals.cli.quarantine`.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from google.protobuf.message import DecodeError

from residuals.cli import quarantine as quarantine_admin
from residuals.codecs import receipt
from residuals.codecs.deadletters import reason_from_proto
from residuals.codecs.inspect import describe_original
from residuals.codecs.timestamps import bounded_datetime
from residuals.domain.vocabulary import RejectReason
from residuals.ledger import directory as ledger
from residuals.platform.config import (
    ConfigError,
    KafkaSettings,
    PostgresSettings,
    ReceiptSettings,
    load,
)
from residuals.platform.kafka import make_consumer, topic_name
from residuals.platform.redrive import RedriveError, Redriver, operator, safe, table
from residuals.platform.topics import USAGE, USAGE_DLQ
from residuals.v1 import usage_pb2

__all__ = ["describe_original", "read", "register"]

UNDECODABLE = "UNDECODABLE"
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Entry:
    """One dead-letter record as read from the topic."""

    partition: int
    offset: int
    timestamp: datetime
    raw: bytes
    letter: usage_pb2.DeadLetter | None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return reason_from_proto(self.letter.reason) if self.letter else UNDECODABLE

    @property
    def vendor_id(self) -> str:
        return self.letter.vendor_id if self.letter else ""

    @property
    def received_at(self) -> datetime:
        if self.letter is not None:
            return bounded_datetime(self.letter, "received_at") or self.timestamp
        return self.timestamp

    def summary(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "position": self.position,
            "received_at": self.received_at.isoformat().replace("+00:00", "Z"),
            "vendor_id": self.vendor_id,
            "reason": self.reason,
            "event_id": letter.event_id if letter else "",
            "licence_id": letter.licence_id if letter else "",
            "detail": letter.detail if letter else f"not a DeadLetter ({len(self.raw)} bytes)",
        }


def _record_time(message: Any) -> datetime:
    """The record's timestamp; the epoch when absent or absurd (a producer sets it)."""
    try:
        return datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.fromtimestamp(0, UTC)


def _decode(raw: bytes | None) -> usage_pb2.DeadLetter | None:
    if raw is None:
        return None
    try:
        letter = usage_pb2.DeadLetter.FromString(raw)
    except DecodeError:
        return None
    return letter


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read(
    kafka: KafkaSettings,
    *,
    since: datetime | None = None,
    partition: int | None = None,
    offset: int | None = None,
    limit: int | None = None,
) -> Iterator[Entry]:
    """Records of the DLQ topic up to its current end (or ``limit`` records)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    topic = topic_name(kafka, USAGE_DLQ)
    consumer = make_consumer(
        kafka, f"residuals-dlq-cli-{uuid.uuid4().hex[:12]}", client_id="residuals-dlq-cli"
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise ConfigError(f"topic {topic} not found on {kafka.bootstrap_servers}")
        partitions = sorted(info.partitions) if partition is None else [partition]
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if offset is not None:
                begin = offset
            elif since is not None:
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, int(since.timestamp() * 1000))], timeout=10
                )[0].offset
                begin = found if found >= 0 else high
            else:
                begin = OFFSET_BEGINNING
            if (begin if begin >= 0 else low) < high:
                ends[p] = high
                starts.append(TopicPartition(topic, p, begin))
        if not starts:
            return
        consumer.assign(starts)
        produced = 0
        while ends:
            message = consumer.poll(_POLL_SECONDS)
            if message is None:
                # Transaction markers occupy offsets but are never delivered: a partition
                # whose position reached its end is done even without a last record.
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if tp.offset >= ends[tp.partition]:
                        del ends[tp.partition]
                continue
            if message.error() is not None:
                raise RuntimeError(f"reading {topic}: {message.error()}")
            p, position = message.partition(), message.offset()
            if p is None or position is None:
                continue
            if p in ends and position < ends[p]:
                raw = message.value() or b""
                yield Entry(p, position, _record_time(message), raw, _decode(raw))
                produced += 1
                if limit is not None and produced >= limit:
                    return
            if p in ends and position + 1 >= ends[p]:
                del ends[p]
    finally:
        consumer.close()


# --- rendering ---------------------------------------------------------------------------


def _show(entry: Entry) -> dict[str, Any]:
    shown = entry.summary()
    if entry.letter is None:
        shown["hex"] = entry.raw[:512].hex()
        return shown
    letter = entry.letter
    if letter.source_topic:
        shown["source"] = f"{letter.source_topic}/{letter.source_partition}:{letter.source_offset}"
    else:
        shown["source"] = "ingest gateway"
    if letter.trace.traceparent:
        shown["traceparent"] = letter.trace.traceparent
    shown["original"] = describe_original(letter.original)
    return shown


# --- command line ------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    since = _parse_time(args.since) if args.since else None
    until = _parse_time(args.until) if args.until else None
    reasons = {r.upper() for r in args.reason or []}
    shown: list[dict[str, Any]] = []
    for entry in read(kafka, since=since):
        if args.vendor and entry.vendor_id != args.vendor:
            continue
        if reasons and entry.reason not in reasons:
            continue
        if since and entry.received_at < since:
            continue
        if until and entry.received_at >= until:
            continue
        shown.append(entry.summary())
        if args.limit and len(shown) >= args.limit:
            break
    if args.json:
        for item in shown:
            print(json.dumps(safe(item)))
    elif shown:
        columns = ("position", "received_at", "vendor_id", "reason", "event_id", "detail")
        print(table(shown, columns, wide="detail"))
    else:
        print("no dead letters match", file=sys.stderr)
    return 0


def _position(text: str) -> tuple[int, int] | None:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        return None
    return int(partition), int(offset)


def _at(kafka: KafkaSettings, position: tuple[int, int]) -> Entry | None:
    entries = list(read(kafka, partition=position[0], offset=position[1], limit=1))
    return entries[0] if entries and entries[0].offset == position[1] else None


def _show_command(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    position = _position(args.position)
    if position is None:
        print("residuals dlq show: POSITION is PARTITION:OFFSET, e.g. 3:1042", file=sys.stderr)
        return 2
    entry = _at(kafka, position)
    if entry is None:
        print(f"no dead letter at {args.position}", file=sys.stderr)
        return 1
    print(json.dumps(safe(_show(entry)), indent=2))
    return 0


# --- redrive ------------------------------------------------------------------------------

REDRIVABLE = RejectReason.UNPROCESSABLE.value


def redrive_problem(entry: Entry, usage_topic: str) -> str | None:
    """Why a dead letter cannot be re-driven: only the meter's own defects can (any other
    reason is a verdict on the vendor's record that a re-drive would only repeat)."""
    letter = entry.letter
    if letter is None:
        return "not a DeadLetter"
    if entry.reason != REDRIVABLE:
        return f"reason {entry.reason} is a verdict on the record; only {REDRIVABLE} is re-driven"
    if letter.source_topic != usage_topic:
        return f"it was not read from {usage_topic}"
    if not letter.original:
        return "it carries no original record"
    return None


def _redrive(args: argparse.Namespace) -> int:
    if bool(args.positions) == bool(args.all):
        print("residuals dlq redrive: give POSITION... or --all", file=sys.stderr)
        return 2
    kafka = load(KafkaSettings)
    usage_topic = topic_name(kafka, USAGE)
    if args.all:
        entries = [
            e
            for e in read(kafka)
            if e.reason == REDRIVABLE and (not args.vendor or e.vendor_id == args.vendor)
        ]
    else:
        positions = [_position(text) for text in args.positions]
        if None in positions:
            print("residuals dlq redrive: POSITION is PARTITION:OFFSET", file=sys.stderr)
            return 2
        found = [
            (text, _at(kafka, p)) for text, p in zip(args.positions, positions, strict=True) if p
        ]
        for text, entry in found:
            if entry is None:
                print(f"{text}: no dead letter there", file=sys.stderr)
        if any(entry is None for _, entry in found):
            return 1
        entries = [entry for _, entry in found if entry is not None]
    redriver = None if args.dry_run else Redriver(kafka)
    receipt_key = load(ReceiptSettings).key()
    who = operator()
    refused = 0
    with psycopg.connect(load(PostgresSettings).dsn) as conn:
        for entry in entries:
            outcome = _redrive_one(
                conn, entry, usage_topic, redriver, who, force=args.force, receipt_key=receipt_key
            )
            failed = outcome.startswith("refused") or outcome.startswith("failed")
            refused += failed
            print(f"{entry.position}: {outcome}", file=sys.stderr if failed else sys.stdout)
    if not entries:
        print(f"no {REDRIVABLE} dead letters match", file=sys.stderr)
    return 1 if refused else 0


def redrive_headers(
    letter: usage_pb2.DeadLetter, receipt_key: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The re-driven record keeps its original receipt time when this operator holds the
    receipt key (RESIDUALS_RECEIPT_KEY): stamped as the gateway stamps, so an event
    received 30 days ago is not TOO_LATE because the defect took a week to fix."""
    headers: list[tuple[bytes, bytes]] = []
    if letter.vendor_id:
        headers.append((b"residuals-vendor", letter.vendor_id.encode()))
    received = bounded_datetime(letter, "received_at")
    if receipt_key is not None and received is not None:
        stamp = receipt.stamp(receipt_key, received, bytes(letter.original))
        headers.append((receipt.RECEIPT_HEADER.encode(), stamp))
    return headers


def _redrive_one(
    conn: psycopg.Connection[Any],
    entry: Entry,
    usage_topic: str,
    redriver: Redriver | None,
    who: str,
    *,
    force: bool,
    receipt_key: bytes | None = None,
) -> str:
    """Re-drive one dead letter; returns what happened, for the operator."""
    problem = redrive_problem(entry, usage_topic)
    if problem is not None:
        return f"refused: {problem}"
    letter = entry.letter
    assert letter is not None
    key = (letter.source_topic, letter.source_partition, letter.source_offset)
    try:
        with conn.transaction():
            row = ledger.lock_dead_letter(conn, *key)
            if row is None and not force:
                return "refused: not in the ledger yet (retry in a moment, or --force)"
            if row is not None and row[0] is not None and not force:
                return f"refused: re-driven at {row[0]:%Y-%m-%d %H:%M:%S%z} by {row[1]} (--force)"
            if redriver is None:
                return f"would re-drive to {usage_topic}[{letter.source_partition}]"
            landed = redriver.send(
                usage_topic,
                letter.source_partition,
                letter.licence_id.encode() or None,
                bytes(letter.original),
                redrive_headers(letter, receipt_key),
            )
            ledger.mark_redriven(conn, who, *key)
            return f"re-driven to {landed}"
    except RedriveError as error:
        return f"failed: {error}"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, inspect and re-drive dead letters (residuals.usage.dlq.v1) and "
        "quarantined records",
        description="list and show read the dead-letter topic of the Kafka cluster in "
        "KAFKA_BOOTSTRAP_SERVERS (with RESIDUALS_TOPIC_PREFIX) and never commit offsets; "
        "redrive and quarantine also use the database in DATABASE_URL. Vendor text is "
        "printed escaped.",
    )
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="one line per dead letter, oldest first")
    listing.add_argument("--vendor", help="only this (authenticated) vendor id")
    listing.add_argument(
        "--reason",
        action="append",
        help="only this reason (repeatable), e.g. BAD_SIGNATURE, OVERSIZED, UNDECODABLE",
    )
    listing.add_argument("--since", help="received at or after (ISO 8601, UTC if no offset)")
    listing.add_argument("--until", help="received before (ISO 8601)")
    listing.add_argument("--limit", type=int, default=0, help="stop after N matches")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", help="one dead letter with its original decoded")
    show.add_argument("position", metavar="POSITION", help="PARTITION:OFFSET from `dlq list`")
    show.set_defaults(handler=_show_command)
    redrive = sub.add_parser(
        "redrive",
        help=f"produce {REDRIVABLE} dead letters' originals back to the usage topic",
        description=f"Only dead letters of reason {REDRIVABLE} (the meter's own defect) are "
        "re-driven, once the defect is fixed: each original record is produced to the "
        "usage topic partition it was read from, Kafka's acknowledgement awaited, and the "
        "ledger's dead_letters row marked (DATABASE_URL). A dead letter already re-driven "
        "is refused unless --force.",
    )
    redrive.add_argument("positions", nargs="*", metavar="POSITION", help="PARTITION:OFFSET")
    redrive.add_argument("--all", action="store_true", help=f"every {REDRIVABLE} dead letter")
    redrive.add_argument("--vendor", help="with --all: only this vendor's")
    redrive.add_argument("--force", action="store_true", help="re-drive even if re-driven")
    redrive.add_argument("--dry-run", action="store_true", help="say what would be re-driven")
    redrive.set_defaults(handler=_redrive)
    quarantine_admin.register(sub)
