"""Review before use, end to end over real Kafka, PostgreSQL and gRPC (issue 16).

The licensing service (its own process, outbox relay on) holds a licence whose scope needs
the talent's approval for ``insurance``. The vendor runs the SDK README's approvals example
as written (CheckUse → RequestApproval → WaitForApproval), while the talent, watching its
inbox (WatchApprovalRequests), approves two renders. The vendor then renders three times
naming the approval, and once without asking, through the SDK to the usage topic; the
meter (which learns the approval from the compacted approvals topic while it runs) and
the ledger writer store them. Expected: the first two approved renders billed, the third
held as UNAPPROVED_USE, the unasked one held too, each held use an UNAPPROVED_USE alert on
the talent's WatchAlerts, and CheckUse then reports no approved renders left.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from confluent_kafka.admin import NewTopic
from residuals_sdk import ApprovalsClient, SigningKey, UsageClient

from residuals.domain.licence_spec import parse_licence
from residuals.licensing.registry import Registry
from residuals.platform.auth import Principal, Role, bearer_metadata
from residuals.platform.config import PostgresSettings
from residuals.platform.kafka import make_admin
from residuals.platform.postgres import Database
from residuals.platform.processes import ServiceProcess
from residuals.platform.roles import database_role
from residuals.platform.topics import APPROVALS, USAGE
from residuals.stack.settings import StackSettings
from residuals.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    alerts_pb2,
    approval_service_pb2,
    approval_service_pb2_grpc,
    approvals_pb2,
    common_pb2,
    licence_service_pb2,
)
from tests.support.licensing import api_key, register_licences
from tests.support.metering import Pipeline, pipeline, wait_serving
from tests.support.payouts import migrated_database

REPO = Path(__file__).resolve().parents[2]
ADMIN = Principal("e2e-admin", Role.ADMIN)


@dataclass
class World:
    run: Pipeline
    licensing: ServiceProcess
    alerts: ServiceProcess
    services: list[ServiceProcess]
    licence_id: str
    avatar_id: str
    vendor_id: str
    vendor_key: str
    talent_key: str
    signing: SigningKey
    random_licence_id: str


def _spec(run_id: str, name: str = "REVIEW", **terms: Any) -> dict[str, Any]:
    return {
        "licence_id": f"LIC-{name}-{run_id}",
        "version": 1,
        "talent_id": f"TAL-REVIEW-{run_id}",
        "avatar_id": f"AVA-REVIEW-{run_id}",
        "vendor_id": f"VEN-REVIEW-{run_id}",
        "currency": "USD",
        "starts_at": "2026-01-01T00:00:00Z",
        "scope": {
            "categories_allowed": ["education", "insurance"],
            "categories_forbidden": ["political"],
            "approval_required": ["insurance"],
            "territories_allowed": ["*"],
            "channels_allowed": ["web"],
        },
        "rates": {"render_tiers": [{"up_to": None, "unit_price": "2.00"}], "view_cpm": "4.00"},
        "splits": {f"TAL-REVIEW-{run_id}": "1"},
        **terms,
    }


def _random_spec(run_id: str) -> dict[str, Any]:
    """The licence the random uses are judged against: a blocking render quota, and no
    automatic suspension (the registry learns of the meter's only through the alerts
    service, a moment later, so the two would disagree about uses in that moment)."""
    return _spec(
        run_id,
        "RANDOM",
        quotas=[{"metric": "RENDER", "limit": 8, "on_exceed": "block"}],
        auto_suspend_on_critical=False,
    )


@pytest.fixture(scope="module")
def world(stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("approvals-e2e")
    with migrated_database(stack) as dsn, pipeline(stack, work) as run:
        run.dsn = dsn
        admin = make_admin(run.kafka)
        created = admin.create_topics(
            [
                NewTopic(
                    run.topic(APPROVALS), num_partitions=run.partitions, config=APPROVALS.config()
                )
            ]
        )
        for future in created.values():
            try:
                future.result(timeout=60)
            except Exception as error:  # the pipeline may already make it
                if "TOPIC_ALREADY_EXISTS" not in str(error):
                    raise
        licence = parse_licence(_spec(run.run_id))
        random_licence = parse_licence(_random_spec(run.run_id))
        signing = SigningKey.generate(f"sk-review-{run.run_id}")
        settings = PostgresSettings(
            dsn=dsn, pool_min=0, pool_max=2, user=database_role("licensing")
        )
        with Database(settings, application_name="e2e").open() as db:
            registry = Registry(db)
            register_licences(registry, ADMIN, licence, random_licence)
            registry.register_signing_key(
                ADMIN,
                licence_service_pb2.RegisterSigningKeyRequest(
                    vendor_id=licence.vendor_id,
                    public_key=signing.public_key_bytes(),
                    key_id=signing.key_id,
                ),
            )
        vendor_key = api_key(dsn, Principal("e2e-vendor", Role.VENDOR, vendor_id=licence.vendor_id))
        talent_key = api_key(dsn, Principal("e2e-talent", Role.TALENT, talent_id=licence.talent_id))
        suspender_key = api_key(dsn, Principal("e2e-alerts", Role.SUSPENDER))
        licensing = ServiceProcess(
            "licensing",
            "residuals.licensing",
            {**run.service_env("licensing"), "LICENSING_OUTBOX_POLL_SECONDS": "0.2"},
            work,
        ).start()
        services = [licensing]
        try:
            wait_serving(licensing)
            alerts = ServiceProcess(
                "alerts",
                "residuals.alerts",
                {
                    **run.service_env("alerts"),
                    "ALERTS_CONSUMER_GROUP": f"{run.kafka.topic_prefix}alerts",
                    "ALERTS_LICENSING_ADDRESS": licensing.address,
                    "ALERTS_LICENSING_API_KEY": suspender_key,
                },
                work,
            ).start()
            services += [alerts, run.meter().start(), run.ledger().start()]
            for service in services[1:]:
                wait_serving(service)
            yield World(
                run,
                licensing,
                alerts,
                services,
                licence.licence_id,
                licence.avatar_id,
                licence.vendor_id,
                vendor_key,
                talent_key,
                signing,
                random_licence.licence_id,
            )
        finally:
            for service in reversed(services):
                service.stop()


class Talent(threading.Thread):
    """The talent's agent: watches the inbox and approves what arrives (two renders)."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.approved: list[str] = []
        self.error: BaseException | None = None
        self._channel = grpc.insecure_channel(world.licensing.address)
        self._stub = approval_service_pb2_grpc.ApprovalServiceStub(self._channel)
        self._metadata = bearer_metadata(world.talent_key)

    def run(self) -> None:
        try:
            inbox = self._stub.WatchApprovalRequests(
                approval_service_pb2.WatchApprovalRequestsRequest(
                    pending_only=True, heartbeat_seconds=1
                ),
                metadata=self._metadata,
                timeout=120,
            )
            for item in inbox:
                if not item.HasField("approval") or item.approval.status != 1:
                    continue
                self._stub.ApproveUse(
                    approval_service_pb2.ApproveUseRequest(
                        approval_id=item.approval.approval_id,
                        max_renders=2,
                        note="two renders, UK web only",
                    ),
                    metadata=self._metadata,
                    timeout=10,
                )
                self.approved.append(item.approval.approval_id)
                inbox.cancel()
                return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self._channel.close()


