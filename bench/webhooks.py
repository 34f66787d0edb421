"""Webhook fan-out benchmark: alerts -> signed webhooks on loopback receivers.

    python -m bench.webhooks --rate 1000 --seconds 30 --endpoints 100

Runs the real notify service (``python -m residuals.notify``, its own process, its own
PostgreSQL role) against the local stack (``residuals stack up``). Each of ``--endpoints``
talents registers an endpoint through NotificationService with their own API key; the
receivers are aiohttp servers in a separate process, one URL per endpoint, which
time-stamp the first arrival of each webhook-id and keep what they got; every signature is
checked afterwards with the SDK's Standard Webhooks verifier (off the receivers' hot
path). The meter is simulated at the alerts topic: ``--rate`` alerts/s, each about one
talent (round robin), stamped with ``residuals-published-at`` as the meter stamps its
output.

Reports alerts published, messages delivered (each at least once; repeats counted), bad
signatures, and p50/p90/p99/max from the alert's publication to its first arrival at a
receiver. Target (issue "Notifications that reach people"): first-attempt p99 <= 1 s at
1,000 alerts/s over 100 endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka.admin import NewTopic

from bench.alerts import make_alert, quantile
from residuals.deploy.services import by_name
from residuals.domain.notifications import ALERT_RAISED, message_id
from residuals.licensing.registry import create_api_key
from residuals.platform.auth import Principal, Role
from residuals.platform.config import KafkaSettings, load
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.migrations import migrate
from residuals.platform.ports import free_port
from residuals.platform.processes import ServiceFailed, ServiceProcess
from residuals.platform.roles import role_env
from residuals.platform.topics import ALERTS
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, notification_service_pb2, notification_service_pb2_grpc

#: (webhook-id, webhook-timestamp, webhook-signature, body, first arrival, endpoint index)
Arrival = tuple[str, str, str, bytes, float, int]


def receive(port: int, pipe: Connection) -> None:
    """The receivers' process: POST /hooks/<n> answers 204 and keeps the first arrival of
    each webhook-id; on a message from the pipe it sends everything back and exits."""
    from aiohttp import web

    first: dict[str, Arrival] = {}
    repeats = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal repeats
        body = await request.read()
        now = time.time()
        headers = request.headers
        msg = headers.get("webhook-id", "")
        if msg in first:
            repeats += 1
        else:
            index = int(request.match_info["n"])
            first[msg] = (
                msg,
                headers.get("webhook-timestamp", ""),
                headers.get("webhook-signature", ""),
                body,
                now,
                index,
            )
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hooks/{n}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        pipe.send("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)
        pipe.send((list(first.values()), repeats))
        await runner.cleanup()

    asyncio.run(main())


def talent_keys(dsn: str, run: str, count: int) -> list[str]:
    import psycopg

    keys = []
    with psycopg.connect(dsn) as conn:
        for n in range(count):
            conn.execute(
                "INSERT INTO talents (talent_id, created_by) VALUES (%s, 'bench')"
                " ON CONFLICT DO NOTHING",
                (f"TAL-{run}-{n}",),
            )
            _, plaintext = create_api_key(
                conn,
                Principal(f"bench-{run}-t{n}", Role.TALENT, talent_id=f"TAL-{run}-{n}"),
                "webhook benchmark",
                "bench",
                datetime.now(UTC),
            )
            keys.append(plaintext)
    return keys


def register(address: str, keys: list[str], port: int) -> list[str]:
    """One endpoint per talent; returns their secrets in talent order."""
    secrets = []
    with grpc.insecure_channel(address) as channel:
        stub = notification_service_pb2_grpc.NotificationServiceStub(channel)
        for n, key in enumerate(keys):
            response = stub.CreateEndpoint(
                notification_service_pb2.CreateEndpointRequest(
                    url=f"http://127.0.0.1:{port}/hooks/{n}",
                    description=f"benchmark receiver {n}",
                    event_types=[ALERT_RAISED],
                    min_severity=common_pb2.SEVERITY_LOW,
                ),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
            secrets.append(response.secret)
    return secrets


def forget(dsn: str, run: str, group: str) -> None:
    """Delete the run's endpoints, deliveries, events and offsets."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM notify_endpoints WHERE talent_id LIKE %s", (f"TAL-{run}-%",))
        conn.execute("DELETE FROM notify_events WHERE talent_ids[1] LIKE %s", (f"TAL-{run}-%",))
        conn.execute("DELETE FROM consumer_offsets WHERE group_id = %s", (group,))
        conn.execute(
            "DELETE FROM api_keys WHERE principal_id IN (SELECT principal_id FROM principals"
            " WHERE talent_id LIKE %s)",
            (f"TAL-{run}-%",),
        )
        conn.execute("DELETE FROM principals WHERE talent_id LIKE %s", (f"TAL-{run}-%",))
        conn.execute("DELETE FROM talents WHERE talent_id LIKE %s", (f"TAL-{run}-%",))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=1000, help="alerts per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args()

    from residuals_sdk.webhooks import WebhookVerificationError, verify_webhook

    stack = load(StackSettings)
    migrate(stack.dsn)
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers, topic_prefix=f"bench-{run}.", topic_partitions=6
    )
    access = by_name("notify").kafka
    assert access is not None, "notify reads Kafka"
    sources = [topic_name(kafka, t) for t in access.reads]
    admin = make_admin(kafka)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=6) for t in sources], operation_timeout=30
    )
    for future in futures.values():
        future.result(60)
    keys = talent_keys(stack.dsn, run, args.endpoints)
    group = f"bench-{run}.residuals-notify"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "RESIDUALS_TOPIC_PREFIX": kafka.topic_prefix,
        "DATABASE_URL": stack.dsn,
        **role_env("notify"),
        "NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
        "NOTIFY_ALLOW_HTTP": "true",
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    ours, theirs = multiprocessing.Pipe()
    receiver = multiprocessing.get_context("spawn").Process(
        target=receive, args=(port, theirs), daemon=True
    )
    receiver.start()
    if not ours.poll(30) or ours.recv() != "ready":
        raise SystemExit("receivers did not start")
    service = ServiceProcess(
        f"bench-notify-{run}", "residuals.notify", env, Path(tempfile.gettempdir())
    ).start()
    published: dict[str, float] = {}
    try:
        try:
            service.wait_healthy(60)
        except ServiceFailed as failed:
            raise SystemExit(f"notify did not become healthy: {failed}") from None
        secrets = register(f"127.0.0.1:{service.grpc_port}", keys, port)
        producer = make_producer(kafka, **{"linger.ms": 5})
        topic = topic_name(kafka, ALERTS)
        tick = 0.01
        start = time.time()
        sent = 0
        while time.time() - start < args.seconds:
            due = int((time.time() - start) * args.rate)
            while sent < due:
                talent = sent % args.endpoints
                kind = common_pb2.VIOLATION_KIND_TERRITORY_NOT_LICENSED
                alert = make_alert(talent, f"EVT-{run}-{sent}", kind, run)  # TAL-<run>-<talent>
                alert.severity = common_pb2.SEVERITY_HIGH
                now = time.time()
                producer.produce(
                    topic,
                    key=alert.licence_id.encode(),
                    value=alert.SerializeToString(),
                    headers=[("residuals-published-at", str(int(now * 1000)).encode())],
                )
                published[message_id(ALERT_RAISED, alert.alert_id)] = now
                sent += 1
            producer.poll(0)
            time.sleep(tick)
        elapsed = time.time() - start
        producer.flush(60)
        deadline = time.time() + 60
        time.sleep(2.0)
        while time.time() < deadline:
            # The service's own gauge says when nothing is pending any more.
            if _pending(service) == 0:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        ours.send("done")
        arrivals, repeats = ours.recv()
        cpu = service.cpu_seconds()
    finally:
        service.stop(grace=20)
        receiver.join(10)
        forget(stack.dsn, run, group)
        for future in make_admin(kafka).delete_topics(sources, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)
    bad = 0
    latencies = []
    for msg, stamp, signature, body, at, index in arrivals:
        try:
            verify_webhook(
                secrets[index],
                {"webhook-id": msg, "webhook-timestamp": stamp, "webhook-signature": signature},
                body,
                now=datetime.fromtimestamp(at, UTC),
            )
        except WebhookVerificationError:
            bad += 1
        if msg in published:
            latencies.append(at - published[msg])
    summary: dict[str, Any] = {
        "alerts_published": len(published),
        "alert_rate": round(len(published) / elapsed, 1),
        "endpoints": args.endpoints,
        "delivered": len(latencies),
        "missing": len(published) - len(latencies),
        "repeats": repeats,
        "bad_signatures": bad,
        "p50_s": round(quantile(latencies, 0.50), 4),
        "p90_s": round(quantile(latencies, 0.90), 4),
        "p99_s": round(quantile(latencies, 0.99), 4),
        "max_s": round(max(latencies, default=float("nan")), 4),
        "target_p99_s": 1.0,
        "notify_cpu_s_per_s": round(cpu / elapsed, 2),
    }
    if not args.json:
        print(
            f"{summary['alerts_published']} alerts in {elapsed:.1f} s ({summary['alert_rate']}/s)"
            f" to {args.endpoints} endpoints: delivered {summary['delivered']}, missing"
            f" {summary['missing']}, repeats {repeats}, bad signatures {bad}"
        )
        print(
            f"publish -> first arrival: p50 {summary['p50_s']} s, p90 {summary['p90_s']} s, "
            f"p99 {summary['p99_s']} s, max {summary['max_s']} s (target p99 <= 1 s); notify"
            f" used {summary['notify_cpu_s_per_s']} CPU-seconds per second"
        )
    print(json.dumps(summary))
    ok = summary["missing"] == 0 and bad == 0 and summary["p99_s"] <= 1.0
    return 0 if ok else 1


def _pending(service: ServiceProcess) -> float:
    """residuals_notify_pending_deliveries from the service's /metrics (-1: unreadable)."""
    from urllib.request import urlopen

    try:
        with urlopen(service.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("residuals_notify_pending_deliveries "):
            return float(line.split()[1])
    return -1


if __name__ == "__main__":
    sys.exit(main())
