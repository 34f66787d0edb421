"""Pure rules of the migration runner: naming, ordering, checksums, refusals."""

from __future__ import annotations

import pytest

from residuals.platform import migrations
from residuals.platform.migrations import Applied, Migration, MigrationError


def _m(version: int, sql: str = "SELECT 1;") -> Migration:
    return Migration(version, f"m{version}", sql, migrations.checksum(sql))


def _applied(m: Migration, checksum: str | None = None) -> Applied:
    return Applied(m.version, m.name, checksum or m.checksum)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("0001_foundation.sql", (1, "foundation")),
        ("0042_add_payouts_2.sql", (42, "add_payouts_2")),
        ("9999_x.sql", (9999, "x")),
    ],
)
def test_parse_filename_accepts_numbered_snake_case(
    filename: str, expected: tuple[int, str]
) -> None:
    assert migrations.parse_filename(filename) == expected


@pytest.mark.parametrize(
    "filename",
    ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_.sql", "0001_x.SQL", "00001_x.sql"],
)
def test_parse_filename_rejects_other_names(filename: str) -> None:
    with pytest.raises(MigrationError, match="NNNN_lower_snake_name"):
        migrations.parse_filename(filename)


def test_from_files_orders_by_number_not_by_listing_order() -> None:
    files = {"0010_ten.sql": "a", "0002_two.sql": "b", "0001_one.sql": "c"}
    assert [m.label for m in migrations.from_files(files)] == ["0001_one", "0002_two", "0010_ten"]


def test_from_files_rejects_duplicate_versions_naming_both() -> None:
    with pytest.raises(MigrationError, match=r"0003_a\.sql and 0003_b\.sql|0003_b\.sql and 0003_a"):
        migrations.from_files({"0003_a.sql": "x", "0003_b.sql": "y"})


def test_from_files_rejects_version_zero() -> None:
    with pytest.raises(MigrationError, match="start at 0001"):
        migrations.from_files({"0000_zero.sql": "x"})


def test_checksum_ignores_line_ending_style_but_not_content() -> None:
    unix = "CREATE TABLE t (id int);\nSELECT 1;\n"
    assert migrations.checksum(unix) == migrations.checksum(unix.replace("\n", "\r\n"))
    assert migrations.checksum(unix) != migrations.checksum(unix.replace("int", "bigint"))
    assert len(migrations.checksum(unix)) == 64


def test_plan_returns_unapplied_in_order() -> None:
    one, two, three = _m(1), _m(2), _m(3)
    assert migrations.plan([one, two, three], []) == [one, two, three]
    assert migrations.plan([one, two, three], [_applied(one)]) == [two, three]
    assert migrations.plan([one, two], [_applied(two), _applied(one)]) == []


def test_plan_refuses_an_edited_applied_migration() -> None:
    one = _m(1, "CREATE TABLE a (id int);")
    with pytest.raises(MigrationError, match=r"0001_m1\.sql changed after it was applied"):
        migrations.plan([one], [_applied(one, checksum="0" * 64)])


def test_plan_refuses_a_database_ahead_of_the_code() -> None:
    one = _m(1)
    with pytest.raises(MigrationError, match="0002_m2 which this code does not know"):
        migrations.plan([one], [_applied(one), Applied(2, "m2", "f" * 64)])


def test_plan_refuses_a_new_migration_numbered_below_the_newest_applied() -> None:
    one, two, three = _m(1), _m(2), _m(3)
    with pytest.raises(MigrationError, match="0002_m2 are numbered below"):
        migrations.plan([one, two, three], [_applied(one), _applied(three)])


def test_packaged_migrations_start_at_foundation_and_ascend() -> None:
    packaged = migrations.discover()
    assert packaged[0].label == "0001_foundation"
    versions = [m.version for m in packaged]
    # Numbers are reserved per service (0004 for ingestion tables, which it never needed), so a
    # reserved number may be unused; versions must still be unique and ascending.
    assert versions == sorted(set(versions))
    foundation = packaged[0].sql
    assert "CREATE TABLE usage_events" in foundation
    assert "CREATE TABLE consumer_offsets" in foundation
