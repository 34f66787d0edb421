"""Per-use approval (docs/ROYALTY-RULES.md §5a, rules v1.1): the talent, or an agent acting
for them, reviews each use in an approval-required category before it happens.

An approval covers one licence and category, a window of time and a number of renders.
Views and ad impressions name the approval of their render and use none of it. Which
renders used an approval is decided in scope order, like quotas and tiers, so the verdict
does not depend on the order events arrived in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from residuals.domain.events import UsageEvent
from residuals.domain.vocabulary import Kind

#: Renders an approval covers when it does not say (§5a).
DEFAULT_MAX_RENDERS = 1


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    licence_id: str
    category: str
    valid_from: datetime
    valid_until: datetime | None = None  # exclusive; None: open
    max_renders: int = DEFAULT_MAX_RENDERS

    def covers(self, event: UsageEvent) -> bool:
        """Same licence and category, and the use inside the window."""
        t = event.occurred_at
        return (
            event.licence_id == self.licence_id
            and event.category == self.category
            and self.valid_from <= t
            and (self.valid_until is None or t < self.valid_until)
        )


def approved(
    event: UsageEvent, approvals: Mapping[str, Approval], renders_used: dict[str, int]
) -> bool:
    """Whether the use is approved; an approved render is counted against its approval
    (``renders_used``: units of earlier approved renders, by approval id)."""
    approval = approvals.get(event.approval_id or "")
    if approval is None or not approval.covers(event):
        return False
    if event.kind is not Kind.RENDER:
        return True
    used = renders_used.get(approval.approval_id, 0)
    if used >= approval.max_renders:
        return False
    renders_used[approval.approval_id] = used + event.quantity
    return True
