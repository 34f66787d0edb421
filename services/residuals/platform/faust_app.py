"""faust-streaming applications configured for Residuals' stream processors.

Processing is **at least once**, never faust's ``exactly_once``: that mode has open
issues (rebalance crashes, duplicates), so every sink downstream of a faust agent is
idempotent instead (docs/ARCHITECTURE.md, "Nothing lost, nothing counted twice").

The app is configured only from our typed settings: faust otherwise reads dozens of
environment variables (``BROKER_URL``, ``WEB_PORT``, ``STORE``, ``DATADIR``...) that would
silently override what the service was given, so it is handed an empty environment.
The app id carries ``RESIDUALS_TOPIC_PREFIX`` because faust derives the consumer group
and its internal topic names (``<id>-<table>-changelog``, ``<id>-__assignor-__leader``)
from it: a prefixed test run then shares nothing with other runs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residuals.platform.config import KafkaSettings

if TYPE_CHECKING:
    import faust


def broker_urls(bootstrap_servers: str) -> list[str]:
    """``host1:9092,host2:9092`` (librdkafka style) -> ``["kafka://host1:9092", ...]``."""
    urls = []
    for server in bootstrap_servers.split(","):
        server = server.strip()
        if not server:
            continue
        if "://" in server:
            server = server.split("://", 1)[1]
        urls.append(f"kafka://{server}")
    if not urls:
        raise ValueError("no Kafka bootstrap servers configured")
    return urls


def faust_settings(
    kafka: KafkaSettings,
    *,
    data_dir: Path | str,
    web_port: int | None = None,
    web_host: str = "127.0.0.1",
    store: str = "memory://",
    replication_factor: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """The keyword settings :func:`make_faust_app` passes to ``faust.App`` (pure)."""
    settings: dict[str, Any] = {
        "broker": broker_urls(kafka.bootstrap_servers),
        "processing_guarantee": "at_least_once",
        # Tables in memory, rebuilt from their changelog topics on start (rocksdb is not
        # installed; state stays small per partition).
        "store": store,
        "datadir": str(data_dir),
        "topic_partitions": kafka.topic_partitions,
        "topic_replication_factor": replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "web_enabled": web_port is not None,
        "web_port": web_port if web_port is not None else 6066,
        "web_bind": web_host,
        "web_host": web_host,
        "autodiscover": False,
        # Only our settings count: see the module docstring.
        "env": {},
    }
    if kafka.security_protocol != "PLAINTEXT":
        settings["broker_credentials"] = broker_credentials(kafka)
    settings.update(overrides)
    return settings


def broker_credentials(kafka: KafkaSettings) -> Any:
    """faust's credentials for the same security settings the confluent clients use."""
    import ssl

    import faust

    context = ssl.create_default_context(cafile=kafka.ssl_ca_location) if kafka.uses_ssl else None
    if kafka.uses_sasl:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def seek_committed_zero_too() -> None:
    """Make aiokafka's ``seek_to_committed`` also seek partitions committed at offset 0.

    aiokafka (0.14) seeks only ``if offset and offset > 0``. faust calls it after every
    rebalance to rewind what it fetched and dropped while restoring state; a partition
    committed at 0 (a new group: the meter commits the log start first) kept the position
    after the dropped records, which were then never delivered: the meter's fault test
    saw offsets 0..1661 of a partition skipped that way. Seeking to 0 is what the call
    means. Idempotent; applied by :func:`make_faust_app`.
    """
    from aiokafka import AIOKafkaConsumer

    if getattr(AIOKafkaConsumer.seek_to_committed, "_residuals_zero", False):
        return
    original = AIOKafkaConsumer.seek_to_committed

    async def seek_to_committed(self: AIOKafkaConsumer, *partitions: Any) -> Any:
        committed = await original(self, *partitions)
        for tp, offset in committed.items():
            if offset == 0:
                self._fetcher.seek_to(tp, 0)
        return committed

    seek_to_committed._residuals_zero = True  # type: ignore[attr-defined]
    AIOKafkaConsumer.seek_to_committed = seek_to_committed


def seek_negative_offsets_from_start() -> None:
    """Restore a changelog partition from its start when faust computes a negative offset.

    faust-streaming's ``Recovery._seek_offsets`` maps an offset of -1 ("nothing read yet")
    to 0 but passes any other negative one to aiokafka, whose ``seek`` raises
    ``ValueError('Offset must be a positive integer')`` and crashes the worker. A meter
    that joined while the group rebalanced again during its restore died that way in the
    scale-out test (standby partitions, rebalance #3). Every negative offset means the same
    ("nothing read"), so every one restores from 0: the full compacted changelog. Idempotent;
    applied by :func:`make_faust_app`.
    """
    from collections import Counter

    from faust.tables.recovery import Recovery

    if getattr(Recovery._seek_offsets, "_residuals_negative", False):
        return
    original = Recovery._seek_offsets

    async def _seek_offsets(
        self: Recovery, consumer: Any, tps: Any, offsets: Any, title: str
    ) -> None:
        clamped = Counter({tp: max(offsets[tp], -1) for tp in tps})
        await original(self, consumer, tps, clamped, title)

    _seek_offsets._residuals_negative = True  # type: ignore[attr-defined]
    Recovery._seek_offsets = _seek_offsets  # type: ignore[method-assign]


#: How long the broker may hold a fetch of faust's consumer that found no new records.
FETCH_MAX_WAIT_MS = 100


