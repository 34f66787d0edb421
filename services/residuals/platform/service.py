"""What every service main shares: settings, telemetry, worker threads, signals, the CLI.

Each service's ``__main__`` stays a few lines: it names the service, its settings class and
how to start its app; this module does the rest the same way for all of them, so a service
is named identically in its folder, ``OTEL_SERVICE_NAME``, compose and Kubernetes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from residuals.platform.config import describe, load
from residuals.platform.grpc_server import GrpcServer
from residuals.platform.telemetry import init_telemetry

log = logging.getLogger(__name__)

S = TypeVar("S")
A = TypeVar("A", bound="Stoppable")


class Stoppable(Protocol):
    def stop(self) -> None: ...


def load_service_settings(
    cls: type[S], service_name: str, environ: Mapping[str, str] | None = None
) -> S:
    """The service's settings; ``OTEL_SERVICE_NAME`` defaults to the service's own name."""
    source = os.environ if environ is None else environ
    settings = load(cls, source)
    telemetry = getattr(settings, "telemetry", None)
    if telemetry is not None and "OTEL_SERVICE_NAME" not in source:
        telemetry = dataclasses.replace(telemetry, service_name=service_name)
        settings = dataclasses.replace(settings, telemetry=telemetry)  # type: ignore[type-var]
    return settings


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (Kubernetes stops pods with SIGTERM)."""
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait()


def run_service(
    service_name: str,
    settings_cls: type[S],
    start: Callable[[S], A],
    *,
    describe_running: Callable[[A], Mapping[str, Any]] | None = None,
    run: Callable[[A], object] | None = None,
) -> int:
    """Load settings, start telemetry and the app, run it, stop in order.

    ``run`` is what holds the main thread while the service works: by default waiting for
    SIGTERM/SIGINT (the gRPC services, whose work is in server and worker threads); the
    meter hands it to faust's worker and the ledger writer to its sink loop, which both
    end on a signal themselves. However it ends, the app is stopped and spans flushed.
    """
    settings = load_service_settings(settings_cls, service_name)
    telemetry = init_telemetry(settings.telemetry)  # type: ignore[attr-defined]
    try:
        app = start(settings)
        try:
            extra = dict(describe_running(app)) if describe_running else {}
            log.info("%s service running", service_name, extra=extra)
            if run is None:
                wait_for_signal()
            else:
                run(app)
            log.info("%s service stopping", service_name)
        finally:
            app.stop()
    finally:
        telemetry.shutdown()
    return 0


class Workers:
    """Named daemon threads sharing one stop event.

    A worker that dies with an exception is logged and reported to ``on_failure`` (the
    services flip their gRPC health to NOT_SERVING), so a broken consumer is visible to
    probes instead of silently stalling.
    """

    def __init__(self, on_failure: Callable[[str], None] | None = None) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self._on_failure = on_failure

    def spawn(self, target: Callable[[threading.Event], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target(self.stop_event)
            except Exception:
                log.exception("%s stopped with an error", name)
                if self._on_failure is not None:
                    self._on_failure(name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=timeout)


class GrpcApp:
    """Base of the services that serve gRPC: the bound port, and health that follows workers."""

    server: GrpcServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None, "not started"
        return self.server.port

    def _worker_failed(self, name: str) -> None:
        """A background worker died: stop advertising SERVING so probes see it."""
        if self.server is not None:
            self.server.set_serving(False)


Action = tuple[str, Callable[[], int]]


def add_service_command(
    subparsers: Any,
    name: str,
    help: str,
    settings_cls: type[Any],
    actions: Mapping[str, Action],
) -> argparse.ArgumentParser:
    """``residuals <service> <action>``, with the service's settings listed in ``--help``."""
    rows = "\n".join(
        f"  {var} (default {default}): {text}" for var, default, text in describe(settings_cls)
    )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{rows}",
    )
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
    for action, (action_help, main) in actions.items():
        sub.add_parser(action, help=action_help).set_defaults(
            handler=lambda _args, main=main: main()
        )
    return parser
