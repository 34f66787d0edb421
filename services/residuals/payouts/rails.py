"""Payment rails: where a payout's money actually goes.

A rail is idempotent on the payout's idempotency key: asked twice for the same key it
pays once and answers with the same reference. That is what lets the payout loop retry
after any failure (including a crash after the rail paid but before we recorded it)
without ever paying twice.

* :class:`FileRail` writes one payment instruction file per key into a folder (for a bank
  file upload or an operator); an existing instruction is never rewritten.
* :class:`TestRail` keeps payments in memory and fails on demand (tests, demos).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol


class RailError(Exception):
    """The rail did not pay; the message is recorded as the payout's failure reason."""


@dataclass(frozen=True)
class PaymentInstruction:
    idempotency_key: str
    payout_id: str
    payee_id: str
    currency: str
    amount: Decimal
    period: str


class PaymentRail(Protocol):
    name: str

    def pay(self, instruction: PaymentInstruction) -> str:
        """Pay (once per idempotency key) and return the rail's reference; RailError if not."""
        ...


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FileRail:
    """Payment instructions as JSON files, one per idempotency key, written atomically."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, key: str) -> Path:
        return self.directory / (_UNSAFE.sub("_", key) + ".json")

    def pay(self, instruction: PaymentInstruction) -> str:
        try:
            return self._write(instruction)
        except OSError as error:
            raise RailError(f"file rail: cannot write the instruction: {error}") from error

    def _write(self, instruction: PaymentInstruction) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(instruction.idempotency_key)
        body = {
            "idempotency_key": instruction.idempotency_key,
            "payout_id": instruction.payout_id,
            "payee_id": instruction.payee_id,
            "currency": instruction.currency,
            "amount": format(instruction.amount, "f"),
            "period": instruction.period,
        }
        if target.exists():
            existing = json.loads(target.read_text(encoding="utf-8"))
            if existing != body:
                raise RailError(f"{target.name} already holds a different instruction")
            return target.name
        tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(body, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        try:
            os.link(tmp, target)  # fails if another writer got there first: never overwrite
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return target.name


@dataclass
class TestRail:
    """In-memory rail that de-duplicates like a real one and fails when told to."""

    __test__ = False  # not a pytest test class

    name: str = "test"
    fail_next: int = 0
    fail_when: Callable[[PaymentInstruction], bool] | None = None
    paid: dict[str, PaymentInstruction] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pay(self, instruction: PaymentInstruction) -> str:
        with self._lock:
            self.calls.append(instruction.idempotency_key)
            if instruction.idempotency_key in self.paid:
                return f"test:{instruction.idempotency_key}"
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RailError("test rail: failure requested")
            if self.fail_when is not None and self.fail_when(instruction):
                raise RailError("test rail: payee refused")
            self.paid[instruction.idempotency_key] = instruction
            return f"test:{instruction.idempotency_key}"


def make_rail(kind: str, directory: Path) -> PaymentRail:
    if kind == "file":
        return FileRail(directory)
    if kind == "test":
        return TestRail()
    raise ValueError(f"unknown payment rail {kind!r} (file or test)")
