"""What other services read of the licensing service's tables: the one way in.

The licensing service owns vendors, talents, avatars, payees, licences and their
versions, signing keys, principals and API keys (its migrations, ``licensing/migrations``).
The gateway, the ledger's signature audit and every service's authentication read keys,
licence identities and principals through these functions and never name the tables,
so the schema can change behind them (``tests/unit/test_table_owners.py``). Full
licences (versions, splits, suspensions) are read with :mod:`residuals.licensing.store`;
the period close reads the approvals granted (§5a) with :func:`granted_approvals`; statement
documents read who a payee is and the names of talents, avatars and vendors
(:func:`payee`, :func:`display_names`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from psycopg import Connection

from residuals.domain.approvals import Approval
from residuals.platform.auth import Principal, Role, StoredKey, verify_secret
from residuals.platform.postgres import Database

Conn = Connection[Any]


class SigningKeyRow(NamedTuple):
    key_id: str
    vendor_id: str
    public_key: bytes
    revoked_at: datetime | None


class LicenceIdentityRow(NamedTuple):
    licence_id: str
    talent_id: str
    avatar_id: str
    vendor_id: str
    currency_code: str


class PayeeRow(NamedTuple):
    payee_id: str
    kind: str  # unspecified | talent | agent | estate
    display_name: str
    #: The talents the payee is paid for (``payee_talents``): an agent's or estate's
    #: clients, sorted.
    talent_ids: tuple[str, ...]


class DisplayNames(NamedTuple):
    """Display names by id (``''`` when none was registered); unknown ids are left out."""

    talents: dict[str, str]
    avatars: dict[str, str]
    vendors: dict[str, str]


_KEY_COLUMNS = "key_id, vendor_id, public_key, revoked_at"


def signing_key(conn: Conn, key_id: str) -> SigningKeyRow | None:
    """The registered signing key ``key_id`` (raw column values), None if unknown."""
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM vendor_signing_keys WHERE key_id = %s", (key_id,)
    ).fetchone()
    return None if row is None else SigningKeyRow(*row)


def signing_keys(conn: Conn, key_ids: Sequence[str]) -> list[SigningKeyRow]:
    """The registered signing keys among ``key_ids`` (unknown ids are left out)."""
    if not key_ids:
        return []
    rows = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM vendor_signing_keys WHERE key_id = ANY(%s)",
        (list(key_ids),),
    ).fetchall()
    return [SigningKeyRow(*row) for row in rows]


def licence_identity(conn: Conn, licence_id: str) -> LicenceIdentityRow | None:
    """A licence's immutable identity (raw column values), None if unknown."""
    row = conn.execute(
        "SELECT licence_id, talent_id, avatar_id, vendor_id, currency_code"
        " FROM licences WHERE licence_id = %s",
        (licence_id,),
    ).fetchone()
    return None if row is None else LicenceIdentityRow(*row)


def payee(conn: Conn, payee_id: str) -> PayeeRow | None:
    """The payee ``payee_id`` with the talents it is paid for, None if unknown."""
    row = conn.execute(
        "SELECT payee_id, kind, display_name FROM payees WHERE payee_id = %s", (payee_id,)
    ).fetchone()
    if row is None:
        return None
    talents = conn.execute(
        "SELECT talent_id FROM payee_talents WHERE payee_id = %s ORDER BY talent_id",
        (payee_id,),
    ).fetchall()
    return PayeeRow(row[0], row[1], row[2], tuple(t[0] for t in talents))


def display_names(
    conn: Conn,
    *,
    talent_ids: Sequence[str] = (),
    avatar_ids: Sequence[str] = (),
    vendor_ids: Sequence[str] = (),
) -> DisplayNames:
    """The display names of the given talents, avatars and vendors (one query)."""
    rows = conn.execute(
        "SELECT 't', talent_id, display_name FROM talents WHERE talent_id = ANY(%s)"
        " UNION ALL SELECT 'a', avatar_id, display_name FROM avatars WHERE avatar_id = ANY(%s)"
        " UNION ALL SELECT 'v', vendor_id, display_name FROM vendors WHERE vendor_id = ANY(%s)",
        (list(talent_ids), list(avatar_ids), list(vendor_ids)),
    ).fetchall()
    names = DisplayNames({}, {}, {})
    by_kind = {"t": names.talents, "a": names.avatars, "v": names.vendors}
    for kind, key, name in rows:
        by_kind[kind][key] = name
    return names


def granted_approvals(conn: Conn, licence_ids: Sequence[str] | None = None) -> list[Approval]:
    """The approved requests (of ``licence_ids``, or all) as the rule reads them, by id.

    Pending and denied requests are left out: the rule treats them like an unknown id. A
    decision is final (migration 0013), so a closed period priced with these approvals
    prices the same when computed again."""
    sql = (
        "SELECT approval_id, licence_id, category, valid_from, valid_until, max_renders"
        " FROM approvals WHERE status = 'approved'"
    )
    params: tuple[Any, ...] = ()
    if licence_ids is not None:
        if not licence_ids:
            return []
        sql += " AND licence_id = ANY(%s)"
        params = (list(licence_ids),)
    rows = conn.execute(sql + " ORDER BY approval_id", params).fetchall()
    return [Approval(*row) for row in rows]


def api_key(conn: Conn, key_id: str) -> StoredKey | None:
    """The API key ``key_id`` with its principal, None if unknown."""
    row = conn.execute(
        "SELECT k.secret_sha256, k.revoked_at IS NOT NULL,"
        " p.principal_id, p.role, p.vendor_id, p.talent_id"
        " FROM api_keys k JOIN principals p ON p.principal_id = k.principal_id"
        " WHERE k.key_id = %s",
        (key_id,),
    ).fetchone()
    if row is None:
        return None
    secret_hash, revoked, principal_id, role, vendor_id, talent_id = row
    principal = Principal(principal_id, Role(role), vendor_id, talent_id)
    return StoredKey(key_id, bytes(secret_hash), principal, bool(revoked))


class PostgresAuthenticator:
    """API keys and their principals from the licensing tables, with a TTL cache: the
    :class:`~residuals.platform.auth.Authenticator` every service with a database uses.

    The cache holds the *row* (hash, revoked flag, principal), never a verdict on a
    secret, so every call still verifies the presented secret. Unknown key ids are cached
    too (a flood of made-up ids costs one query per id per TTL), within ``max_entries``
    (least recently used evicted). A revocation is visible everywhere within
    ``ttl_seconds``; :meth:`invalidate` makes it immediate in this process.
    """

    def __init__(
        self,
        db: Database,
        *,
        ttl_seconds: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, StoredKey | None]] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, key_id: str, secret: str) -> Principal | None:
        key = self._lookup(key_id)
        if key is None or key.revoked or not verify_secret(secret, key.secret_hash):
            return None
        return key.principal

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget one cached key (or all), so the next call reads the database."""
        with self._lock:
            if key_id is None:
                self._cache.clear()
            else:
                self._cache.pop(key_id, None)

    def _lookup(self, key_id: str) -> StoredKey | None:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key_id)
                return cached[1]
        key = self._load(key_id)
        with self._lock:
            self._cache[key_id] = (now + self.ttl_seconds, key)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return key

    def _load(self, key_id: str) -> StoredKey | None:
        with self.db.connection() as conn:
            return api_key(conn, key_id)
