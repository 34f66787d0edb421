"""One HTTP attempt of a webhook: POST, no redirects, bounded time and response size.

The sender never raises for what a receiver does: every outcome (status, timeout,
refused destination, reset connection) comes back as an :class:`Attempt` the dispatcher
records. One :class:`aiohttp.ClientSession` per dispatcher keeps connections alive; its
connector resolves through :class:`~residuals.notify.ssrf.GuardedResolver`, so it only
connects to vetted addresses, and ignores proxy settings in the environment.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from residuals.notify import ssrf
from residuals.notify.settings import DeliverySettings

#: Most of a response body read (the rest is discarded with the connection).
MAX_RESPONSE_BYTES = 64 * 1024
#: How much of a failing response's body goes into last_error.
ERROR_BODY_CHARS = 200


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to. ``status`` 0: no HTTP response."""

    status: int
    error: str = ""
    #: Seconds a 429/503 asked to wait (Retry-After, seconds form).
    retry_after: float | None = None
    #: The destination was refused before connecting (SSRF guard).
    refused: bool = False
    seconds: float = 0.0


def _printable(data: bytes) -> str:
    text = data[: ERROR_BODY_CHARS * 4].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())[:ERROR_BODY_CHARS]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # the HTTP-date form is not honoured
    return seconds if 0 <= seconds < 1e7 else None


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g} s"


class Sender:
    """POSTs signed bodies; build and use it inside the dispatcher's event loop."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self._allow = ssrf.networks(settings.allow_networks)
        context = ssl.create_default_context(cafile=settings.ca_file)
        connector = aiohttp.TCPConnector(
            resolver=ssrf.GuardedResolver(self._allow),
            limit=settings.max_in_flight,
            limit_per_host=min(settings.max_in_flight, 128),
            ttl_dns_cache=30,
            ssl=context,
            keepalive_timeout=30,
        )
        self.timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_seconds,
            sock_connect=settings.connect_timeout_seconds,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def close(self) -> None:
        await self.session.close()

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> Attempt:
        started = time.monotonic()
        attempt = await self._send(url, headers, body)
        return Attempt(
            attempt.status,
            attempt.error,
            attempt.retry_after,
            attempt.refused,
            time.monotonic() - started,
        )

    async def _send(self, url: str, headers: Mapping[str, str], body: bytes) -> Attempt:
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as exc:
            return Attempt(0, f"invalid URL ({exc})")
        problem = ssrf.url_problem(url, allow_http=self.settings.allow_http)
        if problem is not None:
            return Attempt(0, f"refused: {problem}", refused=True)
        # aiohttp connects to an IP literal without asking the resolver: check it here.
        literal = ssrf.literal_problem(host, self._allow)
        if literal is not None:
            return Attempt(0, f"refused: {host} is {literal}", refused=True)
        try:
            async with self.session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                data = await _read_limited(response)
                status = response.status
                if 200 <= status < 300:
                    return Attempt(status)
                retry_after = None
                if status in (429, 503):
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                if 300 <= status < 400:
                    error = f"HTTP {status}: redirects are not followed"
                else:
                    error = f"HTTP {status}: {_printable(data)}".rstrip(": ")
                return Attempt(status, error, retry_after)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ssrf.Refused):
                return Attempt(0, f"refused: {exc.os_error}", refused=True)
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                return Attempt(0, f"TLS certificate not accepted: {exc.certificate_error}")
            if isinstance(exc, aiohttp.ClientConnectorDNSError):
                return Attempt(0, f"{host} does not resolve")
            if isinstance(exc.os_error, ConnectionRefusedError):
                return Attempt(0, "connection refused")
            if isinstance(exc.os_error, TimeoutError):
                return Attempt(
                    0,
                    f"connect timed out after "
                    f"{_seconds_text(self.settings.connect_timeout_seconds)}",
                )
            return Attempt(0, f"cannot connect: {exc.strerror or type(exc.os_error).__name__}")
        except TimeoutError:
            if isinstance(self.timeout.total, float | int):
                return Attempt(0, f"timed out after {_seconds_text(self.timeout.total)}")
            return Attempt(0, "timed out")
        except aiohttp.ServerDisconnectedError:
            return Attempt(0, "connection closed without a response")
        except aiohttp.ClientSSLError as exc:
            return Attempt(0, f"TLS failed: {type(exc).__name__}")
        except aiohttp.ClientResponseError as exc:
            return Attempt(0, f"invalid HTTP response ({exc.message})"[:ERROR_BODY_CHARS])
        except aiohttp.InvalidURL:
            return Attempt(0, "invalid URL")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(0, f"connection failed ({type(exc).__name__})")


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """Up to :data:`MAX_RESPONSE_BYTES` of the body; a longer body is not read on."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
