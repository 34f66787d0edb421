"""What the SDK tells the caller about each event once its fate is known."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class DeliveryStatus(StrEnum):
    """The final answer for one event; the event leaves the spool with it."""

    #: Durably written to the usage topic (Kafka acknowledged, or the gateway ACCEPTED it).
    DELIVERED = "DELIVERED"
    #: The gateway had already accepted this event id with the same payload.
    DUPLICATE = "DUPLICATE"
    #: Refused for good (gateway verdict, or a record Kafka can never take); see ``reason``.
    #: The platform dead-lettered it; re-sending the same event will not help.
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One event's outcome, passed to the client's ``on_delivery`` callback."""

    event_id: str
    #: The usage topic key: the licence id (for a retraction, the original's licence id).
    routing_key: str
    status: DeliveryStatus
    #: For REJECTED: a docs/ROYALTY-RULES.md §2 reason name (e.g. ``BAD_SIGNATURE``) or a Kafka
    #: error name.
    reason: str = ""
    detail: str = ""
    #: Kafka transport only: where the record landed.
    partition: int | None = None
    offset: int | None = None
    #: Send attempts it took (1 = first try).
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """True when the platform has the event (delivered now or before)."""
        return self.status is not DeliveryStatus.REJECTED


DeliveryCallback = Callable[[DeliveryReport], None]
