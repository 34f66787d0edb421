"""A single-node Apache Kafka broker (KRaft, combined broker+controller) for local use.

The jars come from Maven Central through ``kafka-pom.xml`` instead of a tarball because
Maven Central is reachable everywhere this project runs (developers, CI) and Maven
caches them in ``~/.m2`` across clones.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from residuals.platform import topics
from residuals.stack.processes import (
    StackError,
    owned_pid,
    port_open,
    spawn_detached,
    tail,
    terminate,
    wait_until,
    write_pid,
)
from residuals.stack.settings import HOST, StackSettings

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("kafka-pom.xml")
START_TIMEOUT = 90.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def version_marker(self) -> Path:
        return self.libs / ".version"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def console_log(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.root / "log4j.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.root / "cluster.id"

    @property
    def pidfile(self) -> Path:
        return self.root / "kafka.pid"


def paths(settings: StackSettings) -> KafkaPaths:
    return KafkaPaths(settings.stack_dir / "kafka")


def _markers(p: KafkaPaths) -> list[str]:
    """Command-line pieces that identify *this* stack's broker and no other process."""
    return ["kafka.Kafka", str(p.server_properties)]


def running_pid(settings: StackSettings) -> int | None:
    return owned_pid(paths(settings).pidfile, _markers(paths(settings)))


# --- jars --------------------------------------------------------------------------------


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java not found: Kafka needs Java 17 (apt-get install openjdk-17-jre-headless)"
        )
    return java


def _jar_stamp() -> str:
    pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    return f"kafka {KAFKA_VERSION} pom {pom_hash}\n"


def _jars_cached(p: KafkaPaths) -> bool:
    core_jar = p.libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
    marker = p.version_marker
    return core_jar.is_file() and marker.is_file() and marker.read_text() == _jar_stamp()


def check_tools(settings: StackSettings) -> None:
    """Fail before anything starts if Java, or Maven when the jars are not cached, is missing."""
    _java()
    if not _jars_cached(paths(settings)) and shutil.which("mvn") is None:
        raise StackError(
            "mvn not found: the Kafka jars are fetched with Maven (apt-get install maven)"
        )


def ensure_jars(p: KafkaPaths, log: Log) -> bool:
    """Download the broker jars unless this version is already in ``libs``; True if fetched."""
    core_jar = p.libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if _jars_cached(p):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "mvn not found: the Kafka jars are fetched with Maven (apt-get install maven)"
        )
    partial = p.root / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"kafka: fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central")
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (partial / core_jar.name).is_file():
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise StackError(f"fetching Kafka jars with Maven failed:\n{output}")
    shutil.rmtree(p.libs, ignore_errors=True)
    partial.rename(p.libs)
    p.version_marker.write_text(_jar_stamp())
    return True


# --- configuration -----------------------------------------------------------------------


def _cluster_id(p: KafkaPaths) -> str:
    """A stable KRaft cluster id for this stack dir (Kafka's base64url UUID format)."""
    if p.cluster_id_file.is_file():
        return p.cluster_id_file.read_text().strip()
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # Kafka rejects ids that look like options
            break
    p.root.mkdir(parents=True, exist_ok=True)
    p.cluster_id_file.write_text(value + "\n")
    return value


def server_properties(settings: StackSettings, p: KafkaPaths) -> str:
    broker = f"{HOST}:{settings.kafka_port}"
    controller = f"{HOST}:{settings.kafka_controller_port}"
    return f"""\
# Written by `residuals stack up`; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{controller}
listeners=PLAINTEXT://{broker},CONTROLLER://{controller}
advertised.listeners=PLAINTEXT://{broker}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={p.data}
num.partitions={settings.topic_partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Topics come from residuals.platform.topics only: a typo must fail, not create a topic.
auto.create.topics.enable=false
# One member per group in tests: do not wait for more to join.
group.initial.rebalance.delay.ms=0
# Fewer internal partitions than the default 50: the first consumer group starts faster.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
"""


