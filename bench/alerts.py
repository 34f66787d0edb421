"""Alert latency benchmark: publish -> delivery on a WatchAlerts subscriber.

    python -m bench.alerts --rate 5000 --seconds 30 --political-share 0.05

Runs the real alerts service (``python -m residuals.alerts``, its own process) against the
local stack (``residuals stack up``; export RESIDUALS_* to pick yours), subscribes with
WatchAlerts over gRPC as a finance principal (an API key made with the licensing
registry's own ``create_api_key``), and publishes a usage stream of ``--rate`` events/s
for ``--seconds``. The meter is simulated at the alerts topic: every event picks one of
``--licences`` licences; a share ``--political-share`` are renders in the forbidden
political category and raise a CRITICAL FORBIDDEN_CATEGORY alert, which (with
``--auto-suspend``) suspends the licence so every later event of it raises a
LICENCE_SUSPENDED alert, as docs/ROYALTY-RULES.md §5 says the meter does. Alerts carry the
publish time in ``residuals-published-at`` like the meter's, so the service's own latency
metrics see it too.

Reports events and alerts published, alerts delivered (each exactly once, checked), and
p50/p90/p99/max from publish to the subscriber receiving it. Target (docs/ARCHITECTURE.md):
p99 <= 1 s at 5,000 events/s.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
from confluent_kafka.admin import NewTopic

from residuals.codecs.timestamps import set_timestamp
from residuals.licensing import registry
from residuals.platform.auth import Principal, Role
from residuals.platform.config import KafkaSettings, load
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.migrations import migrate
from residuals.platform.processes import ServiceFailed, ServiceProcess
from residuals.platform.topics import ALERTS
from residuals.stack.settings import StackSettings
from residuals.v1 import alert_service_pb2, alert_service_pb2_grpc, alerts_pb2, common_pb2


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def make_alert(licence: int, event_id: str, kind: int, run: str) -> alerts_pb2.Alert:
    vendor = f"VEN-{run}-{licence % 40}"
    alert_id = hashlib.sha256(f"{vendor}\x1f{event_id}\x1f{kind}".encode()).hexdigest()[:32]
    alert = alerts_pb2.Alert(
        alert_id=alert_id,
        kind=kind,  # type: ignore[arg-type]
        licence_id=f"LIC-{run}-{licence}",
        licence_version=1,
        talent_id=f"TAL-{run}-{licence}",
        vendor_id=vendor,
        avatar_id=f"AVA-{run}-{licence}",
        event_ids=[event_id],
        held_units=1,
        held_amount="1.00",
        currency_code="USD",
        detail="category political is forbidden",
        suspended_licence=kind == common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY,
    )
    now = datetime.now(UTC)
    set_timestamp(alert.occurred_at, now)
    set_timestamp(alert.raised_at, now)
    return alert


class Subscriber:
    """Reads WatchAlerts on its own thread and time-stamps every RAISED alert."""

    def __init__(self, port: int, api_key: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = alert_service_pb2_grpc.AlertServiceStub(self.channel)
        self.call = stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(live_only=True, heartbeat_seconds=1),
            metadata=[("authorization", f"Bearer {api_key}")],
        )
        self.received: dict[str, float] = {}
        self.repeats = 0
        self.heartbeats = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.call:
                now = time.time()
                if item.HasField("heartbeat"):
                    self.heartbeats += 1
                    self.ready.set()
                    continue
                alert = item.alert
                if alert.change != alerts_pb2.ALERT_CHANGE_RAISED:
                    continue
                if alert.alert_id in self.received:
                    self.repeats += 1
                else:
                    self.received[alert.alert_id] = now
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                print(f"subscriber: {error.code().name}: {error.details()}", file=sys.stderr)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()


def finance_key(dsn: str, run: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        _, plaintext = registry.create_api_key(
            conn,
            Principal(f"bench-{run}", Role.FINANCE),
            "alerts benchmark",
            "bench",
            datetime.now(UTC),
        )
    return plaintext


def forget(dsn: str, run: str) -> None:
    """Delete the run's alerts so later runs and tests see a clean store."""
    import psycopg

    pattern = f"LIC-{run}-%"
    with psycopg.connect(dsn) as conn:
        for table in ("alert_suspensions", "alert_resolutions", "alert_changes", "alerts"):
            conn.execute(f"DELETE FROM {table} WHERE licence_id LIKE %s", (pattern,))
        conn.execute("DELETE FROM consumer_offsets WHERE group_id = %s", (f"bench-{run}",))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=5000, help="usage events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--political-share", type=float, default=0.05)
    parser.add_argument("--licences", type=int, default=20_000)
    parser.add_argument(
        "--auto-suspend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="later events of a licence suspended by a political render alert too",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args()

    stack = load(StackSettings)
    migrate(stack.dsn)
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers, topic_prefix=f"bench-{run}.", topic_partitions=6
    )
    topic = topic_name(kafka, ALERTS)
    admin = make_admin(kafka)
    admin.create_topics([NewTopic(topic, num_partitions=6)], operation_timeout=30)[topic].result(60)
    key = finance_key(stack.dsn, run)

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "RESIDUALS_TOPIC_PREFIX": kafka.topic_prefix,
        "DATABASE_URL": stack.dsn,
        "ALERTS_CONSUMER_GROUP": f"bench-{run}",
        "LOG_LEVEL": "WARNING",
    }
    log_dir = Path(tempfile.gettempdir())
    service = ServiceProcess(f"bench-alerts-{run}", "residuals.alerts", env, log_dir).start()
    subscriber: Subscriber | None = None
    try:
        try:
            service.wait_healthy(60)
        except ServiceFailed as failed:
            raise SystemExit(f"alerts service did not become healthy: {failed}") from None
        subscriber = Subscriber(service.grpc_port, key)
        if not subscriber.ready.wait(15):
            raise SystemExit("subscriber got no heartbeat")
        producer = make_producer(kafka, **{"linger.ms": 5})
        rng = random.Random(args.seed)
        suspended: set[int] = set()
        published: dict[str, float] = {}
        political = 0
        events = 0
        tick = 0.01
        per_tick = args.rate * tick
        start = time.time()
        due = 0.0
        while time.time() - start < args.seconds:
            due += per_tick
            while due >= 1:
                due -= 1
                events += 1
                licence = rng.randrange(args.licences)
                event_id = f"EVT-{run}-{events}"
                if args.auto_suspend and licence in suspended:
                    kind = common_pb2.VIOLATION_KIND_LICENCE_SUSPENDED
                elif rng.random() < args.political_share:
                    kind = common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY
                    political += 1
                    if args.auto_suspend:
                        suspended.add(licence)
                else:
                    continue  # in scope: the meter rates it; no alert
                alert = make_alert(licence, event_id, kind, run)
                sent = time.time()
                stamp = str(int(sent * 1000))  # as the meter stamps its output
                producer.produce(
                    topic,
                    key=alert.licence_id.encode(),
                    value=alert.SerializeToString(),
                    headers=[("residuals-published-at", stamp.encode())],
                )
                published[alert.alert_id] = sent
            producer.poll(0)
            sleep = start + (events / args.rate) - time.time()
            if sleep > 0:
                time.sleep(min(sleep, tick))
        elapsed = time.time() - start
        producer.flush(60)
        deadline = time.time() + 30
        while len(subscriber.received) < len(published) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # anything extra (a repeat) would arrive now
        latencies = [
            subscriber.received[a] - t for a, t in published.items() if a in subscriber.received
        ]
        summary = {
            "events": events,
            "event_rate": round(events / elapsed, 1),
            "political_renders": political,
            "alerts_published": len(published),
            "alert_rate": round(len(published) / elapsed, 1),
            "alerts_delivered": len(latencies),
            "missing": len(published) - len(latencies),
            "repeats": subscriber.repeats,
            "p50_s": round(quantile(latencies, 0.50), 4),
            "p90_s": round(quantile(latencies, 0.90), 4),
            "p99_s": round(quantile(latencies, 0.99), 4),
            "max_s": round(max(latencies, default=float("nan")), 4),
            "target_p99_s": 1.0,
        }
    finally:
        if subscriber is not None:
            subscriber.close()
        service.stop(grace=20)
        forget(stack.dsn, run)
        for future in make_admin(kafka).delete_topics([topic], operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['events']} events in {elapsed:.1f} s ({summary['event_rate']}/s), "
            f"{summary['political_renders']} political renders, "
            f"{summary['alerts_published']} alerts ({summary['alert_rate']}/s)"
        )
        print(
            f"delivered {summary['alerts_delivered']}, missing {summary['missing']}, "
            f"repeats {summary['repeats']}"
        )
        print(
            f"publish -> WatchAlerts delivery: p50 {summary['p50_s']} s, p90 {summary['p90_s']} s, "
            f"p99 {summary['p99_s']} s, max {summary['max_s']} s (target p99 <= 1 s)"
        )
        print(json.dumps(summary))
    ok = summary["missing"] == 0 and summary["repeats"] == 0 and summary["p99_s"] <= 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
