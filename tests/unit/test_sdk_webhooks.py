"""The SDK's verify_webhook against signatures made by the reference implementation
(the ``standardwebhooks`` package), and what it must refuse."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from residuals_sdk import WebhookVerificationError, verify_webhook
from residuals_sdk.webhooks import sign_webhook
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"s" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 24).decode()
BODY = b'{"type":"alert.raised","timestamp":"2026-05-01T12:00:00.000Z","data":{"x":1}}'
NOW = 1_780_000_000


def _headers(secret: str = SECRET, at: int = NOW, body: bytes = BODY) -> dict[str, str]:
    signature = Webhook(secret).sign("msg_1", datetime.fromtimestamp(at, UTC), body)
    return {"webhook-id": "msg_1", "webhook-timestamp": str(at), "webhook-signature": signature}


def test_reference_signatures_verify() -> None:
    payload = verify_webhook(SECRET, _headers(), BODY, now=NOW)
    assert payload["type"] == "alert.raised"
    # Header names are case-insensitive; a list of pairs works like a mapping.
    pairs = [(k.upper(), v) for k, v in _headers().items()]
    assert verify_webhook(SECRET, pairs, BODY.decode(), now=NOW + 299)["data"] == {"x": 1}
    assert sign_webhook(SECRET, "msg_1", NOW, BODY) == _headers()["webhook-signature"]


def test_any_of_several_signatures_verifies_during_a_rotation() -> None:
    both = _headers(OTHER)
    both["webhook-signature"] += " " + _headers(SECRET)["webhook-signature"]
    assert verify_webhook(SECRET, both, BODY, now=NOW)
    assert verify_webhook(OTHER, both, BODY, now=NOW)
    assert verify_webhook([OTHER, SECRET], _headers(SECRET), BODY, now=NOW)
    # And the reference verifier accepts what our signer makes.
    ours = {**_headers(), "webhook-signature": sign_webhook(SECRET, "msg_1", NOW, BODY)}
    reference = Webhook(SECRET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("standardwebhooks.webhooks.datetime", _FrozenClock)
        assert reference.verify(BODY, ours)["data"] == {"x": 1}


class _FrozenClock(datetime):
    @classmethod
    def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
        return datetime.fromtimestamp(NOW, UTC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda h, b: ({**h, "webhook-signature": _headers(OTHER)["webhook-signature"]}, b),
            "no matching",
        ),
        (lambda h, b: (h, b + b" "), "no matching"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "no matching"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW - 301)}, b), "no matching|too old"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-timestamp": "12.5"}, b), "Unix time"),
        (lambda h, b: ({**h, "webhook-signature": "v1,"}, b), "no matching"),
        (
            lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b),
            "no matching",
        ),
    ],
)
def test_forgeries_are_refused(change: object, message: str) -> None:
    headers, body = change(_headers(), BODY)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(SECRET, headers, body, now=NOW)


def test_old_and_future_messages_are_refused_even_when_signed() -> None:
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, _headers(at=NOW - 301), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify_webhook(SECRET, _headers(at=NOW + 301), BODY, now=NOW)
    assert verify_webhook(SECRET, _headers(at=NOW - 3600), BODY, tolerance=4000, now=NOW)
    at = datetime.fromtimestamp(NOW + 10, UTC)  # a datetime "now" works too
    assert verify_webhook(SECRET, _headers(), BODY, now=at)
