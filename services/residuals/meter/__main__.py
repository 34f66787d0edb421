"""``python -m residuals.meter``: load settings, wire, run until SIGTERM."""

from __future__ import annotations

import logging
import sys

from residuals.meter.app import MeterService
from residuals.meter.settings import MeterSettings
from residuals.platform.faust_app import run_worker
from residuals.platform.grpc_server import make_grpc_server
from residuals.platform.service import load_service_settings
from residuals.platform.telemetry import init_telemetry

log = logging.getLogger("residuals.meter")


def main() -> int:
    settings = load_service_settings(MeterSettings, "meter")
    telemetry = init_telemetry(settings.telemetry)
    health = make_grpc_server(settings.grpc).start()
    health.set_serving(False)
    service = MeterService(settings)
    service.on_ready = lambda: health.set_serving(True)
    try:
        # Every licence and key is loaded before the first record is rated.
        service.start_registries()
        service.prepare_offsets()
        log.info("meter starting", extra={"licences": len(service.licences)})
        run_worker(service.app, loglevel=settings.telemetry.log_level)
    finally:
        health.stop(1.0)
        service.stop()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
