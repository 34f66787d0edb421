"""An HTTP client for the gateway tests: plain requests and a server-sent-events reader.

Only the standard library (``http.client``), so what the tests send is exactly what is on
the wire: any header, any bytes, any method.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | str | Any = None,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/json",
) -> Answer:
    """One request; ``body`` is sent as is when bytes/str, else as JSON."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    if data is not None and content_type is not None:
        sent.setdefault("Content-Type", content_type)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


@dataclass
class Event:
    event: str = "message"
    id: str | None = None
    data: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class EventStream:
    """Reads ``text/event-stream`` on a thread into a queue of :class:`Event` (comments
    dropped); ``status``/``headers`` are the response's."""

    port: int
    path: str
    key: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events: queue.Queue[Event | BaseException | None] = queue.Queue()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.connection.request(
            "GET",
            self.path,
            headers={"Authorization": f"Bearer {self.key}", **self.headers},
        )
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("content-type", "")
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self.thread.start()

    def _read(self) -> None:
        current = Event()
        try:
            while True:
                raw = self.response.fp.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if current.data or current.event != "message":
                        self.events.put(current)
                    current = Event()
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        current.event = value
                    elif name == "id":
                        current.id = value
                    elif name == "data":
                        current.data = f"{current.data}\n{value}" if current.data else value
        except BaseException as error:
            self.events.put(error)
        self.events.put(None)

    def next(self, timeout: float = 15.0) -> Event:
        item = self.events.get(timeout=timeout)
        if item is None:
            raise EOFError("the stream ended")
        if isinstance(item, BaseException):
            raise item
        return item

    def next_of(self, kind: str, timeout: float = 15.0) -> Event:
        """The next event named ``kind`` (others, e.g. heartbeats, skipped)."""
        while True:
            event = self.next(timeout)
            if event.event == kind:
                return event

    def close(self) -> None:
        # Shut the socket down (a plain close would wait for the reader thread's read).
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
