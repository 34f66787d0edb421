"""The services the demo runs, as real subprocesses (``python -m residuals.<service>``).

Each runs in its own session, so Ctrl-C in the terminal reaches only the demo, which then
stops them all (SIGTERM, then SIGKILL after a grace period). Each also asks the
kernel to send it SIGTERM if the demo process dies, so even ``kill -9`` of the demo leaves
no service behind. Readiness is the service's gRPC health status (every service serves
one; the meter and the ledger writer report SERVING only once they can work).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from residuals.platform.ports import free_port

#: Environment variable every demo subprocess carries (the run id): how the demo, its
#: tests and a curious user find the processes of one run.
RUN_MARKER = "RESIDUALS_DEMO_RUN"


class ServiceFailed(RuntimeError):
    """A service exited or never became healthy; the message carries its log's tail."""


#: Run in the child before the service: ask the kernel for SIGTERM when the demo (its
#: parent) dies, give up if it already has, then become ``python -m <module>`` (the death
#: signal survives exec). Done in the child itself rather than with ``preexec_fn``, which
#: is unsafe in a process with threads.
_BOOTSTRAP = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", sys.argv[2]])
"""


@dataclass
class ServiceProcess:
    """One service: ports, environment, log file, and the running process."""

    name: str
    module: str
    env: Mapping[str, str]
    log_dir: Path
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> ServiceProcess:
        env = {
            **os.environ,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.grpc_port),
            "METRICS_PORT": str(self.metrics_port),
            "OTEL_SERVICE_NAME": self.name,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), self.module],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServiceFailed(
                f"{self.name} exited with status {self.process.returncode}; the end of"
                f" {self.log_path}:\n{self.log_tail()}"
            )

    def wait_healthy(self, timeout: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not cancelled():
                self.check_running()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise ServiceFailed(
                        f"{self.name} not healthy after {timeout:.0f} s; the end of"
                        f" {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.25)

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> int | None:
        """Wait for the exit; SIGKILL after ``timeout``. Returns the exit status."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return self.process.wait(timeout=10)


class ServiceGroup:
    """The demo's services, stopped in reverse start order."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceProcess] = {}
        self._lock = threading.Lock()

    def add(self, service: ServiceProcess) -> ServiceProcess:
        with self._lock:
            self.services[service.name] = service
        return service.start()

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def check_running(self) -> None:
        for service in list(self.services.values()):
            service.check_running()

    def stop_all(self, grace: float = 20.0, log: Callable[[str], None] = print) -> None:
        """SIGTERM every service at once, wait up to ``grace`` seconds, SIGKILL the rest.

        Every sink is idempotent and every service stops on SIGTERM by itself, so the order
        does not matter for correctness; stopping them together keeps Ctrl-C quick.
        """
        running = [s for s in reversed(list(self.services.values())) if s.alive()]
        for service in running:
            service.terminate()
        deadline = time.monotonic() + grace
        for service in running:
            status = service.wait_stopped(deadline - time.monotonic())
            if status not in (0, None, -signal.SIGTERM):
                log(f"  {service.name} exited with status {status} (log: {service.log_path})")
