"""End-to-end metering benchmark on the local stack: SDK-signed events -> Kafka -> meter
(faust) -> rated topic -> ledger writer -> PostgreSQL.

    export RESIDUALS_STACK_DIR=... RESIDUALS_KAFKA_PORT=... RESIDUALS_POSTGRES_PORT=...
    residuals stack up
    python -m bench.pipeline --events 200000 --licences 100000 [--profile]

Phases, all in one run on one isolated topic prefix:

1. setup: 100,000 licences and the vendors' signing keys on the compacted topics; the
   month's events generated (tests/support/month.py), signed with Ed25519 and published as a
   backlog (not timed);
2. throughput: the meter and the ledger writer start and drain the backlog; the
   sustained rate is records / (last ledger commit - first ledger commit), and every
   record must be ledgered exactly once with the ledger's statement equal to the offline
   replay of the same events ("exact totals"). Meter RSS is read at the end;
   ``--profile`` samples the meter with py-spy meanwhile;
3. ceiling: a bare confluent-kafka consumer reads the same usage topic (no processing);
4. latency: with both services running, ``--latency-events`` more events are published
   at ``--rate`` per second; publish -> ledger p50/p99 come from the ledger rows
   (ledgered_at - the usage record's broker timestamp).

Prints one JSON report; BENCHMARKS.md ("Metering") records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from residuals.domain.events import parse_event
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.ledger.history import load_period_events
from residuals.platform.config import load
from residuals.platform.kafka import make_consumer
from residuals.platform.topics import USAGE
from residuals.stack.settings import StackSettings
from tests.support.metering import Pipeline, pipeline
from tests.support.month import make_events, make_licences

ROOT = Path(__file__).resolve().parents[1]

#: ``--quick``: small enough for CI and for checking each change, big enough that start-up
#: is not the figure (CPU is counted from the first ledgered record).
QUICK = {"events": 40_000, "licences": 10_000, "latency_events": 4_000, "rate": 1_000}


def raw_consume_rate(run: Pipeline, count: int) -> float:
    """Records/s of a bare confluent-kafka consumer over the usage topic (the ceiling)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = make_consumer(run.kafka, f"{run.kafka.topic_prefix}bench-raw")
    topic = run.topic(USAGE)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(run.partitions)])
    seen = 0
    started = time.perf_counter()
    while seen < count:
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error() is None:
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def _cpu_of(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (and its exited children's, when asked)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def stack_cpu_seconds(stack: StackSettings) -> dict[str, float]:
    """CPU used so far by the broker and by PostgreSQL (postmaster, exited and live
    backends): what the pipeline costs outside the Python services."""
    out = {"kafka": 0.0, "postgres": 0.0}
    kafka_pid = stack.stack_dir / "kafka" / "kafka.pid"
    if kafka_pid.exists():
        out["kafka"] = _cpu_of(int(kafka_pid.read_text().split()[0]))
    postmaster = stack.stack_dir / "postgres" / "data" / "postmaster.pid"
    if postmaster.exists():
        root = int(postmaster.read_text().split()[0])
        total = _cpu_of(root, children=True)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                total += _cpu_of(int(proc.name))
        out["postgres"] = total
    return out


def ledger_window(run: Pipeline, since_seq: int = 0) -> dict[str, Any]:
    with run.connect() as conn:
        row = conn.execute(
            "SELECT count(*), min(ledgered_at), max(ledgered_at) FROM ("
            " SELECT ledgered_at FROM usage_events WHERE source_topic = %(t)s"
            "  AND arrival_seq > %(s)s"
            " UNION ALL SELECT ledgered_at FROM usage_repeats WHERE source_topic = %(t)s"
            "  AND arrival_seq > %(s)s"
            " UNION ALL SELECT ledgered_at FROM dead_letters WHERE source_topic = %(t)s"
            "  AND arrival_seq > %(s)s) x",
            {"t": run.topic(USAGE), "s": since_seq},
        ).fetchone()
    assert row is not None
    return {"count": int(row[0]), "first": row[1], "last": row[2]}


def latency_percentiles(run: Pipeline, since_seq: int) -> dict[str, float]:
    with run.connect() as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s), count(*) FROM ("
            " SELECT extract(epoch FROM ledgered_at - published_at) AS s FROM usage_events"
            "  WHERE source_topic = %(t)s AND arrival_seq > %(q)s AND published_at IS NOT NULL"
            " UNION ALL SELECT extract(epoch FROM ledgered_at - published_at) FROM usage_repeats"
            "  WHERE source_topic = %(t)s AND arrival_seq > %(q)s AND published_at IS NOT NULL"
            ") x",
            {"t": run.topic(USAGE), "q": since_seq},
        ).fetchone()
    assert row is not None
    return {
        "p50_s": round(float(row[0]), 3),
        "p99_s": round(float(row[1]), 3),
        "max_s": round(float(row[2]), 3),
        "events": int(row[3]),
    }


def max_seq() -> str:
    return "SELECT coalesce(max(arrival_seq), 0) FROM usage_events"


def summarize_profile(path: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Share of samples per function from py-spy's collapsed stacks: ``self`` (the
    function itself was running) and ``inclusive`` (it was on the stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        own[frames[-1] if frames else "?"] += int(n)
        for name in set(frames):
            inclusive[name] += int(n)
        total += int(n)

    def shares(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counts.most_common(top)]

    return {"self": shares(own), "inclusive": shares(inclusive)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--licences", type=int, default=100_000)
    parser.add_argument("--vendors", type=int, default=40)
    parser.add_argument("--latency-events", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=400, help="latency phase events/s")
    parser.add_argument("--meter-batch", type=int, default=2000)
    parser.add_argument("--meters", type=int, default=1, help="meter worker processes")
    parser.add_argument("--ledgers", type=int, default=1, help="ledger writer processes")
    parser.add_argument("--profile", action="store_true", help="py-spy the meter in phase 2")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the regression guard: {QUICK} (under two minutes); prints the figures' line",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the meter and the ledger writer with the rating path compiled by mypyc "
        "(bench/compiled.py)",
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench" / ".data" / "pipeline")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.compiled:
        from bench.compiled import build

        # The services are child processes: they import the compiled copy first.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(build()), os.environ.get("PYTHONPATH", "")) if p
        )

    stack = load(StackSettings)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    report: dict[str, Any] = {"load_average_start": os.getloadavg()}
    with pipeline(stack, args.work_dir) as run:
        period = Period(2039, 1 + int(run.run_id, 16) % 12)
        run.delete_period(str(period))
        t0 = time.perf_counter()
        specs = make_licences(args.licences, args.vendors)
        for spec in specs:
            spec["vendor_id"] = run.vendor(spec["vendor_id"])
        run.publish_licences(specs)
        run.publish_keys(sorted({s["vendor_id"] for s in specs}))
        total = args.events + args.latency_events
        events = list(make_events(specs, total, period=str(period)))
        backlog, paced = events[: args.events], events[args.events :]
        # Signed and keyed as vendors' SDKs publish them with ``publish_many``.
        records = run.sdk_records(events)
        run.produce(records[: args.events])
        report["setup_s"] = round(time.perf_counter() - t0, 1)

        # --- phase 2: drain the backlog ------------------------------------------------------
        meters = [
            run.meter(
                f"meter-{i}" if i else "meter",
                METER_BATCH_SIZE=str(args.meter_batch),
                METER_DATA_DIR=str(args.work_dir / f"meter-data-{i}"),
            ).start()
            for i in range(args.meters)
        ]
        meter = meters[0]
        ledgers = [
            run.ledger(f"ledger-{i}" if i else "ledger").start() for i in range(args.ledgers)
        ]
        ledger = ledgers[0]
        services = [*meters, *ledgers]
        profile: list[subprocess.Popen[bytes]] | None = None
        try:
            # CPU is counted from the first ledgered record once every meter has loaded
            # its licences (SERVING): start-up and loading the 100,000 licences are not
            # per-event costs (with several meters, the first one rates while the others
            # still load).
            for m in meters:
                m.wait_healthy(300)
            run.wait_ledgered(1, 300, services)
            head = len(run.stored_positions())
            cpu_start = {
                "meter": sum(m.cpu_seconds() for m in meters),
                "ledger": sum(w.cpu_seconds() for w in ledgers),
                **stack_cpu_seconds(stack),
            }
            if args.profile:
                time.sleep(15)  # past start-up and recovery
                profile = [
                    subprocess.Popen(
                        [
                            str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "--pid",
                            str(service.pid),
                            "--duration",
                            "20",
                            "--format",
                            "raw",
                            "--output",
                            str(args.work_dir / f"{name}.pyspy.txt"),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for name, service in (("meter", meter), ("ledger", ledger))
                ]
            run.wait_ledgered(args.events, 1800, services)
            window = ledger_window(run)
            rss, peak = meter.rss_kib()
            cpu = {
                "meter": sum(m.cpu_seconds() for m in meters),
                "ledger": sum(w.cpu_seconds() for w in ledgers),
                **stack_cpu_seconds(stack),
            }
            seconds = (window["last"] - window["first"]).total_seconds()
            report["throughput"] = {
                "records": window["count"],
                "seconds": round(seconds, 1),
                "events_per_s": round(window["count"] / seconds),
            }
            report["meter_rss_mib"] = {"current": rss // 1024, "peak": peak // 1024}
            # CPU per event is what the load of other processes on the machine cannot
            # change: it says what one core would sustain on a quiet machine.
            report["cpu_us_per_event"] = {
                name: round((seconds - cpu_start[name]) * 1e6 / (args.events - head))
                for name, seconds in cpu.items()
            }
            if profile is not None:
                for spy in profile:
                    spy.wait(timeout=120)
                for name in ("meter", "ledger"):
                    samples = args.work_dir / f"{name}.pyspy.txt"
                    report[f"{name}_profile_pct"] = summarize_profile(samples)

            # exact totals: exactly once, and the ledger's statement equals the replay
            stored = Counter((p, o) for _t, p, o in run.stored_positions())
            assert all(n == 1 for n in stored.values()), "a record was stored twice"
            assert sorted(stored) == sorted(run.produced), "records missing"
            offline = compute_statement(period, run.licences, [parse_event(e) for e in backlog])
            with run.connect() as conn:
                replayed = compute_statement(period, run.licences, load_period_events(conn, period))
                seq_row = conn.execute(max_seq()).fetchone()
            assert replayed.to_document() == offline.to_document(), "ledger != replay"
            report["exact_totals"] = True

            # --- phase 3: the ceiling ----------------------------------------------------------
            report["raw_consume_per_s"] = round(raw_consume_rate(run, args.events))
            report["ratio_to_raw_consume"] = round(
                report["throughput"]["events_per_s"] / report["raw_consume_per_s"], 3
            )

            # --- phase 4: latency at a paced rate -----------------------------------------------
            since = int(seq_row[0]) if seq_row else 0
            producer = run._producer()
            started = time.perf_counter()
            step = 200
            for i in range(0, len(paced), step):
                run.produce(records[args.events + i : args.events + i + step], producer=producer)
                due = started + (i + step) / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.flush(60)
            run.wait_ledgered(total, 600, services)
            report["latency_publish_to_ledger"] = {
                "rate_per_s": args.rate,
                **latency_percentiles(run, since),
            }
        finally:
            for service in services:
                service.stop()
    report["load_average_end"] = os.getloadavg()
    report["events"] = args.events
    report["licences"] = args.licences
    report["meters"] = args.meters
    report["compiled"] = args.compiled
    report["ledgers"] = args.ledgers
    report["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(report, indent=2, default=str))
    print(summary_line(report))
    return 0


def summary_line(report: dict[str, Any]) -> str:
    """The figures to compare between changes, on one line (CI prints it; no pass/fail)."""
    cpu = report["cpu_us_per_event"]
    latency = report["latency_publish_to_ledger"]
    parts = ", ".join(f"{name} {us}" for name, us in cpu.items())
    return (
        f"pipeline: {report['throughput']['events_per_s']:,} exact events/s"
        f" ({report['events']:,} events, {report['meters']} meter(s),"
        f" {report['ledgers']} ledger writer(s){', compiled' if report.get('compiled') else ''});"
        f" CPU {sum(cpu.values())} µs/event ({parts});"
        f" ratio to raw consume {report['ratio_to_raw_consume']};"
        f" publish -> ledger p99 {latency['p99_s']} s at {latency['rate_per_s']}/s"
    )


if __name__ == "__main__":
    sys.exit(main())
