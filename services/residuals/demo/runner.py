"""``residuals demo``: the whole product end to end on the local stack, one command.

The demo orchestrates; it never re-implements a rule. Every service runs as the real
process (``python -m residuals.<service>``) and the demo talks to them as users do: the
admin CLI and ``LicenceService`` to set up the registry, the vendor SDKs to publish (the
Python SDK over Kafka and the gRPC gateway, the TypeScript SDK through the HTTP gateway,
``residuals.gateway``), ``WatchAlerts`` for alerts, Prometheus and the ledger's running
totals for progress, ``PayoutService`` to close, export, pay and reconcile. Anything that
fails stops the demo loudly with the step, the reason and the service log's tail.

Phases: stack and fresh database -> licensing service -> registry set-up -> the other
services -> the month (published at the pace of ``--seconds``) -> every event ledgered ->
month end (close, export, pay, reconcile) -> offline replay of what was published ->
summary. Ctrl-C (or SIGTERM) at any point stops everything that was started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import psycopg

from residuals.demo import RUN_MARKER, environment, hostile_vendor, report, typescript
from residuals.demo.administration import RegistryClient, RegistryError, bootstrap_admin
from residuals.demo.documents import Documents, DocumentsError, prove, write_documents
from residuals.demo.environment import Claim, Stack
from residuals.demo.finance import FinanceClient, FinanceError, MonthEnd
from residuals.demo.fleet import Fleet, Published, SdkMissing, VendorFailed, sdk_module
from residuals.demo.hostile import Identity
from residuals.demo.live import AlertLine, AlertWatcher, Frame, LiveView, Probe, scrape
from residuals.demo.replaycase import (
    registry_licences,
    replay,
    streaming_rejections,
    without_streaming_only,
    write_case,
    write_rejections,
)
from residuals.demo.review import ReviewFailed, ReviewScene
from residuals.demo.review import licence_specs as review_licences
from residuals.demo.scenario import ATTACKER, GATEWAY, HTTP, Scenario, build_scenario
from residuals.demo.timeline import CANONICAL_SECONDS, DAY, choose_window
from residuals.demo.webhooks import TALENT_TYPES, VENDOR_TYPES, WEBHOOK_TALENT, WebhookScene
from residuals.domain.closing import content_hash, licences_for_period
from residuals.platform.auth import Role
from residuals.platform.config import KafkaSettings, load
from residuals.platform.kafka import AcknowledgedProducer, topic_name
from residuals.platform.ports import free_port
from residuals.platform.processes import ServiceFailed, ServiceGroup, ServiceProcess
from residuals.platform.roles import role_env
from residuals.platform.topics import LICENCES, SIGNING_KEYS, USAGE
from residuals.stack.settings import StackSettings

#: Output-folder entries the demo owns (removed at start; never anything else in --out).
OWNED = (
    "logs",
    "statements",
    "evidence",
    "payouts",
    ".work",
    "licences.yaml",
    "case.yaml",
    "events.jsonl",
    "streaming-rejections.jsonl",
    "alerts.jsonl",
    "webhooks",
    "reconciliation.txt",
    "summary.txt",
    "run.json",
)
SERVICE_START_SECONDS = 180.0
LEDGER_WAIT_SECONDS = 300.0


class DemoFailed(RuntimeError):
    """A step failed; the message says which and why (printed without a traceback)."""


@dataclass(frozen=True)
class Options:
    seconds: float = 90.0
    events: int = 20_000
    seed: int = 7
    out: Path = Path("demo-output")
    keep_stack: bool = False


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Demo:
    options: Options
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.view = LiveView(self.stdout)
        self.out = self.options.out.resolve()
        self.services = ServiceGroup()
        self.stack: Stack | None = None
        self.claim: Claim | None = None
        self.kafka: KafkaSettings | None = None
        self.fleet: Fleet | None = None
        self.watcher: AlertWatcher | None = None
        self.registry: RegistryClient | None = None
        self.finance: FinanceClient | None = None
        self.probe: Probe | None = None
        self.keys: dict[str, Any] = {}
        self.database_url = ""
        #: Node.js (the TypeScript SDK's vendor runs under it) and the HTTP gateway's URL.
        self.node = "node"
        self.gateway_url = ""
        #: The hostile vendor's records on the usage topic, and its display name.
        self.hostile_sent: list[hostile_vendor.Sent] = []
        self.hostile_name = ""
        #: Review before use: one talent's approvals, three vendors (demo/review.py).
        self.review: ReviewScene | None = None
        #: A talent's and a vendor's webhook receivers (demo/webhooks.py).
        self.webhooks: WebhookScene | None = None
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self._rates = _Rates()
        self._log_handler: logging.Handler | None = None
        self.started = time.monotonic()

    # --- entry point -----------------------------------------------------------------------

    def run(self) -> int:
        # Explicit handlers: a shell that starts the demo in the background leaves SIGINT
        # ignored, and Ctrl-C / SIGINT must still stop it cleanly.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        try:
            self._run()
            return 0
        except KeyboardInterrupt:
            self.view.finish()
            self.say("interrupted: stopping everything the demo started")
            return 130
        except (
            DemoFailed,
            ServiceFailed,
            RegistryError,
            FinanceError,
            SdkMissing,
            typescript.TypeScriptSdkMissing,
            VendorFailed,
            ReviewFailed,
        ) as failure:
            self.view.finish()
            self.say(f"\nresiduals demo FAILED: {failure}")
            return 1
        except psycopg.Error as error:
            self.view.finish()
            self.say(f"\nresiduals demo FAILED: database: {str(error).strip()}")
            return 1
        finally:
            # Cleanup must finish (it is bounded: every wait has a timeout).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self._cleanup()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)

    def say(self, message: str) -> None:
        self.view.log(message)

    def _phase(self, name: str, since: float) -> None:
        self.timings[name] = round(time.monotonic() - since, 1)

    def _run(self) -> None:
        o = self.options
        self._prepare_output()
        window = choose_window(datetime.now(UTC))
        scenario = build_scenario(o.seed, o.events, window)
        self.say(
            f"Residuals demo: seed {o.seed}, {len(scenario.events):,} events over {o.seconds:g} s;"
            f" statement period {window.period} (simulated {window.start:%Y-%m-%d %H:%M} →"
            f" {window.end:%Y-%m-%d %H:%M} UTC); output {self.out}"
        )
        if any(v.transport == HTTP for v in scenario.vendors):
            self.node = typescript.ensure_built(self.say)
        t = time.monotonic()
        database_url = self._environment()
        self._phase("stack and database", t)
        t = time.monotonic()
        keys = self._start_services(scenario, database_url)
        self._phase("services and registry", t)
        t = time.monotonic()
        self._review_before_use()
        self._phase("review before use", t)
        t = time.monotonic()
        self._month(scenario, keys, database_url)
        self._phase("the month", t)
        t = time.monotonic()
        self._drain()
        self._phase("ledger drain", t)
        t = time.monotonic()
        month_end = self._month_end(scenario)
        self._phase("month end", t)
        self._conclude(scenario, month_end)

    # --- set-up ----------------------------------------------------------------------------

    def _prepare_output(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OWNED:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        (self.out / "logs").mkdir()
        (self.out / ".work" / "meter").mkdir(parents=True)
        # The SDK clients log in this process; their warnings (a rejected event, a broker
        # hiccup) go to a file, and the live view reports rejections itself.
        handler = logging.FileHandler(self.out / "logs" / "sdk.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self._log_handler = handler
        sdk_log = logging.getLogger("residuals_sdk")
        sdk_log.handlers[:] = [handler]
        sdk_log.setLevel(logging.INFO)
        sdk_log.propagate = False

    def _environment(self) -> str:
        from residuals.stack.processes import StackError

        try:
            settings = load(StackSettings)
            self.stack = environment.bring_up_stack(settings, self.say)
            self.claim = Claim(settings.dsn)
        except (StackError, environment.DemoBusy) as error:
            raise DemoFailed(str(error)) from None
        stale = environment.delete_stale_topics(settings)
        if stale:
            self.say(f"removed {stale} topics left by an earlier demo run")
        database_url = self.database_url = environment.fresh_database(settings.dsn, self.say)
        self.kafka = environment.demo_kafka(settings, self.run_id)
        environment.create_topics(self.kafka, self.say)
        return database_url

    def _service(self, name: str, database_url: str, **extra: str) -> ServiceProcess:
        assert self.kafka is not None
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "RESIDUALS_TOPIC_PREFIX": self.kafka.topic_prefix,
            "RESIDUALS_TOPIC_PARTITIONS": str(self.kafka.topic_partitions),
            "DATABASE_URL": database_url,
            # Each service connects as its own PostgreSQL role (migration 0010).
            **role_env(name),
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "4",
            "LOG_LEVEL": "INFO",
            "OTEL_SERVICE_NAME": name,
            RUN_MARKER: self.run_id,
            **extra,
        }
        # Ctrl-C reaches only the demo (each service has its own session), which stops them
        # all; the kernel stops them too if the demo itself is killed.
        service = ServiceProcess(
            name, f"residuals.{name}", env, self.out / "logs", append_log=True, die_with_parent=True
        )
        return self.services.add(service)

    def _wait_healthy(self, *names: str) -> None:
        for name in names:
            self.services[name].wait_healthy(SERVICE_START_SECONDS)

    def _start_services(self, scenario: Scenario, database_url: str) -> dict[str, Any]:
        assert self.kafka is not None
        sdk = sdk_module()
        admin_key = bootstrap_admin(database_url)
        self.say("admin API key created with `residuals licences bootstrap-admin`")
        self._service("licensing", database_url, LICENSING_OUTBOX_POLL_SECONDS="0.2")
        self._service("ledger", database_url)
        # The gateway stamps what it accepts with its receipt time; the meter trusts only
        # stamps made with this run's secret (and broker time otherwise).
        self.receipt_key = os.urandom(32).hex()
        self._service("ingest", database_url, RESIDUALS_RECEIPT_KEY=self.receipt_key)
        # The HTTP/JSON gateway in front of the ingest service (the TypeScript SDK's vendor).
        http_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{http_port}"
        self._service(
            "gateway",
            database_url,
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(http_port),
            GATEWAY_INGEST_ADDRESS=self.services["ingest"].address,
        )
        self._service(
            "payouts",
            database_url,
            PAYOUTS_RAIL="file",
            PAYOUTS_RAIL_DIR=str(self.out / "payouts"),
            PAYOUTS_THRESHOLDS=",".join(f"{c}={a}" for c, a in scenario.thresholds.items()),
        )
        self._wait_healthy("licensing")
        registry = self.registry = RegistryClient(self.services["licensing"].address, admin_key)
        registry.create_parties(scenario)
        review_starts = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        specs = [*scenario.licence_specs(), *review_licences(review_starts)]
        created = registry.create_licences(self.out / "licences.yaml", specs)
        self.say(f"`residuals licences create licences.yaml`: {len(created)} licences")
        signing: dict[str, Any] = {}
        for vendor in scenario.vendors:
            key = sdk.SigningKey.generate(f"sk-{vendor.short}-demo")
            registry.register_signing_key(vendor.vendor_id, key.key_id, key.public_key_bytes())
            signing[vendor.vendor_id] = key
        keys = self.keys = {
            "admin": admin_key,
            "finance": registry.api_key("demo-finance", Role.FINANCE),
            "alerts": registry.api_key("svc-alerts", Role.SUSPENDER),
            "signing": signing,
            "vendors": {
                v.vendor_id: registry.api_key(
                    f"vendor-{v.short}", Role.VENDOR, vendor_id=v.vendor_id
                )
                for v in scenario.vendors
                if v.transport in GATEWAY
            },
        }
        self.review = ReviewScene(
            licensing_address=self.services["licensing"].address,
            admin_key=admin_key,
            bootstrap_servers=self.kafka.bootstrap_servers,
            usage_topic=topic_name(self.kafka, USAGE),
            signing=signing,
            database_url=database_url,
            say=self.say,
            run_id=self.run_id,
        )
        self.review.parties(registry)
        self._wait_published(scenario, signing)
        self._service(
            "meter",
            database_url,
            METER_DATA_DIR=str(self.out / ".work" / "meter"),
            METER_INSTANCE_ID=f"{self.kafka.topic_prefix}meter-1",
            RESIDUALS_RECEIPT_KEY=self.receipt_key,
        )
        self._service(
            "alerts",
            database_url,
            ALERTS_CONSUMER_GROUP=f"{self.kafka.topic_prefix}alerts",
            ALERTS_LICENSING_ADDRESS=self.services["licensing"].address,
            ALERTS_LICENSING_API_KEY=keys["alerts"],
            ALERTS_SUSPENSION_POLL_SECONDS="0.5",
        )
        self._service(
            "notify",
            database_url,
            # The demo's receivers listen on loopback, over plain HTTP: allowed explicitly
            # (by default webhooks go to public https:// addresses only).
            NOTIFY_ALLOW_NETWORKS="127.0.0.0/8",
            NOTIFY_ALLOW_HTTP="true",
            NOTIFY_STATEMENTS_POLL_SECONDS="0.5",
            NOTIFY_SECRETS_KEY=base64.b64encode(os.urandom(32)).decode("ascii"),
        )
        self._wait_healthy("ledger", "ingest", "payouts", "meter", "alerts", "notify")
        self.services["gateway"].wait_http_ready(
            f"{self.gateway_url}/readyz", SERVICE_START_SECONDS
        )
        self._register_webhooks(scenario)
        self.say("services up (gRPC health SERVING, gateway /readyz); Prometheus metrics:")
        for service in self.services.services.values():
            http = service.name == "gateway"
            serves = f"HTTP {self.gateway_url}" if http else f"gRPC {service.address}"
            self.say(f"  {service.name:<10} {service.metrics_url}   {serves}")
        self.say(
            f"HTTP gateway (residuals.gateway): {self.gateway_url}/v1/ingest:publishBatch"
            f" -> IngestService at {self.services['ingest'].address}"
        )
        return keys

    def _register_webhooks(self, scenario: Scenario) -> None:
        """Kofi and the vendor that will send poison each register a webhook endpoint."""
        assert self.registry is not None
        scene = self.webhooks = WebhookScene(self.services["notify"].address, self.say).start()
        bad = hostile_vendor.poisoner(scenario)
        talent_key = self.registry.api_key("demo-kofi", Role.TALENT, talent_id=WEBHOOK_TALENT)
        vendor_key = self.registry.api_key(
            f"demo-hooks-{bad.short}", Role.VENDOR, vendor_id=bad.vendor_id
        )
        scene.register("talent", talent_key, TALENT_TYPES, "Kofi's phone app")
        scene.register("vendor", vendor_key, VENDOR_TYPES, f"{bad.name}'s integration")
        self.say(
            f"webhooks: Kofi and {bad.name} registered endpoints with NotificationService"
            f" (receivers on 127.0.0.1:{scene.port}, Standard Webhooks signatures)"
        )

    def _wait_published(self, scenario: Scenario, signing: dict[str, Any]) -> None:
        """The licensing outbox has put every licence and key on the compacted topics, so
        the meter loads them all before it rates its first record."""
        from residuals.platform.replica import TopicReplica

        assert self.kafka is not None
        wanted = [
            (
                LICENCES,
                {lic["licence_id"].encode() for lic in scenario.licences}
                | {spec["licence_id"].encode() for spec in review_licences(datetime.now(UTC))},
            ),
            (SIGNING_KEYS, {k.key_id.encode() for k in signing.values()}),
        ]
        for topic, keys in wanted:
            replica = TopicReplica(self.kafka, topic_name(self.kafka, topic), name="demo").start()
            deadline = time.monotonic() + 60
            try:
                while not keys <= set(replica):
                    self.services.check_running()
                    if time.monotonic() > deadline:
                        raise DemoFailed(
                            f"the licensing outbox did not publish {topic.name} in 60 s"
                            f" (log: {self.services['licensing'].log_path})"
                        )
                    time.sleep(0.2)
            finally:
                replica.stop()

    # --- review before use -----------------------------------------------------------------

    def _review_before_use(self) -> None:
        """Approvals asked, decided and used while the pipeline runs (demo/review.py)."""
        assert self.review is not None
        self.say("review before use: vendors ask, the talent's agent decides (CLI), then render")
        self.review.run()

    # --- the month -------------------------------------------------------------------------

    def _on_alert(self, line: AlertLine) -> None:
        self.view.alert(line)

    def _on_report(self, item: Published) -> None:
        gateway = "HTTP gateway" if item.via == HTTP else "gateway"
        if item.status == "REJECTED":
            self.notes.append(f"{gateway} rejected {item.raw.get('event_id')}: {item.reason}")
        elif item.status == "DUPLICATE":
            self.notes.append(f"{gateway} answered DUPLICATE for {item.raw.get('event_id')}")

    def _month(self, scenario: Scenario, keys: dict[str, Any], database_url: str) -> None:
        assert self.kafka is not None and self.registry is not None
        self.watcher = AlertWatcher(
            self.services["alerts"].address, keys["finance"], self._on_alert
        ).start()
        self.probe = Probe(
            database_url, self.services["meter"].metrics_url, str(scenario.window.period)
        )
        self.fleet = Fleet(
            scenario=scenario,
            usage_topic=topic_name(self.kafka, USAGE),
            bootstrap_servers=self.kafka.bootstrap_servers,
            gateway_address=self.services["ingest"].address,
            api_keys=keys["vendors"],
            signing_keys=keys["signing"],
            spool_root=self.out / ".work" / "spool",
            on_report=self._on_report,
            http_url=self.gateway_url,
            node=self.node,
            # The run's marker: what it started is found (and checked stopped) by it.
            child_env={RUN_MARKER: self.run_id},
        ).open()
        self.say(
            "publishing: "
            + ", ".join(f"{v.name.split(' ')[0]} ({v.transport})" for v in scenario.vendors)
            + ", and a forger"
        )
        events, changes = list(scenario.events), list(scenario.changes)
        seconds = max(1.0, self.options.seconds)
        start = time.monotonic()
        index = 0
        next_frame = 0.0
        next_check = 0.0
        while index < len(events) or changes:
            now = time.monotonic()
            canonical = min(CANONICAL_SECONDS, (now - start) / seconds * CANONICAL_SECONDS)
            due = index
            while due < len(events) and events[due].publish_at <= canonical:
                due += 1
            if due > index:
                batch = events[index:due]
                for event in batch:
                    if event.note:
                        self.notes.append(f"day {event.publish_at / DAY:4.1f}: {event.note}")
                self.fleet.publish(batch)
                index = due
            while changes and changes[0].publish_at <= canonical:
                change = changes.pop(0)
                self.registry.apply(change)
                self.notes.append(
                    f"day {change.publish_at / DAY:4.1f}: {change.licence_id} revoked from day"
                    f" {scenario.window.canonical_day(change.effective):.0f}"
                    f" ({change.reason}; wind-down {change.wind_down_days} days)"
                )
            if not self.hostile_sent and canonical >= CANONICAL_SECONDS / 2:
                self._hostile_vendor(scenario, keys, canonical / DAY)
            if now >= next_check:
                self.services.check_running()
                self.fleet.check()
                next_check = now + 2.0
            if now >= next_frame:
                self._show(scenario, index, canonical / DAY)
                next_frame = now + 0.5
            time.sleep(0.02)
        self._show(scenario, index, canonical / DAY, force=True)

    def _hostile_vendor(self, scenario: Scenario, keys: dict[str, Any], day: float) -> None:
        """A licensee with Kafka write access writes poison straight onto the usage topic
        (:mod:`residuals.demo.hostile_vendor`)."""
        assert self.kafka is not None
        bad, other = hostile_vendor.poisoner(scenario), scenario.vendors[-1]
        mine = next(lic for lic in scenario.licences if lic["vendor_id"] == bad.vendor_id)
        theirs = next(lic for lic in scenario.licences if lic["vendor_id"] == other.vendor_id)
        key, other_key = keys["signing"][bad.vendor_id], keys["signing"][other.vendor_id]
        who = Identity(
            vendor=bad.vendor_id,
            key_id=key.key_id,
            key=key.private_key,
            licence_id=mine["licence_id"],
            avatar_id=mine["avatar_id"],
            other_vendor=other.vendor_id,
            other_key_id=other_key.key_id,
            other_key=other_key.private_key,
            other_licence=theirs["licence_id"],
            currency=mine["currency"],
            prefix=f"hostile-{self.run_id}-",
        )
        producer = AcknowledgedProducer(
            self.kafka, client_id=f"demo-hostile-{self.run_id}", report_successes=True
        )
        cases = hostile_vendor.refused_cases(who, datetime.now(UTC))
        self.hostile_sent = hostile_vendor.send(producer, topic_name(self.kafka, USAGE), who, cases)
        self.hostile_name = bad.name
        self.notes.append(
            f"day {day:4.1f}: {bad.name} wrote {len(cases)} malformed or forged records straight"
            " to the usage topic"
        )

    def _show(self, scenario: Scenario, published: int, day: float, force: bool = False) -> None:
        assert self.probe is not None and self.watcher is not None
        progress = self.probe.read()
        talents = scenario.talent_names()
        avatars = {
            lic["licence_id"]: (lic["avatar_id"], talents.get(lic["talent_id"], ""))
            for lic in scenario.licences
        }
        alerts = self.watcher.snapshot()
        frame = Frame(
            title=f"Residuals demo · seed {self.options.seed} · period {scenario.window.period}"
            f" · {time.monotonic() - self.started:5.0f} s",
            day=day,
            published=published,
            total=len(scenario.events),
            rates=self._rates.update(published, progress.rated, progress.stored),
            progress=progress,
            avatars=avatars,
            alerts=alerts,
            alert_count=len(alerts),
            notes=self.notes,
            metrics=[f"{s.name} {s.metrics_port}" for s in self.services.services.values()],
            senders=self._senders(scenario),
        )
        self.view.show(frame, force=force)

    def _senders(self, scenario: Scenario) -> list[str]:
        """Per SDK client: events settled, and the gateway's refusals."""
        if self.fleet is None:
            return []
        counts: dict[str, Counter[str]] = {}
        for item in self.fleet.snapshot():
            counts.setdefault(item.sender, Counter())[item.status or "pending"] += 1
        names = {v.vendor_id: v.name.split(" ")[0] for v in scenario.vendors}
        names[ATTACKER] = "forger"
        out = []
        for sender, c in counts.items():
            extra = "".join(
                f" {c[s]} {s.lower()}" for s in ("REJECTED", "DUPLICATE", "pending") if c[s]
            )
            out.append(f"{names.get(sender, sender)} {c['DELIVERED']:,} delivered{extra}")
        return out

    def _drain(self) -> None:
        """Every event delivered, and every delivered record in the ledger."""
        assert self.fleet is not None and self.probe is not None
        left = self.fleet.flush(120)
        if left:
            raise DemoFailed(f"{left} events still undelivered after 120 s (SDK spools kept)")
        published = self.fleet.snapshot()
        pending = [p for p in published if not p.status]
        if pending:
            raise DemoFailed(f"{len(pending)} events without a delivery report")
        # The hostile vendor's records are dead letters in the ledger too.
        expected = sum(1 for p in published if p.stored) + len(self.hostile_sent)
        expected += len(self.review.published) if self.review is not None else 0
        deadline = time.monotonic() + LEDGER_WAIT_SECONDS
        while True:
            stored = self.probe.stored()
            if stored >= expected:
                break
            self.services.check_running()
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"only {stored:,} of {expected:,} records ledgered after"
                    f" {LEDGER_WAIT_SECONDS:.0f} s; see {self.out / 'logs'}"
                )
            time.sleep(0.5)
        self.say(f"all {expected:,} records ledgered (usage records and dead letters)")
        self._settle_alerts()

    def _settle_alerts(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until the stream delivered as many alerts as the meter raised."""
        assert self.watcher is not None
        deadline = time.monotonic() + timeout
        raised = 0.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                raised = scrape(self.services["meter"].metrics_url).get(
                    "residuals_meter_violations_total", 0.0
                )
            if raised and sum(self.watcher.raised().values()) >= raised:
                return
            time.sleep(0.5)
        self.say(
            f"note: {sum(self.watcher.raised().values())} of {raised:.0f} alerts streamed"
            f" within {timeout:.0f} s"
        )

    # --- month end -------------------------------------------------------------------------

    def _month_end(self, scenario: Scenario) -> MonthEnd:
        period = str(scenario.window.period)
        self.say(f"closing {period} (PayoutService.ClosePeriod), exporting, paying, reconciling")
        self.finance = FinanceClient(
            self.services["payouts"].address, self.keys["admin"], self.keys["finance"]
        )
        try:
            return self.finance.month_end(period, self.out / "statements")
        except RuntimeError as error:
            raise DemoFailed(str(error)) from None

    def _conclude(self, scenario: Scenario, end: MonthEnd) -> None:
        assert self.fleet is not None and self.registry is not None and self.watcher is not None
        assert self.kafka is not None
        published = self.fleet.snapshot()
        out = self.out
        assert self.review is not None
        self.fleet.write_events(out / "events.jsonl", (p for p in published if p.replayable))
        period = str(scenario.window.period)
        # The review scene's uses happen now: part of the statement when now is in its period.
        review_events = [e for e in self.review.published if e["occurred_at"][:7] == period]
        with (out / "events.jsonl").open("a", encoding="utf-8") as events_file:
            for raw in review_events:
                events_file.write(json.dumps(raw, sort_keys=True) + "\n")
        write_rejections(out / "streaming-rejections.jsonl", published)
        rejections = streaming_rejections(published)
        hostile = hostile_vendor.landed(
            self.database_url, topic_name(self.kafka, USAGE), self.hostile_sent
        )
        hostile_vendor.write(out / "hostile.jsonl", hostile, period)
        rejections += hostile_vendor.rejections(hostile, period, self.hostile_name)
        # The licences the closed statement covers (Mai's, from the review scene, start
        # after a past period and are then not part of it).
        used = {str(e["licence_id"]) for e in review_events} | {
            str(p.raw.get("licence_id")) for p in published if p.replayable
        }
        licences = licences_for_period(
            registry_licences(self.registry.licences()), scenario.window.period, used
        )
        write_case(
            out / "case.yaml",
            name=f"residuals demo, seed {self.options.seed}",
            description=(
                "The demo month's licences as the registry holds them at the end, with the"
                " closed statement as `expected` (less the dead letters only streaming checks"
                " decide: see streaming-rejections.jsonl). Replay it with"
                " `residuals replay case.yaml --events events.jsonl --check`."
            ),
            period=str(scenario.window.period),
            licences=licences,
            thresholds=dict(scenario.thresholds),
            expected=without_streaming_only(end.document, rejections),
            approvals=self.review.granted,
        )
        offline = replay(out / "case.yaml", out / "events.jsonl", rejections)
        replay_hash = content_hash(offline)
        alerts = self.watcher.snapshot()
        with (out / "alerts.jsonl").open("w", encoding="utf-8") as f:
            for line in alerts:
                f.write(json.dumps(line.document(), sort_keys=True) + "\n")
        rec_lines = [f"Reconciliation of {scenario.window.period} (PayoutService.Reconcile)"]
        for ok, name, detail in end.checks:
            rec_lines.append(f"  [{'ok  ' if ok else 'FAIL'}] {name}")
            rec_lines += [f"         {d}" for d in detail.splitlines() if not ok or d]
        rec_lines.append(
            "reconciled: no differences" if end.reconciled else "reconciliation FAILED"
        )
        (out / "reconciliation.txt").write_text("\n".join(rec_lines) + "\n", encoding="utf-8")
        documents = self._documents(scenario, end)
        assert self.webhooks is not None
        hooks = self.webhooks.settle(out / "webhooks")
        talents, agents = report.talent_rows(scenario, end.document, end.payouts)
        over_http = self._over_http(scenario, published)
        summary = [
            "",
            f"Statement {end.statement_id} for {scenario.window.period}  sha256 {end.content_hash}",
            "",
            *report.table(talents, "talent"),
            "",
            *report.table(agents, "agent", "allocated"),
            "",
            "Violations",
            *report.violation_lines(end.document, self.watcher.raised()),
            "",
            *(line for _, line in over_http.values()),
            "",
            *hostile_vendor.summary(hostile, self.hostile_name),
            "",
            *self.review.summary(self.watcher.raised().get("UNAPPROVED_USE", 0)),
            "",
            *documents.summary(self._names(scenario)),
            "",
            *hooks.lines(),
            "",
            *rec_lines,
            "",
            f"offline replay of the published events: sha256 {replay_hash}"
            + ("  (identical)" if replay_hash == end.content_hash else "  (DIFFERENT)"),
        ]
        paid = [p for p in end.payouts if p.state == "PAID"]
        summary += [
            f"payouts: {len(paid)} paid through the file rail into {out / 'payouts'}",
            "",
            "Files:",
            *(f"  {path}  sha256 {sha}" for path, sha in end.files),
            f"  {out / 'case.yaml'} + {out / 'events.jsonl'}: replay with"
            f" `residuals replay {out / 'case.yaml'} --events {out / 'events.jsonl'} --check`",
            f"  {out / 'alerts.jsonl'}, {out / 'reconciliation.txt'}, {out / 'logs'}/",
            f"  database kept: DATABASE_URL={self.database_url} residuals finance statements",
            "",
            f"statement content hash: {end.content_hash}",
        ]
        (out / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
        self.timings["total"] = round(time.monotonic() - self.started, 1)
        manifest = {
            "seed": self.options.seed,
            "events_planned": len(scenario.events),
            "events_published": len(published),
            "seconds": self.options.seconds,
            "period": str(scenario.window.period),
            "window": [scenario.window.start.isoformat(), scenario.window.end.isoformat()],
            "statement_id": end.statement_id,
            "content_hash": end.content_hash,
            "replay_hash": replay_hash,
            "reconciled": end.reconciled,
            "alerts": len(alerts),
            "webhooks": hooks.summary,
            "typescript_sdk": {vendor: counts for vendor, (counts, _) in over_http.items()},
            "timings_seconds": self.timings,
            "run_id": self.run_id,
        }
        (out / "run.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        self.view.finish()
        for text in summary:
            self.say(text)
        self.say("timings: " + ", ".join(f"{k} {v:g} s" for k, v in self.timings.items()))
        if replay_hash != end.content_hash:
            raise DemoFailed(
                "the offline replay of the published events differs from the closed statement"
                f" ({replay_hash} != {end.content_hash})"
            )
        if not end.reconciled:
            raise DemoFailed(f"reconciliation found differences: see {out / 'reconciliation.txt'}")
        self.review.check()
        if documents.verified is None or documents.verified.exit_code != 0:
            raise DemoFailed(f"the talent's evidence bundle did not verify: {documents.bundle}")
        if documents.verified.expected_sha256 != documents.shown_part_sha256:
            raise DemoFailed("the verified evidence is not of the statement the talent's PDF shows")
        if hooks.problems:
            raise DemoFailed("webhooks: " + "; ".join(hooks.problems))
        wrong = [o for o in hostile if not o.as_expected]
        if wrong:
            raise DemoFailed(
                f"{len(wrong)} hostile records did not get the expected verdict: see"
                f" {out / 'hostile.jsonl'}"
            )

    def _over_http(
        self, scenario: Scenario, published: list[Published]
    ) -> dict[str, tuple[dict[str, int], str]]:
        """Per vendor publishing with the TypeScript SDK over HTTP: its events' outcomes,
        and the summary line saying so."""
        out: dict[str, tuple[dict[str, int], str]] = {}
        for vendor in scenario.vendors:
            if vendor.transport != HTTP:
                continue
            c = Counter(p.status for p in published if p.sender == vendor.vendor_id)
            counts = {"published": sum(c.values()), **{s.lower(): c[s] for s in sorted(c)}}
            rest = "".join(f", {c[s]:,} {s.lower()}" for s in ("REJECTED", "DUPLICATE") if c[s])
            line = (
                f"TypeScript SDK over HTTP: {vendor.name.split(' ')[0]} ({vendor.vendor_id})"
                f" published {counts['published']:,} events through the HTTP gateway"
                f" ({self.gateway_url}/v1/ingest:publishBatch): {c['DELIVERED']:,} delivered"
                f"{rest}"
            )
            out[vendor.vendor_id] = (counts, line)
        return out

    def _names(self, scenario: Scenario) -> dict[str, str]:
        return {**scenario.talent_names(), **{p.payee_id: p.name for p in scenario.payees}}

    def _documents(self, scenario: Scenario, end: MonthEnd) -> Documents:
        """Every payee's PDF and HTML, and one talent's evidence verified offline."""
        assert self.registry is not None
        period = str(scenario.window.period)
        kinds = {p.payee_id: p for p in scenario.payees}
        payees = sorted({p["payee_id"] for p in end.document["payees"]})
        clients = {
            payee_id: kinds[payee_id].talent_ids
            if payee_id in kinds and kinds[payee_id].kind == "agent"
            else ()
            for payee_id in payees
        }
        # the talent to prove: one whose likeness was misused (held money), else the first
        talent_of = {lic["licence_id"]: lic["talent_id"] for lic in scenario.licences}
        misused = [
            talent_of.get(lic["licence_id"], "") for lic in end.document["licences"] if lic["held"]
        ]
        own = [t for t in misused if t in payees] or [
            p for p in payees if p in scenario.talent_names()
        ]
        address = self.services["payouts"].address
        self.say(
            f"writing {len(payees)} payees' statements (PDF, HTML) and verifying"
            " one talent's evidence"
        )
        try:
            documents = write_documents(
                address,
                self.keys["finance"],
                period,
                [(p, clients[p]) for p in payees],
                self.out / "statements",
            )
            if own:
                key = self.registry.api_key(f"demo-{own[0]}", Role.TALENT, talent_id=own[0])
                prove(address, key, period, self.out / "evidence", documents)
        except (DocumentsError, RegistryError) as error:
            raise DemoFailed(str(error)) from None
        return documents

    # --- cleanup ---------------------------------------------------------------------------

    def _cleanup(self) -> None:
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.watcher is not None:
            steps.append(("alert stream", self.watcher.stop))
        if self.webhooks is not None:
            steps.append(("webhook receivers", self.webhooks.stop))
        if self.fleet is not None:
            steps.append(("SDK clients", lambda: self.fleet.close(5) if self.fleet else 0))
        for client in (self.registry, self.finance, self.probe):
            if client is not None:
                steps.append(("client", client.close))
        steps.append(("services", lambda: self.services.stop_all(log=self.say)))
        if self.kafka is not None:
            kafka = self.kafka
            steps.append(("topics", lambda: environment.delete_topics(kafka)))
        steps.append(("work folder", lambda: shutil.rmtree(self.out / ".work", True)))
        if self._log_handler is not None:
            handler = self._log_handler
            steps.append(("SDK log", handler.close))
        if self.claim is not None:
            steps.append(("demo lock", self.claim.release))
        if self.stack is not None and not self.options.keep_stack:
            stack = self.stack
            steps.append(("stack", lambda: stack.stop_started(self.say)))
        for name, step in steps:
            try:
                step()
            except Exception as error:  # keep cleaning up; say what was left
                self.say(f"cleanup: {name}: {error}")


@dataclass
class _Rates:
    """Per-second rates over the last few seconds (published, rated, stored)."""

    samples: list[tuple[float, float, float, float]] = field(default_factory=list)

    def update(self, published: float, rated: float, stored: float) -> tuple[float, float, float]:
        now = time.monotonic()
        self.samples.append((now, published, rated, stored))
        while len(self.samples) > 2 and now - self.samples[0][0] > 5:
            self.samples.pop(0)
        t0, p0, r0, s0 = self.samples[0]
        span = max(now - t0, 1e-6)
        if span < 0.5:
            return (0.0, 0.0, 0.0)
        return ((published - p0) / span, (rated - r0) / span, (stored - s0) / span)
