"""The vendors' side of the demo: one SDK client per vendor, publishing like a vendor does.

Two vendors publish straight to Kafka (``UsageClient.kafka``), Castly through the ingest
gateway (``UsageClient.grpc`` with its API key), MuseAI with the TypeScript SDK over the
HTTP gateway (``UsageClient.http`` in a Node.js child process, :class:`NodeVendor`), and an
attacker who can reach the usage topic but holds no registered key signs as PixelForge with
a forged key. Each client keeps a durable spool under the demo's work folder.

The fleet also keeps the record the offline replay needs: every event handed to an SDK
client, in publishing order, with the SDK's verdict (``on_delivery``). What reached the
platform is what the statement is computed from:

* DELIVERED events are on the usage topic;
* events the gateway (gRPC or HTTP: the same ingest service judges both) REJECTED were
  dead-lettered by it (the replay reaches the same verdict, except for checks only the
  streaming path can make: signatures, time window);
* events the gateway answered DUPLICATE were never written again (it had them already);
* the attacker's events reach the topic but cannot be authenticated (BAD_SIGNATURE).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from residuals.codecs.usage import to_raw
from residuals.demo.scenario import ATTACKER, GATEWAY, GRPC, HTTP, PlannedEvent, Scenario
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
        return (
            self.status == "REJECTED" and self.via in GATEWAY and self.reason not in STREAMING_ONLY
        )

    @property
    def streaming_only(self) -> bool:
        """Dead-lettered by a check the offline replay cannot make."""
        if self.sender == ATTACKER:
            return self.status == "DELIVERED"
        return self.status == "REJECTED" and self.via in GATEWAY and self.reason in STREAMING_ONLY

    @property
    def stored(self) -> bool:
        """A record the ledger writer stores: a usage record, or the gateway's dead letter
        (a record Kafka itself refused never reached the platform)."""
        return self.status == "DELIVERED" or (self.status == "REJECTED" and self.via in GATEWAY)


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
    http_url: str = ""  # the HTTP gateway's base URL (vendors with transport HTTP)
    node: str = "node"  # the Node.js executable the HTTP vendors run under
    child_env: Mapping[str, str] = field(default_factory=dict)  # extra env of those processes
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
        if transport == HTTP:
            return NodeVendor.start(
                node=self.node,
                vendor_id=vendor_id,
                signing_key=key,
                base_url=self.http_url,
                api_key=self.api_keys[vendor_id],
                spool_dir=spool,
                on_delivery=callback,
                extra_env=self.child_env,
            )
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

    def check(self) -> None:
        """Raise :class:`VendorFailed` if a vendor's child process stopped or was refused."""
        for client in self.clients.values():
            if isinstance(client, NodeVendor):
                client.check()

    def published_by(self, transport: str) -> dict[str, int]:
        """Per vendor with ``transport``: events its client settled as DELIVERED."""
        with self._lock:
            counts = {v: 0 for v, t in self.transports.items() if t == transport}
            for item in self.published:
                if item.sender in counts and item.status == "DELIVERED":
                    counts[item.sender] += 1
        return counts

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


class VendorFailed(RuntimeError):
    """A vendor's publishing process (the TypeScript SDK's) stopped or was refused."""


@dataclass(frozen=True)
class _Report:
    """A delivery report from the Node.js vendor, shaped like the Python SDK's."""

    event_id: str
    status: str
    reason: str = ""
    detail: str = ""


class NodeVendor:
    """A vendor publishing with the TypeScript SDK over HTTP, in a Node.js child process
    (``sdk/typescript/scripts/demo-vendor.mjs``), behind the Python SDK client's interface:
    ``publish_many`` / ``flush`` / ``close``, reports through ``on_delivery``."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        key_file: Path,
        on_delivery: Callable[[Any], None],
        log: Path,
    ) -> None:
        self.process = process
        self.key_file = key_file
        self.log = log
        self.on_delivery = on_delivery
        self.error = ""
        self.left: int | None = None  # events the SDK kept in its spool at close
        self.sent = 0
        self.answered = 0
        self._settled = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="demo-node-vendor", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        *,
        node: str,
        vendor_id: str,
        signing_key: Any,
        base_url: str,
        api_key: str,
        spool_dir: Path,
        on_delivery: Callable[[Any], None],
        extra_env: Mapping[str, str] | None = None,
    ) -> NodeVendor:
        from residuals.demo.typescript import vendor_program

        spool_dir.mkdir(parents=True, exist_ok=True)
        # The private key goes to the SDK in a file only this user can read, never on argv.
        key_file = spool_dir.parent / f"{spool_dir.name}.signing-key.pem"
        key_file.unlink(missing_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(signing_key.private_pem())
        env = {
            **os.environ,
            "RESIDUALS_GATEWAY_URL": base_url,
            "RESIDUALS_API_KEY": api_key,
            "RESIDUALS_VENDOR_ID": vendor_id,
            "RESIDUALS_SIGNING_KEY_ID": signing_key.key_id,
            "RESIDUALS_SIGNING_KEY_FILE": str(key_file),
            "RESIDUALS_SPOOL_DIR": str(spool_dir),
            **(extra_env or {}),
        }
        log = spool_dir.parent / f"{spool_dir.name}.node.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [node, str(vendor_program())],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                encoding="utf-8",
                bufsize=1,
                start_new_session=True,  # Ctrl-C reaches the demo, which closes it
            )
        return cls(process, key_file, on_delivery, log)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "report" in message:
                r = message["report"]
                self.on_delivery(
                    _Report(r["event_id"], r["status"], r.get("reason", ""), r.get("detail", ""))
                )
                with self._settled:
                    self.answered += 1
                    self._settled.notify_all()
            elif "error" in message:
                self.error = self.error or str(message["error"])
            elif "closed" in message:
                self.left = int(message["closed"])
        with self._settled:
            self._settled.notify_all()

    def check(self) -> None:
        code = self.process.poll()
        if self.error or (code is not None and self.left is None):
            raise VendorFailed(
                f"the TypeScript SDK vendor {'was refused: ' + self.error if self.error else ''}"
                f"{'' if code is None else f' exited with status {code}'}; log: {self.log}:\n"
                + self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            )

    def publish_many(self, messages: Sequence[Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        lines = "".join(json.dumps(_fields(m), sort_keys=True) + "\n" for m in messages)
        try:
            stdin.write(lines)
            stdin.flush()
        except (BrokenPipeError, OSError):
            self.check()
            raise
        with self._settled:
            self.sent += len(messages)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._settled:
            while self.answered < self.sent:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error or self.process.poll() is not None:
                    break
                self._settled.wait(min(remaining, 0.5))
            left = self.sent - self.answered
        if left:
            self.check()
        return left

    def close(self, timeout: float) -> int:
        """Flush and close the SDK client (bounded): stdin ends, the program closes it."""
        try:
            if self.process.stdin is not None and not self.process.stdin.closed:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout + 2.0)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5.0)
        self.key_file.unlink(missing_ok=True)
        return self.left if self.left is not None else self.sent - self.answered


def _fields(message: usage_pb2.UsageEvent) -> dict[str, Any]:
    """The event's fields as fleet.sdk_event passes them to the Python SDK (replay shape)."""
    payload = usage_pb2.UsageEvent.FromString(message.SerializeToString())
    return json_raw(payload)


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