def log4j_properties(p: KafkaPaths) -> str:
    return f"""\
# Written by `residuals stack up`: broker logs go to {p.server_log}.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={p.server_log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


def _java_argv(p: KafkaPaths, main: str, *args: str) -> list[str]:
    return [
        _java(),
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{p.log4j_properties}",
        f"-Dkafka.logs.dir={p.logs}",
        "-cp",
        f"{p.libs}/*",
        main,
        *args,
    ]


def format_storage(p: KafkaPaths) -> None:
    """Format the KRaft log dir once; later starts reuse it (and its topics)."""
    if (p.data / "meta.properties").is_file():
        return
    cmd = _java_argv(
        p,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(p),
        "-c",
        str(p.server_properties),
        "--ignore-formatted",
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")


# --- lifecycle ---------------------------------------------------------------------------


def start(settings: StackSettings, log: Log) -> bool:
    """Start the broker unless it already runs; True if this call started it."""
    p = paths(settings)
    pid = running_pid(settings)
    if pid is not None:
        log(f"kafka: already running (pid {pid}) on {settings.bootstrap_servers}")
        wait_ready(settings, pid)
        return False
    for port in (settings.kafka_port, settings.kafka_controller_port):
        if port_open(HOST, port):
            raise StackError(
                f"port {port} is in use by a process this stack did not start "
                f"(another checkout's stack?); stop it or set RESIDUALS_KAFKA_PORT / "
                "RESIDUALS_KAFKA_CONTROLLER_PORT"
            )
    _java()
    p.root.mkdir(parents=True, exist_ok=True)
    p.logs.mkdir(exist_ok=True)
    fetched = ensure_jars(p, log)
    p.server_properties.write_text(server_properties(settings, p))
    p.log4j_properties.write_text(log4j_properties(p))
    format_storage(p)
    log(
        f"kafka: starting broker on {settings.bootstrap_servers}"
        + (" (jars fetched)" if fetched else "")
    )
    env = dict(os.environ)
    env.pop("KAFKA_OPTS", None)
    new_pid = spawn_detached(
        _java_argv(p, "kafka.Kafka", str(p.server_properties)), p.console_log, env
    )
    write_pid(p.pidfile, new_pid)
    try:
        wait_ready(settings, new_pid)
    except BaseException:
        terminate(new_pid, timeout=10)
        p.pidfile.unlink(missing_ok=True)
        raise
    log(f"kafka: ready (pid {new_pid})")
    return True


def _quiet_logger() -> logging.Logger:
    """librdkafka reports every refused connection while polling; keep those out of sight."""
    logger = logging.getLogger("residuals.stack.librdkafka")
    logger.propagate = False
    logger.setLevel(logging.CRITICAL)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def admin(settings: StackSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "logger": _quiet_logger(),
    }
    return AdminClient(config)


def _metadata(settings: StackSettings, timeout: float) -> Any | None:
    """Cluster metadata, or None while the broker cannot answer yet."""
    from confluent_kafka import KafkaException

    try:
        md = admin(settings).list_topics(timeout=timeout)
    except KafkaException:
        return None
    return md if md.brokers else None


def _log_tail(p: KafkaPaths) -> str:
    return f"--- {p.server_log} ---\n{tail(p.server_log)}\n--- {p.console_log} ---\n" + tail(
        p.console_log, 15
    )


def wait_ready(settings: StackSettings, pid: int) -> None:
    """Block until the broker answers metadata requests; fail fast if it dies."""
    from residuals.stack.processes import is_alive

    p = paths(settings)

    def check_alive() -> None:
        if not is_alive(pid):
            raise StackError(f"Kafka exited during start-up. Log tail:\n{_log_tail(p)}")

    if not wait_until(
        lambda: port_open(HOST, settings.kafka_port), START_TIMEOUT, abort=check_alive
    ):
        raise StackError(f"Kafka did not open port {settings.kafka_port}:\n{_log_tail(p)}")
    if not wait_until(lambda: _metadata(settings, 3.0) is not None, 60.0, abort=check_alive):
        raise StackError(f"Kafka opened its port but does not answer:\n{_log_tail(p)}")


def ensure_topics(settings: StackSettings, log: Log) -> list[str]:
    """Create missing catalogue topics and grow short ones; returns names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewPartitions, NewTopic

    client = admin(settings)
    md = client.list_topics(timeout=10)
    wanted = settings.topic_partitions
    missing = [t for t in topics.ALL if t.name not in md.topics]
    created: list[str] = []
    if missing:
        new = [
            NewTopic(t.name, num_partitions=wanted, replication_factor=1, config=t.config())
            for t in missing
        ]
        for name, future in client.create_topics(new, operation_timeout=30).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"creating topic {name} failed: {exc}") from exc
    short = [
        t.name
        for t in topics.ALL
        if t.name in md.topics and len(md.topics[t.name].partitions) < wanted
    ]
    if short:
        grow = [NewPartitions(name, wanted) for name in short]
        for name, future in client.create_partitions(grow, operation_timeout=30).items():
            future.result()
            log(f"kafka: grew {name} to {wanted} partitions")
    existing = [t for t in topics.ALL if t.name in md.topics]
    if existing:
        _align_configs(client, existing)
    if created:
        log(f"kafka: created topics {', '.join(sorted(created))}")
    return created


def _align_configs(client: Any, existing: list[topics.Topic]) -> None:
    """Set the catalogue's settings on topics made before they changed (idempotent)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            t.name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in sorted(t.config().items())
            ],
        )
        for t in existing
    ]
    for resource, future in client.incremental_alter_configs(resources).items():
        try:
            future.result()
        except Exception as exc:
            raise StackError(f"setting the configuration of {resource.name} failed: {exc}") from exc


@dataclass(frozen=True)
class KafkaHealth:
    pid: int | None
    reachable: bool
    topics: frozenset[str] = field(default_factory=frozenset)

    @property
    def missing(self) -> list[str]:
        return [t.name for t in topics.ALL if t.name not in self.topics]

    @property
    def healthy(self) -> bool:
        return self.reachable and not self.missing


def health(settings: StackSettings) -> KafkaHealth:
    pid = running_pid(settings)
    if not port_open(HOST, settings.kafka_port):
        return KafkaHealth(pid, False)
    md = _metadata(settings, 5.0)
    if md is None:
        return KafkaHealth(pid, False)
    names = frozenset(name for name in md.topics if not name.startswith("__"))
    return KafkaHealth(pid, True, names)


def stop(settings: StackSettings, log: Log) -> bool:
    """Stop the broker this stack dir started (only that one); True if one was running."""
    p = paths(settings)
    pid = running_pid(settings)
    if pid is None:
        log("kafka: not running")
        return False
    log(f"kafka: stopping pid {pid}")
    killed = terminate(pid, timeout=30)
    p.pidfile.unlink(missing_ok=True)
    log("kafka: killed after 30s" if killed else "kafka: stopped")
    return True
