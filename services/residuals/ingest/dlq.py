"""``residuals dlq list|show``: read the dead-letter topic as an operator.

``list`` scans ``residuals.usage.dlq.v1`` (from ``--since``, or the beginning) up to its end
as of the start of the command, filtering by vendor, reason and time; ``show`` prints one
record with its original decoded as far as it goes (envelope, signed payload as JSON), or
as hex when it cannot be decoded. Records that are not DeadLetters at all (a poison record
written by something else) are listed as ``UNDECODABLE`` rather than stopping the scan.
Reading never commits offsets: it uses no consumer group state.
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

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from residuals.codecs.deadletters import reason_from_proto
from residuals.codecs.timestamps import to_datetime
from residuals.platform.config import ConfigError, KafkaSettings, load
from residuals.platform.kafka import make_consumer, topic_name
from residuals.platform.topics import USAGE_DLQ
from residuals.v1 import usage_pb2

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
        if self.letter is not None and self.letter.HasField("received_at"):
            try:
                return to_datetime(self.letter.received_at)
            except (ValueError, OverflowError, OSError):
                pass
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
                _, stamp = message.timestamp()
                raw = message.value() or b""
                yield Entry(
                    p, position, datetime.fromtimestamp(stamp / 1000, UTC), raw, _decode(raw)
                )
                produced += 1
                if limit is not None and produced >= limit:
                    return
            if p in ends and position + 1 >= ends[p]:
                del ends[p]
    finally:
        consumer.close()


# --- rendering ---------------------------------------------------------------------------


def describe_original(original: bytes) -> dict[str, Any]:
    """The original bytes decoded as far as they go."""
    from residuals.codecs.signed import decode_envelope, decode_payload

    out: dict[str, Any] = {"bytes": len(original)}
    try:
        envelope = decode_envelope(original)
    except DecodeError as error:
        out["decoded"] = f"not a SignedUsageEvent: {error}"
        out["hex"] = original[:512].hex()
        return out
    out["key_id"] = envelope.key_id
    out["signature"] = envelope.signature.hex()
    if envelope.HasField("batch"):
        # The signature is over the batch's Merkle root: the proof is half the evidence
        # (a BAD_SIGNATURE's detail often names the leaf or the path).
        proof = envelope.batch
        out["batch"] = {
            "leaf_index": proof.leaf_index,
            "leaf_count": proof.leaf_count,
            "audit_path_length": len(proof.audit_path),
        }
    if envelope.trace.traceparent:
        out["traceparent"] = envelope.trace.traceparent
    try:
        out["event"] = MessageToDict(decode_payload(envelope.payload))
    except DecodeError as error:
        out["event"] = f"payload is not a UsageEvent: {error}"
        out["payload_hex"] = envelope.payload[:512].hex()
    return out


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


def _table(entries: list[dict[str, Any]]) -> str:
    columns = ("position", "received_at", "vendor_id", "reason", "event_id", "detail")
    rows = [[str(e[c]) for c in columns] for e in entries]
    for row in rows:
        if len(row[-1]) > 80:
            row[-1] = row[-1][:77] + "..."
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


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
            print(json.dumps(item))
    elif shown:
        print(_table(shown))
    else:
        print("no dead letters match", file=sys.stderr)
    return 0


def _show_command(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    partition_text, sep, offset_text = args.position.partition(":")
    if not sep or not partition_text.isdigit() or not offset_text.isdigit():
        print("residuals dlq show: POSITION is PARTITION:OFFSET, e.g. 3:1042", file=sys.stderr)
        return 2
    entries = list(read(kafka, partition=int(partition_text), offset=int(offset_text), limit=1))
    if not entries or entries[0].offset != int(offset_text):
        print(f"no dead letter at {args.position}", file=sys.stderr)
        return 1
    print(json.dumps(_show(entries[0]), indent=2))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list and inspect dead-lettered usage events (residuals.usage.dlq.v1)",
        description="Reads the dead-letter topic of the Kafka cluster in KAFKA_BOOTSTRAP_SERVERS"
        " (with RESIDUALS_TOPIC_PREFIX). Never commits offsets.",
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
