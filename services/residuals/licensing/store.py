"""SQL of the licence registry (tables of migration 0002_licensing.sql).

Functions take an open connection inside the caller's transaction; none commits. Reads
that precede a change lock the licence row (``FOR UPDATE``) so changes to one licence are
serialised and each outbox snapshot is built from the state its own transaction wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from residuals.licensing import terms
from residuals.licensing.snapshot import LicenceRecord, SuspensionRow, VersionRow

Conn = Connection[Any]

# Every writer of the outbox takes this transaction-level lock just before inserting, so
# outbox ids are assigned in commit order (a later id never commits before an earlier one).
OUTBOX_LOCK = 0x6C69_6365_6E63_6573  # "licences"
OUTBOX_CHANNEL = "residuals_outbox"

_VERSION_COLUMNS = (
    "starts_at",
    "ends_at",
    "revoked_at",
    "wind_down_days",
    "minimum_guarantee",
    "advance_outstanding",
    "platform_fee",
    "auto_suspend_on_critical",
)
_TERMS_KEYS = ("scope", "rates", "quotas")


# --- licences ------------------------------------------------------------------------------


def _identity(row: Sequence[Any]) -> terms.Identity:
    return terms.Identity(*row[:5])


def licence_ids(
    conn: Conn,
    *,
    talent_id: str = "",
    avatar_id: str = "",
    vendor_id: str = "",
    after: str = "",
    limit: int,
) -> list[str]:
    """Licence ids matching the filters (empty = any), ascending, after ``after``."""
    rows = conn.execute(
        """
        SELECT licence_id FROM licences
        WHERE (%(talent)s = '' OR talent_id = %(talent)s)
          AND (%(avatar)s = '' OR avatar_id = %(avatar)s)
          AND (%(vendor)s = '' OR vendor_id = %(vendor)s)
          AND licence_id > %(after)s
        ORDER BY licence_id
        LIMIT %(limit)s
        """,
        {
            "talent": talent_id,
            "avatar": avatar_id,
            "vendor": vendor_id,
            "after": after,
            "limit": limit,
        },
    ).fetchall()
    return [r[0] for r in rows]


def load_licences(conn: Conn, ids: Sequence[str], *, lock: bool = False) -> list[LicenceRecord]:
    """Full records of ``ids`` (missing ids are skipped), in the order given."""
    if not ids:
        return []
    heads = conn.execute(
        "SELECT licence_id, talent_id, avatar_id, vendor_id, currency_code, revision,"
        " created_at, created_by FROM licences WHERE licence_id = ANY(%s)"
        + (" ORDER BY licence_id FOR UPDATE" if lock else ""),
        (list(ids),),
    ).fetchall()
    if not heads:
        return []
    found = [h[0] for h in heads]
    splits: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for licence_id, version, payee_id, share in conn.execute(
        "SELECT licence_id, version, payee_id, share FROM licence_splits"
        " WHERE licence_id = ANY(%s) ORDER BY licence_id, version, payee_id",
        (found,),
    ):
        splits[(licence_id, version)][payee_id] = _text(share)
    versions: dict[str, list[VersionRow]] = defaultdict(list)
    for row in conn.execute(
        "SELECT licence_id, version, effective_from, "
        + ", ".join(_VERSION_COLUMNS)
        + ", terms, recorded_at, recorded_by, note FROM licence_versions"
        " WHERE licence_id = ANY(%s) ORDER BY licence_id, version",
        (found,),
    ):
        licence_id, version, effective_from = row[0], row[1], row[2]
        columns = dict(zip(_VERSION_COLUMNS, row[3:11], strict=True))
        spec: terms.Spec = {
            **{k: _json_value(v) for k, v in columns.items()},
            **{k: row[11][k] for k in _TERMS_KEYS},
            "splits": splits[(licence_id, version)],
        }
        versions[licence_id].append(
            VersionRow(version, effective_from, spec, row[12], row[13], row[14])
        )
    suspensions: dict[str, list[SuspensionRow]] = defaultdict(list)
    for row in conn.execute(
        "SELECT licence_id, suspension_id, starts_at, ends_at, reason, automatic, alert_id,"
        " suspended_by, reinstated_by FROM licence_suspensions"
        " WHERE licence_id = ANY(%s) ORDER BY licence_id, starts_at, suspension_id",
        (found,),
    ):
        suspensions[row[0]].append(SuspensionRow(*row[1:]))
    records = {
        h[0]: LicenceRecord(
            identity=_identity(h),
            revision=h[5],
            created_at=h[6],
            created_by=h[7],
            versions=tuple(versions[h[0]]),
            suspensions=tuple(suspensions[h[0]]),
        )
        for h in heads
    }
    return [records[i] for i in ids if i in records]


def load_licence(conn: Conn, licence_id: str, *, lock: bool = False) -> LicenceRecord | None:
    found = load_licences(conn, [licence_id], lock=lock)
    return found[0] if found else None


def _text(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _json_value(value: Any) -> Any:
    """Column values in the complete-spec form (decimal strings, ISO times)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def insert_licence(conn: Conn, identity: terms.Identity, actor: str, now: datetime) -> bool:
    """Create the licence row; False when the id exists (after any concurrent insert)."""
    row = conn.execute(
        """
        INSERT INTO licences (licence_id, talent_id, avatar_id, vendor_id, currency_code,
                              revision, created_at, created_by, updated_at)
        VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s)
        ON CONFLICT (licence_id) DO NOTHING
        RETURNING licence_id
        """,
        (
            identity.licence_id,
            identity.talent_id,
            identity.avatar_id,
            identity.vendor_id,
            identity.currency,
            now,
            actor,
            now,
        ),
    ).fetchone()
    return row is not None


