"""Stored registry rows -> the domain licence and the published ``residuals.v1.Licence``.

This is the one conversion from the registry's rows to the wire. The terms go through
:func:`residuals.codecs.licences.to_proto` (the translation every service shares); the
registry then adds what only it knows: who recorded each version and why, the suspension
windows with their who/why, the revision, the creation time and the status at ``as_of``.
Every outbox record, GetLicence and ListLicences answer is built here, so the topic and
the API can never disagree about a licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from residuals.codecs import licences as licence_codec
from residuals.codecs.timestamps import set_timestamp
from residuals.domain.licences import Licence, Window
from residuals.licensing import terms
from residuals.v1 import licence_pb2


@dataclass(frozen=True)
class VersionRow:
    version: int
    effective_from: datetime | None
    spec: terms.Spec  # complete spec (terms.complete_spec shape)
    recorded_at: datetime
    recorded_by: str
    note: str = ""


@dataclass(frozen=True)
class SuspensionRow:
    suspension_id: str
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    automatic: bool = False
    alert_id: str | None = None
    suspended_by: str = ""
    reinstated_by: str | None = None

    @property
    def window(self) -> Window:
        return Window(self.starts_at, self.ends_at, automatic=self.automatic)


@dataclass(frozen=True)
class LicenceRecord:
    """A licence exactly as stored: identity, every version, every suspension window."""

    identity: terms.Identity
    revision: int
    created_at: datetime
    created_by: str
    versions: tuple[VersionRow, ...]
    suspensions: tuple[SuspensionRow, ...] = field(default=())

    @property
    def licence_id(self) -> str:
        return self.identity.licence_id

    def latest(self) -> VersionRow:
        return self.versions[-1]

    def to_domain(self) -> Licence:
        """The domain licence (well-formed and bounded, not re-judged by today's registry
        rules: :func:`terms.read`), automatic windows marked as such; :class:`SpecError`
        when a stored row is not."""
        licence = terms.read(self.identity, [(v.effective_from, v.spec) for v in self.versions])
        windows = tuple(
            s.window for s in self.suspensions if s.automatic or s.ends_at != s.starts_at
        )
        return Licence(
            licence_id=licence.licence_id,
            talent_id=licence.talent_id,
            avatar_id=licence.avatar_id,
            vendor_id=licence.vendor_id,
            currency=licence.currency,
            versions=licence.versions,
            suspensions=windows,
        )


class Status(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"

    @property
    def proto(self) -> int:
        return int(licence_pb2.LicenceStatus.Value(f"LICENCE_STATUS_{self.value}"))

    @classmethod
    def from_proto(cls, value: int) -> Status:
        name = licence_pb2.LicenceStatus.Name(value)  # type: ignore[arg-type]
        return cls(name.removeprefix("LICENCE_STATUS_"))


def status_at(licence: Licence, at: datetime) -> Status:
    """Where the licence stands at ``at`` under the version in force then.

    Revocation and expiry end a licence whatever else holds; before its start it is
    pending; inside a suspension window it is suspended.
    """
    version = licence.version_at(at)
    if version.revoked_at is not None and at >= version.revoked_at:
        return Status.REVOKED
    if version.ends_at is not None and at >= version.ends_at:
        return Status.EXPIRED
    if at < version.starts_at:
        return Status.PENDING
    if licence.suspended_at(at):
        return Status.SUSPENDED
    return Status.ACTIVE


def to_message(
    record: LicenceRecord, as_of: datetime, licence: Licence | None = None
) -> licence_pb2.Licence:
    """The full state of the licence as ``residuals.v1.Licence``, status at ``as_of``.

    ``licence`` is ``record.to_domain()`` when the caller already has it.
    """
    licence = licence or record.to_domain()
    message = licence_codec.to_proto(licence)
    for version_message, row in zip(message.versions, record.versions, strict=True):
        set_timestamp(version_message.recorded_at, row.recorded_at)
        version_message.recorded_by = row.recorded_by
        version_message.note = row.note
    del message.suspensions[:]
    for s in sorted(record.suspensions, key=lambda s: (s.starts_at, s.suspension_id)):
        entry = message.suspensions.add(
            suspension_id=s.suspension_id,
            reason=s.reason,
            automatic=s.automatic,
            alert_id=s.alert_id or "",
            suspended_by=s.suspended_by,
            reinstated_by=s.reinstated_by or "",
        )
        set_timestamp(entry.starts_at, s.starts_at)
        if s.ends_at is not None:
            set_timestamp(entry.ends_at, s.ends_at)
    message.status = status_at(licence, as_of).proto  # type: ignore[assignment]
    set_timestamp(message.as_of, as_of)
    set_timestamp(message.created_at, record.created_at)
    message.revision = record.revision
    return message
