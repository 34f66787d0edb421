"""Write test/vectors/python-sdk.json: what the Python SDK makes of fixed inputs.

The TypeScript SDK's tests read the file and must produce the same bytes: payloads
(UsageEvent serialized deterministically), envelopes (SignedUsageEvent), Ed25519
signatures (deterministic for a fixed seed), Merkle roots and audit paths, batch-signed
envelopes, the decimal text of amounts, and which inputs each builder refuses.

Run from the repository root (or anywhere; paths are relative to this file)::

    PYTHONPATH=services:sdk/python/src .venv/bin/python sdk/typescript/scripts/make_vectors.py

(`npm run vectors` in sdk/typescript does the same with the repository's .venv; add
``--check`` to only compare.) Re-run it when the Python SDK's events/signing/merkle code or
protos/residuals/v1/usage.proto changes, and commit the JSON. These vectors complement the
official ones in sdk/conformance/ (which the tests read too): refused inputs, decimal
texts, Merkle trees of 1..17 leaves, publish_many's chunking.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from residuals_sdk import events as build
from residuals_sdk import ids, merkle
from residuals_sdk.client import _chunks
from residuals_sdk.signing import SigningKey, payload_bytes, sign_batch, sign_event

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "test" / "vectors" / "python-sdk.json"
SEED = bytes(range(32))
KEY = SigningKey.from_private_bytes("vk-conformance-1", SEED)
VENDOR = "vendor-acme"

BASE = dict(
    vendor_id=VENDOR,
    licence_id="LIC-EVE-ORBIT",
    avatar_id="AV-EVE",
    render_id="R-0001",
    category="product_demo",
    territory="GB",
    occurred_at="2026-10-01T12:00:00+00:00",
)

EVENTS: list[tuple[str, str, dict]] = [
    ("render-minimal", "render", {**BASE, "event_id": "0192f1c3-7b2a-7c41-9d3e-5a1b2c3d4e5f"}),
    (
        "render-quantity-approval",
        "render",
        {**BASE, "event_id": "e-2", "quantity": 250, "approval_id": "APR-9"},
    ),
    ("render-max-quantity", "render", {**BASE, "event_id": "e-3", "quantity": 1_000_000}),
    (
        "render-micros",
        "render",
        {**BASE, "event_id": "e-4", "occurred_at": "2026-10-01T12:00:00.123456+00:00"},
    ),
    (
        "render-offset",
        "render",
        {**BASE, "event_id": "e-5", "occurred_at": "2026-10-01T14:30:00.5+02:30"},
    ),
    (
        "render-earliest",
        "render",
        {**BASE, "event_id": "e-6", "occurred_at": "2000-01-01T00:00:00+00:00"},
    ),
    (
        "render-latest",
        "render",
        {**BASE, "event_id": "e-7", "occurred_at": "9999-12-31T23:59:59.999999+00:00"},
    ),
    (
        "render-unicode",
        "render",
        {**BASE, "event_id": "é-8-🎬", "licence_id": "LIC-ÉVE-ORBIT", "avatar_id": "アバター"},
    ),
    ("render-padded", "render", {**BASE, "event_id": "  e-9  ", "territory": " GB"}),
    ("render-128-chars", "render", {**BASE, "event_id": "x" * 128, "render_id": "é" * 128}),
    ("view-default", "view", {**BASE, "event_id": "v-1", "channel": "web"}),
    (
        "view-not-viewable-ivt",
        "view",
        {
            **BASE,
            "event_id": "v-2",
            "channel": "social",
            "viewable": False,
            "ivt": True,
            "quantity": 12,
        },
    ),
    (
        "view-approval",
        "view",
        {**BASE, "event_id": "v-3", "channel": "broadcast", "approval_id": "APR-1"},
    ),
    (
        "ad-minimal",
        "ad_impression",
        {**BASE, "event_id": "a-1", "channel": "web", "ad_revenue": "12.40"},
    ),
    (
        "ad-currency-ivt",
        "ad_impression",
        {
            **BASE,
            "event_id": "a-2",
            "channel": "web",
            "ad_revenue": "0.000000001",
            "ad_revenue_currency": "EUR",
            "ivt": True,
            "quantity": 1000,
        },
    ),
    ("ad-zero", "ad_impression", {**BASE, "event_id": "a-3", "channel": "web", "ad_revenue": "0"}),
    (
        "ad-exponent",
        "ad_impression",
        {**BASE, "event_id": "a-4", "channel": "web", "ad_revenue": "1.5e3"},
    ),
    ("ad-int", "ad_impression", {**BASE, "event_id": "a-5", "channel": "web", "ad_revenue": 7}),
    (
        "retract-licence",
        "retraction",
        {
            "event_id": "r-1",
            "vendor_id": VENDOR,
            "original_event_id": "e-2",
            "licence_id": "LIC-EVE-ORBIT",
            "occurred_at": BASE["occurred_at"],
        },
    ),
    (
        "retract-no-licence",
        "retraction",
        {
            "event_id": "r-2",
            "vendor_id": VENDOR,
            "original_event_id": "e-3",
            "licence_id": None,
            "occurred_at": BASE["occurred_at"],
        },
    ),
]

INVALID: list[tuple[str, str, dict]] = [
    ("empty-event-id", "render", {**BASE, "event_id": ""}),
    ("blank-licence", "render", {**BASE, "event_id": "x", "licence_id": "   "}),
    ("quantity-zero", "render", {**BASE, "event_id": "x", "quantity": 0}),
    ("quantity-too-big", "render", {**BASE, "event_id": "x", "quantity": 1_000_001}),
    ("id-129-chars", "render", {**BASE, "event_id": "x" * 129}),
    ("id-control-char", "render", {**BASE, "event_id": "a\x07b"}),
    ("id-nbsp-inside", "render", {**BASE, "event_id": "a\u00a0b"}),
    ("id-bom", "render", {**BASE, "event_id": "\ufeffabc"}),
    ("naive-time", "render", {**BASE, "event_id": "x", "occurred_at": "2026-10-01T12:00:00"}),
    (
        "too-early",
        "render",
        {**BASE, "event_id": "x", "occurred_at": "1999-12-31T23:59:59.999999+00:00"},
    ),
    ("view-no-channel", "view", {**BASE, "event_id": "x", "channel": ""}),
    (
        "ad-negative",
        "ad_impression",
        {**BASE, "event_id": "x", "channel": "web", "ad_revenue": "-1"},
    ),
    ("ad-nan", "ad_impression", {**BASE, "event_id": "x", "channel": "web", "ad_revenue": "NaN"}),
    (
        "ad-10-fraction-digits",
        "ad_impression",
        {**BASE, "event_id": "x", "channel": "web", "ad_revenue": "0.0000000001"},
    ),
    (
        "ad-19-integer-digits",
        "ad_impression",
        {**BASE, "event_id": "x", "channel": "web", "ad_revenue": "1" + "0" * 18},
    ),
    (
        "ad-garbage",
        "ad_impression",
        {**BASE, "event_id": "x", "channel": "web", "ad_revenue": "12,40"},
    ),
    (
        "retract-no-original",
        "retraction",
        {"event_id": "x", "vendor_id": VENDOR, "original_event_id": "", "licence_id": None},
    ),
]

DECIMALS = [
    "0",
    "0.00",
    "-0",
    "-0.00",
    "12.40",
    "007.50",
    ".5",
    "5.",
    "1_000",
    "1e3",
    "1.2e1",
    "1.5E3",
    "100e-2",
    "1E-9",
    "0.000000001",
    "0e3",
    "0E-9",
    " 3 ",
    "+4",
    "999999999999999999",
    "999999999999999999.999999999",
    "1000000000000000000",
    "0.0000000001",
    "1e18",
    "1e17",
    "-1",
    "-0.01",
    "NaN",
    "sNaN",
    "Infinity",
    "-inf",
    "abc",
    "1,5",
    "",
    "1__0",
    "_1",
    "1_",
    "1e",
    ".",
    "1.2.3",
    "0x10",
    "12.",
    "1e+2",
    "1e-2",
    "1.50e-7",
]


def _args(args: dict) -> dict:
    out = dict(args)
    if isinstance(out.get("occurred_at"), str):
        out["occurred_at"] = datetime.fromisoformat(out["occurred_at"])
    return out


def _builder(name: str):
    return {
        "render": build.render,
        "view": build.view,
        "ad_impression": build.ad_impression,
        "retraction": build.retraction,
    }[name]


def main() -> None:
    events = {}
    valid = []
    for name, builder, args in EVENTS:
        event = _builder(builder)(**_args(args))
        events[name] = event
        signed = sign_event(event, KEY)
        valid.append(
            {
                "name": name,
                "builder": builder,
                "args": args,
                "payload_hex": payload_bytes(event).hex(),
                "signature_hex": signed.signature.hex(),
                "envelope_hex": signed.SerializeToString().hex(),
                "routing_key": build.routing_key(event),
            }
        )
    invalid = []
    for name, builder, args in INVALID:
        try:
            _builder(builder)(**_args(args))
        except (TypeError, ValueError) as exc:
            invalid.append(
                {
                    "name": name,
                    "builder": builder,
                    "args": args,
                    "error": type(exc).__name__,
                    "message": str(exc),
                }
            )
        else:
            raise SystemExit(f"invalid case {name} was accepted by the Python SDK")
    batches = []
    names = [n for n, _, _ in EVENTS]
    for size in (2, 3, 5, 8, len(names)):
        chosen = names[:size]
        signed = sign_batch([events[n] for n in chosen], KEY)
        payloads = [payload_bytes(events[n]) for n in chosen]
        root, _paths = merkle.tree(payloads)
        batches.append(
            {
                "events": chosen,
                "root_hex": root.hex(),
                "message_hex": merkle.batch_message(len(chosen), root).hex(),
                "envelopes_hex": [s.SerializeToString().hex() for s in signed],
            }
        )
    trees = []
    for n in range(1, 18):
        payloads = [bytes([i]) * (i % 5) for i in range(n)]
        root, paths = merkle.tree(payloads)
        trees.append(
            {
                "payloads_hex": [p.hex() for p in payloads],
                "root_hex": root.hex(),
                "paths_hex": [[h.hex() for h in p] for p in paths],
            }
        )
    decimals = []
    for text in DECIMALS:
        try:
            decimals.append({"input": text, "output": build.decimal_text("ad_revenue", text)})
        except (TypeError, ValueError) as exc:
            decimals.append({"input": text, "error": type(exc).__name__, "message": str(exc)})
    chunks = [
        {"count": c, "most": m, "chunks": _chunks(c, m)}
        for c, m in [(0, 256), (1, 256), (256, 256), (257, 256), (1000, 256), (10, 3), (7, 1)]
    ]
    # Fixed ids (the file must be reproducible): one made by residuals_sdk.uuid7, two edges.
    fixed = [
        "0192f1c3-7b2a-7c41-9d3e-5a1b2c3d4e5f",
        "00000000-0000-7000-8000-000000000000",
        "ffffffff-ffff-7fff-bfff-ffffffffffff",
    ]
    uuids = [{"id": value, "millis": ids.uuid7_millis(value)} for value in fixed]
    doc = {
        "about": "Made by sdk/typescript/scripts/make_vectors.py from the Python SDK; do not edit.",
        "key": {
            "key_id": KEY.key_id,
            "seed_hex": SEED.hex(),
            "public_key_hex": KEY.public_key_bytes().hex(),
        },
        "events": valid,
        "invalid_events": invalid,
        "batches": batches,
        "merkle_trees": trees,
        "decimals": decimals,
        "chunks": chunks,
        "uuid7": uuids,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            raise SystemExit(f"{OUT} is stale: run {Path(__file__).name} and commit it")
        print(f"{OUT} is fresh")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(valid)} events, {len(invalid)} invalid, {len(batches)} batches)")


if __name__ == "__main__":
    main()
