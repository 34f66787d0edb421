"""Records decoded as far as they go, for operators (``residuals dlq show``, quarantine).

Nothing here judges or raises: a record an operator looks at is usually the one that broke
something, so each step that fails is reported in place (with the bytes as hex) and the
rest is still shown. Strings are returned as decoded; the commands escape them for the
terminal (:func:`residuals.platform.redrive.safe`).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

#: Bytes shown as hex when a record does not decode.
HEX_BYTES = 512


def as_dict(message: Message) -> dict[str, Any] | str:
    """The message as JSON-like data; as protobuf text when JSON cannot represent it (a
    Timestamp with nanos -1 or seconds 2^62 fails the JSON conversion)."""
    try:
        return MessageToDict(message)
    except Exception:
        return text_format.MessageToString(message, as_utf8=True)


def describe_message(message_type: type[Message], value: bytes | None) -> dict[str, Any]:
    """``value`` decoded as ``message_type``, or why not and its first bytes as hex."""
    if value is None:
        return {"bytes": None, "decoded": "tombstone (null value)"}
    out: dict[str, Any] = {"bytes": len(value)}
    try:
        out["decoded"] = as_dict(message_type.FromString(value))
    except DecodeError as error:
        out["decoded"] = f"not a {message_type.DESCRIPTOR.full_name}: {error}"
        out["hex"] = value[:HEX_BYTES].hex()
    return out


def describe_original(original: bytes) -> dict[str, Any]:
    """A usage record's bytes (a SignedUsageEvent) decoded as far as they go."""
    from residuals.codecs.signed import decode_envelope, decode_payload

    out: dict[str, Any] = {"bytes": len(original)}
    try:
        envelope = decode_envelope(original)
    except DecodeError as error:
        out["decoded"] = f"not a SignedUsageEvent: {error}"
        out["hex"] = original[:HEX_BYTES].hex()
        return out
    out["key_id"] = envelope.key_id
    out["signature"] = envelope.signature.hex()
    if envelope.HasField("batch"):
        # The signature is over the batch's Merkle root: the proof is half the evidence
        # (a BAD_SIGNATURE's detail often names the leaf or the path).
        proof = envelope.batch
        out["batch"] = {
            "leaf_index": proof.leaf_index,
            "leaf_count": proof.leaf_count,
            "audit_path_length": len(proof.audit_path),
        }
    if envelope.trace.traceparent:
        out["traceparent"] = envelope.trace.traceparent
    try:
        out["event"] = as_dict(decode_payload(envelope.payload))
    except DecodeError as error:
        out["event"] = f"payload is not a UsageEvent: {error}"
        out["payload_hex"] = envelope.payload[:HEX_BYTES].hex()
    return out
