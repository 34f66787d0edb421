"""The generated SASL/SCRAM principals and ACLs, enforced by a real broker.

A second Kafka (same jars as the local stack) runs with a SCRAM-SHA-512 listener and
KRaft's StandardAuthorizer, nothing allowed by default. The script from
`residuals deploy acls` creates the principals and ACLs with Kafka's own AclCommand and
ConfigCommand; then clients logged in as those principals may do what the rules grant
and are refused the rest.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from residuals.deploy.kafka_admin import acl_script, ensure_topics
from residuals.deploy.services import SERVICES
from residuals.platform import topics
from residuals.platform.config import KafkaSettings
from residuals.platform.ports import free_port
from residuals.stack import kafka as stack_kafka
from residuals.stack.settings import StackSettings

ADMIN_PASSWORD = "admin-secret"
PRINCIPALS = ("residuals-meter", "residuals-ledger", "residuals-ingest", "vendor-acme")


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str
    libs: Path
    java: str
    workdir: Path

    def client(self, user: str, password: str, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
            **extra,
        }

    def java_argv(self, main: str) -> str:
        # Quick JVM start-up: these tools run once each.
        return (
            f"exec {self.java} -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
            f"-Dlog4j.configuration=file:{self.workdir}/tools-log4j.properties "
            f'-cp "{self.libs}/*" {main} "$@"'
        )


def _properties(port: int, controller: int, data: Path) -> str:
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{ADMIN_PASSWORD}";'
    )
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={jaas}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


@pytest.fixture(scope="module")
def broker(stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    workdir = tmp_path_factory.mktemp("sasl-kafka")
    libs = stack_kafka.paths(stack).libs
    java = shutil.which("java")
    assert java and libs.is_dir(), "the local stack's Kafka jars and Java are needed"
    port, controller = free_port(), free_port()
    props = workdir / "server.properties"
    props.write_text(_properties(port, controller, workdir / "data"))
    log4j = (
        "log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\n"
    )
    log4j += "log4j.appender.stderr.Target=System.err\n"
    log4j += "log4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n"
    (workdir / "tools-log4j.properties").write_text(log4j)
    (workdir / "log4j.properties").write_text(log4j)
    jvm = [java, "-Xms128m", "-Xmx512m", f"-Dlog4j.configuration=file:{workdir}/log4j.properties"]
    classpath = ["-cp", f"{libs}/*"]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    scram = f"SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}]"
    subprocess.run(
        [*jvm, *classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id,
         "-c", str(props), "--add-scram", scram],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    log = (workdir / "broker.log").open("w")
    process = subprocess.Popen(
        [*jvm, *classpath, "kafka.Kafka", str(props)], stdout=log, stderr=subprocess.STDOUT
    )
    result = SaslBroker(f"127.0.0.1:{port}", libs, java, workdir)
    admin = AdminClient(result.client("admin", ADMIN_PASSWORD))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (workdir / "broker.log").read_text()[-3000:]
            try:
                admin.list_topics(timeout=2)
                break
            except KafkaException:
                assert time.monotonic() < deadline, "SASL broker did not come up"
                time.sleep(0.5)
        yield result
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_generated_acls_grant_exactly_what_each_principal_needs(
    broker: SaslBroker, tmp_path: Path
) -> None:
    admin = AdminClient(broker.client("admin", ADMIN_PASSWORD))
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_partitions=1)
    ensure_topics(kafka, replication_factor=1, admin=admin, log=lambda _: None)

    passwords = tmp_path / "passwords"
    passwords.mkdir()
    secret = {name: f"{name}-pw" for name in PRINCIPALS}
    # Every principal the script makes (each service with Kafka access, and the vendor).
    service_principals = [s.principal for s in SERVICES if s.kafka is not None]
    for name in {*service_principals, *PRINCIPALS}:
        (passwords / name).write_text(secret.get(name, f"{name}-pw"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, main in (("kafka-acls.sh", "kafka.admin.AclCommand"),
                       ("kafka-configs.sh", "kafka.admin.ConfigCommand")):  # fmt: skip
        path = bin_dir / tool
        path.write_text(f"#!/usr/bin/env bash\n{broker.java_argv(main)}\n")
        path.chmod(0o755)
    admin_config = tmp_path / "admin.properties"
    admin_config.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{ADMIN_PASSWORD}";\n'
    )
    script = tmp_path / "kafka-acls.sh"
    script.write_text(acl_script(["acme"], vendor_producer_byte_rate=10_485_760))
    run = subprocess.run(
        ["bash", str(script)],
        env={
            "PATH": "/usr/bin:/bin",
            "BOOTSTRAP": broker.bootstrap,
            "ADMIN_CONFIG": str(admin_config),
            "PASSWORD_DIR": str(passwords),
            "KAFKA_BIN": str(bin_dir),
        },
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "principal vendor-acme" in run.stdout

    # SCRAM credentials propagate through the metadata log: wait until the vendor logs in.
    vendor = broker.client("vendor-acme", secret["vendor-acme"])
    deadline = time.monotonic() + 30
    while True:
        error = produce(vendor, topics.USAGE.name, b"licence-1", b"usage")
        if error is None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert error is None, f"vendor could not publish usage: {error}"

    # A vendor writes usage and nothing else; it cannot read anything.
    assert produce(vendor, topics.USAGE_RATED.name, b"k", b"forged") == "TOPIC_AUTHORIZATION_FAILED"
    assert consume(vendor, topics.USAGE.name, "vendor-acme-peek") == "denied"

    # The meter reads usage in its faust group and writes rated records, not usage.
    meter = broker.client("residuals-meter", secret["residuals-meter"])
    assert consume(meter, topics.USAGE.name, "meter") == b"usage"
    assert produce(meter, topics.USAGE.name, b"k", b"x") == "TOPIC_AUTHORIZATION_FAILED"
    assert produce(meter, topics.USAGE_RATED.name, b"licence-1", b"rated") is None
    # ...and only in groups it owns.
    assert consume(meter, topics.USAGE.name, "ledger-writer") == "denied"

    # The ledger reads rated records in its group; it may not read raw usage.
    ledger = broker.client("residuals-ledger", secret["residuals-ledger"])
    assert consume(ledger, topics.USAGE_RATED.name, "ledger-writer") == b"rated"
    assert consume(ledger, topics.USAGE.name, "ledger-writer-2") == "denied"

    # A wrong password is refused outright.
    intruder = broker.client("residuals-ingest", "wrong")
    assert produce(intruder, topics.USAGE.name, b"k", b"x") is not None


def produce(config: dict[str, Any], topic: str, key: bytes, value: bytes) -> str | None:
    """None when the record was acknowledged, else the error's name."""
    outcome: list[str | None] = []

    def report(error: KafkaError | None, _message: Any) -> None:
        outcome.append(None if error is None else error.name())

    errors: list[str] = []
    producer = Producer(
        {
            **config,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 8000,
            "error_cb": lambda e: errors.append(e.name()),
        }
    )
    producer.produce(topic, value=value, key=key, on_delivery=report)
    producer.flush(15)
    if outcome:
        return outcome[0]
    return errors[0] if errors else "NO_REPORT"


def consume(config: dict[str, Any], topic: str, group: str) -> bytes | str:
    """The first record's value, or "denied" when the broker refuses the read."""
    consumer = Consumer(
        {
            **config,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return bytes(message.value())
            if error.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                return "denied"
        return "timed out"
    finally:
        consumer.close()
