"""Licences, signing keys and approvals as the meter reads them: raw records, decoded on
demand.

All come from compacted topics (``residuals.licences.v1``, ``residuals.signing-keys.v1``,
``residuals.approvals.v1``) held by in-process replicas (:mod:`residuals.platform.replica`)
as the exact record bytes. Keeping bytes, not domain objects, is what lets 100,000
licences fit in the meter's memory budget whatever their number: a serialized licence is a
few hundred bytes, a decoded one about a kilobyte (scopes, rate cards and amounts are shared between
licences by the codec). A bounded LRU cache of decoded licences (by default large
enough for every licence of a big deployment) serves them; an entry is used only while
the replica still holds the very bytes it was decoded from, so an updated licence is
seen by the next event.

Poison never reaches a lookup. Over a replica, each registry installs its record check
(:meth:`~residuals.platform.replica.TopicReplica.admit_with`): a record that does not
decode strictly (:mod:`residuals.codecs.licences`), whose key is not its own id, or a
tombstone (licensing never deletes a licence, a key or an approval) is quarantined by the
replica, and the registry keeps serving the last good version (none: the licence or key is
unknown). An approval record older (by revision) than the one held is refused too: a
replayed or forged old state must not bring back an approval that was since denied.
Over any other table (tests, benchmarks) a bad record is skipped the same way at lookup.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from residuals.codecs import approvals as approval_codec
from residuals.codecs import licences as licence_codec
from residuals.codecs.approvals import ApprovalState
from residuals.codecs.licences import InvalidRecord
from residuals.codecs.signing import VerifyingKey
from residuals.domain.approvals import Approval
from residuals.domain.bounds import printable
from residuals.domain.licences import Licence
from residuals.platform.replica import TopicReplica

log = logging.getLogger(__name__)


def _own_key(key: bytes, record_id: str, what: str) -> None:
    """A compacted topic is keyed by the record's id; any other key would let one record
    stand for another id (or hide under a key no lookup reaches)."""
    if key != record_id.encode():
        raise InvalidRecord("(key)", f"{printable(key, 64)!r} is not the {what} {record_id!r}")


def _report_refusal(
    refused: dict[str, bytes], record_id: str, raw: bytes, error: InvalidRecord, what: str
) -> None:
    """Log a refused record once per distinct bytes (a lookup meets it at every event)."""
    if refused.get(record_id) != raw:
        refused[record_id] = raw
        log.error(
            f"{what} record refused; serving the last good version if any",
            extra={"record_id": printable(record_id, 128), "error": str(error)},
        )


def _never_deleted(value: bytes | None, what: str) -> bytes:
    if value is None:
        raise InvalidRecord("(value)", f"a tombstone: the registry never deletes a {what}")
    return value


class LicenceRegistry(Mapping[str, Licence]):
    """``licence_id`` → domain :class:`Licence`, over a table of raw ``Licence`` records.

    Over a :class:`TopicReplica` the registry checks every record as it arrives (and keeps
    the decoded licence, so :meth:`warm` has nothing left to do).
    """

    def __init__(self, table: Mapping[Any, Any], cache_size: int = 150_000) -> None:
        self._table = table
        self._cache: OrderedDict[str, tuple[bytes, Licence]] = OrderedDict()
        self._cache_size = cache_size
        # The replica's thread admits records while the meter looks licences up: changes
        # to the cache are made under this lock.
        self._lock = threading.Lock()
        #: Bytes already reported as undecodable, per licence (each is logged once).
        self._refused: dict[str, bytes] = {}
        self.decoded = 0
        if isinstance(table, TopicReplica):
            table.admit_with(self.admit)

    def admit(self, key: bytes, value: bytes | None) -> None:
        """The replica's check: raise :class:`InvalidRecord` for a record to refuse."""
        raw = _never_deleted(value, "licence")
        licence = licence_codec.decode(raw)
        _own_key(key, licence.licence_id, "licence")
        self._remember(licence.licence_id, raw, licence, new_only=True)

    def _remember(self, licence_id: str, raw: bytes, licence: Licence, *, new_only: bool) -> None:
        with self._lock:
            if new_only and licence_id not in self._cache and len(self._cache) >= self._cache_size:
                return  # full: decoded again at its first lookup
            self.decoded += 1
            self._cache[licence_id] = (raw, licence)
            self._cache.move_to_end(licence_id)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def get_raw(self, licence_id: str) -> bytes | None:
        raw = self._table.get(licence_id.encode())
        return bytes(raw) if raw is not None else None

    def __getitem__(self, licence_id: str) -> Licence:
        licence: Licence | None = self.get(licence_id)
        if licence is None:
            raise KeyError(licence_id)
        return licence

    def get(self, licence_id: str, default: Any = None) -> Any:
        raw = self._table.get(licence_id.encode())
        if raw is None:
            return default
        # The hit path takes no lock: each OrderedDict call is atomic under the GIL, and
        # the replica's thread may only have evicted the entry meanwhile.
        cached = self._cache.get(licence_id)
        if cached is not None and cached[0] == raw:
            try:  # noqa: SIM105 (contextlib.suppress costs more than the lookup itself)
                self._cache.move_to_end(licence_id)
            except KeyError:
                pass
            return cached[1]
        raw = bytes(raw)
        try:
            licence = licence_codec.decode(raw)
            _own_key(licence_id.encode(), licence.licence_id, "licence")
        except InvalidRecord as error:
            _report_refusal(self._refused, licence_id, raw, error, "licence")
            # the last good version, while it is still cached
            return cached[1] if cached is not None else default
        self._remember(licence_id, raw, licence, new_only=False)
        return licence

    def warm(self) -> int:
        """Decode licences until the cache is full (at start, before the first record:
        decoding costs tens of microseconds, which the first event of each licence would
        otherwise pay in the middle of a batch). Returns how many were decoded."""
        before = self.decoded
        for licence_id in self:
            if len(self._cache) >= self._cache_size:
                break
            self.get(licence_id)
        return self.decoded - before

    def __iter__(self) -> Iterator[str]:
        for key in list(self._table.keys()):
            yield key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)

    def __len__(self) -> int:
        return len(self._table)


