"""A PostgreSQL server from the distribution's binaries, run from the stack directory.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as a system
user (``postgres`` if the package created it, else ``residuals``), which must own the
data directory and be able to reach it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from residuals.stack.processes import (
    StackError,
    matches,
    port_open,
    tail,
    terminate,
    wait_gone,
    wait_until,
)
from residuals.stack.settings import DATABASE, DATABASE_USER, HOST, StackSettings

Log = Callable[[str], None]
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_isready")
INSTALL_HINT = "apt-get update && apt-get install -y postgresql"
# Unix socket paths are limited to 107 bytes; leave room for "/.s.PGSQL.NNNNN".
MAX_SOCKET_DIR = 90


@dataclass(frozen=True)
class PostgresPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred)) <= MAX_SOCKET_DIR:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"residuals-pg-{digest}"


def paths(settings: StackSettings) -> PostgresPaths:
    return PostgresPaths(settings.stack_dir / "postgres")


def find_bindir() -> Path:
    """Directory holding initdb, pg_ctl, postgres and pg_isready.

    Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin, off PATH; the
    newest major there wins, then pg_config's answer, then PATH.
    """
    candidates: list[Path] = []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(d) for d in versions),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in TOOLS):
            return directory
    raise StackError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


# --- running as a non-root user ----------------------------------------------------------


@dataclass(frozen=True)
class ServiceUser:
    """Who the server runs as; ``None`` uid means "whoever we are"."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""


def service_user(log: Log) -> ServiceUser:
    if os.geteuid() != 0:
        return ServiceUser()
    for name in ("postgres", "residuals"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(entry.pw_uid, entry.pw_gid, name)
    log("postgres: running as root; creating system user 'residuals' to run the server")
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "residuals",
        ],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam("residuals")
    return ServiceUser(entry.pw_uid, entry.pw_gid, "residuals")


def _can_traverse(directory: Path, user: ServiceUser) -> bool:
    info = directory.stat()
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == user.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _grant_access(p: PostgresPaths, user: ServiceUser, log: Log) -> None:
    """Let the service user own the postgres dir and reach it through its parents.

    A checkout in a ``mktemp -d`` directory (mode 0700, root) is unreachable for another
    user; adding only the search (x) bit lets it pass through without listing anything.
    """
    if user.uid is None or user.gid is None:
        return
    for directory in [p.root, p.data, p.socket_dir]:
        directory.mkdir(parents=True, exist_ok=True)
    for path in [p.root, p.socket_dir, *p.root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.stat().st_uid != user.uid:
            os.chown(path, user.uid, user.gid)
    for parent in [*p.root.parents, *p.socket_dir.parents]:
        if not _can_traverse(parent, user):
            log(f"postgres: adding o+x to {parent} so user {user.name} can reach its data")
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH)


def _run(
    argv: Sequence[str], user: ServiceUser, cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        user=user.uid,
        group=user.gid,
        extra_groups=[] if user.uid is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise StackError(
            f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


# --- lifecycle ---------------------------------------------------------------------------


def _markers(p: PostgresPaths) -> list[str]:
    return ["postgres", str(p.data)]


def running_pid(settings: StackSettings) -> int | None:
    """The postmaster of this stack's data dir, from its own postmaster.pid."""
    p = paths(settings)
    try:
        first = (p.data / "postmaster.pid").read_text().splitlines()[0]
    except (FileNotFoundError, IndexError, PermissionError):
        return None
    pid = int(first) if first.strip().isdigit() else None
    if pid is not None and matches(pid, _markers(p)):
        return pid
    return None


def admin_dsn(settings: StackSettings, database: str = "postgres") -> str:
    return f"postgresql://{DATABASE_USER}@{HOST}:{settings.postgres_port}/{database}"


def start(settings: StackSettings, log: Log) -> bool:
    """initdb if needed, start the server unless running, create the database.

    Returns True if this call started the server.
    """
    p = paths(settings)
    bindir = find_bindir()
    pid = running_pid(settings)
    started = False
    if pid is not None:
        log(f"postgres: already running (pid {pid}) on {HOST}:{settings.postgres_port}")
    else:
        if port_open(HOST, settings.postgres_port):
            raise StackError(
                f"port {settings.postgres_port} is in use by a process this stack did not "
                "start (another checkout's stack?); stop it or set RESIDUALS_POSTGRES_PORT"
            )
        user = service_user(log)
        p.root.mkdir(parents=True, exist_ok=True)
        _grant_access(p, user, log)
        if not (p.data / "PG_VERSION").is_file():
            log(f"postgres: initdb {p.data}")
            _run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(p.data),
                    "-U",
                    DATABASE_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                user,
                p.root,
            )
        log(f"postgres: starting on {HOST}:{settings.postgres_port}")
        options = f"-p {settings.postgres_port} -k {p.socket_dir} -c listen_addresses={HOST}"
        result = _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(p.data),
                "-o",
                options,
                "-l",
                str(p.log),
                "-w",
                "-t",
                "60",
                "start",
            ],
            user,
            p.root,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not start. Log tail:\n{tail(p.log)}")
        started = True
    _wait_ready(settings, bindir, p)
    _create_database(settings)
    if started:
        log(f"postgres: ready (pid {running_pid(settings)})")
    return started


def _wait_ready(settings: StackSettings, bindir: Path, p: PostgresPaths) -> None:
    def ready() -> bool:
        result = subprocess.run(
            [
                str(bindir / "pg_isready"),
                "-q",
                "-h",
                HOST,
                "-p",
                str(settings.postgres_port),
                "-t",
                "2",
            ],
            check=False,
        )
        return result.returncode == 0

    if not wait_until(ready, 60.0, interval=0.2):
        raise StackError(f"PostgreSQL is not accepting connections. Log tail:\n{tail(p.log)}")


def _create_database(settings: StackSettings) -> None:
    with psycopg.connect(admin_dsn(settings), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"'.encode())


@dataclass(frozen=True)
class PostgresHealth:
    pid: int | None
    reachable: bool
    migration_version: int | None = None
    error: str = ""

    @property
    def healthy(self) -> bool:
        return self.reachable and self.migration_version is not None


def health(settings: StackSettings) -> PostgresHealth:
    from residuals.platform import migrations

    pid = running_pid(settings)
    if not port_open(HOST, settings.postgres_port):
        return PostgresHealth(pid, False, error="port closed")
    try:
        version = migrations.current_version(settings.dsn)
    except psycopg.Error as exc:
        return PostgresHealth(pid, False, error=str(exc).strip().splitlines()[0])
    return PostgresHealth(pid, True, version)


def stop(settings: StackSettings, log: Log) -> bool:
    """`pg_ctl stop -m fast` for this stack's data dir; True if a server was running."""
    p = paths(settings)
    pid = running_pid(settings)
    if pid is None:
        log("postgres: not running")
        return False
    log(f"postgres: stopping pid {pid}")
    user = service_user(log)
    try:
        bindir: Path | None = find_bindir()
    except StackError:
        bindir = None
    if bindir is not None:
        _run(
            [str(bindir / "pg_ctl"), "-D", str(p.data), "-m", "fast", "-w", "-t", "60", "stop"],
            user,
            p.root,
            check=False,
        )
    if matches(pid, _markers(p)):
        # pg_ctl could not stop it (binaries gone, timeout): signal it ourselves.
        terminate(pid, timeout=30)
    wait_gone(pid)
    log("postgres: stopped")
    return True
