"""The HTTP server: routes in, gRPC calls out, JSON (or server-sent events) back.

:class:`GatewayApp` runs an aiohttp server on its own thread and event loop, like the
other services run their gRPC servers on theirs, so ``run_service`` treats it the same
way and tests start it in-process. Each request is matched against the routes of the
contracts (:mod:`residuals.gateway.routes`), refused here when it is malformed (it never
reaches a service), else forwarded over gRPC to the owning service with the caller's
``authorization`` and the trace context; the service's answer or status comes back as
JSON or an RFC 9457 problem. Server-streaming calls become ``text/event-stream``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import message_factory
from google.protobuf.message import Message
from opentelemetry import trace

from residuals.gateway.metrics import GatewayMetrics, default_metrics
from residuals.gateway.openapi import openapi_document
from residuals.gateway.problems import PROBLEM_JSON, Problem, from_rpc
from residuals.gateway.routes import NoRoute, Route, Router, load_routes
from residuals.gateway.settings import SERVICE_NAME, GatewaySettings
from residuals.gateway.transcode import Violation, build_request, to_json
from residuals.platform.grpc_server import client_credentials
from residuals.platform.service import run_service
from residuals.platform.telemetry import extract_grpc_metadata, inject_grpc_metadata

log = logging.getLogger(__name__)
tracer = trace.get_tracer("residuals.gateway")

#: Media types a request body may have (charset, if given, must be UTF-8).
JSON_TYPES = ("application/json",)
#: Largest response the gateway accepts from a service (statement documents are big).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: The request header that resumes a Watch call (the last ``id:`` the client saw).
LAST_EVENT_ID = "Last-Event-ID"


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=json.dumps(problem.body(instance)),
        content_type=PROBLEM_JSON,
        headers=problem.headers(),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key repeats is refused: which value counts would be a guess."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key!r} repeated")
        document[key] = value
    return document


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity literals, no repeated keys; else a 400."""
    try:
        return json.loads(
            data.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
    except UnicodeDecodeError:
        raise Problem.bad_request("(body)", "is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise Problem.bad_request(
            "(body)", f"malformed JSON: {error.msg} (line {error.lineno} column {error.colno})"
        ) from None
    except (ValueError, RecursionError) as error:
        raise Problem.bad_request("(body)", f"malformed JSON: {error}") from None


def sse_event(response: Message) -> bytes:
    """One server-sent event: ``event:`` the oneof case (``alert``, ``heartbeat``), ``id:``
    the item's ``sequence`` when it has one (so ``Last-Event-ID`` resumes after it), and
    ``data:`` the whole response as JSON on one line."""
    lines = []
    oneofs = response.DESCRIPTOR.oneofs
    case = response.WhichOneof(oneofs[0].name) if oneofs else None
    if case:
        lines.append(f"event: {case}")
        inner = getattr(response, case)
        if isinstance(inner, Message) and "sequence" in inner.DESCRIPTOR.fields_by_name:
            sequence = inner.sequence  # type: ignore[attr-defined]
            if sequence:
                lines.append(f"id: {sequence}")
    data = json.dumps(to_json(response), separators=(",", ":"), ensure_ascii=False)
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class Gateway:
    """The aiohttp application and the gRPC channels (both live on the server's loop)."""

    def __init__(
        self, settings: GatewaySettings, routes: Sequence[Route], metrics: GatewayMetrics
    ) -> None:
        self.settings = settings
        self.router = Router(routes)
        self.metrics = metrics
        self.openapi = openapi_document(routes)
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.ready = False

    def _channel(self, backend: str) -> grpc.aio.Channel | None:
        if backend in self.channels:
            return self.channels[backend]
        address = self.settings.backends.address(backend)
        if not address:
            return None
        options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
        backends = self.settings.backends
        if backends.tls:
            credentials = client_credentials(backends.tls_ca, backends.tls_cert, backends.tls_key)
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        self.channels[backend] = channel
        return channel

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=1.0)

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/openapi.json", self.openapi_json)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def readyz(self, _request: web.Request) -> web.Response:
        status = 200 if self.ready else 503
        return web.json_response({"ready": self.ready}, status=status)

    async def openapi_json(self, _request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    # --- one call ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        label = "none"
        path = request.rel_url.raw_path
        try:
            try:
                match = self.router.match(request.method, path)
            except NoRoute as missing:
                if missing.allowed:
                    raise Problem(
                        405,
                        "UNIMPLEMENTED",
                        f"{request.method} is not allowed on this path",
                        allow=missing.allowed,
                    ) from None
                raise Problem(404, "NOT_FOUND", "no such route") from None
            route = match.route
            label = route.name
            authorization = self._authorization(request)
            body = await self._body(request) if route.body else None
            try:
                message = build_request(route, match.variables, list(request.query.items()), body)
            except Violation as bad:
                raise Problem.bad_request(bad.field, bad.description) from None
            channel = self._channel(route.backend)
            if channel is None:
                raise Problem(
                    503, "UNAVAILABLE", f"{route.service} is not configured on this gateway"
                )
            context = extract_grpc_metadata([(k.lower(), v) for k, v in request.headers.items()])
            with tracer.start_as_current_span(
                route.name, context=context, kind=trace.SpanKind.SERVER
            ) as span:
                span.set_attribute("http.route", route.template.text)
                metadata = inject_grpc_metadata([("authorization", authorization)])
                if route.streaming:
                    self._resume(request, message)
                    return await self._stream(request, route, channel, message, metadata, label)
                response = await self._unary(route, channel, message, metadata)
            answer = web.json_response(to_json(response, route))
        except Problem as problem:
            answer = problem_response(problem)
        except grpc.aio.AioRpcError as error:
            answer = problem_response(
                from_rpc(error.code(), error.details(), error.trailing_metadata())
            )
        if answer.status >= 500:
            log.warning("%s %s answered %s", request.method, path, answer.status)
        self.metrics.requests.labels(label, str(answer.status)).inc()
        if label != "none":
            self.metrics.latency.labels(label).observe(time.monotonic() - started)
        return answer

    @staticmethod
    def _authorization(request: web.Request) -> str:
        """The caller's ``Authorization: Bearer …``, checked for shape only (the service
        checks the key itself); absent or malformed is 401 without calling anyone."""
        value = request.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if not value:
            raise Problem(401, "UNAUTHENTICATED", "missing Authorization: Bearer <API key>")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "UNAUTHENTICATED", "Authorization must be 'Bearer <API key>'")
        return f"Bearer {token.strip()}"

    async def _body(self, request: web.Request) -> Any:
        """The JSON body: at most GATEWAY_MAX_BODY_BYTES (413), JSON only (415)."""
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Problem(413, "RESOURCE_EXHAUSTED", f"request body over {limit} bytes")
        data = bytearray()
        while chunk := await request.content.read(65536):
            data += chunk
            if len(data) > limit:
                raise Problem(413, "RESOURCE_EXHAUSTED", f"request body over {limit} bytes")
        if not data:
            return None
        if request.content_type not in JSON_TYPES or request.charset not in (None, "utf-8"):
            raise Problem(
                415,
                "INVALID_ARGUMENT",
                "the body must be Content-Type: application/json (UTF-8)",
                extra_headers={"Accept": "application/json"},
            )
        return parse_json(bytes(data))

    async def _unary(
        self,
        route: Route,
        channel: grpc.aio.Channel,
        message: Message,
        metadata: Sequence[tuple[str, str]],
    ) -> Message:
        output = message_factory.GetMessageClass(route.method.output_type)
        call = channel.unary_unary(
            route.grpc_path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )
        response: Message = await call(
            message, metadata=tuple(metadata), timeout=self.settings.timeout_seconds
        )
        return response

    @staticmethod
    def _resume(request: web.Request, message: Message) -> None:
        """``Last-Event-ID`` (sent by a reconnecting EventSource) is the resume cursor."""
        last = request.headers.get(LAST_EVENT_ID)
        if last is None or "after_sequence" not in message.DESCRIPTOR.fields_by_name:
            return
        if not last.isdigit() or int(last) >= 2**64:
            raise Problem.bad_request(LAST_EVENT_ID, "must be a sequence (a decimal integer)")
        message.after_sequence = int(last)  # type: ignore[attr-defined]

    async def _stream(
        self,
        request: web.Request,
        route: Route,
        channel: grpc.aio.Channel,
        message: Message,
        metadata: Sequence[tuple[str, str]],
        label: str,
    ) -> web.StreamResponse:
        """A server-streaming call as server-sent events.

        The service's first answer is awaited briefly, so that a refusal (a bad key, a
        malformed filter, too many streams) is still a plain HTTP problem; after the
        headers are sent, a failure ends the stream with an ``error`` event carrying it.
        """
        output = message_factory.GetMessageClass(route.method.output_type)
        call = channel.unary_stream(
            route.grpc_path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )(message, metadata=tuple(metadata))
        first = asyncio.ensure_future(call.read())
        try:
            await asyncio.wait({first}, timeout=self.settings.stream_open_seconds)
            if first.done():
                first.result()  # a refusal raises here, before any header is sent
        except BaseException:
            call.cancel()
            raise
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self.metrics.requests.labels(label, "200").inc()
        self.metrics.streams.inc()
        try:
            await response.prepare(request)
            await response.write(b": stream open\n\n")
            pending: asyncio.Future[Any] | None = first
            while True:
                item = await (pending if pending is not None else call.read())
                pending = None
                if item is grpc.aio.EOF:
                    break
                await response.write(sse_event(item))
        except grpc.aio.AioRpcError as error:
            problem = from_rpc(error.code(), error.details(), error.trailing_metadata())
            data = json.dumps(problem.body(), separators=(",", ":"))
            await response.write(f"event: error\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            call.cancel()
            self.metrics.streams.dec()
        return response


class GatewayApp:
    """The gateway on its own thread and event loop (``start`` returns once it listens)."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        routes: Sequence[Route] | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = Gateway(settings, routes or load_routes(), metrics or default_metrics())
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self.runner = web.AppRunner(self.gateway.application(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = int(sockets[0].getsockname()[1])
        self.gateway.ready = True

    async def _stop(self) -> None:
        self.gateway.ready = False
        if self.runner is not None:
            await self.runner.cleanup()
        await self.gateway.close()

    def start(self) -> GatewayApp:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._start())
            except BaseException as error:
                failure.append(error)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="gateway-http", daemon=True)
        self.thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=15)


def main() -> int:
    """``python -m residuals.gateway``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        GatewaySettings,
        lambda settings: GatewayApp(settings).start(),
        describe_running=lambda app: {"http_port": app.port},
    )
