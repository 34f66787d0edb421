"""Verifying Residuals' webhooks on the receiving side (the Standard Webhooks scheme).

Every webhook carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` signatures of
``"{id}.{timestamp}.{body}"`` under the endpoint's ``whsec_`` secret. During a secret
rotation the same message is signed with the old and the new secret, so the header
lists both and either verifies.

>>> payload = verify_webhook(secret, request.headers, request.body)   # raises if forged

Verify the raw body bytes exactly as received (not re-serialised JSON), then de-duplicate
on ``webhook-id``: deliveries are at least once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from residuals_sdk.errors import ResidualsError

SECRET_PREFIX = "whsec_"
#: Seconds a message's timestamp may be away from this machine's clock (replay window).
DEFAULT_TOLERANCE = 300
#: Longest signature header read (a few dozen signatures at most are meaningful).
_MAX_SIGNATURE_HEADER = 8192


class WebhookVerificationError(ResidualsError):
    """The webhook is not authentic (or too old/new): answer it with 400 and ignore it."""


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the secret is not a whsec_ secret (base64 after whsec_)") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _header(headers: Mapping[str, Any] | Iterable[tuple[str, Any]], name: str) -> str | None:
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if str(key).lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def sign_webhook(secret: str | bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,...`` signature of a message (what Residuals sends; for receivers' tests)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(
    secret: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, Any] | Iterable[tuple[str, Any]],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | datetime | None = None,
) -> Any:
    """The JSON payload of an authentic webhook; :class:`WebhookVerificationError` otherwise.

    ``secret`` may be several secrets (while you roll your own configuration over a
    rotation); ``headers`` any mapping or list of pairs (names are case-insensitive);
    ``body`` the raw bytes as received (a str is taken as its UTF-8 encoding); ``now``
    (Unix seconds or an aware datetime) replaces the clock, for checking a stored message.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    message_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not message_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if len(signatures) > _MAX_SIGNATURE_HEADER:
        raise WebhookVerificationError("webhook-signature is too long")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time in seconds")
    sent = int(stamp)
    if now is None:
        current = time.time()
    elif isinstance(now, datetime):
        current = now.timestamp()
    else:
        current = float(now)
    if sent < current - tolerance:
        raise WebhookVerificationError("message timestamp too old")
    if sent > current + tolerance:
        raise WebhookVerificationError("message timestamp too new")
    keys = [_key(secret)] if isinstance(secret, str | bytes) else [_key(s) for s in secret]
    if not keys:
        raise ValueError("no webhook secret given")
    expected = [sign_webhook(k, message_id, sent, raw).encode("ascii") for k in keys]
    offered = [s.encode("utf-8", "replace") for s in signatures.split(" ") if s]
    matched = False
    for candidate in offered:
        for wanted in expected:
            # Every pair compared (no early exit): timing says nothing about which matched.
            matched |= hmac.compare_digest(wanted, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature found")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
