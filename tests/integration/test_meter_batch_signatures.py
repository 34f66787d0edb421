"""The meter over Kafka with batch-signed records, as the SDK's publish_many makes them.

One signature covers many events spread over partitions (they are keyed by licence): each
record is verified on its own from its Merkle inclusion proof, and a record whose proof
or payload was altered is a BAD_SIGNATURE dead letter while its batch mates are rated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from residuals.platform.topics import USAGE_DLQ, USAGE_RATED
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, usage_pb2
from tests.support.builders import ev, licence_spec
from tests.support.metering import pipeline, read_topic, wait_serving


def test_meter_rates_batch_signed_records_across_partitions(
    stack: StackSettings, tmp_path: Path
) -> None:
    with pipeline(stack, tmp_path) as run:
        vendor = run.vendor("VEN-1")
        run.publish_keys([vendor])
        licences = [f"LIC-{n}" for n in range(4)]
        run.publish_licences([licence_spec(licence_id=lic, vendor_id=vendor) for lic in licences])

        def raw(i: int) -> dict[str, Any]:
            return ev(
                "RENDER",
                vendor_id=vendor,
                licence_id=licences[i % 4],
                occurred_at="2026-10-05T10:00:00Z",
            )

        raws = [raw(i) for i in range(40)]
        records = run.usage_records(raws, batch=16)  # 40 = 14 + 13 + 13 under 3 signatures
        envelopes = [usage_pb2.SignedUsageEvent.FromString(r.value) for r in records]
        assert {e.batch.leaf_count for e in envelopes} == {14, 13}
        assert len({e.signature for e in envelopes}) == 3

        # Event 20 claims another leaf position: its proof no longer leads to the signed root.
        moved = envelopes[20]
        moved.batch.leaf_index = (moved.batch.leaf_index + 1) % moved.batch.leaf_count
        records[20].value = moved.SerializeToString()
        run.produce(records)

        meter = run.meter().start()
        try:
            wait_serving(meter)
            rated = [
                usage_pb2.RatedUsage.FromString(m.value()) for m in read_topic(run, USAGE_RATED, 39)
            ]
            (dead,) = [
                usage_pb2.DeadLetter.FromString(m.value()) for m in read_topic(run, USAGE_DLQ, 1)
            ]
        finally:
            meter.stop()
        assert meter.process is not None and meter.process.returncode == 0, meter.log_tail()

        assert len(rated) == 39
        assert {r.outcome for r in rated} == {usage_pb2.RatedUsage.OUTCOME_ACCEPTED}
        assert {r.event.event_id for r in rated} == {
            r["event_id"] for i, r in enumerate(raws) if i != 20
        }
        assert len({r.source_partition for r in rated}) > 1  # one batch, several partitions
        assert all(r.signed.HasField("batch") for r in rated)  # kept for audit
        assert dead.reason == common_pb2.REJECT_REASON_BAD_SIGNATURE
        assert "batch signature does not match the root proven for leaf" in dead.detail
        assert dead.original == records[20].value
