"""The notify dispatcher against real receivers (aiohttp servers on loopback ports) and
the local PostgreSQL: signatures checked by the standardwebhooks package, order per
endpoint, failures of every kind, isolation of slow receivers, the SSRF guard, and a
dispatcher killed mid-delivery (a subprocess) losing nothing.

Each test gets a freshly migrated database, so no other test's endpoints (or another
engineer's dispatcher on the shared database) take part.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook

from residuals.domain.notifications import (
    ALERT_RAISED,
    Audience,
    new_endpoint_id,
    new_secret,
    timestamp_text,
)
from residuals.notify import store
from residuals.notify.deliveries import Result, record
from residuals.notify.dispatcher import Dispatcher
from residuals.notify.events import NewEvent
from residuals.notify.metrics import NotifyMetrics
from residuals.notify.settings import DeliverySettings
from residuals.platform.config import PostgresSettings, load
from residuals.platform.ports import free_port
from residuals.platform.postgres import Database
from residuals.stack.settings import StackSettings
from tests.support.payouts import migrated_database
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]

SETTINGS = DeliverySettings(
    retry_schedule=(0.2, 0.2, 0.2),
    connect_timeout_seconds=1.0,
    request_timeout_seconds=1.0,
    lease_seconds=2.0,
    poll_seconds=0.2,
    allow_networks=("127.0.0.0/8",),
    allow_http=True,
)


# --- receivers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    message_id: str
    headers: dict[str, str]
    body: bytes
    at: float


Behaviour = Callable[["Receiver", web.Request, Seen], Awaitable[web.StreamResponse]]


async def answer_ok(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
    return web.Response(status=204)


@dataclass
class Receiver:
    """A webhook receiver on a loopback port, in a thread of its own, recording requests."""

    behaviour: Behaviour = answer_ok
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    #: Webhook-ids processed once (a de-duplicating receiver's view).
    processed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.headers.get("webhook-id", ""), dict(request.headers), body, 0)
        seen = replace(seen, at=time.monotonic())
        with self._lock:
            self.seen.append(seen)
            if seen.message_id not in self.processed:
                self.processed.append(seen.message_id)
        return await self.behaviour(self, request, seen)

    def ids(self) -> list[str]:
        with self._lock:
            return [s.message_id for s in self.seen]

    def count(self, message_id: str) -> int:
        return self.ids().count(message_id)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(behaviour: Behaviour = answer_ok) -> Receiver:
        receiver = Receiver(behaviour).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


# --- database, endpoints, events -------------------------------------------------------------


@pytest.fixture
def dsn(stack: StackSettings) -> Iterator[str]:
    with migrated_database(stack) as name:
        yield name


@pytest.fixture
def db(dsn: str) -> Iterator[Database]:
    database = Database(
        PostgresSettings(dsn=dsn, pool_min=1, pool_max=6), application_name="notify-test"
    ).open()
    yield database
    database.close()


@pytest.fixture
def dispatchers(db: Database) -> Iterator[Callable[..., Dispatcher]]:
    started: list[Dispatcher] = []

    def make(settings: DeliverySettings = SETTINGS, **kwargs: Any) -> Dispatcher:
        dispatcher = Dispatcher(db, settings, kwargs.pop("metrics", None) or metrics(), **kwargs)
        started.append(dispatcher.start())
        return dispatcher

    yield make
    for dispatcher in started:
        dispatcher.stop()


def metrics() -> NotifyMetrics:
    return NotifyMetrics(CollectorRegistry())


def add_endpoint(
    db: Database,
    url: str,
    vendor: str,
    *,
    secret: str | None = None,
    previous: str | None = None,
    previous_until: datetime | None = None,
) -> tuple[str, str]:
    """A vendor's endpoint (SQL, as CreateEndpoint stores it); returns (id, secret)."""
    endpoint_id, secret = new_endpoint_id(), secret or new_secret()
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO notify_endpoints (endpoint_id, url, owner_role, vendor_id, secret,"
            " previous_secret, previous_until, created_by)"
            " VALUES (%s, %s, 'vendor', %s, %s, %s, %s, 'test')",
            (endpoint_id, url, vendor, secret, previous, previous_until),
        )
    return endpoint_id, secret


def add_events(db: Database, vendor: str, count: int, tag: str = "") -> list[str]:
    """``count`` alert.raised events of ``vendor`` (queued to its endpoints); their ids."""
    now = datetime.now(UTC)
    events = [
        NewEvent(
            ALERT_RAISED,
            f"{tag or uuid.uuid4().hex}-{i}",
            now,
            {"n": i},
            Audience(vendor_id=vendor),
            severity=3,
        )
        for i in range(count)
    ]
    with db.connection() as conn:
        store.record_events(conn, events)
    return [e.message_id for e in events]


