"""The delivery engine: sends each endpoint's pending deliveries, in order, at least once.

Each endpoint this replica leases gets a *lane* (an asyncio task in the dispatcher's own
event-loop thread) that sends its pending deliveries one at a time in ``delivery_id``
order; a failing head is retried on the schedule and the rest wait behind it, while
other lanes go on, so a slow or dead receiver delays only its own queue. Lanes read
their rows through one batched query for all lanes and hand outcomes to a recorder that
writes every lane's results in one transaction every few milliseconds; a lane reads
again only after its outcomes are written, so it never re-sends what it just sent.

A coordinator task claims endpoints with due deliveries (``FOR UPDATE SKIP LOCKED``:
one replica per endpoint), renews this replica's leases, and releases idle ones. It runs
when poked (intake committed, :meth:`Dispatcher.poke`), when another replica's commit
is announced (LISTEN), and every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from residuals.domain.notifications import Outcome, classify, retry_delay, timestamp_text
from residuals.notify import deliveries, signing, store
from residuals.notify.deliveries import DELIVERED, FAILED, PENDING, Endpoint, Pending, Result
from residuals.notify.metrics import NotifyMetrics
from residuals.notify.sender import Attempt, Sender
from residuals.notify.settings import DeliverySettings
from residuals.platform.postgres import Database

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

T = TypeVar("T")

#: How long outcomes gather before they are written together.
FLUSH_DELAY_SECONDS = 0.02
#: Most endpoints claimed per round.
CLAIM_LIMIT = 1000
GAUGE_SECONDS = 5.0
_NO_SECRET = Attempt(0, "the endpoint's signing secret cannot be opened")
#: On stop, how long in-flight attempts may finish (their outcomes are then recorded).
STOP_GRACE_SECONDS = 5.0

Fetched = tuple[Endpoint | None, list[Pending]]


@dataclass(eq=False)
class _Lane:
    endpoint_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Asked to stop (lease lost, dispatcher stopping).
    stop: bool = False
    #: Finished; the coordinator releases its lease.
    done: bool = False
    idle_since: float = field(default_factory=time.monotonic)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Dispatcher:
    """Sends webhooks for the endpoints this replica leases (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        settings: DeliverySettings,
        metrics: NotifyMetrics,
        *,
        open_secret: Callable[[str], str] = lambda s: s,
        owner: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.open_secret = open_secret
        self.owner = owner or _default_owner()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._halt = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, _Lane] = {}
        self._last_ok = time.monotonic()
        self._failure: BaseException | None = None

    # --- the public face (any thread) ---------------------------------------------------

    def start(self) -> Dispatcher:
        self._thread = threading.Thread(target=self._run, name="notify-dispatch", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the dispatcher's event loop did not start")
        if self._failure is not None:
            raise RuntimeError("the dispatcher failed to start") from self._failure
        self._listener = threading.Thread(
            target=self._listen_loop, name="notify-dispatch-listen", daemon=True
        )
        self._listener.start()
        log.info("dispatcher started", extra={"owner": self.owner})
        return self

    def stop(self) -> None:
        """Finish in-flight attempts (a few seconds at most), record them, release leases."""
        self._halt.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just ended
                loop.call_soon_threadsafe(self._begin_stop)
        if self._thread is not None:
            self._thread.join(STOP_GRACE_SECONDS + 15)
        if self._listener is not None:
            self._listener.join(5)

    def poke(self, endpoint_ids: Iterable[str] = ()) -> None:
        """Deliveries were queued for these endpoints (none named: for any): send now."""
        loop = self._loop
        if loop is None or self._halt.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: stopping
            loop.call_soon_threadsafe(self._on_poke, tuple(endpoint_ids))

    @property
    def healthy(self) -> bool:
        """Running, and its last lease round reached the database recently."""
        alive = self._thread is not None and self._thread.is_alive() and not self._halt.is_set()
        fresh = time.monotonic() - self._last_ok < max(self.settings.lease_seconds, 5.0)
        return alive and fresh

    # --- the loop thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported through start()/healthy
            self._failure = exc
            log.exception("the dispatcher stopped on an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="notify-db")
        self._stopping = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._fetch_wake = asyncio.Event()
        self._record_wake = asyncio.Event()
        self._fetch_requests: dict[str, list[asyncio.Future[Fetched]]] = {}
        self._outcomes: list[Result] = []
        self._flushed: asyncio.Future[None] | None = None
        self._flushing = False
        self._in_flight = asyncio.Semaphore(self.settings.max_in_flight)
        self.sender = Sender(self.settings)
        background = [
            asyncio.create_task(self._fetcher(), name="notify-fetcher"),
            asyncio.create_task(self._recorder(), name="notify-recorder"),
            asyncio.create_task(self._coordinator(), name="notify-coordinator"),
        ]
        self._ready.set()
        try:
            await self._stopping.wait()
            await self._wind_down()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.sender.close()
            self._executor.shutdown(wait=False)

    def _begin_stop(self) -> None:
        self._stopping.set()

    async def _wind_down(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop = True
            lane.wake.set()
        tasks = [lane.task for lane in lanes if lane.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()  # its attempt is re-sent by whoever leases the endpoint next
            await asyncio.gather(*late, return_exceptions=True)
        deadline = time.monotonic() + 5
        while (self._outcomes or self._flushing) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        try:
            await self._db(deliveries.release, self.owner, list(self._lanes))
        except Exception:
            log.warning("could not release the dispatcher's leases (they expire)", exc_info=True)
        self._lanes.clear()
        self.metrics.leased.set(0)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction on a database thread."""

        def call() -> T:
            with self.db.connection() as conn:
                return fn(conn, *args)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # --- wake-ups ----------------------------------------------------------------------

    def _on_poke(self, endpoint_ids: tuple[str, ...]) -> None:
        if not endpoint_ids:
            for lane in self._lanes.values():
                lane.wake.set()
            self._claim_wake.set()
            return
        for endpoint_id in endpoint_ids:
            found = self._lanes.get(endpoint_id)
            if found is not None and not found.done:
                found.wake.set()
            else:
                self._claim_wake.set()

    def _listen_loop(self) -> None:
        """Wake on other processes' commits (pg_notify from store.record_events)."""
        while not self._halt.is_set():
            try:
                with psycopg.connect(
                    self.db.settings.dsn,
                    autocommit=True,
                    application_name=f"{self.db.application_name}-dispatch-listen",
                    connect_timeout=5,
                ) as conn:
                    conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
                    self.poke()  # catch up on what happened while not listening
                    while not self._halt.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.poke()
            except Exception:
                if self._halt.is_set():
                    return
                log.warning("dispatcher notification listener failed; reconnecting", exc_info=True)
                self._halt.wait(1.0)

    # --- leases --------------------------------------------------------------------------

    async def _coordinator(self) -> None:
        renew_every = self.settings.lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        next_gauges = 0.0
        while not self._stopping.is_set():
            self._claim_wake.clear()
            try:
                if time.monotonic() >= next_renew:
                    await self._renew()
                    next_renew = time.monotonic() + renew_every
                await self._release_done()
                await self._claim()
                self._last_ok = time.monotonic()
                if time.monotonic() >= next_gauges:
                    await self._refresh_gauges()
                    next_gauges = time.monotonic() + GAUGE_SECONDS
            except Exception:
                log.warning("dispatcher lease round failed; retrying", exc_info=True)
                await asyncio.sleep(min(1.0, self.settings.poll_seconds))
            wait = min(self.settings.poll_seconds, max(0.0, next_renew - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_wake.wait(), wait)

    async def _renew(self) -> None:
        held_before = [e for e, lane in self._lanes.items() if not lane.done]
        seconds = self.settings.lease_seconds
        held = await self._db(deliveries.renew, self.owner, seconds, held_before)
        for endpoint_id in held_before:
            if endpoint_id not in held:
                lane = self._lanes.pop(endpoint_id)
                lane.stop = True
                lane.wake.set()
                log.warning("lost the lease of an endpoint", extra={"endpoint_id": endpoint_id})

    async def _release_done(self) -> None:
        done = [e for e, lane in self._lanes.items() if lane.done]
        for endpoint_id in done:
            del self._lanes[endpoint_id]
        if done:
            await self._db(deliveries.release, self.owner, done)

    async def _claim(self) -> None:
        claimed = await self._db(
            deliveries.claim, self.owner, self.settings.lease_seconds, CLAIM_LIMIT
        )
        for endpoint_id in claimed:
            lane = self._lanes.get(endpoint_id)
            if lane is not None and not lane.done:
                lane.wake.set()
                continue
            lane = _Lane(endpoint_id)
            lane.task = asyncio.create_task(self._lane(lane), name=f"notify-lane-{endpoint_id}")
            self._lanes[endpoint_id] = lane
        self.metrics.leased.set(len(self._lanes))

    async def _refresh_gauges(self) -> None:
        pending, oldest, enabled, disabled = await self._db(deliveries.gauges)
        self.metrics.pending.set(pending)
        self.metrics.oldest_pending.set(oldest)
        self.metrics.endpoints.labels("enabled").set(enabled)
        self.metrics.endpoints.labels("disabled").set(disabled)

    # --- batched reads and writes ------------------------------------------------------

    async def _fetch(self, endpoint_id: str) -> Fetched:
        future: asyncio.Future[Fetched] = asyncio.get_running_loop().create_future()
        self._fetch_requests.setdefault(endpoint_id, []).append(future)
        self._fetch_wake.set()
        return await future

    async def _fetcher(self) -> None:
        """One query for every lane that asked since the last one."""
        while True:
            await self._fetch_wake.wait()
            self._fetch_wake.clear()
            requests, self._fetch_requests = self._fetch_requests, {}
            if not requests:
                continue
            try:
                found = await self._db(deliveries.fetch, list(requests))
            except Exception:
                log.warning("reading pending deliveries failed; retrying", exc_info=True)
                for endpoint_id, futures in requests.items():
                    self._fetch_requests.setdefault(endpoint_id, []).extend(futures)
                await asyncio.sleep(1.0)
                self._fetch_wake.set()
                continue
            for endpoint_id, futures in requests.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found[endpoint_id])

    def _record(self, result: Result) -> asyncio.Future[None]:
        """Queue an outcome; the future completes once it is committed."""
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
        self._outcomes.append(result)
        self._record_wake.set()
        return self._flushed

    async def _recorder(self) -> None:
        """Write every lane's outcomes in one transaction, every FLUSH_DELAY_SECONDS."""
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            if not self._outcomes:
                continue
            self._flushing = True
            try:
                await asyncio.sleep(FLUSH_DELAY_SECONDS)
                batch, done = self._outcomes, self._flushed
                self._outcomes, self._flushed = [], None
                while True:
                    try:
                        written = await self._db(deliveries.record, batch)
                        break
                    except Exception:
                        log.warning("recording delivery outcomes failed; retrying", exc_info=True)
                        await asyncio.sleep(1.0)
                if done is not None and not done.done():
                    done.set_result(None)
            finally:
                self._flushing = False
            if written.queued_for:
                self._on_poke(tuple(sorted(written.queued_for)))

    # --- lanes ---------------------------------------------------------------------------

    async def _lane(self, lane: _Lane) -> None:
        try:
            while not lane.stop:
                lane.wake.clear()
                endpoint, rows = await self._fetch(lane.endpoint_id)
                if endpoint is None or not endpoint.enabled or endpoint.lease_owner != self.owner:
                    return
                if not rows:
                    if time.monotonic() - lane.idle_since > self.settings.lease_seconds:
                        return
                    await self._sleep(lane, self.settings.poll_seconds)
                    continue
                lane.idle_since = time.monotonic()
                await self._send_in_order(lane, endpoint, rows)
        except Exception:
            log.exception("delivery lane failed", extra={"endpoint_id": lane.endpoint_id})
            await asyncio.sleep(1.0)
        finally:
            lane.done = True
            if self._claim_wake is not None:
                self._claim_wake.set()

    async def _sleep(self, lane: _Lane, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lane.wake.wait(), seconds)

    async def _send_in_order(self, lane: _Lane, endpoint: Endpoint, rows: list[Pending]) -> None:
        """Send ``rows`` in order until one fails or is not due; wait until the outcomes
        are written (the next read must see them)."""
        written: asyncio.Future[None] | None = None
        for row in rows:
            if lane.stop:
                break
            wait = (row.next_attempt_at - datetime.now(UTC)).total_seconds()
            if wait > 0:
                if written is None:
                    await self._sleep(lane, min(wait, self.settings.poll_seconds))
                break
            result = await self._attempt(endpoint, row)
            written = self._record(result)
            if result.state != DELIVERED:
                break
        if written is not None:
            await written

    async def _attempt(self, endpoint: Endpoint, row: Pending) -> Result:
        try:
            keys = [self.open_secret(s) for s in endpoint.secrets]
        except Exception:
            log.error(
                "cannot open an endpoint's signing secret",
                extra={"endpoint_id": endpoint.endpoint_id},
            )
            keys = []
        timestamp = int(time.time())
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "server.address": urlsplit(endpoint.url).hostname or "",
            "residuals.endpoint_id": endpoint.endpoint_id,
            "residuals.delivery_id": row.delivery_id,
            "residuals.webhook_id": row.message_id,
            "residuals.attempt": row.attempts + 1,
        }
        with tracer.start_as_current_span(
            "webhook POST", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            async with self._in_flight:
                if keys:
                    headers = signing.headers(keys, row.message_id, timestamp, row.body)
                    attempt = await self.sender.send(endpoint.url, headers, row.body)
                else:
                    attempt = _NO_SECRET
            if attempt.status:
                span.set_attribute("http.response.status_code", attempt.status)
            if not 200 <= attempt.status < 300:
                span.set_status(Status(StatusCode.ERROR, attempt.error))
        at = datetime.now(UTC)
        outcome = classify(attempt.status or None)
        self.metrics.attempts.labels(outcome.value).inc()
        self.metrics.attempt_seconds.labels(outcome.value).observe(attempt.seconds)
        if attempt.refused:
            self.metrics.refused.inc()
        attempts = row.attempts + 1
        base = Result(
            row.delivery_id, endpoint.endpoint_id, PENDING, at, attempt.status, attempt.error
        )
        if outcome is Outcome.DELIVERED:
            label = "first" if attempts == 1 else "retry"
            self.metrics.lag.labels(label).observe(max(0.0, (at - row.origin_at).total_seconds()))
            return replace(base, state=DELIVERED)
        if outcome is Outcome.GONE:
            reason = "410 Gone: the receiver asked for no more deliveries"
            return self._give_up(endpoint, row, base, reason, "gone")
        delay = retry_delay(attempts, self.settings.retry_schedule, retry_after=attempt.retry_after)
        if delay is None:
            since = endpoint.failing_since or at
            reason = f"failing since {timestamp_text(since)}: {attempt.error}"[:500]
            return self._give_up(endpoint, row, base, reason, "failing")
        return replace(base, next_attempt_at=at + timedelta(seconds=delay))

    def _give_up(
        self, endpoint: Endpoint, row: Pending, base: Result, reason: str, why: str
    ) -> Result:
        self.metrics.failed.inc()
        self.metrics.disabled.labels(why).inc()
        log.warning(
            "webhook endpoint disabled: %s",
            reason,
            extra={"endpoint_id": endpoint.endpoint_id, "delivery_id": row.delivery_id},
        )
        return replace(base, state=FAILED, disable_reason=reason)
