"""The gRPC servers' thread pool: newest idle thread first, bounded, orderly backlog."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import pytest

from residuals.platform.threadpool import LifoThreadPool


def _name() -> str:
    return threading.current_thread().name


def _wait_idle(pool: LifoThreadPool, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(pool._idle) < count:
        assert time.monotonic() < deadline, "threads did not go idle"
        time.sleep(0.001)


def test_the_most_recently_idle_thread_takes_the_next_task() -> None:
    pool = LifoThreadPool(4, thread_name_prefix="t")
    try:
        release = threading.Event()
        busy = [pool.submit(release.wait, 5) for _ in range(3)]
        release.set()
        futures.wait(busy)
        _wait_idle(pool, 3)
        last_idle = pool._idle[-1]
        # One call at a time (each once the last thread is idle again): always the same,
        # warm, thread, never the others.
        names = set()
        for _ in range(50):
            names.add(pool.submit(_name).result(5))
            _wait_idle(pool, 3)
        assert len(names) == 1
        assert pool._idle[-1] is last_idle
        assert len(pool._threads) == 3
    finally:
        pool.shutdown()


def test_threads_are_bounded_and_the_backlog_runs_in_order() -> None:
    pool = LifoThreadPool(2)
    try:
        release = threading.Event()
        blockers = [pool.submit(release.wait, 5) for _ in range(2)]
        order: list[int] = []
        queued = [pool.submit(order.append, i) for i in range(20)]
        assert len(pool._threads) == 2
        assert not any(f.done() for f in queued)
        release.set()
        futures.wait(blockers + queued, timeout=5)
        assert sorted(order) == list(range(20))
        assert all(f.done() for f in queued)
        assert len(pool._threads) == 2
    finally:
        pool.shutdown()


def test_results_and_exceptions_reach_the_future() -> None:
    pool = LifoThreadPool(2)
    try:
        assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(5) == 5
        failed = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(5)
        assert pool.submit(lambda: "still serving").result(5) == "still serving"
    finally:
        pool.shutdown()


def test_shutdown_ends_the_threads_and_refuses_new_tasks() -> None:
    pool = LifoThreadPool(3)
    release = threading.Event()
    busy = pool.submit(release.wait, 5)
    for _ in range(5):
        pool.submit(time.sleep, 0)
    waiting = pool.submit(time.sleep, 0)
    pool.shutdown(wait=False, cancel_futures=False)
    with pytest.raises(RuntimeError):
        pool.submit(print)
    release.set()
    assert busy.result(5) is True
    assert waiting.result(5) is None  # the backlog still runs
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)


def test_shutdown_can_cancel_the_backlog() -> None:
    pool = LifoThreadPool(1)
    release = threading.Event()
    busy = pool.submit(release.wait, 5)
    deadline = time.monotonic() + 5
    while not busy.running():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    queued = [pool.submit(time.sleep, 0) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert busy.result(5) is True
    assert all(f.cancelled() for f in queued)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)


def test_at_least_one_worker() -> None:
    with pytest.raises(ValueError):
        LifoThreadPool(0)
