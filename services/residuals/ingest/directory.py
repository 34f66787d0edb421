"""What the gateway looks up per event: vendor signing keys and licence identities.

Both come from the licensing schema in PostgreSQL (migration 0002), the source of truth:
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

Protocols let tests and other deployments (e.g. a directory tailing the compacted
``residuals.signing-keys.v1`` topic) plug in other sources.
"""

from __future__ import annotations

from typing import Protocol

from residuals.codecs.signed import SigningKeyRecord
from residuals.domain.licences import Licence
from residuals.ingest.cache import TtlCache
from residuals.platform.postgres import Database


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


_KEY_SQL = """
SELECT key_id, vendor_id, public_key, revoked_at
FROM vendor_signing_keys WHERE key_id = %s
"""
_LICENCE_SQL = """
SELECT licence_id, talent_id, avatar_id, vendor_id, currency_code
FROM licences WHERE licence_id = %s
"""


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
        with self.db.connection() as conn:
            row = conn.execute(_KEY_SQL, (key_id,)).fetchone()
        if row is None:
            return None
        return SigningKeyRecord(row[0], row[1], bytes(row[2]), row[3])

    def _load_licence(self, licence_id: str) -> Licence | None:
        with self.db.connection() as conn:
            row = conn.execute(_LICENCE_SQL, (licence_id,)).fetchone()
        if row is None:
            return None
        return identity_licence(*row)


class StaticDirectory:
    """In-memory keys and licences (tests and tools)."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKeyRecord] = {}
        self.licences: dict[str, Licence] = {}

    def signing_key(self, key_id: str) -> SigningKeyRecord | None:
        return self.keys.get(key_id)

    def licence(self, licence_id: str) -> Licence | None:
        return self.licences.get(licence_id)
