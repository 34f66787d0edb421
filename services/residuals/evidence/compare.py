"""What differs between two statement documents, named the way people read statements.

The verifier compares the ``statement.json`` a bundle carries with the statement its
events recompute. A hash says only *that* they differ; this says where, with the
identities statements already use: licences by id, lines by their adjustment reference
(``RENDER/v1/tier-1``, ``held/FORBIDDEN_CATEGORY/RENDER``: :mod:`residuals.domain.adjustments`),
allocations and payees by payee (and currency), violations by kind, dead letters by
reason. Everything shown comes from a bundle, so it is escaped for a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from residuals.domain.adjustments import held_ref, line_ref
from residuals.domain.bounds import printable

#: How list items are identified, by the list's key in a §10 document or a part.
_IDENTITIES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "licences": lambda d: str(d["licence_id"]),
    "lines": line_ref,
    "held": held_ref,
    "allocations": lambda d: str(d["payee_id"]),
    "payees": lambda d: f"{d['payee_id']}/{d['currency']}",
    "violations": lambda d: str(d["kind"]),
    "dlq": lambda d: str(d["reason"]),
}


def _show(value: Any) -> str:
    return printable(json.dumps(value, ensure_ascii=False, sort_keys=True), 80)


def _keyed(name: str, items: list[Any]) -> dict[str, Any] | None:
    """``items`` by identity when the list is one of a statement's, else None."""
    identity = _IDENTITIES.get(name)
    if identity is None or not all(isinstance(item, dict) for item in items):
        return None
    try:
        keyed = {identity(item): item for item in items}
    except (KeyError, TypeError):
        return None
    return keyed if len(keyed) == len(items) else None


def _missing(where: str, stated: Any, recomputed: Any, *, in_stated: bool) -> str:
    if in_stated:
        return f"{printable(where, 300)}: statement.json {_show(stated)}, not recomputed"
    return f"{printable(where, 300)}: not in statement.json, recomputed {_show(recomputed)}"


def _compare(where: str, left: Mapping[Any, Any], right: Mapping[Any, Any], key: Any) -> list[str]:
    if key not in left:
        return [_missing(where, None, right[key], in_stated=False)]
    if key not in right:
        return [_missing(where, left[key], None, in_stated=True)]
    return differences(left[key], right[key], where)


def differences(stated: Any, recomputed: Any, path: str = "") -> list[str]:
    """Every difference, as ``path: statement.json X, recomputed Y`` lines."""
    out: list[str] = []
    if isinstance(stated, dict) and isinstance(recomputed, dict):
        for key in sorted(set(stated) | set(recomputed), key=str):
            where = f"{path}.{key}" if path else str(key)
            out.extend(_compare(where, stated, recomputed, key))
        return out
    if isinstance(stated, list) and isinstance(recomputed, list):
        name = path.rsplit(".", 1)[-1].split("[", 1)[0]
        left, right = _keyed(name, stated), _keyed(name, recomputed)
        if left is None or right is None:
            left = {str(n): item for n, item in enumerate(stated)}
            right = {str(n): item for n, item in enumerate(recomputed)}
        for key in [*left, *(k for k in right if k not in left)]:
            out.extend(_compare(f"{path}[{key}]", left, right, key))
        return out
    if stated != recomputed or type(stated) is not type(recomputed):
        where = printable(path, 300)
        out.append(f"{where}: statement.json {_show(stated)}, recomputed {_show(recomputed)}")
    return out
