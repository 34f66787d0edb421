"""Residuals vendor SDK: publish signed usage events of licensed avatars.

>>> from residuals_sdk import SigningKey, UsageClient
>>> client = UsageClient.kafka(vendor_id="VEN-PIXEL", signing_key=key,
...                            bootstrap_servers="kafka:9093", spool_dir="/var/lib/app/spool",
...                            producer_config={"security.protocol": "SASL_SSL", ...})
>>> client.render(licence_id="LIC-1", avatar_id="AVA-1", render_id="vid-1",
...               category="product_demo", territory="GB")

Ask before rendering where a licence requires the talent's approval: ``ApprovalsClient``
(``check_use``, ``request_approval``, ``wait_for_approval``). Both transports encrypt
unless the peer is on this machine (or ``insecure=True``). Webhooks: manage endpoints and
follow rejected events with ``NotificationsClient``; check a received webhook with
``verify_webhook``.
See sdk/python/README.md. This package never imports the ``residuals`` server package;
the protobuf contracts it needs are vendored in ``residuals_sdk._proto``.
"""

from residuals_sdk._service import RequestRefusedError
from residuals_sdk.approvals import Approval, ApprovalsClient, UseCheck
from residuals_sdk.client import UsageClient
from residuals_sdk.errors import (
    ClientClosedError,
    InsecureTransportError,
    ResidualsError,
    SpoolFullError,
    SpoolLockedError,
)
from residuals_sdk.ids import uuid7
from residuals_sdk.notifications import CreatedEndpoint, NotificationsClient
from residuals_sdk.report import DeliveryCallback, DeliveryReport, DeliveryStatus
from residuals_sdk.retry import RetryPolicy
from residuals_sdk.signing import SigningKey, sign_batch, sign_event, verify_signature
from residuals_sdk.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "Approval",
    "ApprovalsClient",
    "ClientClosedError",
    "CreatedEndpoint",
    "DeliveryCallback",
    "DeliveryReport",
    "DeliveryStatus",
    "InsecureTransportError",
    "NotificationsClient",
    "RequestRefusedError",
    "ResidualsError",
    "RetryPolicy",
    "SigningKey",
    "SpoolFullError",
    "SpoolLockedError",
    "UsageClient",
    "UseCheck",
    "WebhookVerificationError",
    "sign_batch",
    "sign_event",
    "uuid7",
    "verify_signature",
    "verify_webhook",
]

__version__ = "0.1.0"
