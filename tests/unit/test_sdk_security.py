"""The SDK's transport security: which peers count as this machine, and what each
transport does for the others (TLS by default; plaintext only with insecure=True)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from residuals_sdk import InsecureTransportError, SigningKey, UsageClient
from residuals_sdk.transports.grpc import GrpcTransport
from residuals_sdk.transports.security import (
    all_loopback,
    check_kafka_security,
    grpc_channel_credentials,
    grpc_target_hosts,
    is_loopback_host,
    kafka_bootstrap_hosts,
)

API_KEY = "rsd_0123456789abcdef_secret"


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.8.9.10", "::1", "[::1]",
     "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"],
)  # fmt: skip
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["ingest.residuals.example", "10.0.0.7", "192.168.1.2", "0.0.0.0", "::", "128.0.0.1",
     "localhost.example.com", "mylocalhost", "::ffff:10.0.0.1", "2001:db8::1", ""],
)  # fmt: skip
def test_other_hosts_are_remote(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    ("target", "hosts"),
    [
        ("localhost:50051", ["localhost"]),
        ("127.0.0.1:50051", ["127.0.0.1"]),
        ("[::1]:50051", ["::1"]),
        ("ingest.residuals.example:443", ["ingest.residuals.example"]),
        ("ingest.residuals.example", ["ingest.residuals.example"]),
        ("dns:///ingest.residuals.example:443", ["ingest.residuals.example"]),
        ("dns://8.8.8.8/localhost:50051", ["localhost"]),
        ("dns:localhost:50051", ["localhost"]),
        ("ipv4:127.0.0.1:1,10.0.0.2:2", ["127.0.0.1", "10.0.0.2"]),
        ("ipv6:[::1]:50051", ["::1"]),
        ("passthrough:///127.0.0.1:50051", ["127.0.0.1"]),
        ("unix:/run/residuals.sock", None),
        ("unix-abstract:residuals", None),
    ],
)
def test_grpc_targets_name_their_hosts(target: str, hosts: list[str] | None) -> None:
    assert grpc_target_hosts(target) == hosts


def test_a_target_is_local_only_if_every_host_is() -> None:
    assert all_loopback(grpc_target_hosts("ipv4:127.0.0.1:1,127.0.0.2:2"))
    assert not all_loopback(grpc_target_hosts("ipv4:127.0.0.1:1,10.0.0.2:2"))
    assert all_loopback(grpc_target_hosts("unix:/tmp/s.sock"))
    assert not all_loopback([])
    assert kafka_bootstrap_hosts("127.0.0.1:9092, localhost:9093") == ["127.0.0.1", "localhost"]
    assert kafka_bootstrap_hosts("SASL_SSL://kafka-1:9093,[::1]:9092") == ["kafka-1", "::1"]


# --- gRPC channel choice -------------------------------------------------------------------


def test_a_remote_gateway_gets_tls_by_default() -> None:
    chosen = grpc_channel_credentials("ingest.residuals.example:443", None, insecure=False)
    assert isinstance(chosen, grpc.ChannelCredentials)


def test_a_loopback_gateway_is_plaintext_by_default() -> None:
    for target in ("127.0.0.1:50051", "localhost:50051", "[::1]:50051"):
        assert grpc_channel_credentials(target, None, insecure=False) is None


def test_given_credentials_always_win() -> None:
    mine = grpc.ssl_channel_credentials()
    assert grpc_channel_credentials("127.0.0.1:50051", mine, insecure=False) is mine
    assert grpc_channel_credentials("ingest.example:443", mine, insecure=False) is mine


def test_plaintext_to_a_remote_gateway_must_be_asked_for_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="residuals_sdk.security"):
        assert grpc_channel_credentials("ingest.example:443", None, insecure=True) is None
    assert "plaintext gRPC to ingest.example:443" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="residuals_sdk.security"):
        assert grpc_channel_credentials("127.0.0.1:1", None, insecure=True) is None
    assert caplog.text == ""  # loopback: nothing to warn about
    with pytest.raises(ValueError, match="contradict"):
        grpc_channel_credentials("x:1", grpc.ssl_channel_credentials(), insecure=True)


def test_the_grpc_transport_uses_the_chosen_channel() -> None:
    # Channels connect lazily: building the transport sends nothing anywhere.
    remote = GrpcTransport("ingest.residuals.example:443", API_KEY)
    local = GrpcTransport("127.0.0.1:50051", API_KEY)
    forced = GrpcTransport("ingest.residuals.example:443", API_KEY, insecure=True)
    try:
        assert (remote.secure, local.secure, forced.secure) == (True, False, False)
    finally:
        for transport in (remote, local, forced):
            transport.close()


# --- Kafka ---------------------------------------------------------------------------------


def test_kafka_to_a_remote_broker_must_be_encrypted() -> None:
    for config in ({}, {"security.protocol": "PLAINTEXT"}, {"security.protocol": "sasl_plaintext"}):
        with pytest.raises(InsecureTransportError, match="SASL_SSL"):
            check_kafka_security("kafka-1.residuals.example:9093", config, insecure=False)
    for protocol in ("SASL_SSL", "ssl"):
        check_kafka_security("kafka-1:9093", {"security.protocol": protocol}, insecure=False)
    # A mixed list is remote.
    with pytest.raises(InsecureTransportError):
        check_kafka_security("127.0.0.1:9092,kafka-1:9092", {}, insecure=False)


def test_kafka_plaintext_is_fine_on_loopback_and_logged_when_forced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_kafka_security("127.0.0.1:19092,localhost:19093", {}, insecure=False)
    with caplog.at_level(logging.WARNING, logger="residuals_sdk.security"):
        check_kafka_security("kafka-1:9092", {}, insecure=True)
    assert "usage events are sent unencrypted" in caplog.text


def test_the_kafka_client_refuses_before_it_connects_and_frees_its_spool(tmp_path: Path) -> None:
    key = SigningKey.generate("sk-test")
    with pytest.raises(InsecureTransportError, match=r"kafka-1\.residuals\.example:9092"):
        UsageClient.kafka(
            vendor_id="VEN-T",
            signing_key=key,
            bootstrap_servers="kafka-1.residuals.example:9092",
            spool_dir=tmp_path,
        )
    # The spool was released: a correctly configured client can use the directory.
    client = UsageClient.kafka(
        vendor_id="VEN-T", signing_key=key, bootstrap_servers="127.0.0.1:1", spool_dir=tmp_path
    )
    client.close(timeout=0)
