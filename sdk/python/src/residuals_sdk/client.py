"""``UsageClient``: sign, spool, deliver and report usage events.

Life of an event::

    client.render(...)                       caller's thread
      build UsageEvent (UUIDv7 id) → serialize once → Ed25519-sign → SignedUsageEvent
      → append to the spool (committed) → hand to the transport → return the event id
    client.publish_many([...])               the same for many events, with one spool
      commit and one signature per chunk of up to ``signature_batch_size`` events (the
      Merkle root of the chunk; each envelope carries its inclusion proof)
    sender thread
      transport outcome → DELIVERED / DUPLICATE / REJECTED: delete from the spool, call
      on_delivery; transient failure: re-send after exponential backoff with jitter

At most ``max_in_flight`` events are held in memory; beyond that they wait in the spool
and are loaded in order as room frees up. A client started on a spool that still holds
events (the broker was down, the process was killed) re-sends them first.

Guarantee: every event a publishing call accepted (returned an id for) reaches the
platform at least once; the platform drops exact repeats by ``(vendor_id, event_id)``.
A repeat on the topic can only happen if the process dies between the broker's
acknowledgement and the spool delete, or if ``close()`` gives up on events in flight.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from residuals_sdk import events as build
from residuals_sdk import tracing
from residuals_sdk._proto import common_pb2, usage_pb2
from residuals_sdk.errors import ClientClosedError
from residuals_sdk.ids import uuid7
from residuals_sdk.report import DeliveryCallback, DeliveryReport, DeliveryStatus
from residuals_sdk.retry import RetryPolicy
from residuals_sdk.signing import SigningKey, sign_batch
from residuals_sdk.spool import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_EVENTS,
    NewEvent,
    Spool,
    SpooledEvent,
)
from residuals_sdk.transports.base import Outcome, Transport

log = logging.getLogger("residuals_sdk")

DEFAULT_MAX_IN_FLIGHT = 50_000
#: Events per batch signature in publish_many: 256 leaves make 8-hash (~290-byte) proofs.
DEFAULT_SIGNATURE_BATCH_SIZE = 256
_POLL_SECONDS = 0.05
_BACKPRESSURE_RETRY = 0.05


class UsageClient:
    """Publishes one vendor's usage events through one transport.

    Build it with :meth:`kafka` or :meth:`grpc`; use it as a context manager or call
    :meth:`close`. Publishing methods are thread-safe and return the event id once the
    event is durably spooled (not yet delivered: ``on_delivery`` says when it is).
    """

    def __init__(
        self,
        *,
        vendor_id: str,
        signing_key: SigningKey,
        transport: Transport,
        spool: Spool,
        on_delivery: DeliveryCallback | None = None,
        retry: RetryPolicy | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        signature_batch_size: int = DEFAULT_SIGNATURE_BATCH_SIZE,
    ) -> None:
        if not vendor_id:
            raise ValueError("vendor_id is required")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        if signature_batch_size < 1:
            raise ValueError("signature_batch_size must be positive (1: a signature per event)")
        self.vendor_id = vendor_id
        self.signing_key = signing_key
        self.transport = transport
        self.spool = spool
        self.on_delivery = on_delivery
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.signature_batch_size = signature_batch_size

        self._cond = threading.Condition()
        self._in_flight: dict[int, SpooledEvent] = {}
        self._attempts: dict[int, int] = {}
        self._retries: list[tuple[float, int]] = []  # (due monotonic time, seq) heap
        self._loaded_upto = 0  # highest spool seq loaded into memory
        self._backlog = spool.count > 0  # spooled events not loaded yet
        self._closing = False
        self._closed = False
        self._left = 0
        self._sender = threading.Thread(
            target=self._run, name=f"residuals-sdk-{transport.name}", daemon=True
        )
        self._sender.start()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def kafka(
        cls,
        *,
        vendor_id: str,
        signing_key: SigningKey,
        bootstrap_servers: str,
        spool_dir: str | Path | None,
        topic: str = "residuals.usage.v1",
        producer_config: dict[str, Any] | None = None,
        insecure: bool = False,
        on_delivery: DeliveryCallback | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_max_events: int = DEFAULT_MAX_EVENTS,
        spool_durability: str = "process",
        retry: RetryPolicy | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        signature_batch_size: int = DEFAULT_SIGNATURE_BATCH_SIZE,
    ) -> UsageClient:
        """A client producing straight to the usage topic (idempotent, ``acks=all``).

        ``spool_dir`` is where undelivered events are kept across restarts (one directory
        per client); ``None`` keeps them in memory only. ``producer_config`` adds
        librdkafka settings (SASL, TLS, tuning); idempotence and acks cannot be weakened.
        A broker not on this machine needs ``security.protocol`` ``SASL_SSL`` or ``SSL``
        there, else this raises ``InsecureTransportError``, unless ``insecure=True``.
        ``signature_batch_size`` caps the events :meth:`publish_many` covers with one
        signature (1: a signature per event).
        """
        from residuals_sdk.transports.kafka import KafkaTransport

        spool = Spool(
            spool_dir,
            max_bytes=spool_max_bytes,
            max_events=spool_max_events,
            durability=spool_durability,
        )
        try:
            transport = KafkaTransport(
                bootstrap_servers, vendor_id, topic=topic, config=producer_config, insecure=insecure
            )
        except BaseException:
            spool.close()
            raise
        return cls(
            vendor_id=vendor_id,
            signing_key=signing_key,
            transport=transport,
            spool=spool,
            on_delivery=on_delivery,
            retry=retry,
            max_in_flight=max_in_flight,
            signature_batch_size=signature_batch_size,
        )

    @classmethod
    def grpc(
        cls,
        *,
        vendor_id: str,
        signing_key: SigningKey,
        target: str,
        api_key: str,
        spool_dir: str | Path | None,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        on_delivery: DeliveryCallback | None = None,
        max_batch_events: int = 500,
        max_batch_bytes: int = 1024 * 1024,
        max_concurrent_calls: int = 2,
        call_timeout: float = 30.0,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_max_events: int = DEFAULT_MAX_EVENTS,
        spool_durability: str = "process",
        retry: RetryPolicy | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        signature_batch_size: int = DEFAULT_SIGNATURE_BATCH_SIZE,
    ) -> UsageClient:
        """A client publishing through the ingest gateway at ``target`` (``host:port``).

        The channel is TLS with the system's trust store, or with ``credentials``
        (``grpc.ssl_channel_credentials(root_certificates=..., private_key=...,
        certificate_chain=...)`` for a private CA or mTLS). Only a gateway on this machine
        (``localhost``, ``127.0.0.0/8``, ``::1``) is reached in plaintext by default;
        ``insecure=True`` forces plaintext anywhere (logged as a warning).
        ``signature_batch_size``: as for :meth:`kafka`.
        """
        from residuals_sdk.transports.grpc import GrpcTransport

        spool = Spool(
            spool_dir,
            max_bytes=spool_max_bytes,
            max_events=spool_max_events,
            durability=spool_durability,
        )
        try:
            transport = GrpcTransport(
                target,
                api_key,
                credentials=credentials,
                insecure=insecure,
                max_batch_events=max_batch_events,
                max_batch_bytes=max_batch_bytes,
                max_concurrent_calls=max_concurrent_calls,
                call_timeout=call_timeout,
            )
        except BaseException:
            spool.close()
            raise
        return cls(
            vendor_id=vendor_id,
            signing_key=signing_key,
            transport=transport,
            spool=spool,
            on_delivery=on_delivery,
            retry=retry,
            max_in_flight=max_in_flight,
            signature_batch_size=signature_batch_size,
        )

    # --- publishing ---------------------------------------------------------------------

    def render(
        self,
        *,
        licence_id: str,
        avatar_id: str,
        render_id: str,
        category: str,
        territory: str,
        occurred_at: datetime | None = None,
        quantity: int = 1,
        event_id: str | None = None,
        approval_id: str | None = None,
    ) -> str:
        """Report ``quantity`` rendered videos showing the avatar; returns the event id.
        ``approval_id``: the talent's approval, where the licence requires one."""
        return self.publish(
            build.render(
                event_id=event_id or uuid7(),
                vendor_id=self.vendor_id,
                licence_id=licence_id,
                avatar_id=avatar_id,
                render_id=render_id,
                category=category,
                territory=territory,
                occurred_at=occurred_at,
                quantity=quantity,
                approval_id=approval_id,
            )
        )

    def view(
        self,
        *,
        licence_id: str,
        avatar_id: str,
        render_id: str,
        category: str,
        territory: str,
        channel: str,
        occurred_at: datetime | None = None,
        quantity: int = 1,
        viewable: bool = True,
        ivt: bool = False,
        event_id: str | None = None,
        approval_id: str | None = None,
    ) -> str:
        """Report ``quantity`` views of the video ``render_id``; returns the event id."""
        return self.publish(
            build.view(
                event_id=event_id or uuid7(),
                vendor_id=self.vendor_id,
                licence_id=licence_id,
                avatar_id=avatar_id,
                render_id=render_id,
                category=category,
                territory=territory,
                channel=channel,
                occurred_at=occurred_at,
                quantity=quantity,
                viewable=viewable,
                ivt=ivt,
                approval_id=approval_id,
            )
        )

    def ad_impression(
        self,
        *,
        licence_id: str,
        avatar_id: str,
        render_id: str,
        category: str,
        territory: str,
        channel: str,
        ad_revenue: Decimal | str | int,
        ad_revenue_currency: str = "",
        occurred_at: datetime | None = None,
        quantity: int = 1,
        ivt: bool = False,
        event_id: str | None = None,
        approval_id: str | None = None,
    ) -> str:
        """Report ad impressions and the revenue they earned (a decimal, never a float)."""
        return self.publish(
            build.ad_impression(
                event_id=event_id or uuid7(),
                vendor_id=self.vendor_id,
                licence_id=licence_id,
                avatar_id=avatar_id,
                render_id=render_id,
                category=category,
                territory=territory,
                channel=channel,
                ad_revenue=ad_revenue,
                ad_revenue_currency=ad_revenue_currency,
                occurred_at=occurred_at,
                quantity=quantity,
                ivt=ivt,
                approval_id=approval_id,
            )
        )

    def retract(
        self,
        *,
        original_event_id: str,
        licence_id: str | None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        """Withdraw this vendor's earlier event (e.g. invalid traffic found later).

        ``licence_id`` is the original event's licence: it routes the retraction to the
        original's partition so the meter sees them in order. Pass ``None`` only if it is
        truly unknown (the retraction is then keyed by the vendor id).
        """
        return self.publish(
            build.retraction(
                event_id=event_id or uuid7(),
                vendor_id=self.vendor_id,
                original_event_id=original_event_id,
                licence_id=licence_id,
                occurred_at=occurred_at,
            )
        )

    def publish(self, event: usage_pb2.UsageEvent) -> str:
        """Sign and publish a prepared ``UsageEvent`` as it is; returns its event id.

        The typed methods above are the usual way; this one is for events built with
        :mod:`residuals_sdk.events` or replayed from storage. ``vendor_id`` must be this
        client's vendor (the platform rejects anything else).
        """
        return self.publish_many([event])[0]

    def publish_many(self, events: Sequence[usage_pb2.UsageEvent]) -> list[str]:
        """Sign and publish several prepared events with ONE spool commit; returns their ids.

        All or nothing: if the spool cannot take them all, none is accepted
        (:class:`~residuals_sdk.errors.SpoolFullError`). This is the fast path for bulk
        producers: the per-event spool commit dominates the cost of :meth:`publish`, and
        the events are signed in chunks of at most ``signature_batch_size`` with one
        signature each (:func:`~residuals_sdk.signing.sign_batch`); an event alone gets
        its own plain signature. Every envelope is still verified on its own by Residuals.
        """
        events = list(events)
        keys: list[str] = []
        traces: list[common_pb2.TraceContext] = []
        for event in events:
            if event.vendor_id != self.vendor_id:
                raise ValueError(
                    f"event vendor_id {event.vendor_id!r} is not this client's {self.vendor_id!r}"
                )
            if not event.event_id:
                raise ValueError("event_id is required (use residuals_sdk.uuid7())")
            kind = common_pb2.UsageKind.Name(event.kind)
            key = build.routing_key(event)
            with tracing.publish_span(kind, key, event.event_id) as trace:
                traces.append(trace)
            keys.append(key)
        prepared: list[NewEvent] = []
        for lo, hi in _chunks(len(events), self.signature_batch_size):
            signed = sign_batch(events[lo:hi], self.signing_key, traces[lo:hi])
            prepared.extend(
                NewEvent(e.event_id, k, envelope.SerializeToString())
                for e, k, envelope in zip(events[lo:hi], keys[lo:hi], signed, strict=True)
            )
        self._accept(prepared)
        return [e.event_id for e in prepared]

    def _accept(self, events: list[NewEvent]) -> None:
        """Spool the envelopes durably, then send them now or leave them to the sender."""
        if not events:
            return
        with self._cond:
            if self._closing:
                raise ClientClosedError("the client is closed")
            seqs = self.spool.append_many(events)  # raises SpoolFullError
            spooled = [
                SpooledEvent(seq, e.event_id, e.routing_key, e.envelope)
                for seq, e in zip(seqs, events, strict=True)
            ]
            direct = not self._backlog and len(self._in_flight) + len(spooled) <= self.max_in_flight
            if direct:
                for event in spooled:
                    self._in_flight[event.seq] = event
                    self._attempts[event.seq] = 1
                self._loaded_upto = seqs[-1]
            else:
                self._backlog = True
                self._cond.notify_all()
        if direct:
            rejected = self.transport.send(spooled)
            if rejected:
                self._schedule_soon(rejected)

    # --- delivery -----------------------------------------------------------------------

    def _schedule_soon(self, events: Sequence[SpooledEvent]) -> None:
        due = time.monotonic() + _BACKPRESSURE_RETRY
        with self._cond:
            for event in events:
                heapq.heappush(self._retries, (due, event.seq))

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                self._step()
            except Exception:  # the sender must survive anything
                log.exception("residuals SDK sender step failed; retrying")
                time.sleep(_POLL_SECONDS)

    def _step(self) -> None:
        outcomes = self.transport.poll(_POLL_SECONDS)
        if outcomes:
            self._settle(outcomes)
        self._resend_due()
        self._load_backlog()

    def _settle(self, outcomes: list[Outcome]) -> None:
        done: list[SpooledEvent] = []
        reports: list[DeliveryReport] = []
        now = time.monotonic()
        with self._cond:
            for outcome in outcomes:
                seq = outcome.event.seq
                attempts = self._attempts.get(seq, 1)
                if outcome.status is None:
                    delay = self.retry.delay(attempts, at_least=outcome.retry_after)
                    self._attempts[seq] = attempts + 1
                    heapq.heappush(self._retries, (now + delay, seq))
                    log.debug(
                        "event %s: %s; retry in %.2fs",
                        outcome.event.event_id,
                        outcome.detail,
                        delay,
                    )
                    continue
                done.append(outcome.event)
                reports.append(
                    DeliveryReport(
                        event_id=outcome.event.event_id,
                        routing_key=outcome.event.routing_key,
                        status=outcome.status,
                        reason=outcome.reason,
                        detail=outcome.detail,
                        partition=outcome.partition,
                        offset=outcome.offset,
                        attempts=attempts,
                    )
                )
        if done:
            # Delete before announcing: a callback must never see an event that a crash
            # right after it would re-send.
            self.spool.delete(done)
            with self._cond:
                for event in done:
                    self._in_flight.pop(event.seq, None)
                    self._attempts.pop(event.seq, None)
                self._cond.notify_all()
        for report in reports:
            self._report(report)

    def _report(self, report: DeliveryReport) -> None:
        if report.status is DeliveryStatus.REJECTED:
            log.warning("event %s rejected: %s %s", report.event_id, report.reason, report.detail)
        if self.on_delivery is None:
            return
        try:
            self.on_delivery(report)
        except Exception:  # a caller's bug must not stop delivery
            log.exception("on_delivery callback raised for event %s", report.event_id)

    def _resend_due(self) -> None:
        now = time.monotonic()
        due: list[SpooledEvent] = []
        with self._cond:
            while self._retries and self._retries[0][0] <= now:
                _, seq = heapq.heappop(self._retries)
                event = self._in_flight.get(seq)
                if event is not None:
                    due.append(event)
        if due:
            rejected = self.transport.send(due)
            if rejected:
                self._schedule_soon(rejected)

    def _load_backlog(self) -> None:
        with self._cond:
            room = self.max_in_flight - len(self._in_flight)
            if not self._backlog or room <= 0:
                return
            batch = self.spool.read_after(self._loaded_upto, room)
            for event in batch:
                self._in_flight[event.seq] = event
                self._attempts[event.seq] = 1
            if batch:
                self._loaded_upto = batch[-1].seq
            if len(batch) < room:
                # Everything spooled is in memory now; appends go direct again. (Appends
                # take this same lock, so none can slip between the read and this flag.)
                self._backlog = False
        if batch:
            rejected = self.transport.send(batch)
            if rejected:
                self._schedule_soon(rejected)

    # --- flush / close ------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events accepted but not yet settled (still in the spool)."""
        return self.spool.count

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every accepted event is settled or ``timeout`` seconds pass.

        Returns how many events are still pending (0: all delivered or answered).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.spool.count > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(0.1 if remaining is None else min(0.1, remaining))
            return self.spool.count

    def close(self, timeout: float | None = 30.0) -> int:
        """Flush for up to ``timeout`` seconds, then stop. Returns events left pending.

        Pending events stay in the spool directory and are sent by the next client that
        opens it. Idempotent.
        """
        with self._cond:
            if self._closing:
                return self._left
            self._closing = True
        left = self._left = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._sender.join()
        self.transport.close()
        self.spool.close()
        if left:
            log.warning("closed with %d undelivered events kept in the spool", left)
        return left

    def __enter__(self) -> UsageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _chunks(count: int, most: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges splitting ``count`` items into the fewest chunks of at most
    ``most``, of near-equal sizes (257 events sign as 129 + 128, not 256 + a lone 1)."""
    if count == 0:
        return []
    chunks = -(-count // most)
    size, extra = divmod(count, chunks)
    bounds = [0]
    for i in range(chunks):
        bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    return list(itertools.pairwise(bounds))
