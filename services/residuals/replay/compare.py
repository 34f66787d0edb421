"""Compare a statement document with a case's ``expected`` block, amounts as decimals."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def differences(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Human-readable paths where the two documents differ (empty when equal)."""
    a, e = _normal(actual), _normal(expected)
    return list(_diff(a, e, path or "$"))


def _diff(a: Any, e: Any, path: str) -> Any:
    if isinstance(a, dict) and isinstance(e, dict):
        for key in sorted(set(a) | set(e)):
            if key not in a:
                yield f"{path}.{key}: missing (expected {e[key]!r})"
            elif key not in e:
                yield f"{path}.{key}: unexpected {a[key]!r}"
            else:
                yield from _diff(a[key], e[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(e, list):
        if len(a) != len(e):
            yield f"{path}: {len(a)} items, expected {len(e)}"
        for i, (x, y) in enumerate(zip(a, e, strict=False)):
            yield from _diff(x, y, f"{path}[{i}]")
    elif a != e:
        yield f"{path}: {a!s} != expected {e!s}"
