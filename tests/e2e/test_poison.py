"""Poison on the real stack: hostile records interleaved with a month of good usage.

A month of signed usage (as the SDK's ``publish_many`` signs it, stamped as the gateway
stamps it) flows through Kafka, the meter and the ledger writer while an attacker with an
ordinary vendor key writes every record of ``tests/hostile.py`` straight onto the usage
topic between the chunks, and poison lands on the other topics the services read: a
tombstone and garbage on the rated and dead-letter topics (the ledger writer's inputs), a
licence record with a NaN rate, one without versions and a tombstone on the licences
topic, garbage on the signing-keys topic (the meter's registries).

Afterwards: every good event is in the ledger exactly once and the period's statement is
the offline replay to the cent; every hostile usage record is a dead letter with its
reason (or, when it is valid, rated); every poison record on another topic is one
quarantine row with its bytes and position; the meter and the ledger writer never
restarted; and their lag is back to zero.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs import licences as licence_codec
from residuals.codecs.signing import signing_key_record
from residuals.codecs.timestamps import set_timestamp
from residuals.demo.hostile import Hostile, Identity, corpus
from residuals.domain.licence_spec import parse_licence
from residuals.platform import topics
from residuals.platform.kafka import make_consumer
from residuals.stack.settings import StackSettings
from tests.support.builders import licence_spec
from tests.support.metering import Pipeline, pipeline
from tests.support.month_run import assert_ledger_is_the_replay, prepare_month

EVENTS = 6_000
MONTH_LICENCES = 300
VENDORS = 6
CHUNKS = 12
CATCH_UP_TIMEOUT = 300.0


def hostile_identity(run: Pipeline) -> Identity:
    """The attacker: a vendor of this run with a licence in force today, a revoked key,
    and a neighbour vendor whose licence and key it will try to use."""
    who = Identity(
        vendor=run.vendor("hostile"),
        key_id=f"key-hostile-{run.run_id}",
        key=Ed25519PrivateKey.generate(),
        licence_id=f"LIC-HOSTILE-{run.run_id}",
        avatar_id=f"AVA-HOSTILE-{run.run_id}",
        other_vendor=run.vendor("neighbour"),
        other_key_id=f"key-neighbour-{run.run_id}",
        other_key=Ed25519PrivateKey.generate(),
        other_licence=f"LIC-NEIGHBOUR-{run.run_id}",
        revoked_key_id=f"key-revoked-{run.run_id}",
        revoked_key=Ed25519PrivateKey.generate(),
        prefix=f"{run.run_id}-",
    )
    run.publish_licences(
        [
            licence_spec(licence_id=who.licence_id, vendor_id=who.vendor, avatar_id=who.avatar_id),
            licence_spec(
                licence_id=who.other_licence, vendor_id=who.other_vendor, avatar_id="AVA-O"
            ),
        ]
    )
    producer = run._producer()
    revoked = signing_key_record(who.revoked_key_id, who.vendor, who.revoked_key)
    set_timestamp(revoked.revoked_at, datetime(2026, 1, 1, tzinfo=UTC))
    for record in (
        signing_key_record(who.key_id, who.vendor, who.key),
        signing_key_record(who.other_key_id, who.other_vendor, who.other_key),
        revoked,
    ):
        producer.produce(
            run.topic(topics.SIGNING_KEYS),
            key=record.key_id.encode(),
            value=record.SerializeToString(),
        )
    assert producer.flush(60) == 0
    return who


def poison_for_other_topics(
    run: Pipeline, who: Identity
) -> list[tuple[Any, bytes | None, bytes | None]]:
    """(topic, key, value) of records that are poison to the meter's registries and the
    ledger writer: each must become one quarantine row."""
    nan_rate = licence_codec.to_proto(
        parse_licence(licence_spec(licence_id=f"LIC-NAN-{run.run_id}", vendor_id=who.vendor))
    )
    nan_rate.versions[0].rates.view_cpm = "NaN"
    no_versions = licence_codec.to_proto(
        parse_licence(licence_spec(licence_id=f"LIC-EMPTY-{run.run_id}", vendor_id=who.vendor))
    )
    del no_versions.versions[:]
    return [
        (topics.USAGE_RATED, b"LIC-1", None),
        (topics.USAGE_RATED, b"LIC-1", b"\xff\x00garbage"),
        (topics.USAGE_DLQ, b"VEN", None),
        (topics.USAGE_DLQ, b"VEN", b"\x0a\xff\xff\xff\xff\x0f"),
        (topics.LICENCES, nan_rate.licence_id.encode(), nan_rate.SerializeToString()),
        (topics.LICENCES, no_versions.licence_id.encode(), no_versions.SerializeToString()),
        (topics.LICENCES, who.licence_id.encode(), None),  # a tombstone: licences are never deleted
        (topics.SIGNING_KEYS, b"key-garbage", b"\xde\xad\xbe\xef"),
    ]


def chunks(items: list[Any], count: int) -> Iterator[list[Any]]:
    size = -(-len(items) // count)
    for i in range(count):
        yield items[i * size : (i + 1) * size]


def test_poison_harms_nothing_but_itself(stack: StackSettings, tmp_path: Path) -> None:
    with pipeline(stack, tmp_path) as run:
        who = hostile_identity(run)
        month = prepare_month(run, events=EVENTS, licences=MONTH_LICENCES, vendors=VENDORS)
        hostile = corpus(who, datetime.now(UTC))
        others = poison_for_other_topics(run, who)
        meter, ledger = run.meter(), run.ledger()
        meter.start()
        ledger.start()
        producer = run._producer()
        positions: dict[str, tuple[int, int]] = {}
        quarantined: list[tuple[str, int, int]] = []

        def remember(name: str) -> Any:
            def delivered(err: Any, msg: Any) -> None:
                assert err is None, err
                positions[name] = (msg.partition(), msg.offset())

            return delivered

        def quarantine_position(err: Any, msg: Any) -> None:
            assert err is None, err
            quarantined.append((msg.topic(), msg.partition(), msg.offset()))

        try:
            bad = list(chunks(hostile, CHUNKS))
            other = list(chunks(others, CHUNKS))
            for i, part in enumerate(month.chunks(CHUNKS)):
                run.produce(part)
                for case in bad[i]:
                    _produce_hostile(run, producer, case, who, remember(case.name))
                for topic, key, value in other[i]:
                    producer.produce(
                        run.topic(topic), key=key, value=value, on_delivery=quarantine_position
                    )
                assert producer.flush(60) == 0
            total = len(month.records) + len(hostile)
            run.wait_ledgered(total, CATCH_UP_TIMEOUT, [meter, ledger])
            time.sleep(2.0)  # anything late or duplicated would show up now
            rows = run.stored_positions()
            lag = _lag_settled(run)
            quarantine = _quarantine_rows(run, quarantined)
            verdicts = _verdicts(run, positions)
        finally:
            meter.stop()
            ledger.stop()

        # Nothing restarted: poison was handled, not survived.
        assert (meter.starts, ledger.starts) == (1, 1)
        assert meter.exit_codes == [] and ledger.exit_codes == []
        # Every good event ledgered exactly once; the statement is the offline replay.
        hostile_positions = set(positions.values())
        good_rows = [r for r in rows if (r[1], r[2]) not in hostile_positions]
        assert_ledger_is_the_replay(run, month, good_rows, tmp_path)
        # Every hostile usage record ended with its verdict.
        for case in hostile:
            assert verdicts[case.name] == (case.reason.value if case.reason else "RATED"), case.name
        # Every poison record on another topic is one quarantine row, bytes kept.
        assert sorted(quarantine) == sorted(quarantined), (quarantine, quarantined)
        # Lag back to zero on every input.
        assert lag == {}, lag
        print(
            f"\n{len(month.records)} good events, {len(hostile)} hostile usage records, "
            f"{len(others)} poison records on other topics: ledger = replay, "
            f"{sum(1 for c in hostile if c.reason)} dead-lettered with their reason, "
            f"{len(quarantine)} quarantined, no restart, lag 0"
        )


def _produce_hostile(
    run: Pipeline, producer: Any, case: Hostile, who: Identity, delivered: Any
) -> None:
    headers = [("residuals-vendor", who.vendor.encode()), *case.headers]
    producer.produce(
        run.topic(topics.USAGE),
        key=case.key or who.licence_id.encode(),
        value=case.value,
        headers=headers,
        on_delivery=delivered,
    )


def _verdicts(run: Pipeline, positions: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Per hostile record: its dead letter's reason, or RATED when it is in the ledger."""
    topic = run.topic(topics.USAGE)
    with run.connect() as conn:
        dead = {
            (p, o): reason
            for p, o, reason in conn.execute(
                "SELECT source_partition, source_offset, reason FROM dead_letters "
                "WHERE source_topic = %s",
                (topic,),
            )
        }
        rated = {
            (p, o)
            for p, o in conn.execute(
                "SELECT source_partition, source_offset FROM usage_events WHERE source_topic = %s "
                "UNION ALL SELECT source_partition, source_offset FROM usage_repeats "
                "WHERE source_topic = %s",
                (topic, topic),
            )
        }
    return {
        name: dead.get(position) or ("RATED" if position in rated else "MISSING")
        for name, position in positions.items()
    }


