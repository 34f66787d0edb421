"""Royalty case files (YAML): licences, events in arrival order, and optional expectations.

Reading a file is this adapter's job; the rules live in :mod:`residuals.domain`. A problem
with the file itself is a :class:`CaseError` naming the file and the field; a problem with
an *event* is not: invalid events are data the rules send to the dead-letter topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from residuals.domain.approvals import DEFAULT_MAX_RENDERS, Approval
from residuals.domain.events import Rejection, UsageEvent, parse_event, parse_timestamp
from residuals.domain.licence_spec import SpecError, parse_licence, to_decimal
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.vocabulary import RejectReason

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CaseError(ValueError):
    """The case file is unreadable or a field in it is invalid."""

    def __init__(self, path: Path | str, field_path: str, message: str) -> None:
        super().__init__(f"{path}: {field_path}: {message}")
        self.path = str(path)
        self.field_path = field_path


@dataclass
class Case:
    name: str
    period: Period
    licences: list[Licence]
    raw_events: list[Mapping[str, Any]]
    thresholds: dict[str, Decimal] = field(default_factory=dict)
    carried_in: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    expected: dict[str, Any] | None = None
    more_events: list[Iterable[Mapping[str, Any]]] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)

    def events(self) -> Iterator[UsageEvent | Rejection]:
        """Parsed events in arrival order (invalid ones as rejections)."""
        for raw in self.raw_events:
            yield parse_event(raw)
        for source in self.more_events:
            for raw in source:
                yield as_rejection(raw) if DEAD_LETTER in raw else parse_event(raw)


DEAD_LETTER = "dead_letter"


def as_rejection(raw: Mapping[str, Any]) -> Rejection:
    """A dead letter only streaming checks can decide (BAD_SIGNATURE, TOO_LATE, IN_FUTURE,
    OVERSIZED), stored as ``{"dead_letter": REASON, "vendor_id", "event_id", "detail"}``:
    it is counted in the statement's ``dlq`` like any rejection, but cannot be re-judged."""
    return Rejection(
        RejectReason(raw[DEAD_LETTER]),
        str(raw.get("detail") or "decided when the event was received"),
        raw.get("vendor_id"),
        raw.get("event_id"),
    )


