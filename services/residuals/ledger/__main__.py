"""``python -m residuals.ledger``: load settings, wire, run until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from residuals.ledger.app import LedgerWriter
from residuals.ledger.settings import LedgerSettings
from residuals.platform.grpc_server import make_grpc_server
from residuals.platform.service import load_service_settings
from residuals.platform.telemetry import init_telemetry

log = logging.getLogger("residuals.ledger")


def main() -> int:
    settings = load_service_settings(LedgerSettings, "ledger")
    telemetry = init_telemetry(settings.telemetry)
    writer = LedgerWriter(settings)
    health = make_grpc_server(settings.grpc).start()
    health.set_serving(False)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signum})
        writer.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink = writer.build()

    def serving(_stalled: bool = False) -> None:
        """SERVING once partitions were assigned, and while the sink is not stalled."""
        health.set_serving(sink.assigned.is_set() and not sink.stalled)

    def ready() -> None:
        if sink.assigned.wait(timeout=None) and not writer.stop_event.is_set():
            serving()

    writer.on_stalled = serving
    threading.Thread(target=ready, name="ledger-ready", daemon=True).start()
    log.info("ledger writer starting", extra={"group": writer.group_id})
    try:
        writer.run()
    finally:
        health.stop(1.0)
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
