"""The demo's month as a royalty case anyone can replay offline.

``case.yaml`` holds the licences exactly as the registry holds them at the end of the
month (every version and suspension window, read back over ``ListLicences``) and the
payout thresholds; ``events.jsonl`` holds every event that reached the platform as an
authentic event, in publishing order, as the rules see its signed payload. So

    residuals replay demo-output/case.yaml --events demo-output/events.jsonl --check

recomputes the closed statement with the same rules and compares it with the case's
``expected`` block: the statement, less the dead letters only the streaming path can
decide (a forged signature cannot be "replayed"; ``streaming-rejections.jsonl`` lists
them and the statement counts them in ``dlq``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from residuals.codecs import licences as licence_codec
from residuals.demo.administration import dump_yaml, plain
from residuals.demo.fleet import Published
from residuals.domain.events import Rejection
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.domain.statement import compute_statement
from residuals.domain.vocabulary import RejectReason
from residuals.licensing import terms
from residuals.replay.casefile import load_case, read_event_lines
from residuals.v1 import licence_pb2


def licence_spec(licence: Licence) -> dict[str, Any]:
    """A domain licence in the case-file shape (``parse_licence`` gives it back)."""
    identity = terms.Identity(
        licence.licence_id, licence.talent_id, licence.avatar_id, licence.vendor_id,
        licence.currency,
    )  # fmt: skip
    spec = terms.licence_spec(
        identity, [(v.effective_from, terms.complete_spec(v)) for v in licence.versions]
    )
    if not spec["amendments"]:
        del spec["amendments"]
    if licence.suspensions:
        spec["suspensions"] = [
            {"from": w.start, "until": w.end, **({"automatic": True} if w.automatic else {})}
            for w in licence.suspensions
        ]
    if licence.reinstatements:
        spec["reinstatements"] = list(licence.reinstatements)
    document: dict[str, Any] = plain(spec)
    if parse_licence(document, licence.licence_id) != licence:
        raise ValueError(f"{licence.licence_id}: the case-file form does not round-trip")
    return document


def registry_licences(messages: Iterable[licence_pb2.Licence]) -> list[Licence]:
    """Domain licences from the registry's snapshots, every window as a window (what the
    period close prices with)."""
    return sorted((licence_codec.from_proto(m) for m in messages), key=lambda lic: lic.licence_id)


def streaming_rejections(items: Iterable[Published]) -> list[Rejection]:
    out = []
    for item in items:
        if item.streaming_only:
            reason = item.reason if item.reason else RejectReason.BAD_SIGNATURE.value
            out.append(
                Rejection(
                    RejectReason(reason),
                    item.detail or item.note,
                    item.raw.get("vendor_id"),
                    item.raw.get("event_id"),
                )
            )
    return out


def without_streaming_only(
    document: dict[str, Any], rejections: Sequence[Rejection]
) -> dict[str, Any]:
    """The statement less the dead letters only the streaming path can decide."""
    counts: dict[str, int] = {}
    for rejection in rejections:
        counts[rejection.reason.value] = counts.get(rejection.reason.value, 0) + 1
    expected = deepcopy(document)
    dlq = []
    for entry in expected.get("dlq", []):
        left = int(entry["count"]) - counts.get(entry["reason"], 0)
        if left > 0:
            dlq.append({**entry, "count": left})
    expected["dlq"] = dlq
    return expected


def write_case(
    path: Path,
    *,
    name: str,
    description: str,
    period: str,
    licences: Sequence[Licence],
    thresholds: dict[str, str],
    expected: dict[str, Any],
    approvals: Sequence[Mapping[str, Any]] = (),
) -> None:
    case = {
        "case": name,
        "description": description,
        "period": period,
        "payout_thresholds": thresholds,
        "licences": [licence_spec(lic) for lic in licences],
        # None (an open window) is left out, as a case file writes it.
        **(
            {"approvals": [{k: v for k, v in a.items() if v is not None} for a in approvals]}
            if approvals
            else {}
        ),
        "expected": expected,
    }
    path.write_text(dump_yaml(case), encoding="utf-8")


def write_rejections(path: Path, items: Iterable[Published]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            if item.streaming_only:
                reason = item.reason or RejectReason.BAD_SIGNATURE.value
                line = {"reason": reason, "note": item.note, "event": item.raw}
                out.write(json.dumps(line, sort_keys=True) + "\n")
                count += 1
    return count


def replay(
    case_path: Path, events_path: Path, rejections: Sequence[Rejection] = ()
) -> dict[str, Any]:
    """The offline statement: the case's licences, the events file, and the streaming-only
    rejections (counted in ``dlq`` like every dead letter)."""
    case = load_case(case_path)
    events = [*case.events(), *(r for r in read_event_lines_parsed(events_path)), *rejections]
    return compute_statement(
        case.period,
        case.licences,
        events,
        thresholds=case.thresholds,
        carried_in=case.carried_in,
        approvals=case.approvals,
    ).to_document()


def read_event_lines_parsed(path: Path) -> Iterable[Any]:
    from residuals.domain.events import parse_event

    for raw in read_event_lines(path):
        yield parse_event(raw)
