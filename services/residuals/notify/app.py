"""Wiring of the notify service: one settings object in, running components out.

:class:`NotifyApp` owns the database pool, the intake sink (Kafka topics -> events and
deliveries, its own thread), the statement watcher, the dispatcher (its own asyncio
thread) and the gRPC server. Tests build it in-process; ``python -m residuals.notify``
builds it from the environment (:func:`main`).
"""

from __future__ import annotations

from residuals.notify.settings import SERVICE_NAME, NotifySettings
from residuals.platform.service import GrpcApp, run_service


class NotifyApp(GrpcApp):
    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    def start(self) -> NotifyApp:
        raise NotImplementedError("wired in the notify branch")

    def stop(self) -> None:
        pass


def main() -> int:
    """``python -m residuals.notify``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        NotifySettings,
        lambda settings: NotifyApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port},
    )
