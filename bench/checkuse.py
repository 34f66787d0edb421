"""Pre-flight ``CheckUse`` latency at a fixed request rate, over real gRPC and PostgreSQL.

    residuals stack up                       # once
    python -m bench.checkuse --rate 1000 --seconds 20

Target (issue 16): p99 ≤ 10 ms at 1,000 requests/s on this machine. Set-up, in a fresh
database of the local stack: ``--licences`` licences of one vendor whose scope requires
approval for ``insurance``, an approved approval per licence, ledger running totals (the
quota used) and approved renders stored for each, as a month in progress looks. The
licensing service runs as its own process (``python -m residuals.licensing``, relay off,
connecting as its own database role). The uses mix what vendors ask: allowed renders,
views on a channel, uses needing approval, approved uses naming their approval, forbidden
categories.

Two phases:

1. **verdicts**: ``--check`` uses (default 2,000) through a Python client, each answer
   compared with the verdict its use must get (any difference fails the run);
2. **latency**: the load, OPEN-LOOP at ``--rate`` (requests are sent on schedule whether
   or not earlier ones were answered, so a slow answer cannot hold back the load that
   would expose it). By default the load comes from ``ghz`` (the Go gRPC load tool;
   ``go install github.com/bojand/ghz/cmd/ghz@v0.93.0`` is run once if it is missing):
   a Python load generator costs ~390 µs of CPU per call, which on 2 shared cores takes
   CPU from the service it measures. ``--client python`` uses the asyncio client instead
   (latency from each request's due time).

Reported: achieved rate, latency p50/p90/p99/p99.9/max, errors, and the service's CPU
per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import json_format

from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.licensing.registry import Registry
from residuals.platform.auth import Principal, Role
from residuals.platform.config import PostgresSettings, load
from residuals.platform.ports import free_port
from residuals.platform.postgres import Database
from residuals.platform.processes import ServiceProcess
from residuals.platform.roles import database_role
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2, approval_service_pb2_grpc, common_pb2
from tests.support.licensing import api_key, register_licences
from tests.support.payouts import migrated_database

ROOT = Path(__file__).resolve().parents[1]
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz@v0.93.0"
ADMIN = Principal("p-bench", Role.ADMIN)
VENDOR = "VEN-BENCH"
ALLOW = approval_service_pb2.USE_VERDICT_ALLOW
DENY = approval_service_pb2.USE_VERDICT_DENY
NEEDS = approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL


def licence_spec(index: int) -> dict[str, Any]:
    return {
        "licence_id": f"LIC-BENCH-{index:05d}",
        "version": 1,
        "talent_id": f"TAL-BENCH-{index % 50:03d}",
        "avatar_id": f"AVA-BENCH-{index % 50:03d}",
        "vendor_id": VENDOR,
        "currency": "USD",
        "starts_at": "2026-01-01T00:00:00Z",
        "scope": {
            "categories_allowed": ["education", "insurance", "product_demo"],
            "categories_forbidden": ["political"],
            "approval_required": ["insurance"],
            "territories_allowed": ["*"],
            "channels_allowed": ["web", "social"],
        },
        "rates": {"render_tiers": [{"up_to": None, "unit_price": "0.50"}], "view_cpm": "3.00"},
        "quotas": [{"metric": "RENDER", "limit": 1_000_000, "on_exceed": "block"}],
        "splits": {f"TAL-BENCH-{index % 50:03d}": "1"},
    }


def populate(dsn: str, licences: int, now: datetime) -> str:
    """Licences, approvals, running totals and stored renders; returns a vendor API key."""
    settings = PostgresSettings(dsn=dsn, pool_min=1, pool_max=2)
    with Database(settings, application_name="bench-setup").open() as db:
        registry = Registry(db)
        register_licences(
            registry, ADMIN, *(parse_licence(licence_spec(i)) for i in range(licences))
        )
    period = str(Period.containing(now))
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        for index in range(licences):
            licence_id = f"LIC-BENCH-{index:05d}"
            talent_id = f"TAL-BENCH-{index % 50:03d}"
            cur.execute(
                "INSERT INTO approvals (approval_id, licence_id, talent_id, vendor_id,"
                " request_id, category, renders_requested, requested_from, status, valid_from,"
                " max_renders, requested_at, requested_by, decided_at, decided_by, sequence)"
                " VALUES (%s, %s, %s, %s, %s, 'insurance', 100, %s, 'approved', %s, 100, %s,"
                " 'bench', %s, 'bench', nextval('approval_change_seq'))",
                (f"apr-bench-{index:05d}", licence_id, talent_id, VENDOR, f"req-{index}")
                + (now,) * 4,
            )
            cur.execute(
                "INSERT INTO ledger_totals (licence_id, period, kind, currency, units_priced)"
                " VALUES (%s, %s, 'RENDER', 'USD', 4200)",
                (licence_id, period),
            )
            cur.executemany(
                "INSERT INTO usage_events (vendor_id, event_id, licence_id, kind, occurred_at,"
                " payload, quantity, approval_id, outcome) VALUES"
                " (%s, %s, %s, 'RENDER', %s, '', 1, %s, 'ACCEPTED')",
                [
                    (VENDOR, f"ev-{index}-{n}", licence_id, now, f"apr-bench-{index:05d}")
                    for n in range(5)
                ],
            )
    return api_key(dsn, Principal("p-bench-vendor", Role.VENDOR, vendor_id=VENDOR))


@dataclass(frozen=True)
class Use:
    request: approval_service_pb2.CheckUseRequest
    expect: int


def uses(licences: int, count: int, seed: int) -> list[Use]:
    """A vendor's mix of questions, each with the verdict it must get."""
    rng = random.Random(seed)
    made: list[Use] = []
    for _ in range(count):
        index = rng.randrange(licences)
        base: dict[str, Any] = {
            "licence_id": f"LIC-BENCH-{index:05d}",
            "avatar_id": f"AVA-BENCH-{index % 50:03d}",
            "territory": rng.choice(["GB", "US", "FR"]),
        }
        roll = rng.random()
        if roll < 0.4:
            made.append(Use(_request(base, "RENDER", "product_demo"), ALLOW))
        elif roll < 0.6:
            made.append(Use(_request(base, "VIEW", "education", channel="web"), ALLOW))
        elif roll < 0.75:
            made.append(Use(_request(base, "RENDER", "insurance"), NEEDS))
        elif roll < 0.95:
            approval = f"apr-bench-{index:05d}"
            made.append(Use(_request(base, "RENDER", "insurance", approval_id=approval), ALLOW))
        else:
            made.append(Use(_request(base, "RENDER", "political"), DENY))
    return made


