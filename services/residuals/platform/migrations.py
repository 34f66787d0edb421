"""Forward-only SQL schema migrations, collected from the packages that own the tables.

Each service keeps the migrations of its own tables in ``residuals/<service>/migrations/``
(``NNNN_name.sql``, :data:`OWNERS`); this one runner collects them all and applies them in
version order (versions are unique across packages), each in its own transaction together
with its ``schema_migrations`` row, so a failed file leaves nothing half-applied. A
session-level advisory lock serialises concurrent runners (two pods starting at once). An
applied file whose content changed is refused rather than silently ignored: the database
would no longer match the code's history, which is also why files that predate the split
by owner were moved whole (0001 creates the sink framework's ``consumer_offsets`` next to
the ledger's ``usage_events``; 0011 alters both relays' outbox tables). The planning step is
pure (:func:`plan`) so its rules are unit-tested without a database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg

# Arbitrary constant shared by every runner: pg_advisory_lock key for "migrations".
LOCK_KEY = 0x7265_7369_6475_616C  # "residual"

_FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration set or the database's history is inconsistent; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str


def checksum(sql: str) -> str:
    """SHA-256 of the file text with line endings normalised.

    Normalising keeps a checkout with CRLF line endings from looking like an edited file.
    """
    normalised = sql.replace("\r\n", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def parse_filename(filename: str) -> tuple[int, str]:
    """``0001_foundation.sql`` -> ``(1, "foundation")``; anything else is a MigrationError."""
    match = _FILENAME.match(filename)
    if match is None:
        raise MigrationError(f"migration file {filename!r} is not named NNNN_lower_snake_name.sql")
    return int(match["version"]), match["name"]


def from_files(files: Mapping[str, str]) -> list[Migration]:
    """Build the ordered migration list from ``{filename: sql}``; rejects duplicate versions."""
    migrations: dict[int, Migration] = {}
    for filename, sql in files.items():
        version, name = parse_filename(filename)
        if version == 0:
            raise MigrationError(f"{filename}: versions start at 0001")
        if version in migrations:
            raise MigrationError(
                f"two migrations share version {version:04d}: "
                f"{migrations[version].label}.sql and {filename}"
            )
        migrations[version] = Migration(version, name, sql, checksum(sql))
    return [migrations[v] for v in sorted(migrations)]


#: The packages that own tables, each with a ``migrations/`` folder: the sink framework
#: and roles (platform), then the services in the order their first tables were made.
OWNERS = (
    "residuals.platform",
    "residuals.ledger",
    "residuals.licensing",
    "residuals.payouts",
    "residuals.alerts",
    "residuals.notify",
)


def owned_migrations() -> dict[str, list[Migration]]:
    """Every package's own migrations, by package (what each service owns)."""
    return {package: discover(_folder(package)) for package in OWNERS}


def _folder(package: str) -> Traversable:
    return resources.files(package).joinpath("migrations")


def discover(directory: Path | Traversable | None = None) -> list[Migration]:
    """Read every ``*.sql`` file in ``directory``; by default every owner's migrations,
    in one version order (MigrationError when two owners use the same version)."""
    folders = [_folder(p) for p in OWNERS] if directory is None else [directory]
    files: dict[str, str] = {}
    for folder in folders:
        for entry in folder.iterdir():
            if entry.is_file() and entry.name.endswith(".sql"):
                if entry.name in files:
                    raise MigrationError(f"two packages ship {entry.name}")
                files[entry.name] = entry.read_text(encoding="utf-8")
    return from_files(files)


def plan(available: Sequence[Migration], applied: Iterable[Applied]) -> list[Migration]:
    """The migrations still to apply, or MigrationError if history and files disagree.

    Refused: an applied file whose checksum changed; an applied version with no file
    (the database is ahead of this code); a new file numbered below the newest applied
    one (it would run out of order relative to what production already has).
    """
    by_version = {m.version: m for m in available}
    applied_list = sorted(applied, key=lambda a: a.version)
    for row in applied_list:
        migration = by_version.get(row.version)
        if migration is None:
            raise MigrationError(
                f"database has migration {row.version:04d}_{row.name} which this code "
                "does not know; deploy a version of the code that includes it"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {migration.label}.sql changed after it was applied "
                f"(applied checksum {row.checksum[:12]}, file {migration.checksum[:12]}); "
                "add a new migration instead of editing an applied one"
            )
    done = {row.version for row in applied_list}
    newest = max(done, default=0)
    pending = [m for m in available if m.version not in done]
    late = [m for m in pending if m.version < newest]
    if late:
        names = ", ".join(m.label for m in late)
        raise MigrationError(
            f"migrations {names} are numbered below the newest applied one "
            f"({newest:04d}); renumber them after it"
        )
    return pending


def applied_migrations(conn: psycopg.Connection[tuple[object, ...]]) -> list[Applied]:
    """Rows of ``schema_migrations``; empty when the table does not exist yet."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    ).fetchall()
    return [Applied(int(str(v)), str(n), str(c)) for v, n, c in rows]


def current_version(dsn: str) -> int:
    """Highest applied migration version (0 when none), for health checks."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return max((a.version for a in applied_migrations(conn)), default=0)


def migrate(dsn: str, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations to the database at ``dsn``; returns what was applied."""
    available = list(discover() if migrations is None else migrations)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(CREATE_TABLE)
            pending = plan(available, applied_migrations(conn))
            for migration in pending:
                with conn.transaction():
                    conn.execute(migration.sql.encode("utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            return pending
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
