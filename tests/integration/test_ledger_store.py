"""The ledger writer's batch store and the fenced sink, against the real PostgreSQL.

Records are built exactly as the meter publishes them (RatedUsage / DeadLetter bytes) and
handed to :class:`LedgerStore` / :class:`KafkaPostgresSink` as consumed records, so the
SQL (COPY, ON CONFLICT, retraction resolution, totals, adjustments, offsets and fencing)
runs for real without a broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.adapt import Transformer
from psycopg.rows import dict_row

from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.signing import public_key_bytes, sign_batch
from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.events import Rejection, UsageEvent
from residuals.ledger.audit import row_problem, stored_envelope, unverified_rows
from residuals.ledger.history import load_adjustments, load_period_events
from residuals.ledger.records import decode_rated
from residuals.ledger.store import EVENT_COLUMNS, _copy_line, _event_line, _event_row
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.platform.sink import Fenced, KafkaPostgresSink
from residuals.stack.settings import StackSettings
from residuals.v1 import usage_pb2
from tests.support.ledger import RATED, Ledger, Outcome


@pytest.fixture
def ledger(stack: StackSettings) -> Iterator[Ledger]:
    led = Ledger(stack.dsn)
    try:
        yield led
    finally:
        led.cleanup()


def test_new_uses_are_stored_once_and_redelivery_changes_nothing(ledger: Ledger) -> None:
    first = ledger.rated(ledger.event("e1"))
    second = ledger.rated(ledger.event("e2", quantity=3))
    result = ledger.apply(first, second, first)  # the meter re-published e1 after a crash
    assert (result.events, result.redelivered) == (2, 1)
    again = ledger.apply(first, second)
    assert (again.events, again.repeats, again.redelivered) == (0, 0, 2)
    rows = ledger.rows(
        "SELECT event_id, quantity, outcome, period, payload, signature, published_at "
        "FROM usage_events WHERE vendor_id = %s ORDER BY arrival_seq",
        ledger.vendor,
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("e1", 1, "ACCEPTED", str(ledger.period)),
        ("e2", 3, "ACCEPTED", str(ledger.period)),
    ]
    assert all(r[4] and len(r[5]) == 64 and r[6] is not None for r in rows)
    assert ledger.totals()["events"] == 2 and ledger.totals()["units"] == 4


def test_a_resend_through_another_partition_is_judged_by_the_ledger(ledger: Ledger) -> None:
    original = ledger.event("e1")
    ledger.apply(ledger.rated(original, partition=0))
    same = ledger.rated(original, partition=3)
    different = ledger.rated(ledger.event("e1", territory="FR"), partition=4)
    result = ledger.apply(same, different)
    assert (result.events, result.repeats) == (0, 2)
    rows = ledger.rows(
        "SELECT outcome, decided_by, source_partition FROM usage_repeats WHERE vendor_id = %s "
        "ORDER BY arrival_seq",
        ledger.vendor,
    )
    assert rows == [("DUPLICATE", "ledger", 3), ("CONFLICT", "ledger", 4)]
    totals = ledger.totals()
    assert (totals["events"], totals["duplicates"], totals["conflicts"]) == (1, 1, 1)
    assert ledger.apply(same, different).redelivered == 2


def test_retractions_are_resolved_against_stored_events(ledger: Ledger) -> None:
    ledger.apply(ledger.rated(ledger.event("e1"), amount="2.50"))

    def retraction(event_id: str, original: str) -> UsageEvent:
        return ledger.event(
            event_id,
            kind="RETRACTION",
            licence_id=None,
            avatar_id=None,
            render_id=None,
            category=None,
            territory=None,
            original_event_id=original,
        )

    retracts = ledger.rated(retraction("x1", "e1"), Outcome.OUTCOME_RETRACTED)
    second = ledger.rated(retraction("x2", "e1"), Outcome.OUTCOME_RETRACTED)
    unknown = ledger.rated(retraction("x3", "never-sent"), Outcome.OUTCOME_RETRACTED)
    result = ledger.apply(retracts, second, unknown)
    assert (result.events, result.repeats, result.dead) == (1, 1, 1)
    assert ledger.rows(
        "SELECT licence_id, period, outcome FROM usage_events WHERE vendor_id = %s "
        "AND kind = 'RETRACTION'",
        ledger.vendor,
    ) == [(f"LIC@{ledger.run}", str(ledger.period), "RETRACTED")]
    assert ledger.rows(
        "SELECT reason, decided_by FROM dead_letters WHERE vendor_id = %s", ledger.vendor
    ) == [("UNKNOWN_ORIGINAL", "ledger")]
    totals = ledger.totals()
    assert (totals["events"], totals["retracted"], totals["duplicates"]) == (0, 1, 0)
    assert totals["amount"] == 0
    # Re-delivered after the original became known elsewhere: decided once, never again.
    assert ledger.apply(retracts, second, unknown).redelivered == 3


def test_a_use_of_a_closed_period_is_an_adjustment_of_the_next_open_one(ledger: Ledger) -> None:
    ledger.apply(ledger.rated(ledger.event("early")))
    with psycopg.connect(ledger.dsn) as conn:
        conn.execute("INSERT INTO closed_periods (period) VALUES (%s)", (str(ledger.period),))
    ledger.apply(ledger.rated(ledger.event("late")))
    rows = ledger.rows(
        "SELECT event_id, period, adjustment_period FROM usage_events WHERE vendor_id = %s "
        "ORDER BY arrival_seq",
        ledger.vendor,
    )
    nxt = str(ledger.period.next())
    assert rows == [("early", str(ledger.period), None), ("late", str(ledger.period), nxt)]
    with psycopg.connect(ledger.dsn) as conn:
        period_events = load_period_events(conn, ledger.period)
        adjustments = load_adjustments(conn, ledger.period.next())
    assert "early" in {e.event_id for e in period_events if isinstance(e, UsageEvent)}
    assert "late" not in {e.event_id for e in period_events if isinstance(e, UsageEvent)}
    assert [e.event_id for e in adjustments if e.vendor_id == ledger.vendor] == ["late"]
    assert ledger.rows(
        "SELECT period, adjustments FROM ledger_totals WHERE licence_id = %s ORDER BY period",
        f"LIC@{ledger.run}",
    ) == [(str(ledger.period), 0), (nxt, 1)]


def test_dead_letters_are_stored_once_and_replayed_as_rejections(ledger: Ledger) -> None:
    used = ledger.rated(ledger.event("e1"))
    dead = ledger.dead("INVALID_QUANTITY", 900)
    result = ledger.apply(dead, used, dead)
    assert (result.dead, result.events, result.redelivered) == (1, 1, 1)
    with psycopg.connect(ledger.dsn) as conn:
        items = [
            e
            for e in load_period_events(conn, ledger.period)
            if getattr(e, "vendor_id", None) == ledger.vendor
        ]
    # The junk original cannot be read: the dead letter counts in the period it arrived.
    assert [type(e).__name__ for e in items] == ["Rejection", "UsageEvent"]
    assert any(isinstance(e, Rejection) and e.reason.value == "INVALID_QUANTITY" for e in items)


# --- signature evidence ------------------------------------------------------------------


@pytest.fixture
def vendor_key(ledger: Ledger) -> Iterator[tuple[str, Ed25519PrivateKey]]:
    """A signing key registered to the test's vendor in ``vendor_signing_keys``."""
    key_id, private = f"k@{ledger.run}", Ed25519PrivateKey.generate()
    with psycopg.connect(ledger.dsn) as conn:
        conn.execute(
            "INSERT INTO vendors (vendor_id, created_by) VALUES (%s, 'test')", (ledger.vendor,)
        )
        conn.execute(
            "INSERT INTO vendor_signing_keys (key_id, vendor_id, public_key, created_by) "
            "VALUES (%s, %s, %s, 'test')",
            (key_id, ledger.vendor, public_key_bytes(private)),
        )
    try:
        yield key_id, private
    finally:
        with psycopg.connect(ledger.dsn) as conn:
            conn.execute("DELETE FROM vendor_signing_keys WHERE key_id = %s", (key_id,))
            conn.execute("DELETE FROM vendors WHERE vendor_id = %s", (ledger.vendor,))


