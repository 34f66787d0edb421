"""The demo's webhook receivers: a talent and a vendor hear from Residuals without gRPC.

Before the month starts, one talent (Kofi, whose avatar is rendered into a political
campaign mid-month) and the vendor that later writes poison to the usage topic each
register a webhook endpoint with NotificationService, with their own API keys. A small
HTTP server on loopback plays both receivers: it checks every Standard Webhooks signature
with the SDK (``residuals_sdk.webhooks.verify_webhook``) and the endpoint's secret,
de-duplicates on ``webhook-id`` as the specification asks receivers to, and keeps what
arrived. At the end the demo shows what each received: the talent, the misuse of their
avatar within a second of its alert and the suspension it caused, their statement and
payout; the vendor, its own rejected events with reason and event id.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from residuals.platform.ports import free_port
from residuals.v1 import (
    common_pb2,
    notification_service_pb2,
    notification_service_pb2_grpc,
)

TALENT_TYPES = (
    "alert.raised",
    "licence.suspended",
    "licence.reinstated",
    "licence.revoked",
    "statement.ready",
    "payout.paid",
    "payout.failed",
)
VENDOR_TYPES = ("usage.rejected", "alert.raised")
#: Kofi: his avatar is rendered into a political campaign mid-month (scenario.py).
WEBHOOK_TALENT = "TAL-KOFI"
#: What each receiver must have got by the end, or the demo fails.
EXPECTED = {
    "talent": ("alert.raised", "licence.suspended", "statement.ready", "payout.paid"),
    "vendor": ("usage.rejected",),
}


@dataclass
class Received:
    """One verified message as a receiver kept it."""

    message_id: str
    event_type: str
    data: dict[str, Any]
    received_at: datetime
    attempts_seen: int = 1


@dataclass
class Receiver:
    """One endpoint's receiving side: its secret and what arrived (once per webhook-id)."""

    name: str
    secret: str = ""
    endpoint_id: str = ""
    messages: dict[str, Received] = field(default_factory=dict)
    refused: int = 0

    def by_type(self) -> Counter[str]:
        return Counter(m.event_type for m in self.messages.values())


