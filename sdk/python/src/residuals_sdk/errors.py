"""Exceptions the SDK raises to its caller."""

from __future__ import annotations


class ResidualsError(Exception):
    """Base class of every SDK error."""


class SpoolFullError(ResidualsError):
    """The local spool reached its size bound; the event was NOT accepted.

    Events pile up in the spool while the transport cannot deliver (broker or gateway
    down). Either wait for delivery (``flush()``), give the spool more room
    (``spool_max_bytes`` / ``spool_max_events``), or shed load upstream.
    """


class SpoolLockedError(ResidualsError):
    """Another live client (in this or another process) already uses this spool directory.

    Two clients draining one spool would both send its events; give each its own directory.
    """


class InsecureTransportError(ResidualsError, ValueError):
    """The transport would talk plaintext to a peer that is not on this machine.

    Configure TLS (Kafka: ``security.protocol`` ``SASL_SSL`` or ``SSL``; gRPC: the default,
    or ``credentials``), or pass ``insecure=True`` for a test system you trust.
    """


class ClientClosedError(ResidualsError):
    """The client was closed; create a new one (its spool keeps undelivered events)."""
