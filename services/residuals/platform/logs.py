"""Structured logging: one JSON object per line, tagged with the service and the trace.

Every service logs the same shape so log pipelines need one parser, and each line carries
``trace_id``/``span_id`` of the active OpenTelemetry span, so a log line can be joined to
the trace of the event that caused it (across Kafka hops). ``LOG_FORMAT=text`` gives a
readable single-line format for humans at a terminal.

Named ``logs`` rather than ``logging`` so it never shadows the standard library module.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is emitted.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

# Marks the handler this module installs, so reconfiguring replaces it instead of stacking.
_HANDLER_NAME = "residuals"


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span as lower-case hex, or None without one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newlines inside), stable key order first.

    Keys: ``ts`` (RFC 3339 UTC), ``level``, ``service``, ``logger``, ``message``, then
    ``trace_id``/``span_id`` when a span is active, ``exception`` when there is one, and
    any ``extra=`` fields. Values JSON cannot encode are written with ``str()``.
    """

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "service": self.service_name,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = current_trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable single line, with the trace id when a span is active."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {self.service_name} "
            f"{record.name}: {record.getMessage()}"
        )
        ids = current_trace_ids()
        if ids is not None:
            line += f" trace_id={ids[0]}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def make_handler(
    service_name: str, *, log_format: str = "json", stream: IO[str] | None = None
) -> logging.Handler:
    """A stream handler (stdout by default, the container convention) with our format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.set_name(_HANDLER_NAME)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service_name))
    elif log_format == "text":
        handler.setFormatter(TextFormatter(service_name))
    else:
        raise ValueError(f"unknown log format {log_format!r} (json or text)")
    return handler


def configure_logging(
    service_name: str,
    *,
    level: str = "INFO",
    log_format: str = "json",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send all logging through one handler on the root logger; return that handler.

    Idempotent: a handler installed by an earlier call is replaced, not duplicated. Other
    handlers (pytest's capture, for instance) are left alone.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = make_handler(service_name, log_format=log_format, stream=stream)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries: keep their warnings, drop their per-request info lines.
    quiet_level = max(logging.getLevelNamesMapping()[level], logging.WARNING)
    for noisy in ("aiokafka", "kafka", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(quiet_level)
    return handler