def _quarantine_rows(
    run: Pipeline, produced: list[tuple[str, int, int]]
) -> list[tuple[str, int, int]]:
    topics = sorted({t for t, _p, _o in produced})
    with run.connect() as conn:
        rows = conn.execute(
            "SELECT source_topic, source_partition, source_offset, record_value IS NULL, error "
            "FROM quarantine WHERE source_topic = ANY(%s)",
            (topics,),
        ).fetchall()
    for _t, _p, _o, _tombstone, error in rows:
        assert error and error.isprintable()
    return [(str(t), int(p), int(o)) for t, p, o, _n, _e in rows]


def _lag_settled(run: Pipeline, timeout: float = 30.0) -> dict[str, int]:
    """:func:`_lag` once it is zero, or as it stands after ``timeout``: the meter commits
    its offsets every few seconds (faust), so right after the ledger caught up the usage
    topic can still show the last chunk as not committed."""
    deadline = time.monotonic() + timeout
    while (lag := _lag(run)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return lag


def _lag(run: Pipeline) -> dict[str, int]:
    """Records not yet consumed: the meter group on the usage topic, the ledger writer's
    stored positions on the rated, dead-letter and quarantine topics (empty = none)."""
    consumer = make_consumer(run.kafka, f"{run.kafka.topic_prefix}meter")
    behind: dict[str, int] = {}
    try:
        usage = [TopicPartition(run.topic(topics.USAGE), p) for p in range(run.partitions)]
        for tp in consumer.committed(usage, timeout=10):
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if tp.offset < high:
                behind[f"meter {tp.topic}[{tp.partition}]"] = high - tp.offset
        with run.connect() as conn:
            stored = conn.execute(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE topic LIKE %s",
                (run.kafka.topic_prefix + "%",),
            ).fetchall()
        for topic, partition, next_offset in stored:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            if next_offset < high:
                behind[f"ledger {topic}[{partition}]"] = high - next_offset
    finally:
        consumer.close()
    return behind