def _readme_block() -> str:
    readme = (REPO / "sdk" / "python" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if "ApprovalsClient(" in b]
    return block


def _outcomes(world: World) -> dict[str, tuple[str, str | None, str | None]]:
    with psycopg.connect(world.run.dsn) as conn:
        rows = conn.execute(
            "SELECT render_id, outcome, violation, approval_id FROM usage_events"
            " WHERE licence_id = %s",
            (world.licence_id,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_request_approval_render_and_hold_past_max(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    talent = Talent(world)
    talent.start()
    block = _readme_block()
    for old, new in {
        "licensing.residuals.example:443": world.licensing.address,
        "rsd_0123456789abcdef_...": world.vendor_key,
        "LIC-BO-PIXEL": world.licence_id,
        "AVA-BO-1": world.avatar_id,
    }.items():
        block = block.replace(old, new)
    namespace: dict[str, Any] = {}
    exec(compile(block, "sdk/python/README.md", "exec"), namespace)
    talent.join(30)
    assert talent.error is None
    assert talent.approved == [namespace["approval_id"]]
    printed = capsys.readouterr().out.split()
    assert printed[:2] == ["ALLOW", "2"]  # approved, two renders covered
    approval_id = namespace["approval_id"]

    with UsageClient.kafka(
        vendor_id=world.vendor_id,
        signing_key=world.signing,
        bootstrap_servers=world.run.kafka.bootstrap_servers,
        topic=world.run.topic(USAGE),
        spool_dir=None,
    ) as client:
        for n in range(3):
            client.render(
                licence_id=world.licence_id,
                avatar_id=world.avatar_id,
                render_id=f"approved-{n}",
                category="insurance",
                territory="GB",
                approval_id=approval_id,
            )
            assert client.flush(30) == 0  # in order: the meter counts in arrival order
        client.render(
            licence_id=world.licence_id,
            avatar_id=world.avatar_id,
            render_id="unasked",
            category="insurance",
            territory="GB",
        )
        assert client.flush(30) == 0
    world.run.wait_ledgered(4, 120, world.services)

    held = ("HELD", "UNAPPROVED_USE")
    outcomes = _outcomes(world)
    assert outcomes == {
        "approved-0": ("ACCEPTED", None, approval_id),
        "approved-1": ("ACCEPTED", None, approval_id),
        "approved-2": (*held, approval_id),
        "unasked": (*held, None),
    }

    with ApprovalsClient(target=world.licensing.address, api_key=world.vendor_key) as approvals:
        after = approvals.check_use(
            licence_id=world.licence_id,
            avatar_id=world.avatar_id,
            category="insurance",
            territory="GB",
            approval_id=approval_id,
        )
    assert (after.verdict, after.approved_renders_remaining) == ("NEEDS_APPROVAL", 0)

    alerts = _unapproved_alerts(world, expect=2)
    assert sorted(e for a in alerts for e in a.event_ids) == sorted(
        _event_ids(world, ("approved-2", "unasked"))
    )
    assert {a.severity for a in alerts} == {common_pb2.SEVERITY_HIGH}


def _event_ids(world: World, render_ids: tuple[str, ...]) -> list[str]:
    with psycopg.connect(world.run.dsn) as conn:
        rows = conn.execute(
            "SELECT event_id FROM usage_events WHERE licence_id = %s AND render_id = ANY(%s)",
            (world.licence_id, list(render_ids)),
        ).fetchall()
    return [r[0] for r in rows]


def _unapproved_alerts(world: World, expect: int) -> list[alerts_pb2.Alert]:
    """The talent's WatchAlerts stream, until ``expect`` UNAPPROVED_USE alerts arrived."""
    found: dict[str, alerts_pb2.Alert] = {}
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(world.alerts.address) as channel:
        stub = alert_service_pb2_grpc.AlertServiceStub(channel)
        while len(found) < expect and time.monotonic() < deadline:
            stream = stub.WatchAlerts(
                alert_service_pb2.WatchAlertsRequest(heartbeat_seconds=1),
                metadata=bearer_metadata(world.talent_key),
                timeout=max(1.0, min(10.0, deadline - time.monotonic())),
            )
            try:
                for item in stream:
                    alert = item.alert if item.HasField("alert") else None
                    if alert is not None and alert.kind == (
                        common_pb2.VIOLATION_KIND_UNAPPROVED_USE
                    ):
                        found[alert.alert_id] = alert
                    if len(found) >= expect:
                        stream.cancel()
                        break
            except grpc.RpcError as error:
                if error.code() not in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise
    assert len(found) == expect, f"{len(found)} UNAPPROVED_USE alerts streamed, not {expect}"
    return list(found.values())


# --- CheckUse and the meter agree --------------------------------------------------------

_VERDICT_OUTCOME = {"ALLOW": "ACCEPTED", "DENY": "HELD", "NEEDS_APPROVAL": "HELD"}


def _random_uses(seed: int, approval_id: str, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    made = []
    for n in range(count):
        kind = rng.choice(["RENDER", "RENDER", "RENDER", "VIEW"])
        use: dict[str, Any] = {
            "kind": kind,
            "category": rng.choice(["education", "insurance", "insurance", "political", "gaming"]),
            "territory": rng.choice(["GB", "GB", "US"]),
            "approval_id": rng.choice([None, approval_id, approval_id, "apr-not-granted"]),
            "quantity": rng.choice([1, 1, 2]),
            "render_id": f"random-{n}",
        }
        if kind == "VIEW":
            use["channel"] = rng.choice(["web", "web", "broadcast"])
            use["quantity"] = rng.choice([1, 500])
        made.append(use)
    return made


def _approve(world: World, licence_id: str, renders: int) -> str:
    """A request for ``licence_id``'s insurance use, approved by the talent."""
    with grpc.insecure_channel(world.licensing.address) as channel:
        stub = approval_service_pb2_grpc.ApprovalServiceStub(channel)
        asked = stub.RequestApproval(
            approval_service_pb2.RequestApprovalRequest(
                request_id=f"random-{uuid.uuid4().hex[:8]}",
                licence_id=licence_id,
                category="insurance",
                use=approvals_pb2.UseDescription(brief="random uses"),
                renders_requested=renders,
            ),
            metadata=bearer_metadata(world.vendor_key),
            timeout=10,
        ).approval
        stub.ApproveUse(
            approval_service_pb2.ApproveUseRequest(approval_id=asked.approval_id),
            metadata=bearer_metadata(world.talent_key),
            timeout=10,
        )
    return str(asked.approval_id)


def _wait_outcome(world: World, event_id: str) -> tuple[str, str | None]:
    deadline = time.monotonic() + 60
    with psycopg.connect(world.run.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT outcome, violation FROM usage_events WHERE event_id = %s", (event_id,)
            ).fetchone()
            if row is not None:
                return str(row[0]), row[1]
            time.sleep(0.1)
    raise AssertionError(f"{event_id} not ledgered in 60 s")


def test_check_use_gives_the_verdict_the_meter_records(world: World) -> None:
    """Random uses, each asked through CheckUse and then sent through the pipeline with
    nothing in between (the same state): the meter records what CheckUse answered."""
    licence_id = world.random_licence_id
    approval_id = _approve(world, licence_id, renders=3)
    uses = _random_uses(16, approval_id, 30)
    compared: list[tuple[str, str | None, str, str | None]] = []
    with (
        ApprovalsClient(target=world.licensing.address, api_key=world.vendor_key) as approvals,
        UsageClient.kafka(
            vendor_id=world.vendor_id,
            signing_key=world.signing,
            bootstrap_servers=world.run.kafka.bootstrap_servers,
            topic=world.run.topic(USAGE),
            spool_dir=None,
        ) as client,
    ):
        deadline = time.monotonic() + 60
        while approvals.get_approval(approval_id).status != "APPROVED" and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        time.sleep(2)  # the relay and the meter's replica carry the decision
        for use in uses:
            common = {
                "licence_id": licence_id,
                "avatar_id": world.avatar_id,
                "category": use["category"],
                "territory": use["territory"],
                "approval_id": use["approval_id"],
                "quantity": use["quantity"],
            }
            channel = use.get("channel")
            check = approvals.check_use(kind=use["kind"], channel=channel, **common)
            if use["kind"] == "RENDER":
                event_id = client.render(render_id=use["render_id"], **common)
            else:
                event_id = client.view(render_id="random-0", channel=channel, **common)
            assert client.flush(30) == 0
            outcome, violation = _wait_outcome(world, event_id)
            compared.append((check.verdict, check.violation, outcome, violation))
    verdicts = {c[0] for c in compared}
    assert verdicts == {"ALLOW", "DENY", "NEEDS_APPROVAL"}, compared  # the mix covers all
    disagreements = [c for c in compared if (_VERDICT_OUTCOME[c[0]], c[1]) != (c[2], c[3])]
    assert disagreements == [], disagreements