def read_event_lines(path: Path | str) -> Iterator[dict[str, Any]]:
    """Stored events as JSON lines (one event object per line), streamed in file order.

    A line may also be a stored dead letter (see :func:`as_rejection`)."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise CaseError(path, "(file)", exc.strerror or str(exc)) from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise CaseError(path, f"line {number}", f"not a JSON object: {exc}") from None
            if not isinstance(raw, dict):
                raise CaseError(path, f"line {number}", "not a JSON object")
            if DEAD_LETTER in raw and raw[DEAD_LETTER] not in RejectReason.__members__:
                reasons = ", ".join(RejectReason)
                raise CaseError(path, f"line {number}.{DEAD_LETTER}", f"must be one of {reasons}")
            yield raw


def expand_repeats(raw: Mapping[str, Any], where: str) -> Iterator[dict[str, Any]]:
    """``repeat: N`` stands for N events ``<id>-0 … -(N-1)``, ``every_seconds`` apart."""
    event = dict(raw)
    repeat = event.pop("repeat", None)
    every = event.pop("every_seconds", 1)
    if repeat is None:
        yield event
        return
    for name, value in (("repeat", repeat), ("every_seconds", every)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (1 if name == "repeat" else 0)
        ):
            raise SpecError(f"{where}.{name}", f"must be a whole number, got {value!r}")
    try:
        start = parse_timestamp(event.get("occurred_at"))
    except (ValueError, TypeError):
        raise SpecError(
            f"{where}.occurred_at", "a repeated event needs a valid occurred_at"
        ) from None
    for i in range(repeat):
        copy = dict(event)
        copy["event_id"] = f"{event.get('event_id')}-{i}"
        copy["occurred_at"] = start + timedelta(seconds=i * every)
        if copy.get("kind") == "RENDER" and copy.get("render_id") is not None:
            copy["render_id"] = f"{copy['render_id']}-{i}"
        yield copy


def _carried_in(value: Any) -> dict[tuple[str, str], Decimal]:
    carried: dict[tuple[str, str], Decimal] = {}
    if isinstance(value, Mapping):
        for payee, by_currency in value.items():
            if not isinstance(by_currency, Mapping):
                raise SpecError(f"carried_in.{payee}", "must map currency to amount")
            for currency, amount in by_currency.items():
                carried[(str(payee), str(currency))] = to_decimal(
                    amount, f"carried_in.{payee}.{currency}"
                )
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise SpecError(f"carried_in[{i}]", "must be a mapping")
            key = (str(item.get("payee_id")), str(item.get("currency")))
            carried[key] = to_decimal(item.get("amount"), f"carried_in[{i}].amount")
    elif value is not None:
        raise SpecError("carried_in", "must be a mapping or a list")
    return carried


def _approvals(value: Any) -> list[Approval]:
    """``approvals:`` (§5a): ``{approval_id, licence_id, category, valid_from, valid_until?,
    max_renders?}`` each."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError("approvals", "must be a list")
    approvals: list[Approval] = []
    for i, item in enumerate(value):
        where = f"approvals[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, "must be a mapping")
        texts: dict[str, str] = {}
        for key in ("approval_id", "licence_id", "category"):
            text = str(item.get(key) or "").strip()
            if not text:
                raise SpecError(f"{where}.{key}", "is required")
            texts[key] = text
        times: dict[str, datetime | None] = {}
        for key in ("valid_from", "valid_until"):
            raw = item.get(key)
            if raw is None:
                if key == "valid_from":
                    raise SpecError(f"{where}.{key}", "is required")
                times[key] = None
                continue
            try:
                times[key] = parse_timestamp(raw)
            except (ValueError, TypeError):
                raise SpecError(f"{where}.{key}", f"{raw!r} is not ISO 8601") from None
        until, start = times["valid_until"], times["valid_from"]
        if until is not None and start is not None and until <= start:
            raise SpecError(f"{where}.valid_until", "must be after valid_from")
        renders = item.get("max_renders", DEFAULT_MAX_RENDERS)
        if isinstance(renders, bool) or not isinstance(renders, int) or renders < 1:
            raise SpecError(f"{where}.max_renders", f"must be a whole number >= 1, got {renders!r}")
        assert start is not None
        approvals.append(
            Approval(valid_from=start, valid_until=until, max_renders=renders, **texts)
        )
    ids = [a.approval_id for a in approvals]
    if len(set(ids)) != len(ids):
        raise SpecError("approvals", "approval ids must be unique")
    return approvals


def parse_case(data: Any, name: str = "case") -> Case:
    """Build a case from already-loaded YAML/JSON data; raises SpecError naming the field."""
    if not isinstance(data, Mapping):
        raise SpecError("(root)", "a case file must be a mapping")
    try:
        period = Period.parse(str(data.get("period", "")))
    except ValueError as exc:
        raise SpecError("period", str(exc)) from None
    licences_raw = data.get("licences")
    if not isinstance(licences_raw, list) or not licences_raw:
        raise SpecError("licences", "must be a non-empty list")
    licences = [parse_licence(item, f"licences[{i}]") for i, item in enumerate(licences_raw)]
    ids = [lic.licence_id for lic in licences]
    if len(set(ids)) != len(ids):
        raise SpecError("licences", "licence ids must be unique")
    events_raw = data.get("events") or []
    if not isinstance(events_raw, list):
        raise SpecError("events", "must be a list")
    raw_events: list[Mapping[str, Any]] = []
    for i, item in enumerate(events_raw):
        if not isinstance(item, Mapping):
            raise SpecError(f"events[{i}]", "must be a mapping")
        raw_events.extend(expand_repeats(item, f"events[{i}]"))
    thresholds_raw = data.get("payout_thresholds") or {}
    if not isinstance(thresholds_raw, Mapping):
        raise SpecError("payout_thresholds", "must map currency to amount")
    thresholds = {
        str(c): to_decimal(v, f"payout_thresholds.{c}") for c, v in thresholds_raw.items()
    }
    expected = data.get("expected")
    return Case(
        name=str(data.get("case") or name),
        period=period,
        licences=licences,
        raw_events=raw_events,
        thresholds=thresholds,
        carried_in=_carried_in(data.get("carried_in")),
        expected=expected if isinstance(expected, dict) else None,
        approvals=_approvals(data.get("approvals")),
    )


def load_case(path: Path | str) -> Case:
    """Read and validate a case file; every failure is a CaseError naming file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaseError(path, "(file)", exc.strerror or str(exc)) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise CaseError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return parse_case(data, path.stem)
    except SpecError as exc:
        raise CaseError(path, exc.path, exc.message) from None
