"""Detached server processes: spawning, pid files, liveness, stopping, port polling.

The stack's servers must outlive the command that starts them and must be stopped only
if they are the very process that was started (a pid file can outlive its process and the
pid be reused), hence the command-line check before any signal is sent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A stack operation failed; the message says what to do about it."""


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(pidfile: Path, pid: int) -> None:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{pid}\n")


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (reaping it if it is our own child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # Field 3, after the parenthesised command name (which may itself contain spaces).
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def matches(pid: int, markers: Sequence[str]) -> bool:
    """Whether ``pid`` is alive and its command line contains every marker argument."""
    if not is_alive(pid):
        return False
    args = cmdline(pid)
    return all(any(marker in arg for arg in args) for marker in markers)


def owned_pid(pidfile: Path, markers: Sequence[str]) -> int | None:
    """The pid in ``pidfile`` if that process is still the one we started, else None.

    A stale pid file is removed so later checks do not trust it.
    """
    pid = read_pid(pidfile)
    if pid is None:
        return None
    if matches(pid, markers):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def spawn_detached(argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> int:
    """Start ``argv`` in its own session with output appended to ``log_path``.

    Its own session means Ctrl-C in the terminal that ran `stack up` does not reach it
    and it keeps running after that command exits. posix_spawn leaves no Popen object
    behind to warn about a still-running child.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_DUP2, fd, 2),
        ]
        return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)
    finally:
        os.close(fd)


def terminate(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM the process (group, if it leads one), SIGKILL after ``timeout``.

    Returns True if it had to be killed. Graceful first: Kafka flushes and closes its
    logs on SIGTERM, which makes the next start fast.
    """

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                is_leader = os.getpgid(pid) == pid
            except ProcessLookupError:
                return
            if is_leader:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    if wait_until(lambda: not is_alive(pid), timeout):
        wait_gone(pid)
        return False
    send(signal.SIGKILL)
    if not wait_until(lambda: not is_alive(pid), 10.0):
        raise StackError(f"process {pid} survived SIGKILL")
    wait_gone(pid)
    return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid`` has been reaped, not merely exited.

    A server that was re-parented to init is a zombie for a moment after it exits; waiting
    here means `stack down` returns with no trace of it left in the process table.
    """
    return wait_until(
        lambda: not is_alive(pid) and not Path(f"/proc/{pid}").exists(), timeout, 0.05
    )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.2,
    abort: Callable[[], None] | None = None,
) -> bool:
    """Poll ``predicate`` until true or ``timeout`` passes.

    ``abort`` runs between polls and may raise to stop waiting early, e.g. when the
    server process being waited for has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if abort is not None:
            abort()
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(content[-lines:])
