"""Licences and signing keys as the meter reads them: raw records, decoded on demand.

Both come from compacted topics (``residuals.licences.v1``, ``residuals.signing-keys.v1``)
held by in-process replicas (:mod:`residuals.platform.replica`) as the exact record
bytes. Keeping bytes, not domain objects, is what lets 100,000 licences fit in the
meter's memory budget whatever their number: a serialized licence is a few hundred
bytes, a decoded one about a kilobyte (scopes, rate cards and amounts are shared between
licences by the codec). A bounded LRU cache of decoded licences (by default large
enough for every licence of a big deployment) serves them; an entry is used only while
the replica still holds the very bytes it was decoded from, so an updated licence is
seen by the next event.

Poison never reaches a lookup. Over a replica, each registry installs its record check
(:meth:`~residuals.platform.replica.TopicReplica.admit_with`): a record that does not
decode strictly (:mod:`residuals.codecs.licences`), whose key is not its own id, or a
tombstone (licensing never deletes a licence or a key) is quarantined by the replica, and
the registry keeps serving the last good version (none: the licence or key is unknown).
Over any other table (tests, benchmarks) a bad record is skipped the same way at lookup.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from residuals.codecs import licences as licence_codec
from residuals.codecs.licences import InvalidRecord
from residuals.codecs.signing import VerifyingKey
from residuals.domain.bounds import printable
from residuals.domain.licences import Licence
from residuals.platform.replica import TopicReplica

log = logging.getLogger(__name__)


def _own_key(key: bytes, record_id: str, what: str) -> None:
    """A compacted topic is keyed by the record's id; any other key would let one record
    stand for another id (or hide under a key no lookup reaches)."""
    if key != record_id.encode():
        raise InvalidRecord("(key)", f"{printable(key, 64)!r} is not the {what} {record_id!r}")


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
            self._refuse(licence_id, raw, error)
            # the last good version, while it is still cached
            return cached[1] if cached is not None else default
        self._remember(licence_id, raw, licence, new_only=False)
        return licence

    def _refuse(self, licence_id: str, raw: bytes, error: InvalidRecord) -> None:
        if self._refused.get(licence_id) != raw:
            self._refused[licence_id] = raw
            log.error(
                "licence record refused; serving the last good version if any",
                extra={"licence_id": printable(licence_id, 128), "error": str(error)},
            )

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
            if self._refused.get(key_id) != raw:
                self._refused[key_id] = raw
                log.error(
                    "signing key record refused; using the last good version if any",
                    extra={"key_id": printable(key_id, 128), "error": str(error)},
                )
            return cached[1] if cached is not None else None
        self._cache[key_id] = (raw, key)
        return key
