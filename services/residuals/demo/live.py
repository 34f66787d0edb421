"""What the demo shows while the month runs.

* :class:`AlertWatcher`: a ``WatchAlerts`` subscriber (the finance key sees every alert),
  resuming after the last sequence seen if the stream breaks, exactly as a talent's app
  would;
* :class:`Probe`: the pipeline's progress as an operator sees it: the meter's Prometheus
  series (records rated) and the ledger writer's running totals (estimated royalties per
  licence, hence per avatar; statements are recomputed exactly at close);
* :class:`LiveView`: an ANSI frame redrawn in place on a terminal, or periodic log lines
  (and one line per alert) when stdout is not a terminal.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TextIO

import grpc
import psycopg

from residuals.ledger import directory as ledger
from residuals.platform.auth import bearer_metadata
from residuals.v1 import alert_service_pb2, alert_service_pb2_grpc, alerts_pb2, common_pb2


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class AlertLine:
    """One change on the alert stream, as the demo shows and records it."""

    sequence: int
    change: str
    kind: str
    severity: str
    licence_id: str
    avatar_id: str
    detail: str
    event_ids: tuple[str, ...]
    suspended: bool
    received: float
    #: The first alert of its kind for its licence, or a suspension: worth a line of its own.
    notable: bool = False

    @classmethod
    def of(cls, alert: alerts_pb2.Alert) -> AlertLine:
        return cls(
            sequence=alert.sequence,
            change=enum_name(alerts_pb2.AlertChange, alert.change, "ALERT_CHANGE_"),
            kind=enum_name(common_pb2.ViolationKind, alert.kind, "VIOLATION_KIND_"),
            severity=enum_name(common_pb2.Severity, alert.severity, "SEVERITY_"),
            licence_id=alert.licence_id,
            avatar_id=alert.avatar_id,
            detail=alert.detail,
            event_ids=tuple(alert.event_ids),
            suspended=alert.suspended_licence,
            received=time.time(),
        )

    def document(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "change": self.change,
            "kind": self.kind,
            "severity": self.severity,
            "licence_id": self.licence_id,
            "avatar_id": self.avatar_id,
            "event_ids": list(self.event_ids),
            "detail": self.detail,
        }

    def text(self) -> str:
        if self.change == "LICENCE_SUSPENDED":
            return f"{self.licence_id}: licence suspended automatically ({self.kind})"
        events = f" [{', '.join(self.event_ids[:2])}]" if self.event_ids else ""
        return f"{self.severity:<8} {self.kind:<22} {self.licence_id}{events} {self.detail}"


class AlertWatcher:
    """``WatchAlerts`` in a thread; reconnects after the last sequence it saw."""

    def __init__(self, address: str, api_key: str, on_alert: Callable[[AlertLine], None]) -> None:
        self.address = address
        self.api_key = api_key
        self.on_alert = on_alert
        self.lines: list[AlertLine] = []
        self.last_sequence = 0
        self.errors = 0
        self._seen: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="demo-watch-alerts", daemon=True)

    def start(self) -> AlertWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        channel = grpc.insecure_channel(self.address)
        stub = alert_service_pb2_grpc.AlertServiceStub(channel)
        try:
            while not self._stop.is_set():
                request = alert_service_pb2.WatchAlertsRequest(
                    after_sequence=self.last_sequence, heartbeat_seconds=2
                )
                try:
                    self._call = stub.WatchAlerts(request, metadata=bearer_metadata(self.api_key))
                    for item in self._call:
                        if item.HasField("alert"):
                            line = self._add(AlertLine.of(item.alert))
                            self.on_alert(line)
                except grpc.RpcError:
                    if self._stop.is_set():
                        return
                    self.errors += 1
                    self._stop.wait(1.0)
        finally:
            channel.close()

    def _add(self, line: AlertLine) -> AlertLine:
        with self._lock:
            key = (line.change, line.kind, line.licence_id)
            if line.change == "LICENCE_SUSPENDED" or key not in self._seen:
                self._seen.add(key)
                line = replace(line, notable=True)
            self.lines.append(line)
            self.last_sequence = max(self.last_sequence, line.sequence)
        return line

    def snapshot(self) -> list[AlertLine]:
        with self._lock:
            return list(self.lines)

    def raised(self) -> Counter[str]:
        return Counter(line.kind for line in self.snapshot() if line.change == "RAISED")

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """``name{labels}`` -> value sums by metric name (samples of a /metrics page)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8", errors="replace")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums


