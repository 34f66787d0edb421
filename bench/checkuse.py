"""Pre-flight ``CheckUse`` latency at a fixed request rate, over real gRPC and PostgreSQL.

    residuals stack up                       # once
    python -m bench.checkuse --rate 1000 --seconds 20

Target (issue 16): p99 ≤ 10 ms at 1,000 requests/s on this machine. Set-up, in a fresh
database of the local stack: ``--licences`` licences of one vendor whose scope requires
approval for ``insurance``, an approved approval per licence, ledger running totals (the
quota used) and approved renders stored for each, as a month in progress looks. The
licensing service runs as its own process (``python -m residuals.licensing``, relay off,
connecting as its own database role). The load is OPEN-LOOP: request ``i`` is due at
``start + i / rate`` whatever happened before, and its latency is measured from that due
time, so a slow answer also delays (and counts against) the requests queued behind it
(no coordinated omission). The uses mix what vendors ask: allowed renders, views on a
channel, uses needing approval, approved uses naming their approval, forbidden
categories. Every answer's verdict is checked against the one its use must get.

Reported: achieved rate, latency p50/p90/p99/p99.9/max from due time, errors, and the
service's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg

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
from tests.support.licensing import api_key, create_request, party_requests
from tests.support.payouts import migrated_database

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
        calls = {
            "CreateTalent": lambda r: registry.create_talent(ADMIN, r.talent),
            "CreateAvatar": lambda r: registry.create_avatar(ADMIN, r.avatar),
            "CreateVendor": lambda r: registry.create_vendor(ADMIN, r.vendor),
            "CreatePayee": lambda r: registry.create_payee(ADMIN, r.payee),
        }
        done: set[tuple[str, str]] = set()
        for index in range(licences):
            licence = parse_licence(licence_spec(index))
            for method, request in party_requests(licence):
                key = (method, request.SerializeToString().hex())
                if key not in done:
                    calls[method](request)
                    done.add(key)
            registry.create_licence(ADMIN, create_request(licence))
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
    args = parser.parse_args(argv)

    stack = load(StackSettings)
    if not lifecycle.health(stack).healthy:
        raise SystemExit("the local stack is not running: residuals stack up")
    now = datetime.now(UTC)
    with migrated_database(stack) as dsn, tempfile.TemporaryDirectory() as logs:
        started = time.perf_counter()
        key = populate(dsn, args.licences, now)
        setup_s = time.perf_counter() - started
        port = free_port()
        env = {
            "DATABASE_URL": dsn,
            "DATABASE_USER": database_role("licensing"),
            "LICENSING_OUTBOX_RELAY": "false",
            "GRPC_MAX_WORKERS": str(args.workers),
            "LOG_LEVEL": "WARNING",
        }
        service = ServiceProcess(
            "licensing", "residuals.licensing", env, Path(logs), grpc_port=port
        ).start()
        try:
            service.wait_listening(60)
            work = uses(args.licences, int(args.rate * args.seconds), args.seed)
            cpu_before = service.cpu_seconds()
            result = asyncio.run(drive(port, key, work, args.rate))
            cpu = service.cpu_seconds() - cpu_before
        finally:
            service.stop()
    result.update(
        {
            "target_rps": args.rate,
            "licences": args.licences,
            "setup_s": round(setup_s, 1),
            "service_cpu_us_per_request": round(cpu / len(work) * 1e6, 1),
            "p99_target_ms": 10.0,
        }
    )
    print(json.dumps(result, indent=2))
    return 0 if not result["errors"] and not result["wrong_verdicts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
