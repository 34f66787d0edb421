"""HTTP/JSON through the gateway next to gRPC straight to the ingest service (issue 19, item 6).

    residuals stack up            # (with your RESIDUALS_* env) once
    python -m bench.http_ingest --events 20000 --batch 100 --runs 3

One real ingest service (``python -m residuals.ingest``, real Kafka: each answer only after
Kafka acknowledged) and one HTTP gateway (``python -m residuals.gateway``) in front of it,
both subprocesses. The same pre-signed envelopes (signed as ``bench.ingest`` signs them)
are sent in batches of ``--batch`` over ``--concurrency`` parallel calls, either

* ``grpc``: PublishBatch straight to the ingest service (pre-encoded protobuf), or
* ``http``: ``POST /v1/ingest:publishBatch`` to the gateway (pre-encoded proto3 JSON, one
  keep-alive connection per caller thread), which transcodes and forwards over gRPC.

Runs alternate (grpc, http, grpc, http, ...) on the same processes and topic, each with
fresh events. Per run: events/s, CPU-seconds of the gateway and of the ingest service per
1,000 events (from /proc), p50/p99 latency of one batch as the caller sees it, and events
per gateway CPU-second. Every event must come back ACCEPTED, and the topic must grow by
exactly the events sent.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from residuals_sdk.transports.grpc import encode_batch

from bench.ingest import on_topic, presigned
from bench.ingest import start_gateway as start_ingest
from residuals.platform.config import load
from residuals.platform.ports import free_port
from residuals.platform.processes import ServiceFailed, ServiceProcess, cpu_seconds
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from residuals.v1 import ingest_pb2
from tests.support.ingest import Registry, Tenant, Topics

PUBLISH = "/v1/ingest:publishBatch"
GRPC_PUBLISH = "/residuals.v1.IngestService/PublishBatch"


def start_http_gateway(ingest_address: str, log_dir: Path) -> tuple[ServiceProcess, int]:
    """``python -m residuals.gateway`` forwarding to ``ingest_address``, once /readyz is 200."""
    port = free_port()
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_INGEST_ADDRESS": ingest_address,
        "LOG_LEVEL": "WARNING",
    }
    gateway = ServiceProcess("http-gateway", "residuals.gateway", env, log_dir).start()
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return gateway, port
        except OSError:
            pass
        gateway.check_running()
        if time.monotonic() > deadline:
            raise ServiceFailed(f"the gateway is not ready:\n{gateway.log_tail()}")
        time.sleep(0.1)


def batches(tenant: Tenant, count: int, batch: int, signature_batch: int) -> list[list[Any]]:
    envelopes = presigned(tenant, count, signature_batch)
    return [envelopes[i : i + batch] for i in range(0, count, batch)]


def grpc_sender(port: int, api_key: str) -> tuple[Callable[[Any], int], Callable[[], None]]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    )
    call = channel.unary_unary(
        GRPC_PUBLISH,
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.PublishBatchResponse.FromString,
    )
    metadata = [("authorization", f"Bearer {api_key}")]

    def send(request: bytes) -> int:
        response = call(request, metadata=metadata, timeout=120)
        return sum(r.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED for r in response.results)

    return send, channel.close


def http_sender(port: int, api_key: str) -> tuple[Callable[[Any], int], Callable[[], None]]:
    """One keep-alive connection per calling thread."""
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def send(body: bytes) -> int:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=120
            )
            opened.append(connection)
        connection.request("POST", PUBLISH, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        results = json.loads(data)["results"]
        return sum(r["status"] == "PUBLISH_STATUS_ACCEPTED" for r in results)

    def close() -> None:
        for connection in opened:
            connection.close()

    return send, close


def encode(path: str, batch: Sequence[Any]) -> bytes:
    """A batch as the caller sends it, prepared before the clock starts."""
    if path == "grpc":
        return bytes(encode_batch([e.SerializeToString() for e in batch]))
    document = {"events": [json_format.MessageToDict(e) for e in batch]}
    return json.dumps(document, separators=(",", ":")).encode()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_once(
    send: Callable[[Any], int],
    requests: list[bytes],
    concurrency: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def timed_send(request: bytes) -> int:
        started = time.perf_counter()
        accepted = send(request)
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
        return accepted

    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        accepted = sum(pool.map(timed_send, requests))
    wall, client = time.perf_counter() - wall0, time.process_time() - client0
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    result: dict[str, Any] = {
        "events": accepted,
        "seconds": round(wall, 2),
        "events_per_s": round(accepted / wall),
        "p50_batch_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_batch_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "client_cpu_s": round(client, 2),
    }
    for name, seconds in cpu.items():
        result[f"{name}_cpu_s_per_1000"] = round(seconds * 1000 / accepted, 3)
    if "gateway" in cpu:
        result["events_per_gateway_cpu_s"] = round(accepted / cpu["gateway"])
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs of each path (alternating)")
    parser.add_argument("--signature-batch", type=int, default=256)
    args = parser.parse_args()

    stack = load(StackSettings)
    if not lifecycle.health(stack).kafka.healthy:
        print("the local stack is not running: `residuals stack up` first", file=sys.stderr)
        return 1
    run_id = uuid.uuid4().hex[:8]
    tenant = Registry(stack.dsn, run_id).vendor("HTTPBENCH")
    topics = Topics(stack, f"bench-http-{run_id}.").create()
    log_dir = Path(tempfile.gettempdir()) / f"bench-http-ingest-{run_id}"
    report: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
        "events_per_run": args.events,
        "batch": args.batch,
        "concurrent_calls": args.concurrency,
        "signature_batch": args.signature_batch,
        "logs": str(log_dir),
    }
    ingest: ServiceProcess | None = None
    gateway: ServiceProcess | None = None
    try:
        ingest_port = free_port()
        ingest = start_ingest(stack, topics, ingest_port, log_dir)
        gateway, http_port = start_http_gateway(f"127.0.0.1:{ingest_port}", log_dir)
        senders = {
            "grpc": grpc_sender(ingest_port, tenant.api_key),
            "http": http_sender(http_port, tenant.api_key),
        }
        pids = {
            "grpc": {"ingest": ingest.pid},
            "http": {"gateway": gateway.pid, "ingest": ingest.pid},
        }
        # Warm up both paths (auth and key caches, connections, the gateway's channel).
        for path, (send, _) in senders.items():
            warm = [encode(path, b) for b in batches(tenant, 4 * args.batch, args.batch, 256)]
            for request in warm:
                send(request)
        runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "http": []}
        for _ in range(args.runs):
            for path in ("grpc", "http"):
                requests = [
                    encode(path, b)
                    for b in batches(tenant, args.events, args.batch, args.signature_batch)
                ]
                before = on_topic(topics)
                result = run_once(senders[path][0], requests, args.concurrency, pids[path])
                result["on_topic"] = on_topic(topics) - before
                if result["events"] != args.events or result["on_topic"] != args.events:
                    raise RuntimeError(f"{path}: {result} (expected {args.events} events)")
                runs[path].append(result)
                print(path, json.dumps(result), file=sys.stderr)
        for _, close in senders.values():
            close()
        report["runs"] = runs
        report["median"] = {path: summary(found) for path, found in runs.items()}
    finally:
        if gateway is not None:
            gateway.stop(grace=15)
        if ingest is not None:
            ingest.stop(grace=30)
        topics.delete()
    report["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