def test_batch_signed_rows_are_re_verified_from_the_database_alone(
    ledger: Ledger, vendor_key: tuple[str, Ed25519PrivateKey]
) -> None:
    key_id, private = vendor_key
    uses = [ledger.event(f"b{i}", quantity=i + 1) for i in range(4)]
    unknown = ledger.event(
        "x-unknown",
        kind="RETRACTION",
        licence_id=None,
        avatar_id=None,
        render_id=None,
        category=None,
        territory=None,
        original_event_id="never-sent",
    )
    alone = ledger.event("single")
    batch = sign_batch([from_domain(e) for e in [*uses, unknown]], key_id, private)
    (single,) = sign_batch([from_domain(alone)], key_id, private)  # a per-event signature
    assert all(e.HasField("batch") for e in batch) and not single.HasField("batch")
    by_id = {e.event_id: env for e, env in zip([*uses, unknown], batch, strict=True)}
    by_id["single"] = single
    result = ledger.apply(
        *(ledger.rated(e, signed=by_id[e.event_id], partition=0) for e in uses),
        ledger.rated(alone, signed=single),
        ledger.rated(unknown, Outcome.OUTCOME_RETRACTED, signed=by_id["x-unknown"]),
        # b1 re-sent through another partition: a repeat the ledger judges, same envelope
        ledger.rated(uses[1], signed=by_id["b1"], partition=2),
    )
    assert (result.events, result.repeats, result.dead) == (5, 1, 1)

    key = SigningKeyRecord(key_id, ledger.vendor, public_key_bytes(private))
    with psycopg.connect(ledger.dsn, row_factory=dict_row) as conn:
        rows = [
            *conn.execute(
                "SELECT 'usage_events' AS t, * FROM usage_events WHERE vendor_id = %s",
                (ledger.vendor,),
            ).fetchall(),
            *conn.execute(
                "SELECT 'usage_repeats' AS t, * FROM usage_repeats WHERE vendor_id = %s",
                (ledger.vendor,),
            ).fetchall(),
        ]
        (dead,) = conn.execute(
            "SELECT original FROM dead_letters WHERE vendor_id = %s", (ledger.vendor,)
        ).fetchall()
    assert sorted((r["t"], r["event_id"]) for r in rows) == [
        ("usage_events", "b0"),
        ("usage_events", "b1"),
        ("usage_events", "b2"),
        ("usage_events", "b3"),
        ("usage_events", "single"),
        ("usage_repeats", "b1"),
    ]
    for row in rows:
        envelope = stored_envelope(row)
        assert envelope == by_id[row["event_id"]]  # exactly what the vendor signed
        assert (row["signature_proof"] is None) == (row["event_id"] == "single")
        assert row_problem(row, key) is None
    # Without the proof the stored evidence would not verify: the signature is over the root.
    no_proof = {**next(r for r in rows if r["event_id"] == "b0"), "signature_proof": None}
    assert row_problem(no_proof, key) == (
        f"signature does not match the payload for key {key_id!r}"
    )
    # The dead letter the ledger made of the unknown retraction keeps the proof too.
    assert usage_pb2.SignedUsageEvent.FromString(dead["original"]) == by_id["x-unknown"]

    # Tamper with one stored payload (its quantity inflated): only that row fails.
    tampered = from_domain(uses[2])
    tampered.quantity = 1000
    with psycopg.connect(ledger.dsn) as conn:
        conn.execute(
            "UPDATE usage_events SET payload = %s WHERE vendor_id = %s AND event_id = 'b2'",
            (payload_bytes(tampered), ledger.vendor),
        )
        findings = [f for f in unverified_rows(conn, ledger.period) if f.vendor_id == ledger.vendor]
    assert [(f.stored_in, f.event_id) for f in findings] == [("usage_events", "b2")]
    assert findings[0].problem == (
        f"batch signature does not match the root proven for leaf 2 of 5 for key {key_id!r}"
    )


