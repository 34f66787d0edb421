"""Transport security: encrypted unless the other end is this machine, or you say so.

Usage events carry your vendor identity, your licences and your volumes; the API key
that authenticates gRPC calls travels in every call's metadata. So both transports
refuse to speak plaintext to anything but loopback (``127.0.0.0/8``, ``::1``,
``localhost``, a Unix socket) unless the caller passes ``insecure=True``, like gRPC's own
clients (grpc-go refuses to dial without transport credentials, grpc-java asks for
``usePlaintext()``):

* gRPC: TLS with the system's trust store unless ``credentials`` are given (e.g.
  ``grpc.ssl_channel_credentials(root_certificates=...)`` for a private CA, or with a
  client certificate for mTLS); a loopback target is plaintext unless ``credentials``
  are given.
* Kafka: librdkafka's default is plaintext, so a non-loopback bootstrap needs
  ``security.protocol`` ``SASL_SSL`` (Residuals' vendor principals are SCRAM users) or
  ``SSL`` in ``producer_config``; otherwise the transport raises at construction.

``insecure=True`` for a non-loopback peer is allowed (a test cluster behind a VPN) and
logged as a warning each time a transport is built.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from residuals_sdk.errors import InsecureTransportError

log = logging.getLogger("residuals_sdk.security")

#: librdkafka security.protocol values that encrypt the connection.
ENCRYPTED_KAFKA_PROTOCOLS = frozenset({"ssl", "sasl_ssl"})

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "passthrough:")
_LOCAL_SCHEMES = ("unix:", "unix-abstract:", "vsock:")


def is_loopback_host(host: str) -> bool:
    """``localhost``, an address in ``127.0.0.0/8`` or ``::1`` (also IPv4-mapped)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _split_host(hostport: str) -> str:
    """The host of ``host:port``, ``[v6]:port``, ``v6`` or ``host``."""
    text = hostport.strip()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text[1:]
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text  # a bare host, or a bare IPv6 address


def grpc_target_hosts(target: str) -> list[str] | None:
    """Hosts a gRPC target names; None for a local socket (``unix:``...).

    Accepts ``host:port``, ``dns:[//authority/]host:port``, ``ipv4:a:p,b:p``,
    ``ipv6:[a]:p,...`` and ``passthrough:///host:port``.
    """
    text = target.strip()
    if text.lower().startswith(_LOCAL_SCHEMES):
        return None
    lowered = text.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            rest = text[len(scheme) :]
            if rest.startswith("//"):
                rest = rest[2:].split("/", 1)[1] if "/" in rest[2:] else ""
            addresses = rest.split(",") if scheme in ("ipv4:", "ipv6:") else [rest]
            return [_split_host(a) for a in addresses if a.strip()]
    return [_split_host(text)]


def kafka_bootstrap_hosts(bootstrap_servers: str) -> list[str]:
    """Hosts of a ``host:port,host:port`` bootstrap list (an optional ``proto://`` kept out)."""
    hosts = []
    for server in re.split(r"[,\s]+", bootstrap_servers.strip()):
        if server:
            hosts.append(_split_host(server.split("://", 1)[-1]))
    return hosts


def all_loopback(hosts: Iterable[str] | None) -> bool:
    """True for a local socket (None) or a non-empty list of loopback hosts."""
    if hosts is None:
        return True
    listed = list(hosts)
    return bool(listed) and all(is_loopback_host(h) for h in listed)


def grpc_channel_credentials(
    target: str, credentials: grpc.ChannelCredentials | None, *, insecure: bool
) -> grpc.ChannelCredentials | None:
    """What the gRPC channel to ``target`` uses: credentials for TLS, None for plaintext."""
    if insecure and credentials is not None:
        raise ValueError("credentials and insecure=True contradict each other: pick one")
    if credentials is not None:
        return credentials
    local = all_loopback(grpc_target_hosts(target))
    if insecure:
        if not local:
            log.warning(
                "plaintext gRPC to %s (insecure=True): the API key and usage events are "
                "sent unencrypted",
                target,
            )
        return None
    if local:
        return None
    return grpc.ssl_channel_credentials()


def check_kafka_security(
    bootstrap_servers: str, config: Mapping[str, Any], *, insecure: bool
) -> None:
    """Refuse (or, with ``insecure``, warn about) unencrypted Kafka to a remote broker."""
    protocol = str(config.get("security.protocol", "plaintext")).lower()
    if protocol in ENCRYPTED_KAFKA_PROTOCOLS:
        return
    if all_loopback(kafka_bootstrap_hosts(bootstrap_servers)):
        return
    if insecure:
        log.warning(
            "Kafka security.protocol=%s to %s (insecure=True): usage events are sent unencrypted",
            protocol,
            bootstrap_servers,
        )
        return
    raise InsecureTransportError(
        f"refusing to publish to {bootstrap_servers} with security.protocol={protocol}: "
        "the connection would not be encrypted. Set producer_config security.protocol to "
        "SASL_SSL (with the sasl.* settings Residuals gave you) or SSL; or pass "
        "insecure=True for a test cluster you trust"
    )