@dataclass
class Progress:
    """One reading of the pipeline."""

    rated: float = 0.0
    stored: int = 0
    accrued: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (licence, cur)
    held: dict[tuple[str, str], Decimal] = field(default_factory=dict)


class Probe:
    """Reads the meter's metrics and the ledger writer's running totals."""

    def __init__(self, database_url: str, meter_metrics_url: str, period: str) -> None:
        self.database_url = database_url
        self.meter_metrics_url = meter_metrics_url
        self.period = period
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url, autocommit=True, connect_timeout=5, application_name="demo"
            )
        return self._conn

    def stored(self) -> int:
        """Records the ledger writer stored (usage records and dead letters)."""
        return ledger.stored_records(self._connection())

    def read(self) -> Progress:
        progress = Progress()
        try:
            metrics = scrape(self.meter_metrics_url)
            progress.rated = metrics.get("residuals_meter_events_total", 0.0)
        except OSError:
            pass
        try:
            progress.stored = self.stored()
            for licence, currency, accrued, held in ledger.licence_totals(
                self._connection(), self.period
            ):
                progress.accrued[(licence, currency)] = accrued
                progress.held[(licence, currency)] = held
        except psycopg.Error:
            self.close()
        return progress

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def money(amount: Decimal, currency: str) -> str:
    digits = 0 if currency == "JPY" else 2
    return f"{amount:,.{digits}f}"


