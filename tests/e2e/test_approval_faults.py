"""Per-use approval under faults, on the real stack (docs/ROYALTY-RULES.md §5a): an
approval of N renders, many more renders naming it, the meter killed with SIGKILL in the
middle of its batches and started again. After catch-up the ledger holds every event once,
exactly N render units billed under the approval and every other render held as
UNAPPROVED_USE. An approval granted while the meter runs counts without a restart."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from residuals.codecs import approvals as approval_codec
from residuals.domain.approvals import Approval
from residuals.platform.topics import APPROVALS
from residuals.stack.settings import StackSettings
from tests.support.builders import licence_spec
from tests.support.metering import Pipeline, kill_while_publishing, pipeline
from tests.support.month_run import run_period

MAX_RENDERS = 400
APPROVED = 1_500  # renders naming the approval
UNNAMED = 300  # renders naming none
CHUNKS = 6
KILL_AFTER = (1, 3)
CATCH_UP_TIMEOUT = 300.0


def publish_approval(run: Pipeline, approval: Approval) -> None:
    producer = run._producer()
    value = approval_codec.to_proto(approval).SerializeToString()
    producer.produce(run.topic(APPROVALS), key=approval.approval_id.encode(), value=value)
    assert producer.flush(60) == 0


def ledger_rows(run: Pipeline, vendor: str) -> list[tuple[str, str | None, str | None, int]]:
    """(event_id, outcome, violation, copies) of the run's usage events."""
    with run.connect() as conn:
        rows = conn.execute(
            "SELECT event_id, min(outcome), min(violation), count(*) FROM usage_events"
            " WHERE vendor_id = %s GROUP BY event_id",
            (vendor,),
        ).fetchall()
    return [(str(e), o, v, int(n)) for e, o, v, n in rows]


def test_an_approval_bills_exactly_its_renders_through_meter_kills(
    stack: StackSettings, tmp_path: Path
) -> None:
    with pipeline(stack, tmp_path) as run:
        period = run_period(run.run_id)
        run.delete_period(str(period))
        vendor = run.vendor("VEN-APR")
        licence_id = f"LIC-APR-{run.run_id}"
        spec = licence_spec(
            licence_id=licence_id, vendor_id=vendor, scope={"approval_required": ["product_demo"]}
        )
        run.publish_licences([spec])
        run.publish_keys([vendor])
        approval = Approval(
            f"APR-{run.run_id}", licence_id, "product_demo", period.start, None, MAX_RENDERS
        )
        publish_approval(run, approval)

        def render(event_id: str, minute: int, approval_id: str | None) -> dict[str, Any]:
            raw: dict[str, Any] = {
                "event_id": event_id,
                "vendor_id": vendor,
                "kind": "RENDER",
                "licence_id": licence_id,
                "avatar_id": "AVA-1",
                "render_id": event_id,
                "category": "product_demo",
                "territory": "US",
                "occurred_at": f"{period.start + timedelta(minutes=minute):%Y-%m-%dT%H:%M:%SZ}",
            }
            if approval_id is not None:
                raw["approval_id"] = approval_id
            return raw

        raws = [
            render(f"a-{i}", i, approval.approval_id) if i % 6 else render(f"n-{i}", i, None)
            for i in range(APPROVED + UNNAMED)
        ]
        records = run.sdk_records(raws)
        size = -(-len(records) // CHUNKS)
        meter, ledger = run.meter(), run.ledger()
        meter.start()
        ledger.start()
        try:
            for i in range(CHUNKS):
                run.produce(records[i * size : (i + 1) * size])
                if i in KILL_AFTER:
                    kill_while_publishing(run, meter)
                    meter.start()
            run.wait_ledgered(len(records), CATCH_UP_TIMEOUT, [meter, ledger], supervise=True)
            time.sleep(2.0)  # anything late and duplicated would show up now
            rows = ledger_rows(run, vendor)

            # Granted while the meter runs: a render before the grant is held, the ones
            # after it are billed, without a restart.
            starts = meter.starts
            late = Approval(f"APR-LATE-{run.run_id}", licence_id, "product_demo", period.start)
            minute = APPROVED + UNNAMED
            run.produce(run.sdk_records([render("late-0", minute, late.approval_id)]))
            run.wait_ledgered(len(records) + 1, 60.0, [meter, ledger])
            publish_approval(run, late)
            time.sleep(2.0)  # the replica follows the topic within its poll interval
            run.produce(run.sdk_records([render("late-1", minute + 1, late.approval_id)]))
            run.wait_ledgered(len(records) + 2, 60.0, [meter, ledger])
            assert meter.starts == starts
            late_rows = {e: (o, v) for e, o, v, _n in ledger_rows(run, vendor) if "late" in e}
        finally:
            meter.stop()
            ledger.stop()

        assert meter.starts >= 1 + len(KILL_AFTER)
        assert len(rows) == len(raws) and all(n == 1 for *_rest, n in rows)
        outcomes = {e: (o, v) for e, o, v, _n in rows}
        named = [outcomes[r["event_id"]] for r in raws if "approval_id" in r]
        unnamed = [outcomes[r["event_id"]] for r in raws if "approval_id" not in r]
        assert named.count(("ACCEPTED", None)) == MAX_RENDERS
        assert named.count(("HELD", "UNAPPROVED_USE")) == len(named) - MAX_RENDERS
        assert set(unnamed) == {("HELD", "UNAPPROVED_USE")}
        assert late_rows == {"late-0": ("HELD", "UNAPPROVED_USE"), "late-1": ("ACCEPTED", None)}