class KeyRegistry:
    """``key_id`` → :class:`VerifyingKey`, over a table of raw ``VendorSigningKey`` records.

    Over a :class:`TopicReplica` the registry checks every record as it arrives.
    """

    def __init__(self, table: Mapping[Any, Any]) -> None:
        self._table = table
        self._cache: dict[str, tuple[bytes, VerifyingKey]] = {}
        self._refused: dict[str, bytes] = {}
        if isinstance(table, TopicReplica):
            table.admit_with(self.admit)

    @staticmethod
    def admit(key: bytes, value: bytes | None) -> None:
        """The replica's check: raise :class:`InvalidRecord` for a record to refuse."""
        record = licence_codec.decode_signing_key(_never_deleted(value, "signing key"))
        _own_key(key, record.key_id, "signing key")

    def verifying_key(self, key_id: str) -> VerifyingKey | None:
        raw = self._table.get(key_id.encode())
        if raw is None:
            return None
        raw = bytes(raw)
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            key = licence_codec.decode_signing_key(raw)
            _own_key(key_id.encode(), key.key_id, "signing key")
        except InvalidRecord as error:
            _report_refusal(self._refused, key_id, raw, error, "signing key")
            return cached[1] if cached is not None else None
        self._cache[key_id] = (raw, key)
        return key


class ApprovalRegistry(Mapping[str, Approval]):
    """``approval_id`` → domain :class:`Approval`, over a table of raw ``Approval`` records
    (§5a); only an APPROVED record is an approval (a pending or denied request, like an
    unknown id, is absent, so the use is held as UNAPPROVED_USE).

    Over a :class:`TopicReplica` the registry checks every record as it arrives, including
    that its revision is not older than the one held. The replica follows the topic live,
    so an approval granted while the meter runs counts from the next event on.
    """

    def __init__(self, table: Mapping[Any, Any], cache_size: int = 10_000) -> None:
        self._table = table
        # A bounded LRU of decoded states, each used only while the table still holds the
        # very bytes it was decoded from (an approval's next revision is seen at once).
        self._cache: OrderedDict[str, tuple[bytes, ApprovalState]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the replica's thread admits while the meter reads
        self._refused: dict[str, bytes] = {}
        if isinstance(table, TopicReplica):
            table.admit_with(self.admit)

    def admit(self, key: bytes, value: bytes | None) -> None:
        """The replica's check: raise :class:`InvalidRecord` for a record to refuse."""
        raw = _never_deleted(value, "approval")
        state = approval_codec.decode(raw)
        _own_key(key, state.approval_id, "approval")
        held = self._state(state.approval_id)
        if held is not None and state.revision < held.revision:
            raise InvalidRecord(
                "revision", f"{state.revision} is older than the held revision {held.revision}"
            )
        self._remember(state.approval_id, raw, state)

    def _remember(self, approval_id: str, raw: bytes, state: ApprovalState) -> None:
        with self._lock:
            self._cache[approval_id] = (raw, state)
            self._cache.move_to_end(approval_id)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _state(self, approval_id: str) -> ApprovalState | None:
        """The held record's state (the last good one when the held bytes are refused)."""
        raw = self._table.get(approval_id.encode())
        if raw is None:
            return None
        cached = self._cache.get(approval_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        raw = bytes(raw)
        try:
            state = approval_codec.decode(raw)
            _own_key(approval_id.encode(), state.approval_id, "approval")
        except InvalidRecord as error:
            _report_refusal(self._refused, approval_id, raw, error, "approval")
            return cached[1] if cached is not None else None
        self._remember(approval_id, raw, state)
        return state

    def __getitem__(self, approval_id: str) -> Approval:
        approval: Approval | None = self.get(approval_id)
        if approval is None:
            raise KeyError(approval_id)
        return approval

    def get(self, approval_id: str, default: Any = None) -> Any:
        state = self._state(approval_id) if approval_id else None
        if state is None or state.approval is None:
            return default
        return state.approval

    def __iter__(self) -> Iterator[str]:
        """Ids of the approved records (each decoded: for tests and tools, not per event)."""
        for key in list(self._table.keys()):
            approval_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            if self.get(approval_id) is not None:
                yield approval_id

    def __len__(self) -> int:
        return sum(1 for _ in self)
