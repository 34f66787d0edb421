"""Standard Webhooks signatures (standardwebhooks.com): what receivers verify.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}." + body)>``,
one per active secret, space-separated: during a rotation both the new and the previous
secret sign, so a receiver that has either accepts the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from residuals.domain.notifications import secret_key

USER_AGENT = "Residuals-Webhooks/1"


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` under ``key``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret (``whsec_...``)."""
    if not secrets:
        raise ValueError("at least one secret signs a message")
    return " ".join(signature(secret_key(s), message_id, timestamp, body) for s in secrets)


def headers(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one attempt (the timestamp is the attempt's, not the event's)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, message_id, timestamp, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
