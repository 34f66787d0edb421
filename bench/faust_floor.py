"""What faust-streaming costs per record before the meter's code runs: the framework floor.

    export RESIDUALS_STACK_DIR=... RESIDUALS_KAFKA_PORT=...   # your stack
    residuals stack up
    python -m bench.faust_floor --records 200000

Fills a fresh 6-partition topic with ``--records`` records of 300 bytes, then

1. a bare confluent-kafka consumer reads them all (the ceiling the pipeline benchmark
   compares with);
2. a faust worker (``make_faust_app`` settings, raw bytes) reads them with one agent,
   ``take_events(2000, within=0.05)``, and does nothing else ("streams": faust's
   per-record path, what the meter used before issue 20);
3. a faust worker reads them as the meter does now: whole fetched batches handed to a
   handler (:mod:`residuals.platform.faust_batches`) that does nothing ("batches").

Reports CPU microseconds per record and records/s for each, from the first record to the
last. The differences are what faust's consumer, conductor and stream machinery cost per
record on this machine; the meter pays the batch path's on top of its own work
(bench/meter_cpu.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from residuals.platform.config import KafkaSettings, load
from residuals.platform.kafka import make_admin, make_consumer, make_producer
from residuals.stack.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]

# The local stack's addresses (RESIDUALS_* variables), unless set explicitly.
for _name, _value in load(StackSettings).exports().items():
    os.environ.setdefault(_name, _value)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fill(kafka: KafkaSettings, topic: str, records: int) -> None:
    from confluent_kafka.cimpl import NewTopic

    admin = make_admin(kafka)
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(30)
    tuning: dict[str, Any] = {"linger.ms": 20}
    producer = make_producer(kafka, client_id="faust-floor", **tuning)
    value = os.urandom(300)
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value, f"LIC-{i % 100_000:06d}".encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def raw_consume(kafka: KafkaSettings, topic: str, records: int) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = make_consumer(kafka, f"faust-floor-raw-{uuid.uuid4().hex[:6]}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(6)])
    seen, started = 0, None
    while seen < records:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        if batch and started is None:
            started = (cpu_seconds(), time.perf_counter())
        seen += sum(1 for m in batch if m.error() is None)
    assert started is not None
    cpu, wall = cpu_seconds() - started[0], time.perf_counter() - started[1]
    consumer.close()
    return {"cpu_us_per_record": round(cpu * 1e6 / seen, 1), "records_per_s": round(seen / wall)}


def faust_worker(topic: str, records: int, data_dir: str, *, batches: bool) -> None:
    """Runs in a child process: faust owns the process (its worker, its event loop)."""
    from faust.worker import Worker

    from residuals.platform.faust_app import make_faust_app
    from residuals.platform.faust_batches import deliver_in_batches

    kafka = load(KafkaSettings)
    app = make_faust_app(
        f"faust-floor-{topic}-{'batches' if batches else 'streams'}",
        kafka,
        data_dir=Path(data_dir),
        stream_buffer_maxsize=4096,
    )
    source = app.topic(
        topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    state: dict[str, Any] = {"seen": 0, "started": None}

    def count(n: int) -> None:
        """Count ``n`` more records; report and exit once all were seen."""
        if state["started"] is None:
            state["started"] = (cpu_seconds(), time.perf_counter())
        state["seen"] += n
        if state["seen"] >= records:
            cpu = cpu_seconds() - state["started"][0]
            wall = time.perf_counter() - state["started"][1]
            report = {
                "cpu_us_per_record": round(cpu * 1e6 / state["seen"], 1),
                "records_per_s": round(state["seen"] / wall),
            }
            # A file, not stdout: faust's worker takes over the standard streams.
            (Path(data_dir) / "report.json").write_text(json.dumps(report))
            os._exit(0)

    async def drain(stream: Any) -> None:
        async for events in stream.take_events(2000, within=0.05):
            count(len(events))

    async def drain_batches(fetched: Any) -> None:
        count(sum(len(batch) for _, batch in fetched))

    if batches:
        deliver_in_batches(app, source, drain_batches)
    else:
        app.agent(source, name="drain", concurrency=1)(drain)
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument(
        "--worker", nargs=3, metavar=("TOPIC", "DATA_DIR", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        topic, data_dir, mode = args.worker
        faust_worker(topic, args.records, data_dir, batches=mode == "batches")
        return 0
    kafka = load(KafkaSettings)
    topic = f"{kafka.topic_prefix}faust-floor-{uuid.uuid4().hex[:8]}"
    fill(kafka, topic, args.records)
    report: dict[str, Any] = {"records": args.records, "load_average": os.getloadavg()}
    report["confluent_kafka"] = raw_consume(kafka, topic, args.records)
    for mode in ("streams", "batches"):
        data_dir = ROOT / "bench" / ".data" / f"faust-floor-{mode}"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "report.json").unlink(missing_ok=True)
        worker = ["--worker", topic, str(data_dir), mode]
        out = subprocess.run(
            [sys.executable, "-m", "bench.faust_floor", "--records", str(args.records), *worker],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if not (data_dir / "report.json").exists():
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            return 1
        report[f"faust_{mode}"] = json.loads((data_dir / "report.json").read_text())
        report[f"faust_{mode}_over_raw_cpu"] = round(
            report[f"faust_{mode}"]["cpu_us_per_record"]
            / report["confluent_kafka"]["cpu_us_per_record"],
            1,
        )
    make_admin(kafka).delete_topics([topic])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
