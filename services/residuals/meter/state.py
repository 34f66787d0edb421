"""The meter's per-partition state and its byte encodings.

All state lives in ONE changelogged table (``meter-state``), co-partitioned with
``residuals.usage.v1``: one changelog partition per usage partition, written in processing
order. One table rather than several is what makes recovery exact: Kafka keeps order only
within a partition, so only then is "everything written before this record is there too"
true across identities and counters (see :mod:`residuals.meter.core` for how re-delivered
records use it).

Keys are bytes with a one-letter kind prefix; values are compact bytes:

* ``I<vendor>\\x1f<event_id>`` → :class:`IdentityEntry`: the first accepted occurrence of an
  identity (its source position, and the normalised event for ``classify_repeat``), plus
  the retraction that withdrew it, if any;
* ``C<licence>\\x1f<period>`` → :class:`PeriodCounters`: the
  :class:`~residuals.domain.metering.LicenceCounters` of one licence and period (tier
  position, quota usage, QUOTA_NEAR raised), kept per period so a late event of the
  previous month is rated against that month's counters, not this one's;
* ``S<licence>`` → :class:`Suspension`: the automatic suspension, which outlives periods;
* ``A<licence>\\x1f<approval_id>`` → :class:`ApprovalUse`: render units an approval
  covered (§5a), which outlive periods too (an approval's window can span months).

Every value carries ``through``: the source offset of the record that last wrote it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from residuals.codecs.usage import from_domain, parse_message, payload_bytes
from residuals.domain.events import UsageEvent
from residuals.domain.metering import LicenceCounters
from residuals.domain.period import Period
from residuals.v1 import usage_pb2

SEP = "\x1f"
_HEADER = struct.Struct(">iqqH")  # partition, offset, occurred_at (epoch s), len(retracted_by)
#: Counters without quota state: tag, through, billed renders, partition. JSON otherwise
#: (it starts with ``{``, never with the tag).
_PACKED_COUNTERS = struct.Struct(">cqqi")
_PACKED_TAG = b"P"
_APPROVAL_USE = struct.Struct(">qqq")  # through, before, used
#: json.dumps(..., separators=(",", ":")) makes this very encoder anew at every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def identity_key(vendor_id: str, event_id: str) -> bytes:
    return f"I{vendor_id}{SEP}{event_id}".encode()


def counters_key(licence_id: str, period: str) -> bytes:
    return f"C{licence_id}{SEP}{period}".encode()


def suspension_key(licence_id: str) -> bytes:
    return f"S{licence_id}".encode()


def approval_key(licence_id: str, approval_id: str) -> bytes:
    """Under the licence, whose usage records share one partition: the count lives in the
    changelog partition of every event that can use it (another licence's approval never
    covers the event, so it is never counted here)."""
    return f"A{licence_id}{SEP}{approval_id}".encode()


@dataclass(frozen=True, slots=True)
class IdentityEntry:
    """The first accepted record of an identity, where it was read, and its retraction."""

    partition: int
    offset: int
    event: UsageEvent
    retracted_by: str | None = None
    #: The signed payload the event was parsed from, when at hand: stored as it is
    #: (parsing it again gives the same event) instead of serializing the event anew.
    payload: bytes | None = None

    def is_record(self, partition: int, offset: int) -> bool:
        """Was this entry written by the record at ``(partition, offset)`` itself?"""
        return self.partition == partition and self.offset == offset

    def encode(self) -> bytes:
        return self.encode_new(
            self.partition, self.offset, self.event, self.payload, self.retracted_by
        )

    @staticmethod
    def encode_new(
        partition: int,
        offset: int,
        event: UsageEvent,
        payload: bytes | None,
        retracted_by: str | None = None,
    ) -> bytes:
        """``IdentityEntry(...).encode()`` without making the entry (every new identity is
        written once, and never read back by the record that wrote it)."""
        retracted = (retracted_by or "").encode()
        canonical = payload or payload_bytes(from_domain(event))
        occurred = int(event.occurred_at.timestamp())
        header = _HEADER.pack(partition, offset, occurred, len(retracted))
        return header + retracted + canonical

    @classmethod
    def decode(cls, raw: bytes) -> IdentityEntry:
        partition, offset, _occurred, n = _HEADER.unpack_from(raw)
        start = _HEADER.size
        retracted = raw[start : start + n].decode() or None
        message = usage_pb2.UsageEvent.FromString(raw[start + n :])
        event = parse_message(message)
        if not isinstance(event, UsageEvent):  # only valid events are ever stored
            raise ValueError(f"stored identity does not parse: {event}")
        return cls(partition, offset, event, retracted)


@dataclass(slots=True)
class PeriodCounters:
    """One licence's counters for one period, and the offset that last changed them."""

    through: int = -1
    billed_renders: int = 0
    quota_used: dict[str, int] = field(default_factory=dict)
    quota_near: set[str] = field(default_factory=set)
    partition: int = -1

    def to_domain(
        self,
        period: str,
        auto_suspended_since: datetime | None,
        approval_renders: dict[str, int] | None = None,
    ) -> LicenceCounters:
        """The domain counters; ``approval_renders`` (not per period) come from their own
        :class:`ApprovalUse` entries."""
        return LicenceCounters(
            period=period,
            billed_renders=self.billed_renders,
            quota_used=dict(self.quota_used),
            quota_near=set(self.quota_near),
            auto_suspended_since=auto_suspended_since,
            approval_renders=dict(approval_renders or {}),
        )

    @classmethod
    def from_domain(cls, counters: LicenceCounters, through: int, partition: int) -> PeriodCounters:
        return cls(
            through, counters.billed_renders, counters.quota_used, counters.quota_near, partition
        )

    @staticmethod
    def decode_domain(
        raw: bytes | None,
        period: str,
        auto_suspended_since: datetime | None,
        approval_renders: dict[str, int] | None = None,
    ) -> LicenceCounters:
        """``decode(raw).to_domain(...)``, without the intermediate object when ``raw`` is
        absent or packed (every use reads its counters)."""
        if raw is None or raw[:1] == _PACKED_TAG:
            renders = 0 if raw is None else _PACKED_COUNTERS.unpack(raw)[2]
            return LicenceCounters(
                period=period,
                billed_renders=renders,
                auto_suspended_since=auto_suspended_since,
                approval_renders=dict(approval_renders or {}),
            )
        return PeriodCounters.decode(raw).to_domain(period, auto_suspended_since, approval_renders)

    @staticmethod
    def encode_domain(counters: LicenceCounters, through: int, partition: int) -> bytes:
        """``from_domain(counters, through, partition).encode()``, the common case without
        the intermediate object (every use writes its counters)."""
        if not counters.quota_used and not counters.quota_near:
            return _PACKED_COUNTERS.pack(_PACKED_TAG, through, counters.billed_renders, partition)
        return PeriodCounters.from_domain(counters, through, partition).encode()

    def encode(self) -> bytes:
        if not self.quota_used and not self.quota_near:
            # The common case, written for every use: packed, not JSON (a few µs less).
            return _PACKED_COUNTERS.pack(
                _PACKED_TAG, self.through, self.billed_renders, self.partition
            )
        doc: dict[str, object] = {"o": self.through, "r": self.billed_renders, "p": self.partition}
        if self.quota_used:
            doc["q"] = self.quota_used
        if self.quota_near:
            doc["n"] = sorted(self.quota_near)
        return _COMPACT_JSON.encode(doc).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> PeriodCounters:
        if raw is None:
            return cls()
        if raw[:1] == _PACKED_TAG:
            _tag, through, renders, partition = _PACKED_COUNTERS.unpack(raw)
            return cls(through, renders, {}, set(), partition)
        doc = json.loads(raw)
        return cls(
            int(doc["o"]),
            int(doc["r"]),
            dict(doc.get("q", {})),
            set(doc.get("n", ())),
            int(doc.get("p", -1)),
        )


