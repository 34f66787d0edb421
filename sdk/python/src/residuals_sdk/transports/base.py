"""The contract between :class:`~residuals_sdk.client.UsageClient` and a transport.

The client owns the spool, the retry schedule and the callbacks; a transport only moves
spooled envelopes and reports, per event, either a final answer or "try again later".
Transports never drop an event silently: every event handed to :meth:`Transport.send`
comes back exactly once from :meth:`Transport.poll` (or is returned by ``send`` itself
when the transport cannot take it right now).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from residuals_sdk.report import DeliveryStatus
from residuals_sdk.spool import SpooledEvent


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one send attempt of one event.

    ``status`` None means the attempt failed transiently: the client retries after a
    backoff of at least ``retry_after`` seconds.
    """

    event: SpooledEvent
    status: DeliveryStatus | None
    reason: str = ""
    detail: str = ""
    partition: int | None = None
    offset: int | None = None
    retry_after: float = 0.0

    @classmethod
    def retry(cls, event: SpooledEvent, detail: str, retry_after: float = 0.0) -> Outcome:
        return cls(event, None, detail=detail, retry_after=retry_after)


class Transport(Protocol):
    """Moves envelopes to the platform. Called from the client's threads only."""

    #: "kafka" or "grpc", for logs and metrics.
    name: str

    def send(self, events: Sequence[SpooledEvent]) -> Sequence[SpooledEvent]:
        """Start sending ``events``; return those it cannot take now (backpressure)."""
        ...

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for outcomes of earlier sends and return them."""
        ...

    def close(self) -> None:
        """Release connections. Events without an outcome stay in the spool."""
        ...