def insert_version(
    conn: Conn,
    licence_id: str,
    version: int,
    effective_from: datetime | None,
    spec: terms.Spec,
    *,
    actor: str,
    now: datetime,
    note: str = "",
) -> None:
    """Append a version (complete spec) and its splits."""
    conn.execute(
        "INSERT INTO licence_versions (licence_id, version, effective_from, "
        + ", ".join(_VERSION_COLUMNS)
        + ", terms, recorded_at, recorded_by, note) VALUES ("
        + ", ".join(["%s"] * (len(_VERSION_COLUMNS) + 7))
        + ")",
        (
            licence_id,
            version,
            effective_from,
            *(spec[k] for k in _VERSION_COLUMNS),
            Jsonb({k: spec[k] for k in _TERMS_KEYS}),
            now,
            actor,
            note,
        ),
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO licence_splits (licence_id, version, payee_id, share)"
            " VALUES (%s, %s, %s, %s)",
            [(licence_id, version, payee, share) for payee, share in spec["splits"].items()],
        )


def bump_revision(conn: Conn, licence_id: str, now: datetime) -> None:
    conn.execute(
        "UPDATE licences SET revision = revision + 1, updated_at = %s WHERE licence_id = %s",
        (now, licence_id),
    )


def insert_suspension(conn: Conn, licence_id: str, row: SuspensionRow, now: datetime) -> None:
    conn.execute(
        """
        INSERT INTO licence_suspensions (suspension_id, licence_id, starts_at, ends_at, reason,
                                         automatic, alert_id, suspended_by, suspended_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            row.suspension_id,
            licence_id,
            row.starts_at,
            row.ends_at,
            row.reason,
            row.automatic,
            row.alert_id,
            row.suspended_by,
            now,
        ),
    )


def close_suspensions(
    conn: Conn, licence_id: str, at: datetime, *, actor: str, now: datetime, note: str
) -> list[str]:
    """End every window containing ``at`` at ``at``; returns their ids."""
    rows = conn.execute(
        """
        UPDATE licence_suspensions
        SET ends_at = %(at)s, reinstated_by = %(actor)s, reinstated_at = %(now)s,
            reinstate_note = %(note)s
        WHERE licence_id = %(licence)s AND starts_at <= %(at)s
          AND (ends_at IS NULL OR ends_at > %(at)s)
        RETURNING suspension_id
        """,
        {"at": at, "actor": actor, "now": now, "note": note, "licence": licence_id},
    ).fetchall()
    return [r[0] for r in rows]


# --- parties -------------------------------------------------------------------------------

PARTY_TABLES: Mapping[str, tuple[str, str]] = {
    "talent": ("talents", "talent_id"),
    "avatar": ("avatars", "avatar_id"),
    "vendor": ("vendors", "vendor_id"),
    "payee": ("payees", "payee_id"),
}


def existing(conn: Conn, kind: str, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` exist as ``kind`` (talent, avatar, vendor, payee)."""
    table, column = PARTY_TABLES[kind]
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    rows = conn.execute(
        f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)",  # names from the constant
        (wanted,),
    ).fetchall()
    return {r[0] for r in rows}


def avatar_talent(conn: Conn, avatar_id: str) -> str | None:
    row = conn.execute(
        "SELECT talent_id FROM avatars WHERE avatar_id = %s", (avatar_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def get_party(conn: Conn, kind: str, party_id: str) -> dict[str, Any] | None:
    """One talent/avatar/vendor/payee row as a dict (payees with their talent ids)."""
    table, column = PARTY_TABLES[kind]
    cur = conn.execute(f"SELECT * FROM {table} WHERE {column} = %s", (party_id,))
    row = cur.fetchone()
    if row is None:
        return None
    names = [d.name for d in cur.description or ()]
    result = dict(zip(names, row, strict=True))
    if kind == "payee":
        result["talent_ids"] = [
            r[0]
            for r in conn.execute(
                "SELECT talent_id FROM payee_talents WHERE payee_id = %s ORDER BY talent_id",
                (party_id,),
            )
        ]
    return result


def insert_party(conn: Conn, kind: str, values: Mapping[str, Any]) -> bool:
    """Insert a party row; False when the id exists. ``talent_ids`` (payees) go alongside."""
    table, column = PARTY_TABLES[kind]
    columns = [k for k in values if k != "talent_ids"]
    row = conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
        f" ON CONFLICT ({column}) DO NOTHING RETURNING {column}",
        [values[c] for c in columns],
    ).fetchone()
    if row is None:
        return False
    for talent_id in values.get("talent_ids", ()):
        conn.execute(
            "INSERT INTO payee_talents (payee_id, talent_id) VALUES (%s, %s)",
            (values[column], talent_id),
        )
    return True


# --- outbox --------------------------------------------------------------------------------


def enqueue(conn: Conn, topic: str, key: str, payload: bytes, headers: Mapping[str, str]) -> int:
    """Add a record for the relay, in the caller's transaction; returns its outbox id.

    The advisory lock is held until commit, so ids follow commit order. NOTIFY is
    delivered at commit and wakes the relay at once (it also polls, so a lost
    notification costs latency, never a record).
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_LOCK,))
    row = conn.execute(
        "INSERT INTO outbox (topic, message_key, payload, headers) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        (topic, key.encode("utf-8"), payload, Jsonb(dict(headers))),
    ).fetchone()
    assert row is not None
    conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return int(row[0])
