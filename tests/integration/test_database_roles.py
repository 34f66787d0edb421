"""Per-service PostgreSQL roles (migration 0010) on the real server.

Each service connects as its own role; these tests prove the boundaries (the gateway
cannot write the ledger, the ledger cannot write licences, alerts cannot read
statements, no service can change the schema) and that every table has its grants.
That each role can do what its service does is proven by the services' own integration
tests, which connect as the service's role (tests.support.licensing, ingest gateway, ledger
store, payouts, alerts).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from residuals.platform import migrations, roles
from residuals.stack import postgres
from residuals.stack.settings import StackSettings
from tests.support.payouts import migrated_database


@pytest.fixture(scope="module")
def dsn(stack: StackSettings) -> Iterator[str]:
    """A fresh database migrated by the owner (the roles already exist: cluster-wide)."""
    with migrated_database(stack) as url:
        yield url


def as_role(dsn: str, service: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(roles.role_dsn(dsn, service), connect_timeout=10)


def refused(dsn: str, service: str, statement: str, params: tuple[object, ...] = ()) -> bool:
    """True when PostgreSQL refuses ``statement`` to the service's role for want of rights."""
    with as_role(dsn, service) as conn:
        try:
            conn.execute(statement, params)
        except errors.InsufficientPrivilege:
            return True
        finally:
            conn.rollback()
    return False