# --- fencing -----------------------------------------------------------------------------------


class FakeConsumer:
    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def commit(self, **_: Any) -> None:
        pass

    def seek(self, _tp: Any) -> None:
        pass


def test_a_zombie_writer_is_fenced_and_commits_nothing(
    ledger: Ledger, stack: StackSettings
) -> None:
    group = f"fence-{ledger.run}"
    settings = PostgresSettings(dsn=stack.dsn, pool_min=0, pool_max=2, user=database_role("ledger"))
    db = Database(settings, application_name="t")
    db.open()
    try:
        sinks = [
            KafkaPostgresSink(
                name=f"w{i}",
                consumer=FakeConsumer(),
                db=db,
                group_id=group,
                topics=[RATED],
                apply=lambda conn, records: ledger.store.apply(conn, records),
            )
            for i in range(2)
        ]
        zombie, owner = sinks
        zombie._on_assign(zombie.consumer, [TopicPartition(RATED, 0)])
        assert zombie.process([ledger.rated(ledger.event("e1"), offset=0)]) == 1
        owner._on_assign(owner.consumer, [TopicPartition(RATED, 0)])
        assert owner.consumer.assigned[0].offset == 1  # seeks to the stored position
        with pytest.raises(Fenced):
            zombie.process([ledger.rated(ledger.event("e2"), offset=1)])
        assert owner.process([ledger.rated(ledger.event("e3"), offset=1)]) == 1
        assert [
            r[0]
            for r in ledger.rows(
                "SELECT event_id FROM usage_events WHERE vendor_id = %s ORDER BY arrival_seq",
                ledger.vendor,
            )
        ] == ["e1", "e3"]
        assert ledger.rows(
            "SELECT next_offset, epoch, owner = %s FROM consumer_offsets WHERE group_id = %s",
            owner.owner,
            group,
        ) == [(2, 2, True)]
    finally:
        with psycopg.connect(stack.dsn) as conn:
            conn.execute("DELETE FROM consumer_offsets WHERE group_id = %s", (group,))
        db.close()


