"""The names the rules speak in: event kinds, rejection reasons, violations and severities.

Values equal the protobuf enum suffixes and the strings in statements, so they round-trip
through every adapter unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    RENDER = "RENDER"
    VIEW = "VIEW"
    AD_IMPRESSION = "AD_IMPRESSION"
    RETRACTION = "RETRACTION"


#: Usage kinds in statement order (docs/ROYALTY-RULES.md §10).
USAGE_KINDS: tuple[Kind, ...] = (Kind.RENDER, Kind.VIEW, Kind.AD_IMPRESSION)
KIND_ORDER: dict[str, int] = {k.value: i for i, k in enumerate(USAGE_KINDS)}


class Metric(StrEnum):
    RENDER = "RENDER"
    VIEW = "VIEW"
    AD_IMPRESSION = "AD_IMPRESSION"


class OnExceed(StrEnum):
    BLOCK = "block"
    ALERT = "alert"


class RejectReason(StrEnum):
    """Why an event went to the dead-letter topic (§2, §3), in check order."""

    MALFORMED = "MALFORMED"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    UNKNOWN_LICENCE = "UNKNOWN_LICENCE"
    VENDOR_MISMATCH = "VENDOR_MISMATCH"
    AVATAR_MISMATCH = "AVATAR_MISMATCH"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    UNKNOWN_ORIGINAL = "UNKNOWN_ORIGINAL"
    # streaming-only checks
    BAD_SIGNATURE = "BAD_SIGNATURE"
    TOO_LATE = "TOO_LATE"
    IN_FUTURE = "IN_FUTURE"
    OVERSIZED = "OVERSIZED"
    # not a rule the event broke: a defect it met, set aside for re-drive after a fix
    UNPROCESSABLE = "UNPROCESSABLE"


class Severity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class Violation(StrEnum):
    LICENCE_SUSPENDED = "LICENCE_SUSPENDED"
    USE_AFTER_REVOCATION = "USE_AFTER_REVOCATION"
    USE_BEFORE_START = "USE_BEFORE_START"
    USE_AFTER_EXPIRY = "USE_AFTER_EXPIRY"
    FORBIDDEN_CATEGORY = "FORBIDDEN_CATEGORY"
    CATEGORY_NOT_LICENSED = "CATEGORY_NOT_LICENSED"
    TERRITORY_NOT_LICENSED = "TERRITORY_NOT_LICENSED"
    CHANNEL_NOT_LICENSED = "CHANNEL_NOT_LICENSED"
    UNAPPROVED_USE = "UNAPPROVED_USE"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    QUOTA_NEAR = "QUOTA_NEAR"
    UNREPORTED_RENDER = "UNREPORTED_RENDER"
    DUPLICATE_CONFLICT = "DUPLICATE_CONFLICT"

    @property
    def severity(self) -> Severity:
        return SEVERITY[self]

    @property
    def suspends(self) -> bool:
        """Critical misuse that triggers automatic suspension (§5)."""
        return self in (Violation.FORBIDDEN_CATEGORY, Violation.USE_AFTER_REVOCATION)


SEVERITY: dict[Violation, Severity] = {
    Violation.LICENCE_SUSPENDED: Severity.CRITICAL,
    Violation.USE_AFTER_REVOCATION: Severity.CRITICAL,
    Violation.FORBIDDEN_CATEGORY: Severity.CRITICAL,
    Violation.USE_BEFORE_START: Severity.HIGH,
    Violation.USE_AFTER_EXPIRY: Severity.HIGH,
    Violation.CATEGORY_NOT_LICENSED: Severity.HIGH,
    Violation.TERRITORY_NOT_LICENSED: Severity.HIGH,
    Violation.CHANNEL_NOT_LICENSED: Severity.HIGH,
    Violation.UNAPPROVED_USE: Severity.HIGH,
    Violation.UNREPORTED_RENDER: Severity.HIGH,
    Violation.QUOTA_EXCEEDED: Severity.MEDIUM,
    Violation.QUOTA_NEAR: Severity.LOW,
    Violation.DUPLICATE_CONFLICT: Severity.LOW,
}
