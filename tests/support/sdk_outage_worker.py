"""A vendor process for the SDK outage test (run as a subprocess, killed with SIGKILL).

    python sdk_outage_worker.py SPOOL_DIR COUNT IDS_FILE hang|drain

Publishes COUNT render events through ``UsageClient.kafka`` with the spool in SPOOL_DIR,
appending each accepted event id to IDS_FILE (fsynced) as soon as the call returns, then
prints ``PUBLISHED``. ``hang`` then waits to be killed; ``drain`` flushes (events spooled
by an earlier, killed process included), prints ``LEFT <n> REPORTS <m> MAX_ATTEMPTS <k>``
and exits 0 when nothing is left. Settings come from the environment:
KAFKA_BOOTSTRAP_SERVERS, TOPIC, VENDOR_ID, LICENCE_ID, SIGNING_SEED (hex), DRAIN_TIMEOUT.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from residuals_sdk import DeliveryReport, RetryPolicy, SigningKey, UsageClient


def main() -> int:
    spool_dir, count, ids_path, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    key = SigningKey.from_private_bytes("sk-outage", bytes.fromhex(os.environ["SIGNING_SEED"]))
    reports: list[DeliveryReport] = []
    lock = threading.Lock()

    def delivered(report: DeliveryReport) -> None:
        with lock:
            reports.append(report)

    client = UsageClient.kafka(
        vendor_id=os.environ["VENDOR_ID"],
        signing_key=key,
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        topic=os.environ["TOPIC"],
        spool_dir=spool_dir,
        on_delivery=delivered,
        # Short librdkafka timeouts so the SDK's own retry loop runs during the outage.
        producer_config={"message.timeout.ms": 3000},
        retry=RetryPolicy(initial_backoff=0.2, max_backoff=2.0),
    )
    with open(ids_path, "a", encoding="utf-8") as ids:
        for index in range(count):
            event_id = client.render(
                licence_id=os.environ["LICENCE_ID"],
                avatar_id="AVA-OUTAGE",
                render_id=f"vid-{index}",
                category="product_demo",
                territory="GB",
            )
            ids.write(event_id + "\n")
            ids.flush()
            os.fsync(ids.fileno())
    print("PUBLISHED", flush=True)
    if mode == "hang":
        while True:
            time.sleep(3600)
    left = client.flush(timeout=float(os.environ.get("DRAIN_TIMEOUT", "180")))
    client.close(timeout=5)
    with lock:
        retried = max((r.attempts for r in reports), default=0)
        print(f"LEFT {left} REPORTS {len(reports)} MAX_ATTEMPTS {retried}", flush=True)
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