def test_the_copy_text_of_a_use_is_what_psycopg_writes(ledger: Ledger) -> None:
    """The ledger writes its COPY text itself (one f-string a row): PostgreSQL must store
    exactly what psycopg's own dumpers would have sent, for every kind of value - NULLs,
    escapes, bytea, decimals, arrays, times in other zones."""
    kinds = [
        ledger.event("plain"),
        ledger.event("view\\back", kind="VIEW", channel="web", quantity=7, viewable=False),
        ledger.event("ad", kind="AD_IMPRESSION", channel="web", ad_revenue="0.000000001"),
        ledger.event("r", kind="RETRACTION", original_event_id="plain"),
        ledger.event("apr", approval_id="apr 1", territory="G\\B"),
    ]
    items = [decode_rated(ledger.rated(e).value(), "t.usage") for e in kinds]
    items[0].signature_proof = b"\x00\\proof\t\n"
    items[1].notices = ["QUOTA_NEAR", "QUOTA_EXCEEDED"]
    items[1].exclusion, items[1].violation, items[1].tier = "non_viewable", "USE_AFTER_EXPIRY", 3
    items[2].estimated_amount = Decimal("1E+2")
    items[2].held_amount = Decimal("-0.000")
    items[3].rated_at = items[3].received_at.astimezone(timezone(timedelta(hours=-5)))
    items[3].published_at = None
    items[4].key_id = "k\t\r\n\b\f\v1"  # refused by the decoder, escaped all the same
    items[3].currency = ""
    adjustments = [None, "2999-01", None, None, "2999-02"]
    licences = ["L1", "L\\1", "L1", "L1", "L1"]
    columns = ", ".join(EVENT_COLUMNS)
    rows = list(enumerate(zip(items, adjustments, licences, strict=True)))
    with psycopg.connect(ledger.dsn) as conn, conn.cursor() as cur:
        for table in ("by_psycopg", "by_ledger"):
            cur.execute(f"CREATE TEMP TABLE {table} (LIKE usage_events INCLUDING DEFAULTS)")
        with cur.copy(f"COPY by_psycopg ({columns}) FROM STDIN") as cp:
            for seq, (r, adjustment, lic) in rows:
                cp.write_row(_event_row(r, seq, adjustment, licence_id=lic, period=r.period))
        with cur.copy(f"COPY by_ledger ({columns}) FROM STDIN") as cp:
            lines = [
                _event_line(r, seq, adjustment, licence_id=lic, period=r.period)
                for seq, (r, adjustment, lic) in rows
            ]
            # One f-string a row, but for rows with something to escape or an array.
            assert [line is None for line in lines] == [False, True, False, False, True]
            tx = Transformer(conn)
            for (seq, (r, adjustment, lic)), line in zip(rows, lines, strict=True):
                row = _event_row(r, seq, adjustment, licence_id=lic, period=r.period)
                cp.write(line if line is not None else _copy_line(row, tx))
        read = "SELECT to_jsonb(t) - 'ledgered_at' FROM {} t ORDER BY arrival_seq"
        by_psycopg = cur.execute(read.format("by_psycopg")).fetchall()
        assert len(by_psycopg) == len(items)
        assert cur.execute(read.format("by_ledger")).fetchall() == by_psycopg
        # ...and every text, to the last digit and zone, not only equal values
        text = "SELECT (to_jsonb(t) - 'ledgered_at')::text FROM {} t ORDER BY arrival_seq"
        assert (
            cur.execute(text.format("by_ledger")).fetchall()
            == cur.execute(text.format("by_psycopg")).fetchall()
        )
        conn.rollback()
