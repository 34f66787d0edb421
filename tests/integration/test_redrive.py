"""Re-driving on the real broker and database, through the real command line.

A poison record is quarantined by the running ledger writer; ``residuals dlq quarantine``
lists and shows it with its vendor bytes escaped, re-drives it to the partition it came
from with its key, value and headers once, and refuses a second time unless ``--force``.
``residuals dlq redrive`` does the same for a dead letter of reason UNPROCESSABLE, back to
the usage topic, and refuses any other reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from residuals.codecs.timestamps import set_timestamp
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import topic_name
from residuals.platform.topics import USAGE, USAGE_DLQ, USAGE_RATED
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, usage_pb2
from tests.support.alerts import delete_topics
from tests.support.sink import (
    LEDGER_TOPICS,
    create_topics,
    isolated_kafka,
    ledger_settings,
    produce,
    read_at,
    running_writer,
)
from tests.support.waiting import wait_until

ESC = "\x1b"
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202egnp.exe"


@pytest.fixture
def kafka(stack: StackSettings) -> Iterator[KafkaSettings]:
    kafka = isolated_kafka(stack, "redrive", partitions=3)
    create_topics(kafka, (*LEDGER_TOPICS, USAGE))
    try:
        yield kafka
    finally:
        with psycopg.connect(stack.dsn) as conn:
            conn.execute(
                "DELETE FROM quarantine WHERE source_topic LIKE %s", (kafka.topic_prefix + "%",)
            )
            conn.execute(
                "DELETE FROM dead_letters WHERE source_topic = %s", (topic_name(kafka, USAGE),)
            )
            conn.execute(
                "DELETE FROM consumer_offsets WHERE group_id = %s",
                (f"{kafka.topic_prefix}ledger-writer",),
            )
        delete_topics(kafka)


def cli(stack_env: dict[str, str], kafka: KafkaSettings, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "residuals", "dlq", *args],
        env={**stack_env, "RESIDUALS_TOPIC_PREFIX": kafka.topic_prefix},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_a_quarantined_record_is_shown_safely_and_redriven_once(
    stack: StackSettings, stack_env: dict[str, str], kafka: KafkaSettings
) -> None:
    rated = topic_name(kafka, USAGE_RATED)
    value = f"not a rated usage {HOSTILE}".encode()
    headers = [("trace\x1b[31m", b"\x00" + HOSTILE.encode())]
    producer_record = produce(kafka, [(rated, 2, value, headers)])[0]
    with running_writer(ledger_settings(kafka, stack.dsn, "ledger-writer")):
        wait_until(lambda: bool(_quarantine_ids(stack.dsn, rated)), 30, "the quarantine row")
    (row_id,) = _quarantine_ids(stack.dsn, rated)

    code, listed, _ = cli(stack_env, kafka, "quarantine", "list", "--consumer", "ledger")
    assert code == 0 and f"{rated}" in listed and "open" in listed
    code, shown_text, _ = cli(stack_env, kafka, "quarantine", "show", str(row_id))
    assert code == 0
    for output in (listed, shown_text):
        assert ESC not in output and "\u202e" not in output and "\x07" not in output
    shown = json.loads(shown_text)
    assert (shown["topic"], shown["partition"], shown["offset"]) == (
        rated,
        2,
        producer_record.offset,
    )
    assert "not a RatedUsage" in shown["error"]
    assert shown["key"] == "k"
    assert shown["headers"] == [{"key": "trace\\x1b[31m", "value": "\\x00" + _escaped()}]
    assert shown["value"]["decoded"].startswith("not a residuals.v1.RatedUsage")
    assert bytes.fromhex(shown["value"]["hex"]) == value

    code, out, err = cli(stack_env, kafka, "quarantine", "redrive", str(row_id))
    assert code == 0, err
    landed_offset = int(out.strip().rsplit("@", 1)[1])
    again = read_at(kafka, rated, 2, landed_offset)
    assert (again.key(), again.value()) == (b"k", value)
    assert again.headers() == [("trace\x1b[31m", b"\x00" + HOSTILE.encode())]
    with psycopg.connect(stack.dsn) as conn:
        row = conn.execute(
            "SELECT redriven_at IS NOT NULL, redriven_by FROM quarantine WHERE id = %s", (row_id,)
        ).fetchone()
    assert row is not None and row[0] and "@" in str(row[1])

    code, _, err = cli(stack_env, kafka, "quarantine", "redrive", str(row_id))
    assert code == 1 and "refused: already redriven" in err
    code, out, err = cli(stack_env, kafka, "quarantine", "redrive", "--force", str(row_id))
    assert code == 0 and "re-driven to" in out, err
    code, listed, _ = cli(stack_env, kafka, "quarantine", "list", "--state", "redriven")
    assert code == 0 and str(row_id) in listed


def test_an_unprocessable_dead_letter_is_redriven_to_the_usage_topic_once(
    stack: StackSettings, stack_env: dict[str, str], kafka: KafkaSettings
) -> None:
    usage, dlq = topic_name(kafka, USAGE), topic_name(kafka, USAGE_DLQ)
    original = usage_pb2.SignedUsageEvent(payload=b"\x0a\x03e-1", key_id="k1").SerializeToString()

    def letter(reason: int, offset: int) -> bytes:
        message = usage_pb2.DeadLetter(
            reason=reason,  # type: ignore[arg-type]
            detail=f"meter defect {HOSTILE}",
            vendor_id=f"VEN{HOSTILE}",
            event_id="e-1",
            licence_id="LIC-R",
            original=original,
            source_topic=usage,
            source_partition=1,
            source_offset=offset,
        )
        set_timestamp(message.received_at, datetime.now(UTC))
        return message.SerializeToString()

    unprocessable, malformed = produce(
        kafka,
        [
            (dlq, 0, letter(common_pb2.REJECT_REASON_UNPROCESSABLE, 5), None),
            (dlq, 0, letter(common_pb2.REJECT_REASON_MALFORMED, 6), None),
        ],
    )
    with running_writer(ledger_settings(kafka, stack.dsn, "ledger-writer")):
        wait_until(lambda: len(_dead(stack.dsn, usage)) == 2, 30, "the dead letters ledgered")

    code, listed, _ = cli(stack_env, kafka, "list")
    assert code == 0 and "UNPROCESSABLE" in listed and "VEN\\x1b]0;pwned" in listed
    code, shown, _ = cli(stack_env, kafka, "show", f"0:{unprocessable.offset}")
    assert code == 0 and ESC not in listed + shown and "\u202e" not in listed + shown

    code, _, err = cli(stack_env, kafka, "redrive", f"0:{malformed.offset}")
    assert code == 1 and "reason MALFORMED is a verdict on the record" in err
    code, out, err = cli(stack_env, kafka, "redrive", f"0:{unprocessable.offset}")
    assert code == 0, err
    assert f"re-driven to {usage}[1]@" in out
    landed = read_at(kafka, usage, 1, int(out.strip().rsplit("@", 1)[1]))
    assert (landed.key(), landed.value()) == (b"LIC-R", original)
    assert _dead(stack.dsn, usage)[5] is not None and _dead(stack.dsn, usage)[6] is None
    code, _, err = cli(stack_env, kafka, "redrive", "--all")
    assert code == 1 and "refused: re-driven at" in err


def _escaped() -> str:
    return "\\x1b]0;pwned\\x07\\x1b[2J\\u202egnp.exe"


def _quarantine_ids(dsn: str, topic: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM quarantine WHERE source_topic = %s ORDER BY id", (topic,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def _dead(dsn: str, usage: str) -> dict[int, object]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT source_offset, redriven_at FROM dead_letters WHERE source_topic = %s",
            (usage,),
        ).fetchall()
    return {int(r[0]): r[1] for r in rows}
