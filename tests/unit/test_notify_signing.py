"""Signatures as the Standard Webhooks reference implementation verifies them."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from residuals.domain.notifications import new_secret
from residuals.notify import signing

BODY = b'{"data":{"x":1},"timestamp":"2026-01-01T00:00:00.000Z","type":"alert.raised"}'
MSG = "msg_aaaaaaaaaaaaaaaaaaaaaaaaaa"


def test_headers_verify_with_the_reference_library() -> None:
    secret = new_secret()
    headers = signing.headers([secret], MSG, int(time.time()), BODY)
    assert headers["webhook-id"] == MSG
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "Residuals-Webhooks/1"
    assert Webhook(secret).verify(BODY, headers) == {
        "data": {"x": 1},
        "timestamp": "2026-01-01T00:00:00.000Z",
        "type": "alert.raised",
    }


def test_during_rotation_either_secret_verifies() -> None:
    new, old = new_secret(), new_secret()
    headers = signing.headers([new, old], MSG, int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_a_changed_body_or_timestamp_fails() -> None:
    secret = new_secret()
    now = int(time.time())
    headers = signing.headers([secret], MSG, now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-timestamp": str(now + 1)})


def test_known_vector() -> None:
    # The Standard Webhooks specification's example.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    got = signing.signature_header([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_no_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        signing.signature_header([], MSG, 1, BODY)