@dataclass(frozen=True, slots=True)
class Suspension:
    """When the meter suspended the licence automatically (None: it has not)."""

    through: int = -1
    since: datetime | None = None

    def encode(self) -> bytes:
        since = self.since.isoformat() if self.since is not None else None
        return _COMPACT_JSON.encode({"o": self.through, "s": since}).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Suspension:
        if raw is None:
            return _NOT_SUSPENDED  # immutable: one for every licence never suspended
        doc = json.loads(raw)
        since = doc.get("s")
        return cls(int(doc["o"]), datetime.fromisoformat(since) if since else None)


_NOT_SUSPENDED = Suspension()


@dataclass(frozen=True, slots=True)
class ApprovalUse:
    """Render units an approval covered so far (``used``), the offset of the record that
    last wrote them (``through``) and the count before that write (``before``): a record
    re-delivered after a crash between this write and its counters write is rated again
    on ``before``, the count it saw the first time, so its units are counted once."""

    through: int = -1
    before: int = 0
    used: int = 0

    def seen_by(self, offset: int) -> int:
        """The count the record at ``offset`` saw when it was first rated."""
        return self.before if self.through == offset else self.used

    def encode(self) -> bytes:
        return _APPROVAL_USE.pack(self.through, self.before, self.used)

    @classmethod
    def decode(cls, raw: bytes | None) -> ApprovalUse:
        if raw is None:
            return cls()
        return cls(*_APPROVAL_USE.unpack(raw))


def expired(items: Iterable[tuple[bytes, bytes]], cutoff: datetime) -> list[tuple[int, bytes]]:
    """``(partition, key)`` of state that no record can need any more.

    A record that occurred before ``cutoff`` (the stream's receive time minus the replay
    window) is rejected TOO_LATE before identity or counters are consulted, so identities
    of events before it and counters of periods that ended before it are dead weight.
    Retractions of such events still work: the ledger resolves them against stored events.
    """
    seconds = cutoff.timestamp()
    oldest_period = str(Period.containing(cutoff))
    found: list[tuple[int, bytes]] = []
    for key, value in items:
        kind = key[:1]
        if kind == b"I":
            partition, _offset, occurred, _n = _HEADER.unpack_from(value)
            if occurred < seconds:
                found.append((partition, key))
        elif kind == b"C":
            period = key.rsplit(SEP.encode(), 1)[-1].decode()
            if period < oldest_period:
                counters = PeriodCounters.decode(value)
                if counters.partition >= 0:
                    found.append((counters.partition, key))
    return found