def _request(base: dict[str, Any], kind: str, category: str, **extra: str) -> Any:
    return approval_service_pb2.CheckUseRequest(
        kind=common_pb2.UsageKind.Value(f"USAGE_KIND_{kind}"), category=category, **base, **extra
    )


async def drive(port: int, key: str, work: list[Use], rate: float) -> dict[str, Any]:
    """Send ``work`` at ``rate`` per second, open-loop; latencies from each due time."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = approval_service_pb2_grpc.ApprovalServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        for use in work[:50]:  # warm the connection, the licence cache and the pools
            await stub.CheckUse(use.request, metadata=metadata, timeout=10)
        latencies: list[float] = []
        wrong: list[str] = []
        errors: list[str] = []
        start = time.perf_counter() + 0.05

        async def one(i: int, use: Use) -> None:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await stub.CheckUse(use.request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")
                return
            latencies.append(time.perf_counter() - due)
            if response.verdict != use.expect:
                wrong.append(f"{use.request.category}: {response.verdict} != {use.expect}")

        await asyncio.gather(*(one(i, use) for i, use in enumerate(work)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(work),
        "elapsed_s": round(elapsed, 2),
        "achieved_rps": round(len(work) / elapsed, 1),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wrong_verdicts": len(wrong),
        "p50_ms": _ms(latencies, 0.50),
        "p90_ms": _ms(latencies, 0.90),
        "p99_ms": _ms(latencies, 0.99),
        "p999_ms": _ms(latencies, 0.999),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }


def check_verdicts(port: int, key: str, work: list[Use]) -> list[str]:
    """Every answer's verdict against the one its use must get (differences)."""
    wrong: list[str] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = approval_service_pb2_grpc.ApprovalServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        for use in work:
            response = stub.CheckUse(use.request, metadata=metadata, timeout=10)
            if response.verdict != use.expect:
                wrong.append(f"{use.request.category}: {response.verdict} != {use.expect}")
    return wrong


def ghz_binary() -> str:
    """``ghz`` on PATH or in Go's bin folder, installed with ``go install`` if missing."""
    gobin = Path(os.environ.get("GOBIN") or Path.home() / "go" / "bin")
    found = shutil.which("ghz") or (str(gobin / "ghz") if (gobin / "ghz").exists() else None)
    if found:
        return found
    if shutil.which("go") is None:
        raise SystemExit("ghz is missing and Go is not installed: use --client python")
    subprocess.run(["go", "install", GHZ_MODULE], check=True)
    return str(gobin / "ghz")


def protoset(workdir: Path) -> Path:
    """A compiled descriptor set of the service (ghz's own .proto parser predates proto3
    ``optional``)."""
    from grpc_tools import protoc

    out = workdir / "residuals.protoset"
    include = str(Path(protoc.__file__).parent / "_proto")
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{include}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "residuals/v1/approval_service.proto",
        ]
    )
    if status != 0:
        raise SystemExit("protoc could not compile the approval service's descriptor set")
    return out


