"""An event about to be stored for notification, as intake and the dispatcher make them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from residuals.domain.notifications import Audience, body, message_id


@dataclass(frozen=True)
class NewEvent:
    """``identity`` says which event this is (e.g. the alert id): with the type it gives
    the webhook-id, so reading the same source record twice stores one event."""

    event_type: str
    identity: str
    occurred_at: datetime
    data: Mapping[str, Any]
    audience: Audience = field(default_factory=Audience)
    #: alert.raised: the alert's Severity number; else 0.
    severity: int = 0
    #: When the usage behind it was published, if known (delivery-lag origin).
    origin_at: datetime | None = None

    @property
    def message_id(self) -> str:
        return message_id(self.event_type, self.identity)

    def body(self) -> bytes:
        return body(self.event_type, self.occurred_at, self.data)