def test_each_service_connects_as_its_own_unprivileged_role(dsn: str) -> None:
    for service in roles.DATABASE_SERVICES:
        with as_role(dsn, service) as conn:
            row = conn.execute(
                "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
                " FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        assert row == (roles.database_role(service), False, False, False, False)


def test_the_ingest_role_cannot_write_the_ledger(dsn: str) -> None:
    insert = (
        "INSERT INTO usage_events (vendor_id, event_id, licence_id, kind, occurred_at, payload)"
        " VALUES ('VEN-X', 'e-1', 'LIC-X', 'RENDER', now(), '\\x00')"
    )
    assert refused(dsn, "ingest", insert)
    assert refused(dsn, "ingest", "UPDATE ledger_totals SET duplicates = 0")
    assert refused(dsn, "ingest", "INSERT INTO closed_periods (period) VALUES ('2099-01')")
    # What the gateway does read: licences, signing keys, API keys.
    with as_role(dsn, "ingest") as conn:
        for table in ("licences", "vendor_signing_keys", "api_keys", "principals"):
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    # ...and nothing it does not.
    assert refused(dsn, "ingest", "SELECT count(*) FROM usage_events")
    assert refused(dsn, "ingest", "SELECT count(*) FROM statements")


def test_the_ledger_role_cannot_write_licences(dsn: str) -> None:
    assert refused(
        dsn,
        "ledger",
        "INSERT INTO talents (talent_id, created_by) VALUES ('TAL-X', 'ledger')",
    )
    assert refused(dsn, "ledger", "UPDATE licences SET currency_code = 'EUR'")
    assert refused(dsn, "ledger", "UPDATE vendor_signing_keys SET revoked_at = now()")
    assert refused(dsn, "ledger", "SELECT count(*) FROM api_keys")
    # Its own tables, and the keys it re-verifies stored signatures with (ledger/audit.py).
    with as_role(dsn, "ledger") as conn:
        conn.execute("SELECT count(*) FROM vendor_signing_keys").fetchone()
        conn.execute("SELECT period FROM closed_periods FOR SHARE").fetchall()
        conn.execute("SELECT nextval('ledger_arrival_seq')").fetchone()
        conn.rollback()


def test_the_alerts_role_cannot_read_statements_or_money(dsn: str) -> None:
    for table in ("statements", "statement_lines", "journal_postings", "payouts", "usage_events"):
        assert refused(dsn, "alerts", f"SELECT count(*) FROM {table}"), table
    assert refused(dsn, "alerts", "UPDATE licences SET revision = revision")


def test_append_only_money_stays_append_only_for_its_own_service(dsn: str) -> None:
    # payouts may insert statements and journal entries but never change or remove them,
    # nor switch off the triggers that guard them (it does not own the tables).
    assert refused(dsn, "payouts", "UPDATE statements SET period = period")
    assert refused(dsn, "payouts", "DELETE FROM journal_postings")
    assert refused(dsn, "payouts", "ALTER TABLE statements DISABLE TRIGGER ALL")
    assert refused(dsn, "licensing", "DELETE FROM licence_versions")


def test_no_service_role_can_change_the_schema(dsn: str) -> None:
    for service in roles.DATABASE_SERVICES:
        assert refused(dsn, service, "CREATE TABLE sneaky (id int)"), service
        assert refused(dsn, service, "DROP TABLE quarantine"), service
        assert refused(dsn, service, "TRUNCATE usage_events"), service
        assert refused(dsn, service, "SELECT residuals_grants('licences', ingest => 'ALL')"), (
            service
        )


def test_consumers_can_quarantine_but_only_operators_read_it(dsn: str) -> None:
    insert = (
        "INSERT INTO quarantine (consumer, source_topic, source_partition, source_offset, error)"
        " VALUES (%s, 't', 0, %s, 'boom')"
        " ON CONFLICT (consumer, source_topic, source_partition, source_offset) DO NOTHING"
    )
    for offset, service in enumerate(("licensing", "ledger", "payouts", "alerts")):
        with as_role(dsn, service) as conn:
            conn.execute(insert, (service, offset))
        assert refused(dsn, service, "SELECT record_value FROM quarantine"), service
        assert refused(dsn, service, "SELECT error FROM quarantine"), service
        assert refused(dsn, service, "UPDATE quarantine SET redriven_at = now()"), service
    assert refused(dsn, "ingest", insert, ("ingest", 9))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (4,)
        grants = conn.execute(
            "SELECT has_table_privilege(%s, 'quarantine', 'SELECT'),"
            " has_column_privilege(%s, 'quarantine', 'redriven_at', 'UPDATE'),"
            " has_column_privilege(%s, 'quarantine', 'error', 'UPDATE')",
            (roles.OPERATOR_ROLE,) * 3,
        ).fetchone()
    assert grants == (True, True, False)


def test_the_audit_log_is_appended_by_the_registry_alone(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        rights = {
            service: conn.execute(
                "SELECT has_table_privilege(%s, 'audit_log', 'INSERT'),"
                " has_table_privilege(%s, 'audit_log', 'SELECT'),"
                " has_table_privilege(%s, 'audit_log', 'UPDATE')",
                (roles.database_role(service),) * 3,
            ).fetchone()
            for service in roles.DATABASE_SERVICES
        }
    assert rights.pop("licensing") == (True, True, False)
    assert set(rights.values()) == {(False, False, False)}


def test_every_table_view_and_sequence_has_its_grants(dsn: str) -> None:
    """A table added without a residuals_grants line fails here: the operator role reads
    every relation that has one (sequences of serial columns come with their table)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            WHERE c.relkind IN ('r', 'v', 'm', 'S', 'p')
              AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid
                              AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
              AND NOT has_table_privilege(%s, c.oid, 'SELECT')
            ORDER BY 1
            """,
            (roles.OPERATOR_ROLE,),
        ).fetchall()
    assert rows == []


def test_roles_are_created_once_while_databases_migrate_concurrently(
    stack: StackSettings,
) -> None:
    """Roles are cluster-wide: migrating several databases at once must not collide."""
    admin = postgres.admin_dsn(stack)
    names = [f"roles_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    errors_seen: list[BaseException] = []

    def run(name: str) -> None:
        try:
            migrations.migrate(postgres.admin_dsn(stack, name))
        except BaseException as exc:  # reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors_seen == []
        for name in names:
            url = postgres.admin_dsn(stack, name)
            with as_role(url, "ledger") as conn:
                conn.execute("SELECT count(*) FROM usage_events").fetchone()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def test_passwords_are_set_from_a_directory_as_scram_verifiers(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "ledger").write_text("correct horse battery staple\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            done = roles.set_passwords(conn, tmp_path)
            stored = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'residuals_ledger'"
            ).fetchone()
        finally:  # the role is cluster-wide: leave it as the local stack expects
            conn.execute("ALTER ROLE residuals_ledger PASSWORD NULL")
    assert done == ["residuals_ledger"]
    assert stored is not None and str(stored[0]).startswith("SCRAM-SHA-256$")
    assert "correct horse" not in str(stored[0])
    (tmp_path / "ledger").write_text("\n")
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(ValueError, match="empty"):
        roles.set_passwords(conn, tmp_path)
