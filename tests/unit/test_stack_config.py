"""The stack's settings, topic catalogue and broker configuration, without servers."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from residuals.platform import topics
from residuals.platform.config import ConfigError, load
from residuals.stack import kafka, processes
from residuals.stack.settings import StackSettings, repo_root


def test_defaults_point_at_the_repo_stack_dir_and_standard_ports() -> None:
    settings = load(StackSettings, environ={})
    assert settings.stack_dir == repo_root() / ".stack"
    assert settings.exports() == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "DATABASE_URL": "postgresql://residuals@127.0.0.1:15432/residuals",
    }
    assert settings.topic_partitions == 6


def test_environment_overrides(tmp_path: Path) -> None:
    settings = load(
        StackSettings,
        environ={
            "RESIDUALS_STACK_DIR": str(tmp_path),
            "RESIDUALS_KAFKA_PORT": "29092",
            "RESIDUALS_POSTGRES_PORT": "25432",
            "RESIDUALS_TOPIC_PARTITIONS": "3",
        },
    )
    assert settings.stack_dir == tmp_path.resolve()
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert settings.dsn == "postgresql://residuals@127.0.0.1:25432/residuals"
    assert settings.topic_partitions == 3


def test_bad_port_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RESIDUALS_KAFKA_PORT"):
        load(StackSettings, environ={"RESIDUALS_KAFKA_PORT": "lots"})
    with pytest.raises(ConfigError, match="RESIDUALS_TOPIC_PARTITIONS"):
        load(StackSettings, environ={"RESIDUALS_TOPIC_PARTITIONS": "0"})


def test_topic_catalogue_names_are_unique_versioned_and_only_tables_compact() -> None:
    names = [t.name for t in topics.ALL]
    assert len(names) == len(set(names)) == 9
    assert all(n.startswith("residuals.") and n.endswith(".v1") for n in names)
    assert [t.name for t in topics.ALL if t.compacted] == [
        "residuals.licences.v1",
        "residuals.signing-keys.v1",
        "residuals.approvals.v1",
    ]
    assert topics.LICENCES.config() == {"cleanup.policy": "compact"}
    assert topics.USAGE.config()["cleanup.policy"] == "delete"
    assert topics.USAGE.qualified("t1.") == "t1.residuals.usage.v1"
    assert topics.by_name("residuals.payouts.v1") is topics.PAYOUTS


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    settings = load(StackSettings, environ={"RESIDUALS_STACK_DIR": str(tmp_path)})
    text = kafka.server_properties(settings, kafka.paths(settings))
    props = dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path.resolve() / "kafka" / "data")


def test_owned_pid_ignores_and_removes_a_pidfile_of_another_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    processes.write_pid(pidfile, os.getpid())
    own = processes.cmdline(os.getpid())
    assert processes.owned_pid(pidfile, own[:1]) == os.getpid()
    assert processes.owned_pid(pidfile, ["kafka.Kafka"]) is None
    assert not pidfile.exists()


def test_spawned_process_is_detached_and_terminated(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    pid = processes.spawn_detached(
        ["/bin/sh", "-c", "echo started; trap '' TERM; exec sleep 60"], log, os.environ
    )
    try:
        assert os.getsid(pid) == pid  # own session: terminal signals do not reach it
        assert processes.wait_until(lambda: "started" in log.read_text(), 10)
        # sleep keeps sh's ignored SIGTERM, so only the SIGKILL fallback stops it.
        assert processes.terminate(pid, timeout=0.5) is True
        assert not processes.is_alive(pid)
    finally:
        if processes.is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_port_open_on_listening_and_closed_ports() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert processes.port_open("127.0.0.1", port)
    assert not processes.port_open("127.0.0.1", port)


def test_missing_postgresql_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from residuals.stack import postgres

    monkeypatch.setattr(postgres.glob, "glob", lambda _pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda _name: None)
    with pytest.raises(processes.StackError, match="apt-get install -y postgresql"):
        postgres.find_bindir()


def test_missing_java_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kafka.shutil, "which", lambda _name: None)
    settings = load(StackSettings, environ={"RESIDUALS_STACK_DIR": str(tmp_path)})
    with pytest.raises(processes.StackError, match="openjdk-17-jre-headless"):
        kafka.check_tools(settings)
