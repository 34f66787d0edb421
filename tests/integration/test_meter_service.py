"""The meter as a real service over Kafka: signed records in; rated usage, alerts and dead
letters out; licences followed from the compacted topic while it runs; health and metrics."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

from residuals.domain.vocabulary import Violation
from residuals.meter.messages import event_alert_id
from residuals.platform.topics import ALERTS, USAGE_DLQ, USAGE_RATED
from residuals.stack.settings import StackSettings
from residuals.v1 import alerts_pb2, common_pb2, usage_pb2
from tests.support.builders import ev, licence_spec
from tests.support.metering import pipeline, read_topic, wait_serving


def test_meter_rates_rejects_alerts_and_follows_new_licences(
    stack: StackSettings, tmp_path: Path
) -> None:
    with pipeline(stack, tmp_path) as run:
        vendor = run.vendor("VEN-1")
        run.publish_keys([vendor])
        run.publish_licences([licence_spec(licence_id="LIC-1", vendor_id=vendor)])

        def raw(kind: str = "RENDER", **fields: Any) -> dict[str, Any]:
            return ev(kind, vendor_id=vendor, occurred_at="2026-10-05T10:00:00Z", **fields)

        good, forbidden = raw(), raw(category="political")
        tampered = run.usage_record(raw())
        tampered.value = tampered.value.replace(b"product_demo", b"product_dem0")
        run.produce([run.usage_record(good), tampered, run.usage_record(forbidden)])

        meter = run.meter().start()
        try:
            wait_serving(meter)
            rated = [
                usage_pb2.RatedUsage.FromString(m.value()) for m in read_topic(run, USAGE_RATED, 2)
            ]
            assert [r.outcome for r in rated] == [
                usage_pb2.RatedUsage.OUTCOME_ACCEPTED,
                usage_pb2.RatedUsage.OUTCOME_HELD,
            ]
            (dead,) = [
                usage_pb2.DeadLetter.FromString(m.value()) for m in read_topic(run, USAGE_DLQ, 1)
            ]
            assert dead.reason == common_pb2.REJECT_REASON_BAD_SIGNATURE
            assert dead.original == tampered.value
            (alert,) = [alerts_pb2.Alert.FromString(m.value()) for m in read_topic(run, ALERTS, 1)]
            assert alert.alert_id == event_alert_id(
                vendor, forbidden["event_id"], Violation.FORBIDDEN_CATEGORY
            )
            assert alert.severity == common_pb2.SEVERITY_CRITICAL and alert.suspended_licence

            # A licence created while the meter runs is used by the next event.
            run.publish_licences(
                [licence_spec(licence_id="LIC-NEW", vendor_id=vendor, avatar_id="AVA-NEW")]
            )
            time.sleep(1.0)
            late = raw(licence_id="LIC-NEW", avatar_id="AVA-NEW")
            run.produce([run.usage_record(late)])
            rated = [
                usage_pb2.RatedUsage.FromString(m.value()) for m in read_topic(run, USAGE_RATED, 3)
            ]
            assert rated[-1].event.licence_id == "LIC-NEW"
            assert rated[-1].outcome == usage_pb2.RatedUsage.OUTCOME_ACCEPTED

            url = f"http://127.0.0.1:{meter.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            assert 'residuals_meter_events_total{kind="RENDER",outcome="accepted"} 2.0' in text
            assert 'residuals_meter_dead_letters_total{reason="BAD_SIGNATURE"} 1.0' in text
            assert 'kind="FORBIDDEN_CATEGORY",severity="CRITICAL"' in text
        finally:
            meter.stop()
        assert meter.process is not None and meter.process.returncode == 0, meter.log_tail()


def test_a_killed_meter_with_a_static_id_gets_its_partitions_back_at_once(
    stack: StackSettings, tmp_path: Path
) -> None:
    """After kill -9 (no LeaveGroup), a dynamic member would wait for the dead member's
    session to expire (faust's 60 s: measured 60.1 s here) before the group moves on; a
    static member coming back under the same METER_INSTANCE_ID takes its partitions over
    at once (measured 2.5 s). Restarted as Kubernetes would: a meter that exits (its input
    guard exits when faust drops a record while it recovers, so the next start reads it
    again) is started again at once, under the same id."""
    with pipeline(stack, tmp_path) as run:
        vendor = run.vendor("VEN-1")
        run.publish_keys([vendor])
        run.publish_licences([licence_spec(licence_id="LIC-1", vendor_id=vendor)])

        def record() -> Any:
            raw = ev("RENDER", vendor_id=vendor, occurred_at="2026-10-05T10:00:00Z")
            return run.usage_record(raw)

        meter = run.meter(METER_INSTANCE_ID=f"meter-{run.run_id}")
        run.produce([record()])
        meter.start()
        try:
            wait_serving(meter)
            assert len(read_topic(run, USAGE_RATED, 1)) == 1
            meter.kill9()
            restarted = time.monotonic()
            meter.start()
            run.produce([record()])
            rated: list[Any] = []
            while len(rated) < 2 and time.monotonic() - restarted < 120:
                if not meter.alive():  # what a supervisor does: start it again
                    assert meter.process is not None
                    meter.exit_codes.append(meter.process.returncode)
                    meter.start()
                rated = read_topic(run, USAGE_RATED, 2, timeout=2)
            resumed = time.monotonic() - restarted
        finally:
            meter.stop()
        assert len(rated) >= 2, meter.log_tail()
        print(
            f"\nrestarted meter rated again {resumed:.1f} s after kill -9 (session: 60 s;"
            f" exits on the way: {meter.exit_codes})"
        )
        assert resumed < 40.0, f"waited {resumed:.0f} s: the dead member's session expired first"
        assert set(meter.exit_codes) <= {71}  # only the input guard's deliberate exits
