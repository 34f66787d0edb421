"""Ports for locally started services: free, distinct, and outside the ephemeral range that
outgoing connections draw from."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from residuals.platform import ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    given = [ports.free_port() for _ in range(40)]
    assert len(set(given)) == len(given)
    assert all(ports.LOW <= p < ports.HIGH < low for p in given)
    for port in given[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        # The busy port twice, then every port of the range: whichever is free comes back.
        picks = itertools.chain([taken, taken], range(ports.LOW, ports.HIGH))
        monkeypatch.setattr(ports.random, "randrange", lambda _a, _b: next(picks))
        given = ports.free_port()
        assert given != taken
        assert ports.LOW <= given < ports.HIGH
