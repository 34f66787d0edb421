"""The meter's CPU per event without Kafka: where the time goes, quickly.

    python -m bench.meter_cpu --events 50000 --licences 100000 [--profile]

Runs the meter's real batch path (``BatchRunner.run``: signature check, rules, records and
state writes, metrics) over a month of signed records (tests/support/month.py) held in memory,
with a publisher that only counts what it is given and a dict as the state store. What it
leaves out is what the pipeline benchmark (bench/pipeline.py) adds: faust's consumer, the
broker and the producer's I/O. Licences are decoded before the clock starts (the steady
state of a running meter). Prints one JSON report; ``--profile`` adds cProfile's top
functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from residuals.codecs import licences as licence_codec
from residuals.codecs.signing import sign_batch, signing_key_record
from residuals.domain.licence_spec import parse_licence
from residuals.meter.app import BatchRunner
from residuals.meter.core import VENDOR_HEADER, Meter, Record
from residuals.meter.lookups import KeyRegistry, LicenceRegistry
from residuals.meter.metrics import MeterMetrics
from residuals.v1 import usage_pb2
from tests.support.metering import raw_to_proto
from tests.support.month import make_events, make_licences


class CountingPublisher:
    """Takes records like the Kafka publisher and acknowledges them at once."""

    def __init__(self) -> None:
        self.sent = 0
        self.bytes = 0

    def send(self, topic: str, key: bytes | None, value: bytes | None, **_: Any) -> None:
        self.sent += 1
        self.bytes += len(value or b"")

    async def barrier(self, timeout: float = 120.0) -> None:
        return None


def signed_like_the_sdk(
    raws: list[dict[str, Any]], keys: dict[str, tuple[str, Ed25519PrivateKey]], batch: int
) -> list[usage_pb2.SignedUsageEvent]:
    """Envelopes as each vendor's SDK makes them with ``publish_many``: one signature per
    ``batch`` consecutive events of the vendor (1: one signature per event)."""
    envelopes: list[usage_pb2.SignedUsageEvent | None] = [None] * len(raws)
    pending: dict[str, list[int]] = {}

    def sign(vendor: str) -> None:
        indexes = pending.pop(vendor, [])
        key_id, private = keys[vendor]
        signed = sign_batch([raw_to_proto(raws[i]) for i in indexes], key_id, private)
        for index, envelope in zip(indexes, signed, strict=True):
            envelopes[index] = envelope

    for index, raw in enumerate(raws):
        group = pending.setdefault(raw["vendor_id"], [])
        group.append(index)
        if len(group) >= batch:
            sign(raw["vendor_id"])
    for vendor in list(pending):
        sign(vendor)
    return [e for e in envelopes if e is not None]


def build(args: argparse.Namespace) -> tuple[BatchRunner, list[Record], CountingPublisher]:
    specs = make_licences(args.licences, args.vendors)
    licences = {
        s["licence_id"].encode(): licence_codec.to_proto(parse_licence(dict(s))).SerializeToString()
        for s in specs
    }
    keys: dict[str, tuple[str, Ed25519PrivateKey]] = {}
    key_table: dict[bytes, bytes] = {}
    for vendor in sorted({s["vendor_id"] for s in specs}):
        private = Ed25519PrivateKey.generate()
        keys[vendor] = (f"key-{vendor}", private)
        key_table[f"key-{vendor}".encode()] = signing_key_record(
            f"key-{vendor}", vendor, private
        ).SerializeToString()
    raws = list(make_events(specs, args.events))
    envelopes = signed_like_the_sdk(raws, keys, args.signature_batch)
    records = []
    licence_of: dict[str, str] = {}
    for offset, (raw, signed) in enumerate(zip(raws, envelopes, strict=True)):
        if raw.get("licence_id"):
            licence_of.setdefault(raw["event_id"], raw["licence_id"])
        routing = raw.get("licence_id") or licence_of.get(raw.get("original_event_id", ""), "")
        received = datetime.fromisoformat(raw["occurred_at"]).astimezone(UTC) + timedelta(seconds=3)
        records.append(
            Record(
                topic="usage",
                partition=hash(routing) % args.partitions,
                offset=offset,
                key=(routing or raw["vendor_id"]).encode(),
                value=signed.SerializeToString(),
                timestamp=received,  # the broker's append time
                headers={VENDOR_HEADER: raw["vendor_id"].encode()},
            )
        )
    registry = LicenceRegistry(licences)
    for licence_id in registry:  # steady state: every licence decoded once already
        registry.get(licence_id)
    meter = Meter(registry, KeyRegistry(key_table))
    publisher = CountingPublisher()
    runner = BatchRunner(
        meter,
        publisher,  # type: ignore[arg-type]
        {},
        changelog_topic="changelog",
        rated_topic="rated",
        alerts_topic="alerts",
        dlq_topic="dlq",
        metrics=MeterMetrics(CollectorRegistry()),
    )
    return runner, records, publisher


async def drain(runner: BatchRunner, records: list[Record], batch: int) -> None:
    for start in range(0, len(records), batch):
        await runner.run(records[start : start + batch])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--licences", type=int, default=100_000)
    parser.add_argument("--vendors", type=int, default=40)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2000, help="records per meter batch")
    parser.add_argument(
        "--signature-batch", type=int, default=256, help="events per SDK signature (1: each)"
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runner, records, publisher = build(args)
    gc.collect()
    gc.freeze()  # as the meter does once its licences are decoded
    profiler = cProfile.Profile() if args.profile else None
    started_cpu, started = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    asyncio.run(drain(runner, records, args.batch))
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    report: dict[str, Any] = {
        "events": len(records),
        "cpu_us_per_event": round(cpu * 1e6 / len(records), 1),
        "events_per_cpu_s": round(len(records) / cpu),
        "records_out_per_event": round(publisher.sent / len(records), 2),
        "bytes_out_per_event": round(publisher.bytes / len(records)),
        "wall_s": round(wall, 2),
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        report["profile"] = out.getvalue().splitlines()[6:40]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
