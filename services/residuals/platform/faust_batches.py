"""One topic's records handed to a handler in whole fetched batches by faust's consumer.

faust delivers each record through its conductor, a channel queue, a stream, an event and
an acknowledgement: ~48 µs of CPU a record on the 2-core benchmark machine
(``bench/faust_floor.py``), where aiokafka's own ``getmany`` costs 1.3 µs. That was half of
the whole pipeline's budget per event (issue 20). A service that processes a topic in
batches anyway (the meter's usage topic) registers a handler with
:func:`deliver_in_batches`; the app's consumer then hands it every fetched batch of that
topic's records as aiokafka decoded them, and acknowledges their offsets in bulk once the
handler returns. faust keeps everything else: group membership and assignment, pausing
partitions while tables recover, the commit timer (which commits what was acknowledged),
table changelogs and their recovery, and every other topic's per-record streams.

What faust guarantees per record holds per batch:

* records fetched before a rebalance are dropped, never handled, when the generation
  changed or the flow was stopped (faust then seeks back to the committed offsets);
* records below a partition's read offset (already delivered) are dropped; holes in the
  offsets (transaction markers, compaction) are recorded as gaps so commits move past them;
* a batch being handled is in the consumer's unacknowledged set, so a rebalance waits for
  it (``stream_wait_empty``) before it commits and hands the partitions on;
* offsets are acknowledged only after the handler returned; a handler that raises leaves
  them unacknowledged (the meter exits then, so nothing past a failure is committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    import faust

#: (partition, records) pairs, each partition's records in offset order; the records are
#: aiokafka's ``ConsumerRecord`` (topic, partition, offset, timestamp in ms,
#: timestamp_type, key, value, headers).
Fetched = Sequence[tuple[int, Sequence[Any]]]
BatchHandler = Callable[[Fetched], Awaitable[None]]


def deliver_in_batches(app: faust.App, topic: Any, handler: BatchHandler) -> None:
    """Subscribe ``app`` to ``topic`` (a faust topic) and hand its records to ``handler``
    in fetched batches instead of per record to streams."""
    app.topics.add(topic)
    transport = app.transport
    base = transport.Consumer
    if not getattr(base, "_residuals_batches", False):
        transport.Consumer = type(  # type: ignore[misc]
            f"Batch{base.__name__}", (BatchDelivery, base), {"_residuals_batches": True}
        )
    handlers = _HANDLERS.setdefault(app, {})
    for name in topic.topics:
        handlers[name] = handler


#: Handlers by app and topic name: faust creates the consumer itself, after they are set.
_HANDLERS: WeakKeyDictionary[Any, dict[str, BatchHandler]] = WeakKeyDictionary()


class _InFlight:
    """Stands for a batch being handled in the consumer's set of unacknowledged messages,
    so that a rebalance waits for it (faust's ``wait_empty`` logs ``refcount``)."""

    refcount = 1

    def __init__(self, records: int) -> None:
        self.records = records

    def __repr__(self) -> str:
        return f"<batch of {self.records} records being handled>"


class BatchDelivery:
    """Mixin for faust's consumer class: see :func:`deliver_in_batches`."""

    app: Any
    log: Any
    flow_active: bool
    should_stop: bool
    scheduler: Any
    _buffered_partitions: set[Any]
    _read_offset: Any
    _committed_offset: Any
    _acked: Any
    _acked_index: Any
    _unacked_messages: Any
    _n_acked: int
    _waiting_for_ack: Any

    async def getmany(self, timeout: float) -> Any:
        handlers = _HANDLERS.get(self.app)
        if not handlers:
            async for item in super().getmany(timeout):  # type: ignore[misc]
                yield item
            return
        records, active = await self._wait_next_records(timeout)  # type: ignore[attr-defined]
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()  # type: ignore[attr-defined]
            except Exception as error:  # as faust's getmany: logged, the fetch loop goes on
                self.log.warning(f"exception performing seek when flow not active {error}")
            return
        batches: dict[str, list[tuple[Any, Sequence[Any]]]] = {}
        others: dict[Any, Any] = {}
        buffered = self._buffered_partitions
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            if tp.topic in handlers:
                batches.setdefault(tp.topic, []).append((tp, tp_records))
            else:
                others[tp] = tp_records
        for topic, fetched in batches.items():
            await self._deliver(handlers[topic], fetched, generation)
        if others:
            async for item in self._one_by_one(others, generation):
                yield item

    async def _one_by_one(self, records: Any, generation: int) -> Any:
        """The other topics' records, exactly as faust's ``getmany`` yields them."""
        to_message = self._to_message  # type: ignore[attr-defined]
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                break
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))  # type: ignore[attr-defined]
            yield tp, to_message(tp, record)

    async def _deliver(
        self, handler: BatchHandler, fetched: Sequence[tuple[Any, Sequence[Any]]], generation: int
    ) -> None:
        if not self.flow_active or self.app.consumer_generation_id != generation:
            return  # fetched before a rebalance: faust seeks back to the commits
        fresh: list[tuple[Any, Sequence[Any]]] = []
        for tp, tp_records in fetched:
            tp_records = await self._unread(tp, tp_records)
            if tp_records:
                fresh.append((tp, tp_records))
        if not fresh or not self.flow_active or self.app.consumer_generation_id != generation:
            return  # nothing new, or a rebalance began while gaps were recorded
        in_flight = _InFlight(sum(len(r) for _, r in fresh))
        self._unacked_messages.add(in_flight)
        try:
            await handler([(tp.partition, tp_records) for tp, tp_records in fresh])
            self._acknowledge(fresh)
        finally:
            self._unacked_messages.discard(in_flight)
            _notify(self._waiting_for_ack)

    async def _unread(self, tp: Any, tp_records: Sequence[Any]) -> Sequence[Any]:
        """The records at or past the read offset, with holes before and between them
        recorded as gaps (faust's ``_drain_messages`` does both per record)."""
        read = self._read_offset[tp]
        if read is not None and tp_records[0].offset < read:
            tp_records = [r for r in tp_records if r.offset >= read]
            if not tp_records:
                return tp_records
        first, last = tp_records[0].offset, tp_records[-1].offset
        if read and first - read > 1:
            await self._add_gap(tp, read + 1, first)  # type: ignore[attr-defined]
        if last - first + 1 != len(tp_records):
            previous = first
            for record in tp_records:
                if record.offset - previous > 1:
                    await self._add_gap(tp, previous + 1, record.offset)  # type: ignore[attr-defined]
                previous = record.offset
        self._read_offset[tp] = last
        return tp_records

    def _acknowledge(self, fresh: Sequence[tuple[Any, Sequence[Any]]]) -> None:
        """What faust's ``ack`` does per record, per batch: the commit timer commits it."""
        from faust.types.tuples import ack_lock

        acks_enabled_for = self.app.topics.acks_enabled_for
        with ack_lock:
            for tp, tp_records in fresh:
                if not acks_enabled_for(tp.topic):
                    continue
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                offsets = [
                    r.offset
                    for r in tp_records
                    if (committed is None or r.offset >= committed) and r.offset not in index
                ]
                index.update(offsets)
                self._acked[tp].extend(offsets)
                self._n_acked += len(offsets)


def _notify(future: asyncio.Future[Any] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
