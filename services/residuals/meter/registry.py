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
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from residuals.codecs import licences as licence_codec
from residuals.codecs.signing import VerifyingKey
from residuals.domain.licences import Licence
from residuals.v1 import licence_pb2

log = logging.getLogger(__name__)


class LicenceRegistry(Mapping[str, Licence]):
    """``licence_id`` → domain :class:`Licence`, over a table of raw ``Licence`` records."""

    def __init__(self, table: Mapping[Any, Any], cache_size: int = 150_000) -> None:
        self._table = table
        self._cache: OrderedDict[str, tuple[bytes, Licence]] = OrderedDict()
        self._cache_size = cache_size
        self.decoded = 0

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
        cached = self._cache.get(licence_id)
        if cached is not None and cached[0] == raw:
            self._cache.move_to_end(licence_id)
            return cached[1]
        try:
            licence = licence_codec.from_proto(licence_pb2.Licence.FromString(raw))
        except (DecodeError, ValueError):
            log.error("undecodable licence record", extra={"licence_id": licence_id})
            return default
        self.decoded += 1
        self._cache[licence_id] = (raw, licence)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
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
            yield key.decode() if isinstance(key, bytes) else str(key)

    def __len__(self) -> int:
        return len(self._table)


class KeyRegistry:
    """``key_id`` → :class:`VerifyingKey`, over a table of raw ``VendorSigningKey`` records."""

    def __init__(self, table: Mapping[Any, Any]) -> None:
        self._table = table
        self._cache: dict[str, tuple[bytes, VerifyingKey]] = {}

    def verifying_key(self, key_id: str) -> VerifyingKey | None:
        raw = self._table.get(key_id.encode())
        if raw is None:
            return None
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            key = VerifyingKey.from_proto(licence_pb2.VendorSigningKey.FromString(raw))
        except (DecodeError, ValueError):
            log.error("undecodable signing key record", extra={"key_id": key_id})
            return None
        self._cache[key_id] = (raw, key)
        return key
