"""Typed, validated configuration from environment variables.

Every service has exactly one frozen dataclass of settings, built once at start-up by
:func:`load`. A missing or malformed variable fails immediately with the variable's name,
so a misconfigured pod crash-loops with a readable message instead of failing later.
Shared groups (Kafka, PostgreSQL, telemetry) are nested dataclasses so each is declared once.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable is missing or invalid; the message names it."""


def env(
    name: str,
    default: Any = MISSING,
    *,
    help: str,
    choices: tuple[str, ...] | None = None,
    minimum: int | float | None = None,
    maximum: int | float | None = None,
) -> Any:
    """Declare a setting read from environment variable ``name``."""
    metadata = {"env": name, "help": help, "choices": choices, "min": minimum, "max": maximum}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=metadata)


def group(cls: type[T]) -> Any:
    """Declare a nested settings group (its fields carry their own env names)."""
    return field(default_factory=cls, metadata={"group": True})


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(raw: str, target: Any, var: str) -> Any:
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0], var)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(target)
        return tuple(_convert(p.strip(), item_type, var) for p in raw.split(",") if p.strip())
    converters: dict[Any, Callable[[str], Any]] = {
        str: str,
        int: int,
        float: float,
        Path: Path,
        Decimal: Decimal,
    }
    if target is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{var}={raw!r} is not a boolean (use true/false)")
    try:
        return converters[target](raw.strip())
    except KeyError:
        raise TypeError(f"unsupported setting type {target!r} for {var}") from None
    except (ValueError, InvalidOperation):
        name = getattr(target, "__name__", str(target))
        raise ConfigError(f"{var}={raw!r} is not a valid {name}") from None


def _check(value: Any, meta: Mapping[str, Any], var: str) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{var}={value!r} must be one of {', '.join(choices)}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value is not None and value < lo:
        raise ConfigError(f"{var}={value!r} must be >= {lo}")
    if hi is not None and value is not None and value > hi:
        raise ConfigError(f"{var}={value!r} must be <= {hi}")


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from the environment, failing with the offending variable's name."""
    source = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("group"):
            values[f.name] = load(hints[f.name], source)
            continue
        var = f.metadata.get("env")
        if var is None:
            continue
        raw = source.get(var)
        if raw is None:
            if f.default is MISSING:
                raise ConfigError(f"{var} is required: {f.metadata['help']}")
            value = f.default
        else:
            value = _convert(raw, hints[f.name], var)
        _check(value, f.metadata, var)
        values[f.name] = value
    return cls(**values)


def describe(cls: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, help) rows for documentation and `--help` output."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            rows.extend(describe(hints[f.name]))
        elif "env" in f.metadata:
            default = "(required)" if f.default is MISSING else repr(f.default)
            rows.append((f.metadata["env"], default, f.metadata["help"]))
    return rows


# --- shared groups -----------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = env(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092", help="Kafka bootstrap servers, host:port,..."
    )
    topic_prefix: str = env(
        "RESIDUALS_TOPIC_PREFIX", "", help="prefix for every topic name (test isolation)"
    )
    topic_partitions: int = env(
        "RESIDUALS_TOPIC_PARTITIONS",
        6,
        help="partitions of the topics services create (faust changelogs must match sources)",
        minimum=1,
    )
    security_protocol: str = env(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        help="how clients talk to the brokers",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = env(
        "KAFKA_SASL_MECHANISM",
        "SCRAM-SHA-512",
        help="SASL mechanism with a SASL_* protocol",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    sasl_username: str | None = env(
        "KAFKA_SASL_USERNAME", None, help="SASL principal (required with a SASL_* protocol)"
    )
    sasl_password: str | None = env(
        "KAFKA_SASL_PASSWORD", None, help="SASL password (required with a SASL_* protocol)"
    )
    ssl_ca_location: str | None = env(
        "KAFKA_SSL_CA_LOCATION", None, help="PEM CA bundle for SSL/SASL_SSL; unset = system CAs"
    )

    def __post_init__(self) -> None:
        if self.uses_sasl:
            for var, value in (
                ("KAFKA_SASL_USERNAME", self.sasl_username),
                ("KAFKA_SASL_PASSWORD", self.sasl_password),
            ):
                if not value:
                    raise ConfigError(f"{var} is required with {self.security_protocol}")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")


@dataclass(frozen=True)
class PostgresSettings:
    """Where and as whom to connect.

    ``dsn`` is the effective connection string: ``DATABASE_URL`` with ``DATABASE_USER`` /
    ``DATABASE_PASSWORD`` applied when set, so every connection a service opens (pools,
    LISTEN connections) uses its own role (residuals.platform.roles) while the URL itself
    (host, database, TLS options) is shared by every service and the migrator.
    """

    dsn: str = env(
        "DATABASE_URL",
        "postgresql://residuals@127.0.0.1:15432/residuals",
        help="PostgreSQL connection URL",
    )
    pool_min: int = env("DATABASE_POOL_MIN", 1, help="minimum pooled connections", minimum=0)
    pool_max: int = env("DATABASE_POOL_MAX", 8, help="maximum pooled connections", minimum=1)
    user: str | None = env(
        "DATABASE_USER",
        None,
        help="role to connect as, instead of DATABASE_URL's user (each service: its own)",
    )
    password: str | None = env(
        "DATABASE_PASSWORD", None, help="password of DATABASE_USER (from a Secret)"
    )

    def __post_init__(self) -> None:
        overrides = {k: v for k, v in (("user", self.user), ("password", self.password)) if v}
        if overrides:
            from psycopg.conninfo import make_conninfo

            try:
                effective = make_conninfo(self.dsn, **overrides)
            except Exception as exc:  # psycopg.ProgrammingError: an unparsable URL
                raise ConfigError(f"DATABASE_URL is not a valid connection string: {exc}") from None
            object.__setattr__(self, "dsn", effective)

    def __repr__(self) -> str:
        # The effective dsn may carry the password: never print it.
        return f"PostgresSettings(user={self.user!r}, pool={self.pool_min}..{self.pool_max})"


@dataclass(frozen=True)
class TelemetrySettings:
    service_name: str = env(
        "OTEL_SERVICE_NAME", "residuals", help="service name on traces, metrics and logs"
    )
    metrics_port: int = env(
        "METRICS_PORT", 0, help="Prometheus /metrics port (0 = disabled)", minimum=0, maximum=65535
    )
    otlp_endpoint: str | None = env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", None, help="OTLP gRPC endpoint; unset = no export"
    )
    log_level: str = env(
        "LOG_LEVEL",
        "INFO",
        help="log level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    log_format: str = env("LOG_FORMAT", "json", help="log format", choices=("json", "text"))


@dataclass(frozen=True)
class ReceiptSettings:
    """The secret the ingest gateway and the meter share to trust the gateway's receipt
    time (:mod:`residuals.codecs.receipt`)."""

    key_hex: str | None = env(
        "RESIDUALS_RECEIPT_KEY",
        None,
        help="hex secret (32 to 64 bytes) shared by the ingest gateway and the meter: the "
        "gateway stamps each accepted event's receipt time with it and the meter trusts only "
        "stamps it verifies (unset: the meter judges time by the broker's append time)",
    )

    def __post_init__(self) -> None:
        if self.key_hex:
            try:
                self.key()
            except ValueError as error:
                raise ConfigError(f"RESIDUALS_RECEIPT_KEY: {error}") from error

    def key(self) -> bytes | None:
        from residuals.codecs.receipt import parse_key

        return parse_key(self.key_hex) if self.key_hex else None
