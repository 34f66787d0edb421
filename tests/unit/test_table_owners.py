"""One owner per table: the package whose migrations create a table is the only one whose
modules name it in SQL; every other service reads it through the owner's directory
module (``licensing/directory.py``, ``ledger/directory.py``, ``platform/quarantine.py``)."""

from __future__ import annotations

import re
from pathlib import Path

from residuals.platform import migrations

SERVICES = Path(__file__).parents[2] / "services" / "residuals"
_CREATES = re.compile(r"CREATE (?:TABLE|(?:OR REPLACE )?VIEW) (?:IF NOT EXISTS )?([a-z_]+)")
#: Created by the ledger's first migration, before there were other sinks; every sink
#: stores its offsets there through the sink framework (platform/offsets.py).
SHARED_BY_THE_SINK_FRAMEWORK = {"consumer_offsets": "platform"}


def owners() -> dict[str, str]:
    """Table or view -> the package (``ledger``, ``licensing``...) whose migration makes it."""
    owner: dict[str, str] = {}
    for package, owned in migrations.owned_migrations().items():
        for migration in owned:
            for table in _CREATES.findall(migration.sql):
                assert table not in owner, f"{table} is created by two migrations"
                owner[table] = package.rsplit(".", 1)[1]
    return owner | SHARED_BY_THE_SINK_FRAMEWORK


def named_in_sql(text: str, tables: set[str]) -> set[str]:
    """Tables that ``text`` reads or writes in SQL (upper-case keywords, as the code writes
    SQL), e.g. ``FROM usage_events``, ``INSERT INTO quarantine``, ``LOCK TABLE x``."""
    alternatives = "|".join(sorted(tables, key=len, reverse=True))
    pattern = rf"\b(?:FROM|JOIN|INTO|UPDATE|COPY|LOCK TABLE)\s+({alternatives})\b"
    return set(re.findall(pattern, text))


def test_every_table_has_one_owning_package() -> None:
    owner = owners()
    assert owner["usage_events"] == "ledger"
    assert owner["licences"] == "licensing" and owner["api_keys"] == "licensing"
    assert owner["statements"] == "payouts" and owner["alerts"] == "alerts"
    assert owner["quarantine"] == "platform"
    # Every package's migrations are its own folder, and together they are the schema.
    owned = migrations.owned_migrations()
    assert sum(len(m) for m in owned.values()) == len(migrations.discover())
    for package in owned:
        assert (SERVICES / package.rsplit(".", 1)[1] / "migrations").is_dir()
    assert not list((SERVICES / "platform" / "migrations").glob("*ledger*"))


def test_no_module_names_another_services_tables() -> None:
    owner = owners()
    trespasses = []
    for path in sorted(SERVICES.rglob("*.py")):
        relative = path.relative_to(SERVICES)
        if relative.parts[0] == "v1":  # generated protobuf code
            continue
        package = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for table in sorted(named_in_sql(path.read_text(encoding="utf-8"), set(owner))):
            if owner[table] != package:
                trespasses.append(f"{relative} names {table} (owned by {owner[table]})")
    assert trespasses == []


def test_the_scan_sees_sql_and_ignores_prose() -> None:
    tables = {"usage_events", "closed_periods", "quarantine"}
    assert named_in_sql("SELECT count(*) FROM usage_events WHERE", tables) == {"usage_events"}
    assert named_in_sql('"LOCK TABLE closed_periods IN EXCLUSIVE MODE"', tables) == {
        "closed_periods"
    }
    assert named_in_sql("INSERT INTO quarantine (consumer)", tables) == {"quarantine"}
    assert named_in_sql("events stored in usage_events come from the quarantine", tables) == set()
    assert named_in_sql("GB'; DROP TABLE usage_events; --", tables) == set()
