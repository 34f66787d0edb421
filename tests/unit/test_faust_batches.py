"""Batch delivery from faust's consumer (residuals.platform.faust_batches), on a stand-in
for the consumer's state: what is handed to the handler, what is acknowledged, and when."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, NamedTuple
from weakref import WeakSet

import pytest
from faust.types import TP

from residuals.platform import faust_batches
from residuals.platform.faust_batches import BatchDelivery

pytestmark = pytest.mark.unit

USAGE = "usage"
OTHER = "other"


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes = b"v"


class _Topics:
    def acks_enabled_for(self, topic: str) -> bool:
        return True


class _Monitor:
    def track_tp_end_offset(self, tp: Any, offset: Any) -> None:
        pass


class _App:
    def __init__(self) -> None:
        self.consumer_generation_id = 1
        self.topics = _Topics()
        self.monitor = _Monitor()


class _Scheduler:
    def iterate(self, records: dict[Any, list[Any]]) -> Any:
        for tp, rs in records.items():
            for r in rs:
                yield tp, r


class _Log:
    def dev(self, *args: Any) -> None:
        pass

    def warning(self, *args: Any) -> None:
        pass


class _Base:
    """faust's consumer as far as batch delivery uses it."""

    def __init__(self, fetches: list[tuple[dict[TP, list[Rec]], set[TP] | None]]) -> None:
        self.app = _App()
        self.log = _Log()
        self.flow_active = True
        self.should_stop = False
        self.scheduler = _Scheduler()
        self._buffered_partitions: set[TP] = set()
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._unacked_messages: WeakSet[Any] = WeakSet()
        self._n_acked = 0
        self._waiting_for_ack: Any = None
        self._fetches = list(fetches)
        self.gaps: list[tuple[TP, int, int]] = []
        self.seeks = 0

    async def _wait_next_records(self, timeout: float) -> Any:
        return self._fetches.pop(0)

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))

    async def perform_seek(self) -> None:
        self.seeks += 1

    def highwater(self, tp: TP) -> int:
        return 0

    def _to_message(self, tp: TP, record: Rec) -> tuple[str, Rec]:
        return ("message", record)

    async def getmany(self, timeout: float) -> Any:  # the per-record path of faust
        records, _ = await self._wait_next_records(timeout)
        for tp, rs in records.items():
            for r in rs:
                yield tp, self._to_message(tp, r)


class _Consumer(BatchDelivery, _Base):
    pass


def _tp(topic: str, partition: int) -> TP:
    return TP(topic, partition)


def _records(topic: str, partition: int, offsets: range | list[int]) -> list[Rec]:
    return [Rec(topic, partition, o) for o in offsets]


def _consumer(fetches: Any, handler: Any) -> _Consumer:
    consumer = _Consumer(fetches)
    faust_batches._HANDLERS[consumer.app] = {USAGE: handler}
    return consumer


async def _drain(consumer: _Consumer) -> list[Any]:
    return [item async for item in consumer.getmany(1.0)]


def test_one_topics_records_reach_the_handler_as_one_batch_and_are_acknowledged_after() -> None:
    seen: list[Any] = []
    during: list[int] = []

    async def handler(fetched: Any) -> None:
        seen.append([(p, [r.offset for r in rs]) for p, rs in fetched])
        during.append(len(consumer._unacked_messages))
        assert not consumer._acked  # nothing acknowledged while it is being handled

    usage0, usage1, other = _tp(USAGE, 0), _tp(USAGE, 1), _tp(OTHER, 0)
    fetch = {
        usage0: _records(USAGE, 0, range(10, 13)),
        other: _records(OTHER, 0, range(2)),
        usage1: _records(USAGE, 1, range(0, 2)),
    }
    consumer = _consumer([(fetch, None)], handler)
    yielded = asyncio.run(_drain(consumer))

    assert seen == [[(0, [10, 11, 12]), (1, [0, 1])]]
    assert during == [1]  # a rebalance waits for the batch (faust's wait_empty)
    assert len(consumer._unacked_messages) == 0
    assert consumer._acked[usage0] == [10, 11, 12]
    assert consumer._acked[usage1] == [0, 1]
    assert consumer._n_acked == 5
    assert consumer._read_offset[usage0] == 12
    # Other topics keep faust's per-record path.
    assert yielded == [(other, ("message", r)) for r in fetch[other]]
    assert other not in consumer._acked


def test_a_failing_handler_acknowledges_nothing() -> None:
    async def handler(fetched: Any) -> None:
        raise RuntimeError("batch failed")

    usage0 = _tp(USAGE, 0)
    consumer = _consumer([({usage0: _records(USAGE, 0, range(5))}, None)], handler)
    with pytest.raises(RuntimeError):
        asyncio.run(_drain(consumer))
    assert consumer._acked == {}
    assert consumer._n_acked == 0
    assert len(consumer._unacked_messages) == 0  # a rebalance does not wait forever


