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
   would expose it). By default the load comes from ``bench/checkload.c`` (``--client
   c``, built with ``cc -O2``): one thread speaking gRPC's HTTP/2 mapping over TCP with an
   epoll loop, which sends the pre-serialised requests each at its due time, measures
   latency from that due time (a client that falls behind adds its lag rather than hiding
   it) and checks every answer's verdict and grpc-status. It costs ~60 µs of CPU per call
   against ghz's 330-520 (two context switches a call against ten or more: on this
   virtual machine a thread's sleep and wake-up is the expensive part), CPU the service
   it measures gets back on 2 shared cores. With ``--replicas N`` its connections are
   spread over the N processes and requests go round-robin over the connections (gRPC's
   client-side ``round_robin``). ``--client ghz`` uses the Go gRPC load tool instead
   (``--async`` at ``--rps``; ``go install github.com/bojand/ghz/cmd/ghz@v0.93.0`` is
   run once if it is missing; latency from its send), ``--client python`` the asyncio
   client (~390 µs of CPU per call).

``--ledger-commits R`` changes the running totals of ``--ledger-licences`` (50) licences R
times a second while the load runs, as the ledger writer's batches do: each commit drops
those licences from the services' state caches, so their next checks query the database.

Reported: achieved rate, latency p50/p90/p99/p99.9/max, errors, the CPU per request of the
service, the load generator and this database's PostgreSQL backends, the share of checks
answered from the state in memory (each replica's ``residuals_checkuse_state_reads_total``),
and the share of the machine's two cores busy during the run, with what was not ours
("other": other engineers' work on the same machine makes runs noisy; a run is only
comparable to another with a similar figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.licensing.registry import Registry
from residuals.platform.auth import Principal, Role
from residuals.platform.config import PostgresSettings, load
from residuals.platform.ports import free_port
from residuals.platform.postgres import Database
from residuals.platform.processes import ServiceProcess, cpu_seconds
from residuals.platform.roles import database_role
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from residuals.v1 import approval_service_pb2, approval_service_pb2_grpc, common_pb2
from tests.support.licensing import api_key, register_licences
from tests.support.payouts import migrated_database

ROOT = Path(__file__).resolve().parents[1]
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz@v0.93.0"
CHECKLOAD = ROOT / "bench" / "checkload.c"
#: checkload's connections per licensing process (requests go round-robin over them).
CONNECTIONS = 2
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
        **_percentiles(latencies),
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


def ghz_commands(
    ports: list[int], key: str, work: list[Use], rate: float, workdir: Path
) -> list[tuple[list[str], Path]]:
    """One ghz per replica (open-loop: ``--async`` at ``--rps``), each sending its share of
    ``work`` at its share of ``rate``: (command, report file) each."""
    descriptors = protoset(workdir)
    binary = ghz_binary()
    runs: list[tuple[list[str], Path]] = []
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
            binary,
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
        runs.append((command, report))
    return runs


def drive_ghz(runs: list[tuple[list[str], Path]], work: list[Use]) -> tuple[dict[str, Any], float]:
    """Run the ghz commands together; latencies merged per request, with their CPU seconds."""
    started = [
        (subprocess.Popen(command, stdout=subprocess.DEVNULL), report) for command, report in runs
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    elapsed = cpu = 0.0
    for process, report in started:
        status, used = _reap(process)
        cpu += used
        if status != 0:
            raise SystemExit(f"ghz failed (exit {status})")
        doc = json.loads(report.read_text())
        elapsed = max(elapsed, doc["total"] / 1e9)
        for detail in doc.get("details") or []:
            if detail.get("error"):
                errors[detail["error"]] = errors.get(detail["error"], 0) + 1
            else:
                latencies.append(detail["latency"] / 1e9)
    latencies.sort()
    result = {
        "requests": len(work),
        "elapsed_s": round(elapsed, 2),
        "achieved_rps": round(len(work) / elapsed, 1),
        "errors": sum(errors.values()),
        "first_errors": list(errors)[:3],
        **_percentiles(latencies),
    }
    return result, cpu


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for ``process``: (exit status, the CPU seconds it used)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def checkload_binary(workdir: Path) -> str:
    """``bench/checkload.c`` compiled (a second or so)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler (cc): use --client ghz or --client python")
    out = workdir / "checkload"
    subprocess.run([compiler, "-O2", "-o", str(out), str(CHECKLOAD)], check=True)
    return str(out)


def checkload_command(
    binary: str, ports: list[int], key: str, work: list[Use], rate: float, workdir: Path
) -> list[str]:
    """The checkload command, its request file written (length, expected verdict, message)."""
    data = workdir / "requests.bin"
    with data.open("wb") as out:
        for use in work:
            message = use.request.SerializeToString()
            out.write(struct.pack(">IB", len(message), use.expect) + message)
    return [
        binary,
        "-targets",
        ",".join(f"127.0.0.1:{port}" for port in ports),
        "-rate",
        str(rate),
        "-requests",
        str(data),
        "-authorization",
        f"Bearer {key}",
        "-connections",
        str(CONNECTIONS),
    ]


def drive_checkload(command: list[str], work: list[Use]) -> tuple[dict[str, Any], float]:
    """Run checkload: latencies from each request's due time, every verdict checked; with
    the client's CPU seconds."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.stdout.close()
    status, cpu = _reap(process)
    if status != 0:
        raise SystemExit(f"checkload failed (exit {status})")
    doc = json.loads(stdout)
    latencies = sorted(us / 1e6 for us in doc["latencies_us"])
    errors: dict[str, int] = doc["errors"]
    result = {
        "requests": len(work),
        "elapsed_s": round(doc["elapsed_s"], 2),
        "achieved_rps": round(len(work) / doc["elapsed_s"], 1),
        "errors": sum(errors.values()),
        "first_errors": list(errors)[:3],
        "wrong_verdicts": doc["wrong_verdicts"],
        "max_send_lag_ms": round(doc["max_send_lag_us"] / 1000, 2),
        **_percentiles(latencies),
    }
    return result, cpu


def state_reads(ports: list[int]) -> Counter[str]:
    """CheckUse state reads by source (memory, database), summed over the replicas."""
    found: Counter[str] = Counter()
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "residuals_checkuse_state_reads":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["source"]] += int(sample.value)
    return found


class LedgerCommits(threading.Thread):
    """Commits that change running totals at a steady rate, as the ledger writer's batches
    do while vendors check uses (``events`` only: no verdict changes)."""

    def __init__(self, dsn: str, licences: int, rate: float, per_commit: int) -> None:
        super().__init__(name="ledger-commits", daemon=True)
        self.dsn, self.licences, self.rate, self.per_commit = dsn, licences, rate, per_commit
        self.done = threading.Event()
        self.commits = 0

    def run(self) -> None:
        if self.rate <= 0:
            return
        rng = random.Random(7)
        period = str(Period.containing(datetime.now(UTC)))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            started = time.monotonic()
            while not self.done.is_set():
                touched = [
                    f"LIC-BENCH-{i:05d}"
                    for i in rng.sample(range(self.licences), min(self.per_commit, self.licences))
                ]
                conn.execute(
                    "UPDATE ledger_totals SET events = events + 1"
                    " WHERE licence_id = ANY(%s) AND period = %s",
                    (touched, period),
                )
                self.commits += 1
                self.done.wait(max(0.0, started + self.commits / self.rate - time.monotonic()))

    def stop(self) -> int:
        self.done.set()
        if self.is_alive():
            self.join(10)
        return self.commits


class CpuWindow:
    """CPU used by the service, the load generator and this database's PostgreSQL
    backends over the run, and how busy the machine's cores were (Linux ``/proc``)."""

    def __init__(self, services: list[ServiceProcess], dsn: str) -> None:
        self.services = services
        self.dsn = dsn
        self.backends = {pid: _cpu_or_zero(pid) for pid in self._backend_pids()}
        self.service = sum(s.cpu_seconds() for s in services)
        self.busy, self.total = _machine_ticks()

    def _backend_pids(self) -> list[int]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(row[0]) for row in rows]

    def result(self, requests: int, client_cpu: float) -> dict[str, Any]:
        """Per-request CPU figures and the machine's load since the window opened."""
        busy, total = _machine_ticks()
        busy, total = busy - self.busy, total - self.total
        service = sum(s.cpu_seconds() for s in self.services) - self.service
        # Backends that connected during the run count whole (their start-up is small).
        postgres = sum(
            _cpu_or_zero(pid) - self.backends.get(pid, 0.0) for pid in self._backend_pids()
        )
        cores = os.cpu_count() or 1
        capacity = total / os.sysconf("SC_CLK_TCK")  # CPU seconds the cores could give
        ours = service + postgres + client_cpu
        return {
            "service_cpu_us_per_request": round(service / requests * 1e6, 1),
            "client_cpu_us_per_request": round(client_cpu / requests * 1e6, 1),
            "postgres_cpu_us_per_request": round(postgres / requests * 1e6, 1),
            "machine_cores": cores,
            "machine_busy_pct": round(100 * busy / total, 1),
            "machine_other_pct": round(100 * busy / total - 100 * ours / capacity, 1),
        }


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def _machine_ticks() -> tuple[float, float]:
    """(busy, total) clock ticks of all cores since boot (``/proc/stat``)."""
    fields = [float(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50 ... max and the mean of sorted latencies (seconds), in milliseconds."""
    return {
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


def _cpu_list(text: str) -> list[int]:
    cpus = [int(part) for part in text.split(",")]
    if not cpus or any(cpu not in os.sched_getaffinity(0) for cpu in cpus):
        raise argparse.ArgumentTypeError(f"not CPUs of this machine: {text}")
    return cpus


def _start(service: ServiceProcess, cpus: set[int] | None) -> ServiceProcess:
    """Start ``service``, on ``cpus`` only if given (the process inherits the affinity of
    the thread that starts it, and so do the threads it makes)."""
    if cpus is None:
        return service.start()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return service.start()
    finally:
        os.sched_setaffinity(0, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run")
    parser.add_argument("--licences", type=int, default=500)
    parser.add_argument("--workers", type=int, default=16, help="the service's GRPC_MAX_WORKERS")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--check", type=int, default=2000, help="uses whose verdicts are checked")
    parser.add_argument(
        "--client",
        choices=("c", "ghz", "python"),
        default="c",
        help="the load generator: bench/checkload.c (c), ghz, or the asyncio client",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="licensing processes, each serving its share of the rate (as Kubernetes"
        " replicas behind a Service would)",
    )
    parser.add_argument(
        "--pin",
        type=_cpu_list,
        default=None,
        metavar="CPU[,CPU...]",
        help="run licensing process i on CPU pin[i %% len(pin)] alone (as Kubernetes' static"
        " CPU manager runs a Guaranteed pod with whole CPUs on CPUs of its own)",
    )
    parser.add_argument(
        "--ledger-commits",
        type=float,
        default=0.0,
        help="meanwhile, commits per second that change running totals, as the ledger writer's"
        " batches do (each drops its licences from the services' state caches)",
    )
    parser.add_argument(
        "--ledger-licences", type=int, default=50, help="licences each such commit touches"
    )
    args = parser.parse_args(argv)

    stack = load(StackSettings)
    # Only PostgreSQL is used, in a database of the run's own (with this code's migrations):
    # the stack's own database may be at another branch's migration.
    if not lifecycle.health(stack).postgres.healthy:
        raise SystemExit("the local stack's PostgreSQL is not running: residuals stack up")
    now = datetime.now(UTC)
    with migrated_database(stack) as dsn, tempfile.TemporaryDirectory() as logs:
        started = time.perf_counter()
        key = populate(dsn, args.licences, now)
        setup_s = time.perf_counter() - started
        metrics_ports = [free_port() for _ in range(args.replicas)]
        env = {
            "DATABASE_URL": dsn,
            "DATABASE_USER": database_role("licensing"),
            "LICENSING_OUTBOX_RELAY": "false",
            "GRPC_MAX_WORKERS": str(args.workers),
            "LOG_LEVEL": "WARNING",
        }
        services = [
            _start(
                ServiceProcess(
                    f"licensing-{i}",
                    "residuals.licensing",
                    {**env, "METRICS_PORT": str(metrics_ports[i])},
                    Path(logs),
                    grpc_port=free_port(),
                ),
                {args.pin[i % len(args.pin)]} if args.pin else None,
            )
            for i in range(args.replicas)
        ]
        try:
            for service in services:
                service.wait_listening(60)
            ports = [s.grpc_port for s in services]
            # Every replica answers the checked uses (which also warms its licence cache).
            checked = uses(args.licences, args.check, args.seed + 1)
            wrong = [w for port in ports for w in check_verdicts(port, key, checked)]
            work = uses(args.licences, int(args.rate * args.seconds), args.seed)
            workdir = Path(logs)
            reads_before = state_reads(metrics_ports)
            ledger = LedgerCommits(dsn, args.licences, args.ledger_commits, args.ledger_licences)
            ledger.start()
            if args.client == "c":
                command = checkload_command(
                    checkload_binary(workdir), ports, key, work, args.rate, workdir
                )
                window = CpuWindow(services, dsn)
                result, client_cpu = drive_checkload(command, work)
            elif args.client == "ghz":
                runs = ghz_commands(ports, key, work, args.rate, workdir)
                window = CpuWindow(services, dsn)
                result, client_cpu = drive_ghz(runs, work)
            else:
                if args.replicas != 1:
                    raise SystemExit("--client python drives one replica")
                window = CpuWindow(services, dsn)
                before = time.process_time()
                result = asyncio.run(drive(ports[0], key, work, args.rate))
                client_cpu = time.process_time() - before
            result.update(window.result(len(work), client_cpu))
            result["ledger_commits"] = ledger.stop()
            reads = state_reads(metrics_ports) - reads_before
            result["state_from_memory_pct"] = round(
                100 * reads.get("memory", 0) / max(1, reads.total()), 1
            )
        finally:
            for service in services:
                service.stop()
    result.update(
        {
            "target_rps": args.rate,
            "licences": args.licences,
            "setup_s": round(setup_s, 1),
            "p99_target_ms": 10.0,
            "client": args.client,
            "replicas": args.replicas,
            "pinned_cpus": args.pin,
            "verdicts_checked": args.check,
            "wrong_verdicts": len(wrong) + result.get("wrong_verdicts", 0),
        }
    )
    print(json.dumps(result, indent=2))
    return 0 if not result["errors"] and not result["wrong_verdicts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
