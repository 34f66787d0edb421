"""When a change may take effect: the backdating rule, in one pure function.

Suspending, reinstating or revoking a licence, and revoking a vendor's signing key, at a
time in the past reclassifies usage that was already metered and perhaps billed: a vendor
that backdates the revocation of its own signing key voids the signatures behind its own
bills; a talent that backdates a suspension holds money already earned. So:

* nobody but admin may make such a change take effect earlier than now minus the skew
  (``LICENSING_BACKDATE_SKEW_SECONDS``, 300 s by default, absorbs clients' clocks):
  PERMISSION_DENIED;
* admin may, but only with a reason (INVALID_ARGUMENT naming the reason field without
  one);
* every change of this kind by admin, and every change by anyone that takes effect
  before the request arrived (even within the skew), is written to the audit log
  (``audit_log``, migration 0009) in the change's own transaction.

The time is the request's (``starts_at``, ``at``, ``revoked_at``) or, unset, now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from residuals.platform.auth import PermissionDenied, Principal, Role
from residuals.platform.errors import InvalidArgument

DEFAULT_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Timing:
    """A change's effective time as requested (``field`` names it in the request)."""

    field: str
    effective: datetime
    now: datetime

    @property
    def backdated_by(self) -> timedelta:
        """How long before the request the change takes effect (zero when not before)."""
        return max(timedelta(0), self.now - self.effective)


def describe_span(span: timedelta) -> str:
    """``9 days, 3:00:00`` / ``0:05:00``: whole seconds, for messages."""
    return str(timedelta(seconds=int(span.total_seconds())))


def check(
    principal: Principal,
    timing: Timing,
    *,
    skew: timedelta,
    reason_field: str,
    reason: str,
) -> bool:
    """Refuse a backdated change the principal may not make; True when it must be audited.

    Raises :class:`PermissionDenied` for a non-admin beyond ``skew`` and
    :class:`InvalidArgument` (naming ``reason_field``) for an admin beyond it without a
    reason.
    """
    late = timing.backdated_by
    if late > skew:
        if principal.role is not Role.ADMIN:
            raise PermissionDenied(
                f"{principal.describe()} may not backdate {timing.field} to"
                f" {timing.effective.isoformat()} ({describe_span(late)} ago): only admin may"
                f" make this change take effect more than {describe_span(skew)} in the past"
            )
        if not reason.strip():
            raise InvalidArgument.field(
                reason_field,
                f"is required when {timing.field} is more than {describe_span(skew)} in the"
                f" past ({describe_span(late)} ago): backdated changes are audited with why",
            )
    return principal.role is Role.ADMIN or late > timedelta(0)
