"""Free TCP ports for the services a process starts locally (the demo, tests, benchmarks).

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the range
outgoing connections draw from too: between releasing it and the service binding it, a
Kafka or PostgreSQL client connection can take it ("Address already in use", seen in CI).
These ports are picked below the ephemeral range and below the local stack's defaults
(PostgreSQL 15432, Kafka 19092), and never twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading

#: Below the local stack's ports and far below Linux's ephemeral range (32768-60999).
LOW, HIGH = 10_000, 15_000
_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the range outgoing connections use."""
    with _lock:
        for _attempt in range(200):
            port = random.randrange(LOW, HIGH)
            if port in _given:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH}")
