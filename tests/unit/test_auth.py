"""API key format, hashing, principals, role checks and the cached authenticator."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from residuals.licensing.directory import PostgresAuthenticator
from residuals.platform import auth
from residuals.platform.auth import (
    PermissionDenied,
    Principal,
    Role,
    StaticAuthenticator,
    StoredKey,
    current_principal,
    generate_api_key,
    hash_secret,
    parse_api_key,
    principal_scope,
    require_role,
    verify_secret,
)

ADMIN = Principal("p-admin", Role.ADMIN)
VENDOR = Principal("p-acme", Role.VENDOR, vendor_id="acme")


def test_generated_key_round_trips_through_parse() -> None:
    key_id, plaintext, secret_hash = generate_api_key()
    assert plaintext.startswith(f"rsd_{key_id}_")
    parsed = parse_api_key(plaintext)
    assert parsed is not None
    parsed_id, secret = parsed
    assert parsed_id == key_id
    assert len(secret) >= 43  # token_urlsafe(32): 32 random bytes
    assert secret_hash == hashlib.sha256(secret.encode()).digest()
    assert verify_secret(secret, secret_hash)


def test_generated_keys_are_unique() -> None:
    keys = {generate_api_key()[1] for _ in range(200)}
    assert len(keys) == 200


def test_secret_may_contain_underscores() -> None:
    secret = "ab_" + "x" * 40 + "_yz"
    assert parse_api_key(f"rsd_k1_{secret}") == ("k1", secret)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rsd",
        "rsd_",
        "rsd_k1",
        "rsd_k1_",
        "rsd__" + "x" * 43,
        "xyz_k1_" + "x" * 43,
        "RSD_k1_" + "x" * 43,
        "rsd_k1_short",
        "rsd_k!1_" + "x" * 43,
        "rsd_k1_" + "x" * 42 + "!",
        "rsd_" + "k" * 65 + "_" + "x" * 43,
    ],
)
def test_malformed_keys_are_rejected(text: str) -> None:
    assert parse_api_key(text) is None


@pytest.mark.parametrize(
    "around",
    [
        lambda k: k + "\n",  # a key read from a file: "$" in a regex would let it through
        lambda k: k + "\r\n",
        lambda k: " " + k,
        lambda k: k + " ",
        lambda k: k + "\t",
        lambda k: k + "\x00",
        lambda k: k[:10] + "\x1b" + k[10:],
        lambda k: k[:10] + " " + k[10:],
        lambda k: k.replace("_", "_\n", 1),
        lambda k: k + "\u00a0",
    ],
)
def test_keys_with_whitespace_or_control_characters_are_rejected(around: Any) -> None:
    _, plaintext, _ = generate_api_key()
    assert parse_api_key(plaintext) is not None
    assert parse_api_key(around(plaintext)) is None


def test_verify_secret_rejects_other_secrets() -> None:
    stored = hash_secret("a" * 43)
    assert verify_secret("a" * 43, stored)
    assert not verify_secret("a" * 42 + "b", stored)
    assert not verify_secret("", stored)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": Role.VENDOR}, "needs a vendor_id"),
        ({"role": Role.TALENT}, "needs a talent_id"),
        ({"role": Role.ADMIN, "vendor_id": "acme"}, "only vendor principals"),
        ({"role": Role.VENDOR, "vendor_id": "acme", "talent_id": "t"}, "only talent principals"),
    ],
)
def test_principal_tenant_invariants(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Principal("p", **kwargs)


def test_roles_are_lowercase_strings() -> None:
    assert [str(r) for r in Role] == ["vendor", "talent", "finance", "admin", "suspender"]
    assert Role("finance") is Role.FINANCE


def test_current_principal_fails_closed_outside_a_handler() -> None:
    with pytest.raises(RuntimeError, match="AuthInterceptor"):
        current_principal()


def test_require_role_names_the_caller_and_the_roles() -> None:
    with principal_scope(VENDOR):
        assert require_role(Role.VENDOR, Role.ADMIN) is VENDOR
        with pytest.raises(PermissionDenied) as denied:
            require_role(Role.ADMIN, Role.FINANCE)
    assert str(denied.value) == (
        "vendor:acme (principal p-acme) may not call this method: it requires role admin or finance"
    )
    with pytest.raises(RuntimeError):
        current_principal()


def test_static_authenticator() -> None:
    store = StaticAuthenticator()
    key = store.add(VENDOR)
    parsed = parse_api_key(key)
    assert parsed is not None
    key_id, secret = parsed
    assert store.authenticate(key_id, secret) == VENDOR
    assert store.authenticate(key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.authenticate("nope", secret) is None
    store.revoke(key_id)
    assert store.authenticate(key_id, secret) is None


class FakeDatabase:
    """Counts lookups; rows come from a dict the test mutates."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredKey] = {}
        self.queries = 0


class CountingAuthenticator(PostgresAuthenticator):
    def __init__(self, fake: FakeDatabase, clock: Any, **kwargs: Any) -> None:
        super().__init__(fake, clock=clock, **kwargs)  # type: ignore[arg-type]
        self.fake = fake

    def _load(self, key_id: str) -> StoredKey | None:
        self.fake.queries += 1
        return self.fake.rows.get(key_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_serves_within_ttl_and_sees_revocation_after_it() -> None:
    fake, clock = FakeDatabase(), Clock()
    authenticator = CountingAuthenticator(fake, clock, ttl_seconds=30)
    key_id, plaintext, secret_hash = generate_api_key()
    secret = plaintext.split("_", 2)[2]
    fake.rows[key_id] = StoredKey(key_id, secret_hash, ADMIN)

    for _ in range(5):
        assert authenticator.authenticate(key_id, secret) == ADMIN
    assert fake.queries == 1
    # A wrong secret is checked against the cached hash, not trusted from the cache.
    assert authenticator.authenticate(key_id, "x" * 43) is None
    assert fake.queries == 1

    fake.rows[key_id] = StoredKey(key_id, secret_hash, ADMIN, revoked=True)
    clock.now += 29
    assert authenticator.authenticate(key_id, secret) == ADMIN  # still cached
    clock.now += 2
    assert authenticator.authenticate(key_id, secret) is None  # TTL passed: revoked
    assert fake.queries == 2


def test_cache_invalidate_and_unknown_keys_and_bound() -> None:
    fake, clock = FakeDatabase(), Clock()
    authenticator = CountingAuthenticator(fake, clock, ttl_seconds=30, max_entries=3)
    for n in range(5):
        assert authenticator.authenticate(f"unknown{n}", "x" * 43) is None
    assert fake.queries == 5
    assert len(authenticator._cache) == 3
    assert authenticator.authenticate("unknown4", "x" * 43) is None
    assert fake.queries == 5  # negative entries are cached too
    authenticator.invalidate("unknown4")
    authenticator.authenticate("unknown4", "x" * 43)
    assert fake.queries == 6
    authenticator.invalidate()
    assert not authenticator._cache


def test_messages_tell_the_caller_what_to_send() -> None:
    assert auth.MISSING_KEY_MESSAGE == "missing API key (metadata 'authorization: Bearer rsd_…')"
    assert auth.bearer_metadata("rsd_a_b") == (("authorization", "Bearer rsd_a_b"),)
