"""Notifications end to end, on the real stack: usage -> meter -> notify -> webhooks.

A talent's receiver gets a signed notice of the misuse of their avatar (a political render:
the meter raises FORBIDDEN_CATEGORY), and the vendor's receiver gets its own rejected
events (usage.rejected) - both through a SIGKILL of notify while more misuse and more
rejections happen. The receivers are plain HTTP servers on loopback that check every
signature with the ``standardwebhooks`` package (interoperability, not our verifier) and
de-duplicate on webhook-id, as the specification asks receivers to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aiohttp import web
from confluent_kafka.admin import NewTopic
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from residuals.licensing.registry import create_api_key
from residuals.platform.auth import Principal, Role
from residuals.platform.kafka import make_admin
from residuals.platform.ports import free_port
from residuals.platform.processes import ServiceProcess
from residuals.platform.topics import PAYOUTS
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, notification_service_pb2, notification_service_pb2_grpc
from tests.support.builders import licence_spec
from tests.support.metering import Pipeline, pipeline, wait_serving

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    secret: str = ""
    first: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    repeats: int = 0
    bad: int = 0


class Receivers:
    """POST /<name>: verify, keep the first arrival of each webhook-id, answer 204."""

    def __init__(self) -> None:
        self.port = free_port()
        self.by_name: dict[str, Receiver] = {"talent": Receiver(), "vendor": Receiver()}
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        receiver = self.by_name[request.match_info["name"]]
        body = await request.read()
        try:
            payload = Webhook(receiver.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            with self.lock:
                receiver.bad += 1
            return web.Response(status=400)
        with self.lock:
            msg = request.headers["webhook-id"]
            if msg in receiver.first:
                receiver.repeats += 1
            else:
                receiver.first[msg] = (time.time(), payload)
        return web.Response(status=204)

    def of_type(self, name: str, event_type: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [v for v in self.by_name[name].first.values() if v[1]["type"] == event_type]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def api_key(dsn: str, principal: Principal) -> str:
    """A key of ``principal``, its talent or vendor registered first (keys name parties)."""
    with psycopg.connect(dsn) as conn:
        if principal.talent_id:
            conn.execute(
                "INSERT INTO talents (talent_id, created_by) VALUES (%s, 'test')"
                " ON CONFLICT DO NOTHING",
                (principal.talent_id,),
            )
        if principal.vendor_id:
            conn.execute(
                "INSERT INTO vendors (vendor_id, created_by) VALUES (%s, 'test')"
                " ON CONFLICT DO NOTHING",
                (principal.vendor_id,),
            )
        _, plaintext = create_api_key(conn, principal, "notify e2e", "test", datetime.now(UTC))
    return plaintext


def register(address: str, key: str, url: str, types: list[str]) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = notification_service_pb2_grpc.NotificationServiceStub(channel)
        response = stub.CreateEndpoint(
            notification_service_pb2.CreateEndpointRequest(
                url=url, event_types=types, min_severity=common_pb2.SEVERITY_LOW
            ),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=10,
        )
    return str(response.secret)


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    found = Receivers()
    yield found
    found.close()


def notify_service(run: Pipeline) -> ServiceProcess:
    env = {
        **run.service_env("notify"),
        "NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
        "NOTIFY_ALLOW_HTTP": "true",
        "NOTIFY_RETRY_SCHEDULE_SECONDS": "0.5,1,2",
        "NOTIFY_LEASE_SECONDS": "2",
    }
    return ServiceProcess("notify", "residuals.notify", env, run.work_dir, log_per_start=True)


def test_misuse_and_rejections_reach_webhooks_through_a_notify_kill(
    stack: StackSettings, tmp_path: Path, receivers: Receivers
) -> None:
    with pipeline(stack, tmp_path) as run:
        # notify reads the payouts topic too, which the metering pipeline does not make
        admin = make_admin(run.kafka)
        for future in admin.create_topics(
            [NewTopic(run.topic(PAYOUTS), num_partitions=run.partitions)], operation_timeout=30
        ).values():
            future.result(60)
        vendor = run.vendor("VEN-HOOK")
        talent = f"TAL-HOOK-{run.run_id}"
        licence_id = f"LIC-HOOK-{run.run_id}"
        run.publish_licences(
            [licence_spec(licence_id=licence_id, vendor_id=vendor, talent_id=talent)]
        )
        run.publish_keys([vendor])
        meter = run.meter().start()
        notify = notify_service(run).start()
        try:
            wait_serving(meter)
            wait_serving(notify)
            base = f"http://127.0.0.1:{receivers.port}"
            receivers.by_name["talent"].secret = register(
                notify.address,
                api_key(run.dsn, Principal(f"t-{run.run_id}", Role.TALENT, talent_id=talent)),
                f"{base}/talent",
                ["alert.raised", "licence.suspended"],
            )
            receivers.by_name["vendor"].secret = register(
                notify.address,
                api_key(run.dsn, Principal(f"v-{run.run_id}", Role.VENDOR, vendor_id=vendor)),
                f"{base}/vendor",
                ["usage.rejected"],
            )
            now = datetime.now(UTC).replace(microsecond=0)

            def use(n: int, **fields: Any) -> dict[str, Any]:
                return {
                    "event_id": f"hook-{run.run_id}-{n}",
                    "vendor_id": vendor,
                    "kind": "RENDER",
                    "licence_id": licence_id,
                    "avatar_id": "AVA-1",
                    "render_id": f"r-{n}",
                    "category": "product_demo",
                    "territory": "US",
                    "occurred_at": f"{now - timedelta(seconds=30):%Y-%m-%dT%H:%M:%SZ}",
                    **fields,
                }

            # 1. misuse and a refused event while notify runs
            published = time.time()
            run.produce(
                [
                    run.usage_record(use(1, category="political"), receive_delay=timedelta(0)),
                    run.usage_record(use(2, quantity=0), receive_delay=timedelta(0)),
                ]
            )
            wait_until(lambda: receivers.of_type("talent", "alert.raised"), 60, "the alert")
            wait_until(lambda: receivers.of_type("vendor", "usage.rejected"), 60, "the rejection")
            (arrived, alert), *_ = receivers.of_type("talent", "alert.raised")
            assert alert["data"]["kind"] == "FORBIDDEN_CATEGORY"
            assert (
                alert["data"]["talent_id"] == talent and alert["data"]["licence_id"] == licence_id
            )
            print(f"misuse -> the talent's webhook: {arrived - published:.3f} s")
            (_, rejected), *_ = receivers.of_type("vendor", "usage.rejected")
            assert rejected["data"]["reason"] == "INVALID_QUANTITY"
            assert rejected["data"]["event_id"] == f"hook-{run.run_id}-2"
            assert rejected["data"]["vendor_id"] == vendor

            # 2. notify killed; more misuse and refusals while it is down; started again
            notify.kill()
            run.produce(
                [
                    run.usage_record(use(3, category="political"), receive_delay=timedelta(0)),
                    run.usage_record(use(4, quantity=0), receive_delay=timedelta(0)),
                    run.usage_record(use(5, quantity=2_000_000), receive_delay=timedelta(0)),
                ]
            )
            time.sleep(2.0)
            notify.restart()
            wait_serving(notify)
            wait_until(
                lambda: len(receivers.of_type("vendor", "usage.rejected")) >= 3,
                90,
                "every rejection through the restart",
            )
            wait_until(
                lambda: len(receivers.of_type("talent", "alert.raised")) >= 2,
                90,
                "the misuse during the restart",
            )
            time.sleep(2.0)  # a repeat would arrive now
        finally:
            notify.stop()
            meter.stop()
        talent_seen = receivers.by_name["talent"]
        vendor_seen = receivers.by_name["vendor"]
        assert talent_seen.bad == 0 and vendor_seen.bad == 0
        rejected_ids = {
            v[1]["data"]["event_id"] for v in receivers.of_type("vendor", "usage.rejected")
        }
        assert rejected_ids == {f"hook-{run.run_id}-{n}" for n in (2, 4, 5)}
        assert all(v[1]["data"]["vendor_id"] == vendor for v in vendor_seen.first.values())
        alerted = {
            e
            for v in receivers.of_type("talent", "alert.raised")
            for e in v[1]["data"]["event_ids"]
        }
        assert f"hook-{run.run_id}-3" in alerted
        # the talent never hears of the vendor's malformed traffic
        assert not receivers.of_type("talent", "usage.rejected")
        # secrets never reach the logs, of either start
        logs = [path.read_text() for path in run.work_dir.glob("notify-*.log")]
        assert len(logs) == 2 and all(logs)
        for secret in (talent_seen.secret, vendor_seen.secret):
            assert secret.startswith("whsec_")
            assert not any(secret in text or secret[6:] in text for text in logs)
        assert not any("whsec_" in text for text in logs)
