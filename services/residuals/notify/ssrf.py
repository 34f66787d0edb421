"""Where webhooks may go: public addresses only, unless the operator allow-lists a network.

An endpoint URL is a request the server makes on a tenant's behalf, so it must not reach
the operator's own network (cloud metadata at 169.254.169.254, databases on 10/8, the
node's loopback). :func:`url_problem` checks the URL's form when it is registered; at
send time :class:`GuardedResolver` resolves the host and refuses it when ANY address is
not allowed, and the connector connects only to the addresses it vetted, so a name that
resolves to something else a moment later (DNS rebinding) gains nothing. IP-literal
hosts never reach a resolver in aiohttp, so :func:`literal_problem` checks those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(OSError):
    """A destination the guard refused (an OSError, so aiohttp wraps it as a connector
    error and the sender reports it as a refusal, not as a network fault)."""

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"{host} resolves to {problem}")
        self.host = host
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.host} resolves to {self.problem}"


def networks(cidrs: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """Parsed allow-list (settings.delivery.allow_networks)."""
    return tuple(
        c if not isinstance(c, str) else ipaddress.ip_network(c, strict=False) for c in cidrs
    )


def _allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in allow)


def _category(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination, or None."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not public"
    return None


def _embedded(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), which is where it goes."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_problem(
    ip: str | IPAddress, allow_networks: Iterable[str | IPNetwork] = ()
) -> str | None:
    """Why a webhook may not go to ``ip`` (``"10.0.0.1 (private)"``), or None.

    Addresses inside ``allow_networks`` are allowed whatever they are.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)
    except ValueError:
        return f"{ip!r} (not an IP address)"
    allow = networks(allow_networks)
    if _allowed(address, allow):
        return None
    inner = _embedded(address)
    if inner is not None:
        # It goes to the IPv4 address inside: that one decides.
        if _allowed(inner, allow):
            return None
        found = _category(inner)
        return None if found is None else f"{address} ({found}, IPv6 form of {inner})"
    found = _category(address)
    return None if found is None else f"{address} ({found})"


def url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot be an endpoint URL (its form only; addresses are checked when
    resolved), or None."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "the URL contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the URL is malformed ({exc})"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        return "the URL must start with " + " or ".join(f"{s}://" for s in schemes)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "the URL must not contain a user name or password"
    if not parts.hostname:
        return "the URL has no host"
    if port is not None and not 0 < port < 65536:
        return f"port {port} is not valid"
    if _looks_numeric(parts.hostname) and not _canonical(parts.hostname):
        return f"{parts.hostname!r} is not a canonical IPv4 address"
    return None


def _canonical(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _looks_numeric(host: str) -> bool:
    return host.replace(".", "").isdigit()


def literal_problem(host: str, allow_networks: Iterable[str | IPNetwork]) -> str | None:
    """For an IP-literal host (which aiohttp connects to without a resolver): why it is
    refused, or None. Host names return None (the resolver checks them)."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        if _looks_numeric(bare):
            # 127.1, 2130706433: legacy forms getaddrinfo would accept.
            return f"{host!r} (not a canonical IPv4 address)"
        return None
    problem = address_problem(bare, allow_networks)
    return None if problem is None else problem


def _check(host: str, addresses: Sequence[str], allow: Sequence[IPNetwork]) -> None:
    if not addresses:
        raise Refused(host, "no address")
    for address in addresses:
        problem = address_problem(address, allow)
        if problem is not None:
            raise Refused(host, problem)


def resolve_problem(
    host: str, port: int | None, allow_networks: Iterable[str | IPNetwork]
) -> str | None:
    """Resolve ``host`` now (blocking) and say why one of its addresses is refused (or it
    does not resolve), or None. For CreateEndpoint; sending checks again."""
    allow = networks(allow_networks)
    literal = literal_problem(host, allow)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"{host} does not resolve ({exc})"
    try:
        _check(host, [str(info[4][0]) for info in infos], allow)
    except Refused as exc:
        return exc.problem
    return None


async def resolve_problem_async(
    host: str, port: int | None, allow_networks: Iterable[str | IPNetwork]
) -> str | None:
    """:func:`resolve_problem` off the event loop."""
    return await asyncio.to_thread(resolve_problem, host, port, tuple(allow_networks))


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a host when any of its addresses is not allowed; the
    connector then connects only to the addresses returned here."""

    def __init__(self, allow_networks: Iterable[str | IPNetwork], inner: Any = None) -> None:
        self._allow = networks(allow_networks)
        self._inner: AbstractResolver = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        _check(host, [r["host"] for r in results], self._allow)
        return results

    async def close(self) -> None:
        await self._inner.close()