def drive_ghz(
    ports: list[int], key: str, work: list[Use], rate: float, workdir: Path
) -> dict[str, Any]:
    """The load from one ghz per replica (open-loop: ``--async`` at ``--rps``), each
    sending its share of ``work`` at its share of ``rate``; latencies merged per request."""
    descriptors = protoset(workdir)
    runs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for index, port in enumerate(ports):
        share = work[index :: len(ports)]
        data = workdir / f"requests-{index}.json"
        data.write_text(
            json.dumps(
                [
                    json_format.MessageToDict(u.request, preserving_proto_field_name=True)
                    for u in share
                ]
            )
        )
        report = workdir / f"ghz-{index}.json"
        command = [
            ghz_binary(),
            "--insecure",
            "--protoset",
            str(descriptors),
            "--call",
            "residuals.v1.ApprovalService.CheckUse",
            "--data-file",
            str(data),
            "--metadata",
            json.dumps({"authorization": f"Bearer {key}"}),
            "--async",
            "--rps",
            str(max(1, round(rate / len(ports)))),
            "--total",
            str(len(share)),
            "--concurrency",
            "50",
            "--timeout",
            "10s",
            "--format",
            "json",
            "--output",
            str(report),
            f"127.0.0.1:{port}",
        ]
        runs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), report))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    elapsed = 0.0
    for process, report in runs:
        if process.wait() != 0:
            raise SystemExit(f"ghz failed (exit {process.returncode})")
        doc = json.loads(report.read_text())
        elapsed = max(elapsed, doc["total"] / 1e9)
        for detail in doc.get("details") or []:
            if detail.get("error"):
                errors[detail["error"]] = errors.get(detail["error"], 0) + 1
            else:
                latencies.append(detail["latency"] / 1e9)
    latencies.sort()
    return {
        "requests": len(work),
        "elapsed_s": round(elapsed, 2),
        "achieved_rps": round(len(work) / elapsed, 1),
        "errors": sum(errors.values()),
        "first_errors": list(errors)[:3],
        "p50_ms": _ms(latencies, 0.50),
        "p90_ms": _ms(latencies, 0.90),
        "p99_ms": _ms(latencies, 0.99),
        "p999_ms": _ms(latencies, 0.999),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run")
    parser.add_argument("--licences", type=int, default=500)
    parser.add_argument("--workers", type=int, default=16, help="the service's GRPC_MAX_WORKERS")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--check", type=int, default=2000, help="uses whose verdicts are checked")
    parser.add_argument(
        "--client", choices=("ghz", "python"), default="ghz", help="the load generator"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="licensing processes, each serving its share of the rate (as Kubernetes"
        " replicas behind a Service would)",
    )
    args = parser.parse_args(argv)

    stack = load(StackSettings)
    if not lifecycle.health(stack).healthy:
        raise SystemExit("the local stack is not running: residuals stack up")
    now = datetime.now(UTC)
    with migrated_database(stack) as dsn, tempfile.TemporaryDirectory() as logs:
        started = time.perf_counter()
        key = populate(dsn, args.licences, now)
        setup_s = time.perf_counter() - started
        env = {
            "DATABASE_URL": dsn,
            "DATABASE_USER": database_role("licensing"),
            "LICENSING_OUTBOX_RELAY": "false",
            "GRPC_MAX_WORKERS": str(args.workers),
            "LOG_LEVEL": "WARNING",
        }
        services = [
            ServiceProcess(
                f"licensing-{i}", "residuals.licensing", env, Path(logs), grpc_port=free_port()
            ).start()
            for i in range(args.replicas)
        ]
        try:
            for service in services:
                service.wait_listening(60)
            ports = [s.grpc_port for s in services]
            wrong = check_verdicts(ports[0], key, uses(args.licences, args.check, args.seed + 1))
            work = uses(args.licences, int(args.rate * args.seconds), args.seed)
            cpu_before = sum(s.cpu_seconds() for s in services)
            if args.client == "ghz":
                result = drive_ghz(ports, key, work, args.rate, Path(logs))
            else:
                if args.replicas != 1:
                    raise SystemExit("--client python drives one replica")
                result = asyncio.run(drive(ports[0], key, work, args.rate))
            cpu = sum(s.cpu_seconds() for s in services) - cpu_before
        finally:
            for service in services:
                service.stop()
    result.update(
        {
            "target_rps": args.rate,
            "licences": args.licences,
            "setup_s": round(setup_s, 1),
            "service_cpu_us_per_request": round(cpu / len(work) * 1e6, 1),
            "p99_target_ms": 10.0,
            "client": args.client,
            "replicas": args.replicas,
            "verdicts_checked": args.check,
            "wrong_verdicts": len(wrong) + result.get("wrong_verdicts", 0),
        }
    )
    print(json.dumps(result, indent=2))
    return 0 if not result["errors"] and not result["wrong_verdicts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
