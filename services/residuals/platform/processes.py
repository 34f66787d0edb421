"""One launcher for Python subprocesses: the demo's services, the tests' services and workers,
and the benchmarks' services all start, watch and stop through :class:`ServiceProcess`.

A process is ``python -m <module> [args]`` with the caller's environment on top of
``os.environ`` (less any ``unset`` names) and a few defaults (``GRPC_HOST``/``GRPC_PORT``/
``METRICS_PORT`` on free ports unless given, ``LOG_FORMAT=json``, ``PYTHONUNBUFFERED=1``);
its stdout and stderr go to a log file under ``log_dir``. It runs in its own session, so a
Ctrl-C in the terminal reaches only the parent, and stopping signals its whole process
group: SIGTERM, then SIGKILL after a grace period. ``kill()`` is the ``kill -9`` of fault
tests; ``start()`` again (or ``restart()``, which records the exit status) starts a new
run, each with its own log file when ``log_per_start`` is set. With ``die_with_parent`` the
kernel sends the process SIGTERM when its parent dies, so even ``kill -9`` of the demo
leaves no service behind. Readiness is the process's gRPC health status (every service
serves one; the meter and the ledger writer report SERVING only once they can work), a
listening gRPC port, or a line in its log.

(Detached servers that outlive the command starting them, the local Kafka and PostgreSQL,
are :mod:`residuals.stack.processes`' business.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from residuals.platform.ports import free_port


class ServiceFailed(RuntimeError):
    """A process exited or never became ready; the message carries its log's tail."""


#: Run in the child before the module when ``die_with_parent``: ask the kernel for SIGTERM
#: when the parent dies, give up if it already has, then become ``python -m <module>`` (the
#: death signal survives exec). Done in the child itself rather than with ``preexec_fn``,
#: which is unsafe in a process with threads. The signal follows the parent *thread* that
#: started the child, so start such processes from a long-lived thread.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", *sys.argv[2:]])
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of process ``pid``, KiB (Linux ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = dict(
        line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))
    )
    return int(values["VmRSS"].split()[0]), int(values["VmHWM"].split()[0])