_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width - 1`` visible characters (ANSI escapes kept, not counted), so
    no line wraps and the frame can be redrawn in place."""
    visible = 0
    out: list[str] = []
    position = 0
    for match in _ESCAPE.finditer(line):
        text = line[position : match.start()]
        room = width - 1 - visible
        out.append(text[:room])
        visible += min(len(text), max(room, 0))
        out.append(match.group())
        position = match.end()
    out.append(line[position:][: max(width - 1 - visible, 0)])
    return "".join(out)


def wrap(prefix: str, items: list[str], width: int, separator: str = "  ") -> list[str]:
    """``items`` joined after ``prefix``, on as many lines as ``width`` needs."""
    lines: list[str] = []
    current = prefix
    for item in items:
        candidate = current + (separator if current.strip() and current != prefix else "") + item
        if len(candidate) > width - 1 and current != prefix:
            lines.append(current)
            current = " " * len(prefix) + item
        else:
            current = candidate
    lines.append(current[: width - 1])
    return lines


@dataclass
class Frame:
    """Everything one redraw shows."""

    title: str
    day: float
    published: int
    total: int
    rates: tuple[float, float, float]  # published/s, rated/s, stored/s
    progress: Progress
    avatars: dict[str, tuple[str, str]]  # licence -> (avatar label, talent name)
    alerts: list[AlertLine]
    alert_count: int
    notes: list[str]
    metrics: list[str]
    senders: list[str] = field(default_factory=list)


class LiveView:
    """Redraws a frame in place on a terminal; otherwise writes log lines."""

    def __init__(self, out: TextIO | None = None, *, interval: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.interval = interval
        self._last_log = 0.0
        self._lines_drawn = 0

    def log(self, message: str) -> None:
        """A line that stays (above the frame on a terminal)."""
        if self.tty and self._lines_drawn:
            self.out.write(f"\x1b[{self._lines_drawn}F\x1b[J")
            self._lines_drawn = 0
        self.out.write(message + "\n")
        self.out.flush()

    def alert(self, line: AlertLine) -> None:
        """Non-terminal output: the first alert of each kind per licence, and suspensions
        (the periodic line counts them all)."""
        if not self.tty and line.notable:
            self.log(f"[alert] {line.text()}")

    def show(self, frame: Frame, *, force: bool = False) -> None:
        if self.tty:
            self._draw(frame)
            return
        now = time.monotonic()
        if force or now - self._last_log >= self.interval:
            self._last_log = now
            pub, rated, stored = frame.rates
            self.log(
                f"[demo] day {frame.day:4.1f}/30  published {frame.published:,}/{frame.total:,}"
                f" ({pub:,.0f}/s)  rated {frame.progress.rated:,.0f} ({rated:,.0f}/s)"
                f"  ledgered {frame.progress.stored:,} ({stored:,.0f}/s)"
                f"  alerts {frame.alert_count}"
            )

    def _draw(self, frame: Frame) -> None:
        width = max(20, min(shutil.get_terminal_size((100, 40)).columns, 120))
        bar_width = max(10, width - 50)
        done = frame.published / frame.total if frame.total else 1.0
        bar = "█" * int(bar_width * done) + "░" * (bar_width - int(bar_width * done))
        pub, rated, stored = frame.rates
        p = frame.progress
        lines = [
            f"\x1b[1m{frame.title}\x1b[0m",
            f" day {frame.day:4.1f}/30 {bar} {frame.published:,}/{frame.total:,} events",
            f" published {pub:7,.0f}/s   rated {p.rated:9,.0f} ({rated:,.0f}/s)"
            f"   ledgered {p.stored:9,} ({stored:,.0f}/s)",
            "",
            " \x1b[1mRoyalties accruing\x1b[0m (ledger running totals, estimates)"
            "             earned         held",
        ]
        order = {c: i for i, c in enumerate(("USD", "EUR", "GBP", "JPY"))}
        ranked = sorted(
            p.accrued.items(), key=lambda kv: (order.get(kv[0][1], 9), -kv[1], kv[0][0])
        )
        for (licence, currency), accrued in ranked[:14]:
            avatar, talent = frame.avatars.get(licence, (licence, ""))
            held = p.held.get((licence, currency), Decimal(0))
            lines.append(
                f"  {avatar:<16} {talent[:22]:<22} {licence:<18} {currency}"
                f" {money(accrued, currency):>12} {money(held, currency):>12}"[:width]
            )
        raised = [a for a in frame.alerts if a.change == "RAISED"]
        by_kind = Counter(a.kind for a in raised)
        lines += [
            "",
            f" \x1b[1mAlerts\x1b[0m (gRPC WatchAlerts): {len(raised)} raised, "
            f"{sum(1 for a in frame.alerts if a.change == 'LICENCE_SUSPENDED')} licence"
            " suspensions",
            *wrap("  ", [f"{k} {n}" for k, n in by_kind.most_common()], width),
        ]
        colour = {"CRITICAL": "\x1b[31m", "HIGH": "\x1b[33m", "MEDIUM": "\x1b[36m"}
        for alert in [a for a in frame.alerts if a.notable][-8:]:
            tint = (
                "\x1b[35m"
                if alert.change == "LICENCE_SUSPENDED"
                else colour.get(alert.severity, "")
            )
            lines.append(f"  {tint}{alert.text()[: width - 4]}\x1b[0m")
        if frame.notes:
            lines += ["", " \x1b[1mHappening now\x1b[0m"]
            lines += [f"  {n[: width - 4]}" for n in frame.notes[-4:]]
        if frame.senders:
            lines += ["", *wrap(" SDK clients: ", frame.senders, width, " · ")]
        lines += ["", *wrap(" Prometheus http://127.0.0.1:PORT/metrics: ", frame.metrics, width)]
        if self._lines_drawn:
            self.out.write(f"\x1b[{self._lines_drawn}F")
        self.out.write("\x1b[J" + "\n".join(fit(line, width) for line in lines) + "\n")
        self.out.flush()
        self._lines_drawn = len(lines)

    def finish(self) -> None:
        """Leave the last frame on screen and continue below it."""
        self._lines_drawn = 0
