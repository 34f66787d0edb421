"""The thread pool of gRPC servers: the thread that went idle last takes the next call.

grpcio's synchronous server runs each call on a thread of the executor it is given.
``concurrent.futures.ThreadPoolExecutor`` hands a task to whichever idle thread the OS
wakes, so with 16 threads and a few calls in flight at a time, successive calls ran on
ever other threads: each with cold caches and, where a handler keeps a connection per
thread (the pre-flight check), its own PostgreSQL backend gone cold too. In
:class:`LifoThreadPool` every idle thread waits on a lock of its own and the idle threads
form a stack, so the most recently idle (warmest) thread is woken; calls run on as few
threads as the concurrency needs. At 500 ``CheckUse`` calls a second this took the
service's CPU per call down by a fifth and PostgreSQL's by a third (BENCHMARKS.md,
"Pre-flight CheckUse").

Threads are started on demand up to ``max_workers``, as ``ThreadPoolExecutor`` does; when
all are busy, tasks wait in order of submission. Threads are daemons: a server that was
stopped without :meth:`LifoThreadPool.shutdown` does not keep the process alive.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any

_Task = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Idle:
    """An idle thread's wake-up: its own lock, released with the task it is handed."""

    __slots__ = ("task", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.task: _Task | None = None


class LifoThreadPool(futures.Executor):
    """A ``concurrent.futures.Executor`` whose most recently idle thread runs the next task."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.thread_name_prefix = thread_name_prefix or f"LifoThreadPool-{id(self):x}"
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self._backlog: deque[_Task] = deque()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        task: _Task = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                idle = self._idle.pop()
                idle.task = task
                idle.wake.release()
                return future
            self._backlog.append(task)
            if len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{self.thread_name_prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        idle = _Idle()
        while True:
            with self._lock:
                if self._backlog:
                    task: _Task | None = self._backlog.popleft()
                elif self._shutdown:
                    return
                else:
                    self._idle.append(idle)
                    task = None
            if task is None:
                idle.wake.acquire()
                task, idle.task = idle.task, None
                if task is None:  # woken by shutdown
                    return
            _run(task)
            del task

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; idle threads end, busy ones after the backlog (cancelled first with
        ``cancel_futures``); with ``wait``, until every thread has ended."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._backlog:
                    self._backlog.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for waiting in idle:
            waiting.wake.release()
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


def _run(task: _Task) -> None:
    future, fn, args, kwargs = task
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as error:
        future.set_exception(error)
    else:
        future.set_result(result)
