"""The vendors' side of the demo: one SDK client per vendor, publishing like a vendor does.

Three vendors publish straight to Kafka (``UsageClient.kafka``), Castly through the ingest
gateway (``UsageClient.grpc`` with its API key), and an attacker who can reach the usage
topic but holds no registered key signs as PixelForge with a forged key. Each client keeps
a durable spool under the demo's work folder.

The fleet also keeps the record the offline replay needs: every event handed to an SDK
client, in publishing order, with the SDK's verdict (``on_delivery``). What reached the
platform is what the statement is computed from:

* DELIVERED events are on the usage topic;
* events the gateway REJECTED were dead-lettered by it (the replay reaches the same
  verdict, except for checks only the streaming path can make: signatures, time window);
* events the gateway answered DUPLICATE were never written again (it had them already);
* the attacker's events reach the topic but cannot be authenticated (BAD_SIGNATURE).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from residuals.codecs.usage import to_raw
from residuals.demo.scenario import ATTACKER, GRPC, PlannedEvent, Scenario
from residuals.v1 import usage_pb2

#: Rejections only the streaming path can decide (docs/ROYALTY-RULES.md §2): a replay of the
#: payloads cannot reproduce them, so they are listed apart from the replayable events.
STREAMING_ONLY = frozenset({"BAD_SIGNATURE", "TOO_LATE", "IN_FUTURE", "OVERSIZED"})


class SdkMissing(RuntimeError):
    """The vendor SDK (sdk/python) is not installed in this environment."""


def sdk_module() -> Any:
    try:
        import residuals_sdk
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SdkMissing(
            "the vendor SDK is not installed: run `./run setup` (it installs sdk/python)"
        ) from error
    return residuals_sdk


@dataclass
class Published:
    """One event handed to an SDK client, and what became of it."""

    index: int
    sender: str
    raw: dict[str, Any]  # JSON-ready replay shape of the signed payload
    note: str = ""
    status: str = ""  # DELIVERED | DUPLICATE | REJECTED ("" while pending)
    reason: str = ""
    detail: str = ""
    via: str = "kafka"  # the sender's transport

    @property
    def replayable(self) -> bool:
        """Reached the platform as an authentic event the rules can judge again."""
        if self.sender == ATTACKER:
            return False
        if self.status == "DELIVERED":
            return True
        return self.status == "REJECTED" and self.via == GRPC and self.reason not in STREAMING_ONLY

    @property
    def streaming_only(self) -> bool:
        """Dead-lettered by a check the offline replay cannot make."""
        if self.sender == ATTACKER:
            return self.status == "DELIVERED"
        return self.status == "REJECTED" and self.via == GRPC and self.reason in STREAMING_ONLY

    @property
    def stored(self) -> bool:
        """A record the ledger writer stores: a usage record, or the gateway's dead letter
        (a record Kafka itself refused never reached the platform)."""
        return self.status == "DELIVERED" or (self.status == "REJECTED" and self.via == GRPC)


def json_raw(message: usage_pb2.UsageEvent) -> dict[str, Any]:
    """The payload as the rules see it (``to_raw``), with JSON-ready values."""
    raw = to_raw(message)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, Decimal):
            out[key] = format(value, "f")
        else:
            out[key] = value
    return out


@dataclass
class Fleet:
    """Every sender's SDK client, and the record of what each published."""

    scenario: Scenario
    usage_topic: str
    bootstrap_servers: str
    gateway_address: str
    api_keys: Mapping[str, str]  # vendor id -> API key (gateway vendors)
    signing_keys: Mapping[str, Any]  # vendor id -> residuals_sdk.SigningKey
    spool_root: Path
    on_report: Callable[[Published], None] = lambda p: None
    clients: dict[str, Any] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)
    _pending: dict[tuple[str, str], deque[Published]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.transports = {v.vendor_id: v.transport for v in self.scenario.vendors}

    def open(self) -> Fleet:
        sdk = sdk_module()
        for vendor in self.scenario.vendors:
            self.clients[vendor.vendor_id] = self._client(
                sdk, vendor.vendor_id, vendor.transport, self.signing_keys[vendor.vendor_id]
            )
        # Someone who can produce to the topic, claiming PixelForge's key id, without its key.
        genuine = self.signing_keys["VEN-PIXELFORGE"]
        forged = sdk.SigningKey.generate(genuine.key_id)
        self.clients[ATTACKER] = self._client(sdk, "VEN-PIXELFORGE", "kafka", forged, ATTACKER)
        return self

    def _client(
        self, sdk: Any, vendor_id: str, transport: str, key: Any, sender: str | None = None
    ) -> Any:
        sender = sender or vendor_id
        spool = self.spool_root / sender
        callback = self._callback(sender)
        if transport == GRPC:
            return sdk.UsageClient.grpc(
                vendor_id=vendor_id,
                signing_key=key,
                target=self.gateway_address,
                api_key=self.api_keys[vendor_id],
                spool_dir=spool,
                on_delivery=callback,
            )
        return sdk.UsageClient.kafka(
            vendor_id=vendor_id,
            signing_key=key,
            bootstrap_servers=self.bootstrap_servers,
            topic=self.usage_topic,
            spool_dir=spool,
            on_delivery=callback,
            producer_config={"client.id": f"demo-{sender}"},
        )

    def _callback(self, sender: str) -> Callable[[Any], None]:
        def report(delivery: Any) -> None:
            with self._lock:
                queue = self._pending.get((sender, delivery.event_id))
                if not queue:
                    return
                item = queue.popleft()
                item.status = str(delivery.status)
                item.reason = delivery.reason
                item.detail = delivery.detail
            self.on_report(item)

        return report

    # --- publishing -------------------------------------------------------------------------

    def publish(self, events: Sequence[PlannedEvent]) -> None:
        """Hand ``events`` to their senders' clients in order (one spool commit per run)."""
        run: list[PlannedEvent] = []
        for event in events:
            if run and event.sender != run[-1].sender:
                self._publish_run(run)
                run = []
            run.append(event)
        if run:
            self._publish_run(run)

    def _publish_run(self, events: list[PlannedEvent]) -> None:
        sender = events[0].sender
        client = self.clients[sender]
        messages = [sdk_event(e.raw) for e in events]
        with self._lock:
            for event, message in zip(events, messages, strict=True):
                payload = usage_pb2.UsageEvent.FromString(message.SerializeToString())
                item = Published(
                    len(self.published),
                    sender,
                    json_raw(payload),
                    event.note,
                    via=self.transports.get(sender, "kafka"),
                )
                self.published.append(item)
                self._pending.setdefault((sender, payload.event_id), deque()).append(item)
        client.publish_many(messages)

    def flush(self, timeout: float) -> int:
        """Wait until every client settled its events; returns how many are still pending."""
        return sum(client.flush(timeout) for client in self.clients.values())

    def close(self, timeout: float = 10.0) -> int:
        left = 0
        for client in self.clients.values():
            try:
                left += client.close(timeout)
            except Exception:  # closing must go on for the other clients
                left += 1
        self.clients.clear()
        return left

    # --- the record -------------------------------------------------------------------------

    def snapshot(self) -> list[Published]:
        with self._lock:
            return list(self.published)

    def write_events(self, path: Path, items: Iterable[Published]) -> int:
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for item in items:
                out.write(json.dumps(item.raw, sort_keys=True) + "\n")
                count += 1
        return count


def sdk_event(raw: Mapping[str, Any]) -> Any:
    """The SDK's ``UsageEvent`` for a scenario event (ids and times as scripted)."""
    build = sdk_module().events
    kind = raw["kind"]
    common = {"event_id": raw["event_id"], "vendor_id": raw["vendor_id"]}
    if kind == "RETRACTION":
        return build.retraction(
            **common,
            original_event_id=raw["original_event_id"],
            licence_id=raw.get("licence_id"),
            occurred_at=raw["occurred_at"],
        )
    usage = {
        **common,
        "licence_id": raw["licence_id"],
        "avatar_id": raw["avatar_id"],
        "render_id": raw["render_id"],
        "category": raw["category"],
        "territory": raw["territory"],
        "occurred_at": raw["occurred_at"],
        "quantity": int(raw.get("quantity", 1)),
    }
    if kind == "RENDER":
        return build.render(**usage)
    if kind == "VIEW":
        return build.view(
            **usage,
            channel=raw["channel"],
            viewable=raw.get("viewable", True),
            ivt=raw.get("ivt", False),
        )
    return build.ad_impression(
        **usage,
        channel=raw["channel"],
        ad_revenue=raw["ad_revenue"],
        ad_revenue_currency=raw.get("ad_revenue_currency", ""),
        ivt=raw.get("ivt", False),
    )
