"""Ingestion benchmark on the local stack: SDK → Kafka and the gRPC gateway, events/s.

    residuals stack up            # (with your RESIDUALS_* env) once
    python -m bench.ingest --events 50000 --gateway-events 50000

Measured, each into fresh topics, counting only events Kafka acknowledged:

* ``kafka_raw``: a bare confluent-kafka producer (the platform's idempotent ``acks=all``
  settings) producing pre-signed envelopes: the ceiling on this machine;
* ``sdk_kafka_per_call``: ``UsageClient.kafka`` + ``render()`` per event (build, UUIDv7,
  Ed25519 sign, spool commit, produce), from the first call until ``flush()`` returns 0;
* ``sdk_kafka_publish_many``: the same with ``publish_many()`` (one spool commit per 500,
  one signature per ``--signature-batch`` events: a Merkle root, a proof per envelope);
* ``gateway``: pre-signed batches of ``--batch`` events over ``--concurrency`` parallel
  PublishBatch calls to ``python -m residuals.ingest`` (its own process; each answer only
  after Kafka acknowledged): what one gateway process sustains;
* ``sdk_grpc_per_call``: ``UsageClient.grpc`` + ``render()`` per event through that gateway.

Pre-signed envelopes are signed as ``publish_many`` signs them: ``--signature-batch`` events
(default 256) under one signature, each envelope with its inclusion proof; ``1`` gives the
per-event signatures ``render()`` makes. The usage topic's record count must equal the
events sent (printed as ``on_topic``). Reports
CPU load too: on 2 shared cores, client and server compete. Vendors and keys are inserted
with the test helpers' SQL (tests/support/ingest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka import TopicPartition
from residuals_sdk import UsageClient, uuid7
from residuals_sdk import events as build
from residuals_sdk.signing import sign_batch
from residuals_sdk.transports.grpc import encode_batch

from residuals.platform.config import load
from residuals.platform.kafka import make_consumer, make_producer
from residuals.platform.ports import free_port
from residuals.platform.processes import ServiceProcess, cpu_seconds
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from residuals.v1 import ingest_pb2
from tests.support.ingest import Registry, Tenant, Topics

ROOT = Path(__file__).resolve().parents[1]


def events(tenant: Tenant, count: int) -> list[Any]:
    return [
        build.render(
            event_id=uuid7(),
            vendor_id=tenant.vendor_id,
            licence_id=tenant.licence_id,
            avatar_id=tenant.avatar_id,
            render_id=f"vid-{i}",
            category="product_demo",
            territory="GB",
        )
        for i in range(count)
    ]


def presigned(tenant: Tenant, count: int, signature_batch: int) -> list[Any]:
    """``count`` render envelopes, signed ``signature_batch`` at a time like publish_many."""
    prepared = events(tenant, count)
    envelopes: list[Any] = []
    for start in range(0, count, signature_batch):
        envelopes.extend(sign_batch(prepared[start : start + signature_batch], tenant.signing_key))
    return envelopes


def on_topic(topics: Topics) -> int:
    consumer = make_consumer(topics.kafka, f"bench-count-{uuid.uuid4().hex[:8]}")
    try:
        parts = consumer.list_topics(topics.usage, timeout=10).topics[topics.usage].partitions
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topics.usage, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def timed(run: Callable[[], int], server_pid: int | None = None) -> dict[str, Any]:
    """Wall time and CPU seconds; on shared cores, events per CPU second is the steadier
    figure (what one dedicated core would sustain), wall events/s what this run got."""
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    count = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result: dict[str, Any] = {
        "events": count,
        "seconds": round(wall, 2),
        "events_per_s": round(count / wall),
        "client_cpu_s": round(cpu, 2),
    }
    if server_pid:
        server = cpu_seconds(server_pid) - server0
        result["gateway_cpu_s"] = round(server, 2)
        result["events_per_gateway_cpu_s"] = round(count / server) if server else None
    else:
        result["events_per_client_cpu_s"] = round(count / cpu) if cpu else None
    return result


def bench_kafka_raw(topics: Topics, envelopes: list[tuple[bytes, bytes]]) -> int:
    producer = make_producer(topics.kafka)
    for key, value in envelopes:
        while True:
            try:
                producer.produce(topics.usage, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("raw producer did not deliver everything")
    return len(envelopes)


def sdk_kafka(
    topics: Topics, tenant: Tenant, spool: Path, signature_batch: int = 256
) -> UsageClient:
    return UsageClient.kafka(
        vendor_id=tenant.vendor_id,
        signing_key=tenant.signing_key,
        bootstrap_servers=topics.kafka.bootstrap_servers,
        topic=topics.usage,
        spool_dir=spool,
        signature_batch_size=signature_batch,
    )


def per_call(client: UsageClient, tenant: Tenant, count: int) -> int:
    for i in range(count):
        client.render(
            licence_id=tenant.licence_id,
            avatar_id=tenant.avatar_id,
            render_id=f"vid-{i}",
            category="product_demo",
            territory="GB",
        )
    left = client.flush(timeout=600)
    client.close()
    if left:
        raise RuntimeError(f"{left} events not delivered")
    return count


def publish_many(client: UsageClient, tenant: Tenant, count: int, batch: int) -> int:
    prepared = events(tenant, count)
    for start in range(0, count, batch):
        client.publish_many(prepared[start : start + batch])
    left = client.flush(timeout=600)
    client.close()
    if left:
        raise RuntimeError(f"{left} events not delivered")
    return count


def start_gateway(stack: StackSettings, topics: Topics, port: int, log_dir: Path) -> ServiceProcess:
    """``python -m residuals.ingest`` on ``port``, once it accepts connections; its output goes
    to ``log_dir/gateway.log``."""
    env = {
        **topics.env(),
        "DATABASE_URL": stack.dsn,
        "LOG_LEVEL": "WARNING",
        "INGEST_VENDOR_RATE": "1000000",
        "INGEST_VENDOR_BURST": "1000000",
    }
    gateway = ServiceProcess("gateway", "residuals.ingest", env, log_dir, grpc_port=port).start()
    gateway.wait_listening(60)
    return gateway


def bench_gateway(
    port: int,
    pid: int,
    tenant: Tenant,
    count: int,
    batch: int,
    concurrency: int,
    signature_batch: int,
) -> int:
    envelopes = [e.SerializeToString() for e in presigned(tenant, count, signature_batch)]
    requests = [encode_batch(envelopes[i : i + batch]) for i in range(0, count, batch)]
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    )
    call = channel.unary_unary(
        "/residuals.v1.IngestService/PublishBatch",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.PublishBatchResponse.FromString,
    )
    metadata = [("authorization", f"Bearer {tenant.api_key}")]
    call(requests[0][:0], metadata=metadata, timeout=30)  # warm up auth and key caches
    accepted = 0

    def send(request: bytes) -> int:
        response = call(request, metadata=metadata, timeout=120)
        return sum(r.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED for r in response.results)

    result: dict[str, Any] = {}

    def run() -> int:
        nonlocal accepted
        with ThreadPoolExecutor(concurrency) as pool:
            accepted = sum(pool.map(send, requests))
        return accepted

    result = timed(run, server_pid=pid)
    channel.close()
    if accepted != count:
        raise RuntimeError(f"gateway accepted {accepted} of {count}")
    bench_gateway.result = result  # type: ignore[attr-defined]
    return accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000, help="events per SDK→Kafka run")
    parser.add_argument("--gateway-events", type=int, default=50_000)
    parser.add_argument("--sdk-grpc-events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--signature-batch",
        type=int,
        default=256,
        help="events per signature for publish_many and pre-signed envelopes (1: per event)",
    )
    args = parser.parse_args()

    stack = load(StackSettings)
    if not lifecycle.health(stack).kafka.healthy:
        print("the local stack is not running: `residuals stack up` first", file=sys.stderr)
        return 1
    run_id = uuid.uuid4().hex[:8]
    registry = Registry(stack.dsn, run_id)
    tenant = registry.vendor("BENCH")
    report: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
        "signature_batch": args.signature_batch,
    }
    gateway: ServiceProcess | None = None
    all_topics: list[Topics] = []

    def fresh(name: str) -> Topics:
        topics = Topics(stack, f"bench-{name}-{run_id}.").create()
        all_topics.append(topics)
        return topics

    try:
        with tempfile.TemporaryDirectory(prefix="residuals-bench-") as tmp:
            topics = fresh("raw")
            pre = [
                (tenant.licence_id.encode(), e.SerializeToString())
                for e in presigned(tenant, args.events, args.signature_batch)
            ]
            report["kafka_raw"] = timed(lambda: bench_kafka_raw(topics, pre))
            report["kafka_raw"]["on_topic"] = on_topic(topics)

            topics = fresh("sdk1")
            client = sdk_kafka(topics, tenant, Path(tmp) / "s1")
            report["sdk_kafka_per_call"] = timed(lambda: per_call(client, tenant, args.events))
            report["sdk_kafka_per_call"]["on_topic"] = on_topic(topics)

            topics = fresh("sdk2")
            client = sdk_kafka(topics, tenant, Path(tmp) / "s2", args.signature_batch)
            report["sdk_kafka_publish_many"] = timed(
                lambda: publish_many(client, tenant, args.events, args.batch)
            )
            report["sdk_kafka_publish_many"]["on_topic"] = on_topic(topics)

            topics = fresh("gw")
            port = free_port()
            gateway = start_gateway(
                stack, topics, port, Path(tempfile.gettempdir()) / f"bench-ingest-{run_id}"
            )
            bench_gateway(
                port,
                gateway.pid,
                tenant,
                args.gateway_events,
                args.batch,
                args.concurrency,
                args.signature_batch,
            )
            report["gateway"] = bench_gateway.result  # type: ignore[attr-defined]
            report["gateway"]["batch"] = args.batch
            report["gateway"]["concurrent_calls"] = args.concurrency
            report["gateway"]["on_topic"] = on_topic(topics)

            before = on_topic(topics)
            grpc_client = UsageClient.grpc(
                vendor_id=tenant.vendor_id,
                signing_key=tenant.signing_key,
                target=f"127.0.0.1:{port}",
                api_key=tenant.api_key,
                spool_dir=Path(tmp) / "s3",
            )
            report["sdk_grpc_per_call"] = timed(
                lambda: per_call(grpc_client, tenant, args.sdk_grpc_events), server_pid=gateway.pid
            )
            report["sdk_grpc_per_call"]["on_topic"] = on_topic(topics) - before
    finally:
        if gateway is not None:
            gateway.stop(grace=30)
        for topics in all_topics:
            topics.delete()
    report["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