def deliveries(db: Database, endpoint_id: str) -> list[dict[str, Any]]:
    with db.connection() as conn:
        cursor = conn.execute(
            "SELECT d.delivery_id, ev.event_id, d.state, d.attempts, d.last_status,"
            " d.last_error, d.first_attempt_at, d.last_attempt_at, d.delivered_at"
            " FROM notify_deliveries d JOIN notify_events ev ON ev.sequence = d.event_sequence"
            " WHERE d.endpoint_id = %s ORDER BY d.delivery_id",
            (endpoint_id,),
        )
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def endpoint(db: Database, endpoint_id: str) -> dict[str, Any]:
    with db.connection() as conn:
        cursor = conn.execute(
            "SELECT state, disabled_reason, disabled_at, failing_since, lease_owner"
            " FROM notify_endpoints WHERE endpoint_id = %s",
            (endpoint_id,),
        )
        names = [c.name for c in cursor.description or ()]
        row = cursor.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def states(db: Database, endpoint_id: str) -> list[str]:
    return [d["state"] for d in deliveries(db, endpoint_id)]


def vendor() -> str:
    return f"v-{uuid.uuid4().hex[:8]}"


# --- tests -----------------------------------------------------------------------------------


def test_happy_path_signed_and_in_order(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    who = vendor()
    receiver = receivers()
    endpoint_id, secret = add_endpoint(db, receiver.url, who)
    counters = metrics()
    dispatcher = dispatchers(metrics=counters)
    ids = add_events(db, who, 25)
    dispatcher.poke([endpoint_id])
    wait_until(lambda: len(receiver.seen) >= 25, 10, "25 deliveries", receiver.ids)
    assert receiver.ids() == ids
    for seen in receiver.seen:
        payload = Webhook(secret).verify(seen.body, seen.headers)
        assert payload["type"] == ALERT_RAISED
        assert seen.headers["User-Agent"] == "Residuals-Webhooks/1"
        assert seen.headers["Content-Type"] == "application/json"
        assert abs(int(seen.headers["webhook-timestamp"]) - time.time()) < 30
    wait_until(lambda: set(states(db, endpoint_id)) == {"delivered"}, 5, "recorded outcomes")
    for row in deliveries(db, endpoint_id):
        assert row["attempts"] == 1
        assert row["last_status"] == 204
        assert row["last_error"] == ""
        assert row["delivered_at"] is not None
        assert row["first_attempt_at"] == row["last_attempt_at"]
    assert counters.attempts.labels("delivered")._value.get() == 25
    assert dispatcher.healthy


def test_failing_head_keeps_order_and_is_retried(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    failures = {"left": 2}

    async def flaky(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        if failures["left"] > 0:
            failures["left"] -= 1
            return web.Response(status=500, text="busy\x00\x07 right now")
        return web.Response(status=200)

    who = vendor()
    receiver = receivers(flaky)
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    ids = add_events(db, who, 10)
    dispatchers()
    wait_until(lambda: set(states(db, endpoint_id)) == {"delivered"}, 15, "all delivered")
    seen = receiver.ids()
    assert seen[:3] == [ids[0]] * 3, "the head is retried before anything behind it"
    assert seen[3:] == ids[1:]
    rows = deliveries(db, endpoint_id)
    assert rows[0]["attempts"] == 3
    assert rows[0]["first_attempt_at"] < rows[0]["last_attempt_at"]
    assert all(r["attempts"] == 1 for r in rows[1:])
    assert endpoint(db, endpoint_id)["failing_since"] is None


def test_failure_is_recorded_with_its_reason(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    async def broken(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(status=500, text="database\x00 down " + "x" * 500)

    who = vendor()
    receiver = receivers(broken)
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    add_events(db, who, 1)
    slow = replace(SETTINGS, retry_schedule=(30.0,))
    dispatchers(slow)
    wait_until(lambda: deliveries(db, endpoint_id)[0]["attempts"] == 1, 10, "an attempt")
    row = deliveries(db, endpoint_id)[0]
    assert row["state"] == "pending"
    assert row["last_status"] == 500
    assert row["last_error"].startswith("HTTP 500: database down xxx")
    assert len(row["last_error"]) <= len("HTTP 500: ") + 200
    assert endpoint(db, endpoint_id)["failing_since"] is not None


def test_timeouts_and_dropped_connections_are_retried(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    plan = {"mode": "sleep"}

    async def awkward(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        if plan["mode"] == "sleep":
            plan["mode"] = "drop"
            await asyncio.sleep(3)
        elif plan["mode"] == "drop":
            plan["mode"] = "ok"
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.5)
        return web.Response(status=200)

    who = vendor()
    receiver = receivers(awkward)
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    errors: list[str] = []

    def watch() -> bool:
        row = deliveries(db, endpoint_id)[0]
        if row["last_error"] and row["last_error"] not in errors:
            errors.append(row["last_error"])
        return bool(row["state"] == "delivered")

    ids = add_events(db, who, 1)
    dispatchers(replace(SETTINGS, retry_schedule=(0.5, 0.5, 0.5)))
    wait_until(watch, 15, "delivery after a timeout and a dropped connection", every=0.05)
    assert receiver.ids() == ids * 3
    assert errors == ["timed out after 1 s", "connection closed without a response"]
    assert deliveries(db, endpoint_id)[0]["attempts"] == 3


def test_refused_connection(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    who = vendor()
    endpoint_id, _ = add_endpoint(db, f"http://127.0.0.1:{free_port()}/hook", who)
    add_events(db, who, 1)
    dispatchers(replace(SETTINGS, retry_schedule=(30.0,)))
    wait_until(lambda: deliveries(db, endpoint_id)[0]["attempts"] == 1, 10, "an attempt")
    row = deliveries(db, endpoint_id)[0]
    assert (row["last_status"], row["last_error"]) == (0, "connection refused")


def test_gone_disables_and_tells_the_owners_other_endpoint(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    async def gone(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(status=410)

    who = vendor()
    dead, alive = receivers(gone), receivers()
    dead_id, _ = add_endpoint(db, dead.url, who)
    _alive_id, alive_secret = add_endpoint(db, alive.url, who)
    ids = add_events(db, who, 3)
    counters = metrics()
    dispatchers(metrics=counters)
    wait_until(lambda: endpoint(db, dead_id)["state"] == "disabled", 10, "disabled")
    assert dead.ids() == ids[:1], "nothing is sent after 410"
    info = endpoint(db, dead_id)
    assert info["disabled_reason"].startswith("410 Gone")
    assert info["lease_owner"] is None
    assert states(db, dead_id) == ["failed", "pending", "pending"]
    wait_until(lambda: len(alive.seen) >= 4, 10, "the notice", alive.ids)
    notice = alive.seen[-1]
    assert b'"type":"endpoint.disabled"' in notice.body
    assert Webhook(alive_secret).verify(notice.body, notice.headers)["data"] == {
        "endpoint_id": dead_id,
        "url": dead.url,
        "reason": info["disabled_reason"],
        "disabled_at": timestamp_text(info["disabled_at"]),
    }
    assert alive.ids()[:3] == ids
    assert counters.disabled.labels("gone")._value.get() == 1
    assert counters.failed._value.get() == 1


def test_exhausted_schedule_disables_the_endpoint(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    async def broken(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "0"})

    who = vendor()
    dead, alive = receivers(broken), receivers()
    dead_id, _ = add_endpoint(db, dead.url, who)
    _alive_id, _ = add_endpoint(db, alive.url, who)
    ids = add_events(db, who, 2)
    dispatchers()
    wait_until(lambda: endpoint(db, dead_id)["state"] == "disabled", 15, "disabled")
    assert dead.ids() == [ids[0]] * 4, "first attempt and three retries"
    info = endpoint(db, dead_id)
    assert info["disabled_reason"].startswith("failing since ")
    assert states(db, dead_id) == ["failed", "pending"]
    wait_until(lambda: len(alive.seen) >= 3, 10, "the notice", alive.ids)
    assert b"endpoint.disabled" in alive.seen[-1].body


def test_a_slow_receiver_delays_no_other(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    release = threading.Event()

    async def hang(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.to_thread(release.wait, 8)
        return web.Response(status=200)

    who = vendor()
    slow, fast = receivers(hang), receivers()
    slow_id, _ = add_endpoint(db, slow.url, who)
    _fast_id, _ = add_endpoint(db, fast.url, who)
    dispatchers(replace(SETTINGS, request_timeout_seconds=10.0))
    started = time.monotonic()
    ids = add_events(db, who, 100)
    wait_until(lambda: len(fast.seen) >= 100, 5, "the fast receiver's deliveries", fast.ids)
    elapsed = time.monotonic() - started
    release.set()
    assert fast.ids() == ids
    assert slow.ids() == ids[:1], "the slow endpoint's queue waits behind its head"
    assert elapsed < 3, f"fast endpoint took {elapsed:.2f} s"
    wait_until(lambda: set(states(db, slow_id)) == {"delivered"}, 15, "the slow queue")


def test_a_deduplicating_receiver_sees_each_event_once(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    lost: set[str] = set()

    async def lossy(receiver: Receiver, request: web.Request, seen: Seen) -> web.StreamResponse:
        # Processed (recorded) first; the answer of the first try of each event is lost.
        if seen.message_id not in lost:
            lost.add(seen.message_id)
            return web.Response(status=500)
        return web.Response(status=200)

    who = vendor()
    receiver = receivers(lossy)
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    ids = add_events(db, who, 5)
    dispatchers()
    wait_until(lambda: set(states(db, endpoint_id)) == {"delivered"}, 15, "all delivered")
    assert receiver.processed == ids
    assert receiver.ids() == [i for i in ids for _ in range(2)]
    assert {s.headers["webhook-id"] for s in receiver.seen} == set(ids)


def test_rotation_signs_with_both_secrets(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    who = vendor()
    rotating, rotated = receivers(), receivers()
    new, old = new_secret(), new_secret()
    later = datetime.now(UTC) + timedelta(hours=1)
    earlier = datetime.now(UTC) - timedelta(seconds=1)
    add_endpoint(db, rotating.url, who, secret=new, previous=old, previous_until=later)
    add_endpoint(db, rotated.url, who, secret=new, previous=old, previous_until=earlier)
    add_events(db, who, 1)
    dispatchers()
    wait_until(lambda: bool(rotating.seen and rotated.seen), 10, "both deliveries")
    both = rotating.seen[0]
    assert len(both.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(both.body, both.headers)
    Webhook(old).verify(both.body, both.headers)
    one = rotated.seen[0]
    assert len(one.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(one.body, one.headers)


def test_secrets_are_opened_before_signing(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    who = vendor()
    receiver = receivers()
    secret = new_secret()
    add_endpoint(db, receiver.url, who, secret="sealed:" + secret)
    add_events(db, who, 1)
    dispatchers(open_secret=lambda sealed: sealed.removeprefix("sealed:"))
    wait_until(lambda: bool(receiver.seen), 10, "a delivery")
    Webhook(secret).verify(receiver.seen[0].body, receiver.seen[0].headers)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://10.0.0.1:9/hook", "10.0.0.1 (private)"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 (link-local)"),
        ("http://127.0.0.1:{port}/hook", "127.0.0.1 (loopback)"),
        ("http://localhost:{port}/hook", "localhost resolves to"),
        ("http://[::ffff:127.0.0.1]:{port}/hook", "IPv6 form of 127.0.0.1"),
    ],
)
def test_private_destinations_are_refused(
    db: Database,
    receivers: Callable[..., Receiver],
    dispatchers: Callable[..., Dispatcher],
    url: str,
    problem: str,
) -> None:
    who = vendor()
    receiver = receivers()
    endpoint_id, _ = add_endpoint(db, url.format(port=receiver.port), who)
    add_events(db, who, 1)
    counters = metrics()
    guarded = replace(SETTINGS, allow_networks=(), retry_schedule=(30.0,))
    dispatchers(guarded, metrics=counters)
    wait_until(lambda: deliveries(db, endpoint_id)[0]["attempts"] == 1, 10, "an attempt")
    row = deliveries(db, endpoint_id)[0]
    assert row["state"] == "pending"
    assert row["last_status"] == 0
    assert row["last_error"].startswith("refused: ")
    assert problem in row["last_error"]
    assert counters.refused._value.get() == 1
    assert receiver.seen == []


def test_https_only_unless_allowed(
    db: Database, receivers: Callable[..., Receiver], dispatchers: Callable[..., Dispatcher]
) -> None:
    who = vendor()
    receiver = receivers()
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    add_events(db, who, 1)
    dispatchers(replace(SETTINGS, allow_http=False, retry_schedule=(30.0,)))
    wait_until(lambda: deliveries(db, endpoint_id)[0]["attempts"] == 1, 10, "an attempt")
    assert "https://" in deliveries(db, endpoint_id)[0]["last_error"]
    assert receiver.seen == []


# --- a dispatcher killed mid-delivery --------------------------------------------------------


def _dispatcher_process(dsn: str, owner: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO)]),
        "DATABASE_URL": dsn,
        "NOTIFY_RETRY_SCHEDULE_SECONDS": "0.2,0.2,0.2,0.2,0.2",
        "NOTIFY_REQUEST_TIMEOUT_SECONDS": "30",
        "NOTIFY_LEASE_SECONDS": "1.5",
        "NOTIFY_POLL_SECONDS": "0.2",
        "NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
        "NOTIFY_ALLOW_HTTP": "true",
        "DISPATCHER_OWNER": owner,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_notify_dispatch"], env=env, cwd=REPO
    )


def test_a_killed_dispatcher_loses_nothing(
    db: Database, dsn: str, receivers: Callable[..., Receiver]
) -> None:
    holding = threading.Event()
    hold = {"first": True}

    async def holds_first(
        receiver: Receiver, request: web.Request, seen: Seen
    ) -> web.StreamResponse:
        if hold["first"]:
            hold["first"] = False
            holding.set()
            await asyncio.sleep(60)  # the dispatcher dies while waiting for this answer
        return web.Response(status=200)

    who = vendor()
    receiver = receivers(holds_first)
    endpoint_id, _ = add_endpoint(db, receiver.url, who)
    other = receivers()
    other_id, _ = add_endpoint(db, other.url, who)
    ids = add_events(db, who, 30)
    first = _dispatcher_process(dsn, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        assert holding.wait(20), "the first dispatcher never sent"
        wait_until(lambda: len(other.seen) >= 5, 10, "some of the other endpoint's deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        more = add_events(db, who, 10)
        second = _dispatcher_process(dsn, "second")
        for target_id, target in ((endpoint_id, receiver), (other_id, other)):

            def done(e: str = target_id) -> bool:
                return set(states(db, e)) == {"delivered"}

            wait_until(done, 30, f"every delivery of {target_id}")
            assert set(target.ids()) == set(ids + more)
            assert target.processed == ids + more, "first arrivals in event order"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)
    assert receiver.count(ids[0]) == 2, "the attempt in flight at the kill was sent again"
    assert endpoint(db, endpoint_id)["lease_owner"] is None, "the second released on stop"


def _run_from_env() -> None:
    """The subprocess of test_a_killed_dispatcher_loses_nothing: a Dispatcher until SIGTERM."""
    import logging

    logging.basicConfig(level=logging.INFO)
    settings = load(DeliverySettings)
    database = Database(load(PostgresSettings), application_name="notify-test-dispatcher")
    database.open()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dispatcher = Dispatcher(
        database, settings, metrics(), owner=os.environ.get("DISPATCHER_OWNER")
    ).start()
    stop.wait()
    dispatcher.stop()
    database.close()


if __name__ == "__main__":
    _run_from_env()


class _PausingAfterDeliveries:
    """A connection that stops after its UPDATE of notify_deliveries until told to go on:
    the moment an owner's DeleteEndpoint once deadlocked with (on CI)."""

    def __init__(self, conn: Any, paused: threading.Event, resume: threading.Event) -> None:
        self.conn, self.paused, self.resume = conn, paused, resume

    def execute(self, query: str, params: Any = None) -> Any:
        cursor = self.conn.execute(query, params)
        if "UPDATE notify_deliveries" in query:
            self.paused.set()
            assert self.resume.wait(10)
        return cursor


def test_deleting_an_endpoint_while_its_outcomes_are_written_does_not_deadlock(
    db: Database,
) -> None:
    endpoint_id, _ = add_endpoint(db, "http://127.0.0.1:9/hook", (v := vendor()))
    add_events(db, v, 1)
    (delivery,) = deliveries(db, endpoint_id)
    failed = Result(
        delivery["delivery_id"],
        endpoint_id,
        "pending",
        datetime.now(UTC),
        500,
        "HTTP 500",
        next_attempt_at=datetime.now(UTC) + timedelta(seconds=30),
    )
    paused, resume = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def delete() -> None:
        assert paused.wait(10)
        try:
            with db.connection() as conn:
                conn.execute("DELETE FROM notify_endpoints WHERE endpoint_id = %s", (endpoint_id,))
            outcome["delete"] = None
        except BaseException as error:  # reported by the assertion below
            outcome["delete"] = error

    deleter = threading.Thread(target=delete)
    deleter.start()
    try:
        with db.connection() as conn:
            writer = _PausingAfterDeliveries(conn, paused, resume)
            threading.Timer(1.5, resume.set).start()  # the delete is waiting by then
            record(writer, [failed])  # type: ignore[arg-type]
    finally:
        resume.set()
        deleter.join(15)
    assert outcome == {"delete": None}
    with db.connection() as conn:
        assert conn.execute(
            "SELECT count(*) FROM notify_endpoints WHERE endpoint_id = %s", (endpoint_id,)
        ).fetchone() == (0,)
