"""Where webhooks may go: the address and URL rules, and the resolver that enforces them."""

from __future__ import annotations

import asyncio

import pytest

from residuals.notify import ssrf


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "shared"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),
        ("2002:a00:1::1", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, category: str) -> None:
    problem = ssrf.address_problem(address, ())
    assert problem is not None
    assert f"({category}" in problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert ssrf.address_problem(address, ()) is None


def test_allow_listed_networks_pass() -> None:
    allow = ("127.0.0.0/8", "10.1.0.0/16")
    assert ssrf.address_problem("127.0.0.1", allow) is None
    assert ssrf.address_problem("::ffff:127.0.0.1", allow) is None
    assert ssrf.address_problem("10.1.2.3", allow) is None
    assert ssrf.address_problem("10.2.0.1", allow) == "10.2.0.1 (private)"
    assert ssrf.address_problem("::1", allow) is not None


def test_not_an_address() -> None:
    assert ssrf.address_problem("example.com", ()) is not None


@pytest.mark.parametrize(
    ("url", "allow_http", "fragment"),
    [
        ("http://example.com/hook", False, "https://"),
        ("ftp://example.com/", True, "https:// or http://"),
        ("https://user:pw@example.com/", False, "user name"),
        ("https://user@example.com/", False, "user name"),
        ("https:///path", False, "no host"),
        ("https://example.com:99999/", False, "malformed"),
        ("https://example.com:0/", False, "not valid"),
        ("https://exa mple.com/", False, "spaces"),
        ("https://127.1/", False, "canonical"),
        ("https://2130706433/", False, "canonical"),
    ],
)
def test_bad_urls(url: str, allow_http: bool, fragment: str) -> None:
    problem = ssrf.url_problem(url, allow_http=allow_http)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    ("url", "allow_http"),
    [
        ("https://example.com/hook", False),
        ("https://example.com:8443/hook?x=1", False),
        ("http://example.com/hook", True),
        ("https://[2606:4700::1111]/", False),
        ("https://127.0.0.1:9000/", False),  # form only: the address is checked when resolved
    ],
)
def test_good_urls(url: str, allow_http: bool) -> None:
    assert ssrf.url_problem(url, allow_http=allow_http) is None


def test_literal_hosts_are_checked() -> None:
    assert ssrf.literal_problem("10.0.0.1", ()) == "10.0.0.1 (private)"
    assert ssrf.literal_problem("[::1]", ()) == "::1 (loopback)"
    assert ssrf.literal_problem("127.0.0.1", ("127.0.0.0/8",)) is None
    assert ssrf.literal_problem("example.com", ()) is None


def test_resolve_problem_localhost() -> None:
    problem = ssrf.resolve_problem("localhost", 443, ())
    assert problem is not None
    assert "loopback" in problem
    assert ssrf.resolve_problem("localhost", 443, ("127.0.0.0/8", "::1/128")) is None
    assert ssrf.resolve_problem("127.0.0.1", 443, ()) == "127.0.0.1 (loopback)"
    assert asyncio.run(ssrf.resolve_problem_async("169.254.169.254", 80, ())) is not None


def test_resolve_problem_unresolvable() -> None:
    problem = ssrf.resolve_problem("no-such-host.invalid", 443, ())
    assert problem is not None
    assert "does not resolve" in problem


def test_guarded_resolver_refuses_and_passes() -> None:
    async def run() -> None:
        guarded = ssrf.GuardedResolver(())
        with pytest.raises(ssrf.Refused) as refused:
            await guarded.resolve("localhost", 80)
        assert "localhost resolves to 127.0.0.1 (loopback)" in str(refused.value)
        await guarded.close()
        allowed = ssrf.GuardedResolver(("127.0.0.0/8",))
        results = await allowed.resolve("localhost", 80)
        assert {r["host"] for r in results} == {"127.0.0.1"}
        await allowed.close()

    asyncio.run(run())