@dataclass
class ServiceProcess:
    """One subprocess: command, environment, ports, log file and the running process."""

    name: str
    #: ``python -m <module> [*args]``.
    module: str
    env: Mapping[str, str]
    log_dir: Path
    args: Sequence[str] = ()
    #: 0: a free port, chosen again at every start.
    grpc_port: int = 0
    metrics_port: int = 0
    #: ``<name>-<start>.log`` for every start (earlier runs' logs stay), else ``<name>.log``.
    log_per_start: bool = False
    #: Append to an existing ``<name>.log`` instead of starting it afresh.
    append_log: bool = False
    die_with_parent: bool = False
    cwd: Path | None = None
    #: Variables of ``os.environ`` the process must not inherit (a service's own defaults).
    unset: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    #: How many times the process was started.
    starts: int = field(default=0, init=False)
    #: Exit statuses of the runs that ended on their own and were started again.
    exit_codes: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._fixed_ports = (self.grpc_port, self.metrics_port)

    @property
    def log_path(self) -> Path:
        start = max(self.starts, 1)
        return self.log_dir / (
            f"{self.name}-{start}.log" if self.log_per_start else f"{self.name}.log"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> ServiceProcess:
        self.starts += 1
        fixed_grpc, fixed_metrics = self._fixed_ports
        self.grpc_port = fixed_grpc or free_port()
        self.metrics_port = fixed_metrics or free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k not in self.unset},
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.grpc_port),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        if self.die_with_parent:
            argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), self.module]
        else:
            argv = [sys.executable, "-m", self.module]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        append = self.append_log and not self.log_per_start
        with self.log_path.open("ab" if append else "wb") as log:
            self.process = subprocess.Popen(
                [*argv, *self.args],
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def restart(self) -> ServiceProcess:
        """Start again after the process ended on its own (what a supervisor does),
        recording its exit status in :attr:`exit_codes`."""
        if self.process is not None and self.process.poll() is not None:
            self.exit_codes.append(self.process.returncode)
        return self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- logs and metrics --------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def logs(self) -> list[dict[str, Any]]:
        """The current run's JSON log lines (other output skipped)."""
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def log_summary(self, lines: int = 40) -> str:
        """Every start's warnings, errors and partition assignments (the last ``lines``),
        then the current log's tail: enough to see which run of the service went wrong."""
        picked = []
        paths = (
            [self.log_dir / f"{self.name}-{n}.log" for n in range(1, self.starts + 1)]
            if self.log_per_start
            else [self.log_path]
        )
        for start, path in enumerate(paths, 1):
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if any(k in line for k in ('"WARNING"', '"ERROR"', "assigned", "Traceback")):
                    picked.append(f"[{start}] {line[:600]}")
        return "\n".join(picked[-lines:]) + "\n... tail:\n" + self.log_tail(1500)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> tuple[int, int]:
        return rss_kib(self.pid)

    # --- readiness ---------------------------------------------------------------------------

    def check_running(self) -> None:
        """Raise :class:`ServiceFailed` if the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise ServiceFailed(
                f"{self.name} exited with status {self.process.returncode}; the end of"
                f" {self.log_path}:\n{self.log_tail()}"
            )

    def _not_ready(self, what: str, timeout: float) -> ServiceFailed:
        return ServiceFailed(
            f"{self.name} {what} after {timeout:.0f} s; the end of"
            f" {self.log_path}:\n{self.log_tail()}"
        )

    def wait_healthy(
        self, timeout: float = 60.0, cancelled: Callable[[], bool] = lambda: False
    ) -> None:
        """Wait until the gRPC health service answers SERVING (or ``cancelled()``)."""
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
                    raise self._not_ready("not healthy", timeout)
                time.sleep(0.2)

    def wait_http_ready(self, url: str, timeout: float = 60.0) -> None:
        """Wait until ``url`` (an HTTP service's readiness probe, e.g. ``/readyz``) answers
        2xx, as ``residuals probe http`` checks it."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if 200 <= int(response.status) < 300:
                        return
            except (OSError, ValueError):  # refused, not ready (HTTPError), timed out
                pass
            if time.monotonic() > deadline:
                raise self._not_ready(f"not ready at {url}", timeout)
            time.sleep(0.2)

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Wait until the gRPC port accepts a connection."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                self.check_running()
                raise self._not_ready("not listening", timeout) from None

    def wait_for_log(self, text: str, timeout: float = 60.0) -> str:
        """Wait until a line of the current log contains ``text``; return that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if text in line:
                    return line
            self.check_running()
            if time.monotonic() > deadline:
                raise self._not_ready(f"logged no {text!r}", timeout)
            time.sleep(0.1)

    # --- stopping ----------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; its exit status."""
        assert self.process is not None, f"{self.name} was never started"
        return self.process.wait(timeout=timeout)

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        # Its own session: the group is the process and whatever it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.alive():
            self._signal(signal.SIGTERM)

    def kill(self, timeout: float = 30.0) -> int | None:
        """SIGKILL (``kill -9``: no clean shutdown) and wait for the exit."""
        if self.process is None:
            return None
        if self.alive():
            self._signal(signal.SIGKILL)
        return self.process.wait(timeout=timeout)

    kill9 = kill

    def wait_stopped(self, timeout: float) -> int | None:
        """Wait for the exit; SIGKILL after ``timeout``. Returns the exit status."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.process.wait(timeout=10)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after ``grace`` seconds; the exit status (None: never started)."""
        self.terminate()
        return self.wait_stopped(grace)


class ServiceGroup:
    """Several processes by name, stopped together."""

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
        """SIGTERM every process at once, wait up to ``grace`` seconds, SIGKILL the rest.

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
