"""PostgreSQL roles: each service connects as its own, with rights on its own tables only.

Migration ``0010_roles.sql`` creates the roles and their grants; this module names them
for the code (launchers, the chart's catalogue, the migrate job that sets passwords).
A service process is told its role by ``DATABASE_USER`` (and, where the server asks for
one, ``DATABASE_PASSWORD``), on top of the shared ``DATABASE_URL``
(:class:`residuals.platform.config.PostgresSettings`). The migrator and the operators'
command-line tools keep the URL's own user: the owner of the tables.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

#: Services that use the database (the meter keeps its state in Kafka).
DATABASE_SERVICES = ("licensing", "ingest", "ledger", "payouts", "alerts", "notify")
#: NOLOGIN group for people: reads every table, marks quarantined records re-driven.
OPERATOR_ROLE = "residuals_operator"


def database_role(service: str) -> str:
    """``residuals_<service>``; KeyError for a service without a database."""
    if service not in DATABASE_SERVICES:
        raise KeyError(f"service {service!r} has no database role")
    return f"residuals_{service}"


def role_env(service: str) -> dict[str, str]:
    """Environment that makes ``residuals <service> run`` connect as its own role
    (empty for a service without a database)."""
    if service not in DATABASE_SERVICES:
        return {}
    return {"DATABASE_USER": database_role(service)}


def role_dsn(dsn: str, service: str) -> str:
    """``dsn`` connecting as the service's role (tests and tools that connect directly)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, user=database_role(service))


def set_passwords(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> list[str]:
    """Set each service role's password from ``directory/<service>`` (a mounted Secret).

    Only a SCRAM verifier computed here reaches the server, never the password itself (so
    it cannot show up in the server's statement log). Missing files are skipped; returns
    the roles whose password was set.
    """
    done: list[str] = []
    for service in DATABASE_SERVICES:
        path = directory / service
        if not path.is_file():
            continue
        password = path.read_text(encoding="utf-8").strip()
        if not password:
            raise ValueError(f"{path} is empty: a role password cannot be blank")
        role = database_role(service)
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode("ascii"))
            )
        )
        done.append(role)
    return done
