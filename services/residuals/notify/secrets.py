"""Endpoint signing secrets at rest: sealed with AES-256-GCM when a key is configured.

A database dump or a replica's backup then holds no usable ``whsec_`` secret: whoever has
it could sign webhooks our receivers would accept. Without ``NOTIFY_SECRETS_KEY`` (local
stacks, tests) secrets are stored as they are, marked ``plain:`` so that turning a key on
later still opens them, and turning it off refuses to open sealed ones instead of
signing with garbage.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "v1:"
PLAIN_PREFIX = "plain:"
NONCE_BYTES = 12
#: Bound to the ciphertext: a sealed value of another purpose does not open as a secret.
_AAD = b"residuals.notify.endpoint-secret.v1"


class SecretError(ValueError):
    """A stored secret cannot be opened (wrong key, no key, corrupted); the message never
    contains the secret."""


class SecretBox:
    """``seal``/``open`` of signing secrets with one 32-byte key (or none)."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key) if key is not None else None

    @classmethod
    def from_setting(cls, text: str | None) -> SecretBox:
        """From ``NOTIFY_SECRETS_KEY`` (base64 of 32 bytes), or a keyless box for None."""
        if text is None:
            return cls(None)
        try:
            return cls(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("NOTIFY_SECRETS_KEY must be base64 of 32 bytes") from None

    @property
    def sealing(self) -> bool:
        return self._aead is not None

    def seal(self, secret: str) -> str:
        if self._aead is None:
            return PLAIN_PREFIX + secret
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), _AAD)
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str) -> str:
        if sealed.startswith(PLAIN_PREFIX):
            return sealed[len(PLAIN_PREFIX) :]
        if not sealed.startswith(SEALED_PREFIX):
            raise SecretError("stored secret has an unknown format")
        if self._aead is None:
            raise SecretError("stored secret is sealed but NOTIFY_SECRETS_KEY is not set")
        try:
            raw = base64.b64decode(sealed[len(SEALED_PREFIX) :], validate=True)
            if len(raw) <= NONCE_BYTES:
                raise SecretError("stored secret is truncated")
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _AAD)
        except (binascii.Error, ValueError, InvalidTag) as error:
            if isinstance(error, SecretError):
                raise
            raise SecretError("stored secret does not open with NOTIFY_SECRETS_KEY") from None
        return plain.decode("utf-8")

    def __repr__(self) -> str:
        return f"SecretBox(sealing={self.sealing})"
