"""What the operators' commands print for machines (``--json``) and for people waiting.

``--json`` prints one JSON document on stdout - amounts as decimal strings, times as ISO
8601 - so finance scripts never parse tables. Progress goes to stderr, and only when stderr
is a terminal, so pipes, scripts and CI logs stay clean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_json(document: Any) -> None:
    """``document`` as indented JSON with sorted keys on stdout."""
    print(json.dumps(document, default=_plain, indent=2, sort_keys=True))


class Progress:
    """A step label and an optional count; does nothing when stderr is not a terminal."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar = bar
        self._task = task

    def step(self, description: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def track(self, items: Iterable[T], every: int = 10_000) -> Iterator[T]:
        """``items`` unchanged, counted in steps of ``every`` (cheap on millions)."""
        if self._bar is None:
            yield from items
            return
        n = 0
        for item in items:
            yield item
            n += 1
            if n == every:
                self._bar.advance(self._task, n)
                n = 0
        self._bar.advance(self._task, n)


@contextmanager
def progress(
    description: str, total: int | None = None, *, force: bool = False
) -> Iterator[Progress]:
    """A transient progress line on stderr while the block runs (when stderr is a TTY)."""
    if not (force or sys.stderr.isatty()):
        yield Progress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as Bar

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    else:
        columns += [TextColumn("{task.completed:,}")]
    columns.append(TimeElapsedColumn())
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        yield Progress(bar, bar.add_task(description, total=total))