class WebhookScene:
    """Receivers on 127.0.0.1, registered through NotificationService."""

    def __init__(self, notify_address: str, say: Callable[[str], None]) -> None:
        self.address = notify_address
        self.say = say
        self.port = free_port()
        self.receivers: dict[str, Receiver] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- the receiving server ---------------------------------------------------------------

    def start(self) -> WebhookScene:
        ready = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=1 << 20)
            app.router.add_post("/hooks/{name}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="demo-webhooks", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        from residuals_sdk.webhooks import WebhookVerificationError, verify_webhook

        receiver = self.receivers.get(request.match_info["name"])
        if receiver is None:
            return web.Response(status=404)
        body = await request.read()
        try:
            document = verify_webhook(receiver.secret, dict(request.headers), body)
        except WebhookVerificationError:
            with self._lock:
                receiver.refused += 1
            return web.Response(status=400, text="bad signature")
        message_id = request.headers["webhook-id"]
        with self._lock:
            seen = receiver.messages.get(message_id)
            if seen is not None:
                seen.attempts_seen += 1  # a redelivery: acknowledged, not processed twice
            else:
                receiver.messages[message_id] = Received(
                    message_id,
                    str(document.get("type", "")),
                    dict(document.get("data") or {}),
                    datetime.now(UTC),
                )
        return web.Response(status=204)

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # --- registration -----------------------------------------------------------------------

    def register(
        self, name: str, api_key: str, event_types: tuple[str, ...], description: str
    ) -> Receiver:
        receiver = self.receivers[name] = Receiver(name)
        with grpc.insecure_channel(self.address) as channel:
            stub = notification_service_pb2_grpc.NotificationServiceStub(channel)
            response = stub.CreateEndpoint(
                notification_service_pb2.CreateEndpointRequest(
                    url=f"http://127.0.0.1:{self.port}/hooks/{name}",
                    description=description,
                    event_types=list(event_types),
                    min_severity=common_pb2.SEVERITY_MEDIUM,
                ),
                metadata=(("authorization", f"Bearer {api_key}"),),
                timeout=10,
            )
        receiver.secret = response.secret
        receiver.endpoint_id = response.endpoint.endpoint_id
        return receiver

    def wait_for(self, name: str, event_types: tuple[str, ...], timeout: float) -> bool:
        """Wait (bounded) until ``name`` received each of ``event_types`` at least once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = set(self.receivers[name].by_type())
            if set(event_types) <= got:
                return True
            time.sleep(0.2)
        return False

    # --- what arrived ---------------------------------------------------------------------

    def settle(self, directory: Path, timeout: float = 30.0) -> Settled:
        """Wait (bounded) for what each receiver must have got, then write it down."""
        deadline = time.monotonic() + timeout
        for name, types in EXPECTED.items():
            self.wait_for(name, types, max(0.1, deadline - time.monotonic()))
        self.write(directory)
        summary = self.summary()
        problems = []
        for name, types in EXPECTED.items():
            missing = [t for t in types if t not in summary[name]["by_type"]]
            if missing:
                problems.append(f"the {name}'s receiver got no {', '.join(missing)}")
            if summary[name]["bad_signatures"]:
                problems.append(f"{summary[name]['bad_signatures']} bad signatures ({name})")
        return Settled(summary, problems, directory)

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for name, receiver in self.receivers.items():
                with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                    for m in sorted(receiver.messages.values(), key=lambda m: m.received_at):
                        line = {
                            "webhook_id": m.message_id,
                            "type": m.event_type,
                            "received_at": m.received_at.isoformat(),
                            "deliveries_seen": m.attempts_seen,
                            "data": m.data,
                        }
                        f.write(json.dumps(line, sort_keys=True) + "\n")

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {
                    "endpoint_id": r.endpoint_id,
                    "messages": len(r.messages),
                    "by_type": dict(sorted(r.by_type().items())),
                    "bad_signatures": r.refused,
                    **_alert_lag(r.messages.values()),
                }
                for name, r in self.receivers.items()
            }


def _alert_lag(messages: Any) -> Mapping[str, Any]:
    """Seconds from each alert's raising to its arrival at the receiver (max, p50)."""
    lags = []
    for m in messages:
        raised = m.data.get("raised_at") if m.event_type == "alert.raised" else None
        if not raised:
            continue
        try:
            moment = datetime.fromisoformat(str(raised).replace("Z", "+00:00"))
        except ValueError:
            continue
        lags.append((m.received_at - moment).total_seconds())
    if not lags:
        return {}
    lags.sort()
    return {
        "alert_lag_p50_s": round(lags[len(lags) // 2], 3),
        "alert_lag_max_s": round(lags[-1], 3),
    }


@dataclass(frozen=True)
class Settled:
    summary: dict[str, Any]
    problems: list[str]
    directory: Path

    def lines(self) -> list[str]:
        talent, vendor = self.summary["talent"], self.summary["vendor"]
        lag = (
            f"; alerts arrived {talent['alert_lag_p50_s']} s (median) and at most"
            f" {talent['alert_lag_max_s']} s after they were raised"
            if "alert_lag_max_s" in talent
            else ""
        )
        return [
            "Webhooks (NotificationService; each Standard Webhooks signature verified on receipt)",
            f"  Kofi's receiver: {talent['messages']} notices ({_types(talent)}){lag}",
            f"  the poisoning vendor's receiver: {vendor['messages']} notices ({_types(vendor)})",
            f"  what each received: {self.directory}/talent.jsonl, {self.directory}/vendor.jsonl",
        ]


def _types(receiver: Mapping[str, Any]) -> str:
    return ", ".join(f"{t} {n}" for t, n in receiver["by_type"].items()) or "none"