def test_records_fetched_before_a_rebalance_are_not_handled() -> None:
    handled: list[Any] = []

    async def handler(fetched: Any) -> None:
        handled.append(fetched)

    usage0 = _tp(USAGE, 0)

    class Rebalanced(_Consumer):
        async def _add_gap(self, tp: TP, start: int, end: int) -> None:
            await super()._add_gap(tp, start, end)
            self.app.consumer_generation_id += 1  # the group rebalanced meanwhile

    consumer = Rebalanced([({usage0: _records(USAGE, 0, [0, 2])}, None)])
    faust_batches._HANDLERS[consumer.app] = {USAGE: handler}
    asyncio.run(_drain(consumer))
    assert consumer.gaps  # the await during which the rebalance came
    assert handled == []
    assert consumer._acked == {}


def test_a_stopped_flow_seeks_back_instead_of_handling() -> None:
    handled: list[Any] = []

    async def handler(fetched: Any) -> None:
        handled.append(fetched)

    consumer = _consumer([({_tp(USAGE, 0): _records(USAGE, 0, range(3))}, None)], handler)
    consumer.flow_active = False
    asyncio.run(_drain(consumer))
    assert handled == []
    assert consumer.seeks == 1


def test_paused_partitions_and_already_read_records_are_skipped() -> None:
    handled: list[Any] = []

    async def handler(fetched: Any) -> None:
        handled.append([(p, [r.offset for r in rs]) for p, rs in fetched])

    usage0, usage1 = _tp(USAGE, 0), _tp(USAGE, 1)
    fetch = {usage0: _records(USAGE, 0, range(5, 9)), usage1: _records(USAGE, 1, range(3))}
    consumer = _consumer([(fetch, {usage0})], handler)  # partition 1 is paused (recovering)
    consumer._read_offset[usage0] = 7
    asyncio.run(_drain(consumer))
    assert handled == [[(0, [7, 8])]]
    assert consumer._acked[usage0] == [7, 8]


def test_holes_are_recorded_as_gaps_so_commits_move_past_them() -> None:
    async def handler(fetched: Any) -> None:
        pass

    usage0 = _tp(USAGE, 0)
    # 3 was delivered before; 4-5 and 8 are not records (transaction markers, compaction).
    consumer = _consumer([({usage0: _records(USAGE, 0, [6, 7, 9])}, None)], handler)
    consumer._read_offset[usage0] = 3
    asyncio.run(_drain(consumer))
    assert consumer.gaps == [(usage0, 4, 6), (usage0, 8, 9)]
    assert consumer._acked[usage0] == [6, 7, 9]


def test_offsets_below_the_commit_or_already_acknowledged_are_not_acknowledged_again() -> None:
    async def handler(fetched: Any) -> None:
        pass

    usage0 = _tp(USAGE, 0)
    consumer = _consumer([({usage0: _records(USAGE, 0, range(0, 6))}, None)], handler)
    consumer._committed_offset[usage0] = 2
    consumer._acked_index[usage0].add(4)
    asyncio.run(_drain(consumer))
    assert consumer._acked[usage0] == [2, 3, 5]
    assert consumer._n_acked == 3


def test_without_a_handler_the_consumer_is_faust_s() -> None:
    usage0 = _tp(USAGE, 0)
    consumer = _Consumer([({usage0: _records(USAGE, 0, range(2))}, None)])
    faust_batches._HANDLERS.pop(consumer.app, None)
    yielded = asyncio.run(_drain(consumer))
    assert [m for _, (_, m) in yielded] == _records(USAGE, 0, range(2))


def test_the_app_subscribes_the_topic_and_its_consumer_class_delivers_batches() -> None:
    from residuals.platform import faust_app
    from residuals.platform.config import KafkaSettings

    app = faust_app.make_faust_app(
        "meter", KafkaSettings(bootstrap_servers="k:9", topic_prefix="t9."), data_dir="/tmp/x"
    )
    topic = app.topic("t9.usage", key_type=bytes, value_type=bytes)

    async def handler(fetched: Any) -> None:
        pass

    faust_batches.deliver_in_batches(app, topic, handler)
    faust_batches.deliver_in_batches(app, topic, handler)  # idempotent: not wrapped twice
    consumer_class = app.transport.Consumer
    assert consumer_class.__mro__.count(BatchDelivery) == 1
    assert issubclass(consumer_class, faust_app.PromptDelivery)
    assert topic in app.topics
    assert faust_batches._HANDLERS[app] == {"t9.usage": handler}


def test_faust_s_consumer_fetches_with_a_bounded_wait() -> None:
    """faust hard-codes a 1,500 ms fetch wait; with one fetch in flight per broker, a fetch
    of quiet partitions held that long kept busy ones from being fetched (1.2 s median
    publish -> rated at 4,000 events/s)."""
    from residuals.platform import faust_app
    from residuals.platform.config import KafkaSettings

    app = faust_app.make_faust_app(
        "meter", KafkaSettings(bootstrap_servers="k:9", topic_prefix="t10."), data_dir="/tmp/x"
    )

    async def created() -> Any:
        thread = app.consumer._thread  # type: ignore[attr-defined]
        return thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(created())
    assert consumer._fetch_max_wait_ms == faust_app.FETCH_MAX_WAIT_MS == 100