def fetch_wait_bounded() -> None:
    """Let the broker hold a fetch of faust's consumer for at most ``FETCH_MAX_WAIT_MS``
    (faust hard-codes 1,500 ms).

    aiokafka keeps one fetch in flight per broker, for the partitions that have nothing
    buffered when it is sent. When that is only partitions that stay quiet (faust's
    assignor-leader topic, a usage partition without traffic), the broker holds it for
    the whole wait, and the partitions whose buffered records were rated meanwhile cannot
    be fetched again until it returns: usage records waited 1.2 s (median) for the meter
    at 4,000 events/s (``bench/pipeline.py``'s latency phase), with the meter idle.
    Idempotent; applied by :func:`make_faust_app`.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread._create_worker_consumer, "_residuals_wait", False):
        return
    original = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = original(self, transport)
        # Read when the consumer starts (it builds its fetcher then), not before.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    _create_worker_consumer._residuals_wait = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def make_faust_app(
    name: str,
    kafka: KafkaSettings,
    *,
    data_dir: Path | str,
    web_port: int | None = None,
    **overrides: Any,
) -> faust.App:
    """A faust ``App`` named ``<topic prefix><name>`` (also its consumer group id).

    ``web_port=None`` disables faust's web server (services expose /metrics through
    :mod:`residuals.platform.telemetry` instead); ``replication_factor`` (default 1, for
    the single-broker local stack), ``store``, ``web_host`` and any other faust setting
    can be passed as keyword overrides.
    """
    import faust

    seek_committed_zero_too()
    seek_negative_offsets_from_start()
    fetch_wait_bounded()
    settings = faust_settings(kafka, data_dir=data_dir, web_port=web_port, **overrides)
    app = faust.App(f"{kafka.topic_prefix}{name}", **settings)
    without_per_record_monitor(app)
    with_prompt_delivery(app)
    return app


def without_per_record_monitor(app: faust.App) -> None:
    """Keep faust's ``Monitor`` out of the per-record sensor calls.

    faust adds its ``Monitor`` to the app's sensors when the app starts; every record then
    costs four monitor callbacks (counters, clocks, a state dict per event) whose figures
    only faust's own web views read, and those are off (services export Prometheus
    metrics themselves). The monitor object stays (faust calls it directly on commits and
    end offsets); it only stops being called per record.
    """
    add_dependencies = app.on_init_dependencies

    def on_init_dependencies() -> Any:
        services = add_dependencies()
        if app.monitor in set(app.sensors):
            app.sensors.remove(app.monitor)
        return services

    app.on_init_dependencies = on_init_dependencies  # type: ignore[method-assign]


def with_prompt_delivery(app: faust.App) -> None:
    """Hand each fetched record to its stream without four asyncio tasks per record.

    faust's fetch loop delivers every record as ``wait_first(callback(record),
    suspend_flow.wait())``: four tasks (the delivery and waits on the suspend, stopped and
    crashed events), an ``asyncio.wait`` and three cancellations, ~45 µs a record
    (``bench/faust_floor.py``: 99-110 -> 54-56 µs), although the delivery almost always
    completes without waiting (the stream's buffer has room). The app's consumer class
    (:class:`PromptDelivery`) runs the delivery directly first and falls back to faust's
    race only when it really has to wait.
    """
    transport = app.transport
    base = transport.Consumer
    if not getattr(base, "_residuals_prompt", False):
        transport.Consumer = type(  # type: ignore[misc]
            f"Prompt{base.__name__}", (PromptDelivery, base), {"_residuals_prompt": True}
        )


class PromptDelivery:
    """Mixin for faust's consumer: see :func:`with_prompt_delivery`."""

    suspend_flow: asyncio.Event
    _stopped: Any
    _crashed: Any

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        delivery = coros[0] if len(coros) == 2 and timeout is None else None
        if (
            inspect.iscoroutine(delivery)
            and _waits_on(coros[1], self.suspend_flow)
            and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        ):
            from mode.services import WaitResults

            try:
                pending = delivery.send(None)
            except StopIteration as done:  # delivered without waiting: the usual case
                coros[1].close()
                return WaitResults([delivery], [done.value], False)
            except BaseException:  # raised as faust's race would; nothing left to await
                coros[1].close()
                raise
            # It has to wait (a full buffer): let it race the flow suspension as faust does.
            coros = (_Resumed(delivery, pending), coros[1])
        return await super().wait_first(*coros, timeout=timeout)  # type: ignore[misc]


def _waits_on(coro: Any, event: Any) -> bool:
    """Whether ``coro`` is ``event.wait()``, not yet started."""
    frame = getattr(coro, "cr_frame", None)
    return (
        frame is not None
        and getattr(coro, "cr_code", None) is asyncio.Event.wait.__code__
        and frame.f_locals.get("self") is event
    )


class _Resumed:
    """A coroutine already run to its first suspension, awaitable again from there: the
    event loop resumes it when the future it yielded is done, as if never interrupted."""

    def __init__(self, coro: Any, pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # cancellation and the like, passed on
                try:
                    pending = coro.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value


def run_worker(app: faust.App, *, loglevel: str = "INFO") -> None:
    """Run ``app`` until SIGTERM/SIGINT, keeping the logging set up by ``init_telemetry``.

    faust/mode workers replace the root logging handlers, redirect stdout and draw a
    spinner by default; all are switched off so the service's JSON log lines stay intact.
    Exits the process (``SystemExit``) when the worker stops.
    """
    import faust

    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    # The start-up spinner writes terminal control codes to stdout even when it is not a
    # terminal, which would corrupt the JSON log stream; without it faust logs "Ready".
    worker.spinner = None
    worker.execute_from_commandline()
