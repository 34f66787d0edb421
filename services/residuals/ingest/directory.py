"""What the gateway looks up per event: vendor signing keys and licence identities.

Both come from the licensing service's tables in PostgreSQL, the source of truth, read
through its :mod:`residuals.licensing.directory`:
a key or licence is committed there before anyone can use it, so a miss is real (not
replication lag) and is re-checked after a few seconds. Both are cached (LRU with TTL):

* signing keys change only by revocation; a revocation is honoured within the key TTL
  (30 s by default) by the gateway, and the meter re-verifies every event anyway;
* a licence's identity (licensee vendor, avatar, currency) never changes after creation
  (amendments add versions of the terms, not of these), so the gateway can check
  UNKNOWN_LICENCE / VENDOR_MISMATCH / AVATAR_MISMATCH / CURRENCY_MISMATCH from a cache
  with the domain's own :func:`~residuals.domain.validation.check_licence`, and tell the
  vendor synchronously. Scope, suspension and quotas depend on the changing terms and
  stay with the meter, which holds the full licence table.

A row is checked as strictly as the meter checks the same record on its compacted topic
(:mod:`residuals.codecs.licences`): a key or licence whose stored row is not well-formed
and bounded (a 31-byte key, a NUL in an id, an unknown currency, a time Python cannot
hold) is *unknown* - the event is refused as if the key or licence did not exist - and the
row is logged and counted once in ``residuals_quarantined_records_total`` (consumer
``ingest-directory``, topic = the table) for an operator to repair. It never fails the
request it was looked up for.

Protocols let tests and other deployments (e.g. a directory tailing the compacted
``residuals.signing-keys.v1`` topic) plug in other sources.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import psycopg

from residuals.codecs import licences as licence_codec
from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.timestamps import set_timestamp
from residuals.domain.bounds import text_problem
from residuals.domain.licences import Licence
from residuals.ingest.cache import TtlCache
from residuals.licensing import directory
from residuals.platform.postgres import Database
from residuals.platform.quarantine import Quarantined, describe, report
from residuals.v1 import licence_pb2

T = TypeVar("T")
R = TypeVar("R")
#: The consumer name of rows the directory refuses (metric label, logs).
CONSUMER = "ingest-directory"


class SigningKeys(Protocol):
    def signing_key(self, key_id: str) -> SigningKeyRecord | None:
        """The key, or None if no such key is registered. Raises if the source is down."""
        ...


class LicenceIdentities(Protocol):
    def licence(self, licence_id: str) -> Licence | None:
        """The licence's identity (no versions needed), or None if unknown."""
        ...


def identity_licence(
    licence_id: str, talent_id: str, avatar_id: str, vendor_id: str, currency: str
) -> Licence:
    """A domain :class:`Licence` carrying only its immutable identity.

    Enough for :func:`~residuals.domain.validation.check_licence`, which reads only these
    fields; never use it for scope or pricing.
    """
    return Licence(licence_id, talent_id, avatar_id, vendor_id, currency, versions=())


class PostgresDirectory:
    """Signing keys and licence identities from PostgreSQL, each behind a TTL cache."""

    def __init__(
        self,
        db: Database,
        *,
        key_ttl_seconds: float = 30.0,
        licence_ttl_seconds: float = 3600.0,
        negative_ttl_seconds: float = 2.0,
        max_entries: int = 100_000,
    ) -> None:
        self.db = db
        #: Rows already reported (table, id, error): a bad row is re-read every few
        #: seconds while traffic names it, but logged and counted once.
        self._reported: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()
        self._keys: TtlCache[str, SigningKeyRecord] = TtlCache(
            max_entries=max_entries,
            ttl_seconds=key_ttl_seconds,
            negative_ttl_seconds=negative_ttl_seconds,
        )
        self._licences: TtlCache[str, Licence] = TtlCache(
            max_entries=max_entries,
            ttl_seconds=licence_ttl_seconds,
            negative_ttl_seconds=negative_ttl_seconds,
        )

    def signing_key(self, key_id: str) -> SigningKeyRecord | None:
        return self._keys.get_or_load(key_id, self._load_key)

    def licence(self, licence_id: str) -> Licence | None:
        return self._licences.get_or_load(licence_id, self._load_licence)

    def invalidate(self) -> None:
        self._keys.invalidate()
        self._licences.invalidate()

    def _load_key(self, key_id: str) -> SigningKeyRecord | None:
        return self._load("vendor_signing_keys", directory.signing_key, key_id, _key_row)

    def _load_licence(self, licence_id: str) -> Licence | None:
        return self._load("licences", directory.licence_identity, licence_id, _licence_row)

    def _load(
        self,
        table: str,
        fetch: Callable[[Any, str], R | None],
        ident: str,
        decode: Callable[[R], T],
    ) -> T | None:
        """The decoded row, None when there is none or it is not well-formed (reported).
        Raises only when the database cannot answer (the caller says UNAVAILABLE)."""
        if text_problem(ident) is not None:
            return None  # no stored id is like this (a NUL would not even reach the query)
        try:
            with self.db.connection() as conn:
                row = fetch(conn, ident)
            return None if row is None else decode(row)
        except (ValueError, TypeError, psycopg.DataError) as error:
            # InvalidRecord (a ValueError), or a stored value Python cannot hold (DataError:
            # a timestamp after year 9999) or protobuf refuses (TypeError, ValueError)
            self._report(table, ident, error)
            return None

    def _report(self, table: str, ident: str, error: Exception) -> None:
        seen = (table, ident, describe(error))
        with self._lock:  # gRPC worker threads look up concurrently
            if seen in self._reported:
                return
            self._reported[seen] = None
            if len(self._reported) > 10_000:
                self._reported.popitem(last=False)
        report(Quarantined(CONSUMER, table, 0, 0, ident.encode(), None, seen[2]))


def _key_row(row: directory.SigningKeyRow) -> SigningKeyRecord:
    message = licence_pb2.VendorSigningKey(key_id=row[0], vendor_id=row[1], public_key=row[2])
    if row[3] is not None:
        set_timestamp(message.revoked_at, row[3])
    return licence_codec.signing_key_from_proto(message)


def _licence_row(row: directory.LicenceIdentityRow) -> Licence:
    return identity_licence(*licence_codec.identity(*row))


class StaticDirectory:
    """In-memory keys and licences (tests and tools)."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKeyRecord] = {}
        self.licences: dict[str, Licence] = {}

    def signing_key(self, key_id: str) -> SigningKeyRecord | None:
        return self.keys.get(key_id)

    def licence(self, licence_id: str) -> Licence | None:
        return self.licences.get(licence_id)
