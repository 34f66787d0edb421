/**
 * The receiver's checks of sdk/SIGNING.md §5, as a self-check and for tooling: signature
 * checks (3.1-3.7), then the payload parse, the vendor check and (Kafka) the record key.
 * The first failing check is the answer, with the `check` names of
 * sdk/conformance/verifier.json. Residuals' own verifier is services/residuals/admission.py;
 * this one does not apply the event rules, the time window or the licence checks.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { UsageKind } from "./gen/residuals/v1/common_pb.js";
import { SignedUsageEventSchema, UsageEventSchema, type SignedUsageEvent, type UsageEvent } from "./gen/residuals/v1/usage_pb.js";
import { batchMessage, rootFromPath } from "./merkle.js";
import { verifySignature } from "./signing.js";

/** A registered signing key (residuals.v1.VendorSigningKey). */
export interface RegisteredKey {
  keyId: string;
  vendorId: string;
  publicKey: Uint8Array;
  revokedAt?: Date | null;
}

export type Verdict =
  | { ok: true; vendorId: string; event: UsageEvent; envelope: SignedUsageEvent }
  | { ok: false; reason: "MALFORMED" | "BAD_SIGNATURE" | "VENDOR_MISMATCH"; check: string; detail: string };

export interface VerifyOptions {
  /** The vendor the transport authenticated, or null: the signing key's vendor is taken. */
  authenticatedVendor?: string | null;
  /** The receipt time keys' revocation is judged at (default now). */
  receivedAt?: Date;
  /** Kafka only: the record key, which must be the event's licence (not for retractions). */
  recordKey?: string | null;
}

const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

/** The audit path length RFC 9162 gives leaf `index` in a tree of `count` leaves. */
export function auditPathLength(index: bigint, count: bigint): number {
  let i = index;
  let n = count;
  let length = 0;
  while (n > 1n) {
    let k = 1n;
    while (k * 2n < n) k *= 2n;
    if (i < k) n = k;
    else {
      i -= k;
      n -= k;
    }
    length += 1;
  }
  return length;
}

const iso = (d: Date) => d.toISOString().replace(/\.000Z$/, "Z");

export function verifyEnvelope(
  data: Uint8Array,
  lookup: (keyId: string) => RegisteredKey | undefined,
  options: VerifyOptions = {},
): Verdict {
  const malformed = (check: string, detail: string): Verdict => ({ ok: false, reason: "MALFORMED", check, detail });
  const bad = (check: string, detail: string): Verdict => ({ ok: false, reason: "BAD_SIGNATURE", check, detail });
  let env: SignedUsageEvent;
  try {
    env = fromBinary(SignedUsageEventSchema, data);
  } catch (err) {
    return malformed("envelope_malformed", `not a SignedUsageEvent: ${(err as Error).message}`);
  }
  const keyId = env.keyId;
  if ([...keyId].length > 128) return malformed("key_id_malformed", `key_id is ${[...keyId].length} characters, the limit is 128`);
  const np = NON_PRINTABLE.exec(keyId);
  if (np) {
    const cp = np[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
    return malformed("key_id_malformed", `key_id contains the non-printable character U+${cp}`);
  }
  if (!keyId) return bad("key_id_missing", "envelope has no key_id");
  if (env.signature.length !== 64) return bad("signature_length", `signature is ${env.signature.length} bytes, Ed25519 needs 64`);
  const key = lookup(keyId);
  if (!key) return bad("unknown_key", `unknown signing key '${keyId}'`);
  const vendor = options.authenticatedVendor ?? key.vendorId;
  if (key.vendorId !== vendor) return bad("key_vendor", `signing key '${keyId}' is not registered to vendor '${vendor}'`);
  const receivedAt = options.receivedAt ?? new Date();
  if (key.revokedAt && key.revokedAt.getTime() <= receivedAt.getTime()) {
    return bad("key_revoked", `signing key '${keyId}' was revoked at ${iso(key.revokedAt)}`);
  }
  const proof = env.batch;
  if (!proof) {
    if (!verifySignature(key.publicKey, env.payload, env.signature)) {
      return bad("signature", `signature does not match the payload for key '${keyId}'`);
    }
  } else {
    const { leafIndex, leafCount, auditPath } = proof;
    if (leafCount === 0n) return bad("leaf_count_zero", "batch leaf_count is 0");
    if (leafIndex >= leafCount) return bad("leaf_index_range", `batch leaf_index ${leafIndex} is not below leaf_count ${leafCount}`);
    const short = auditPath.findIndex((h) => h.length !== 32);
    if (short >= 0) return bad("audit_path_hash_length", `batch audit_path[${short}] is ${auditPath[short]!.length} bytes, SHA-256 needs 32`);
    const need = auditPathLength(leafIndex, leafCount);
    if (auditPath.length !== need) {
      return bad("audit_path_length", `batch audit_path has ${auditPath.length} hashes, leaf ${leafIndex} of ${leafCount} needs ${need}`);
    }
    const root = rootFromPath(env.payload, Number(leafIndex), Number(leafCount), auditPath);
    if (!root || !verifySignature(key.publicKey, batchMessage(leafCount, root), env.signature)) {
      return bad("batch_signature", `batch signature does not match the root proven for leaf ${leafIndex} of ${leafCount} for key '${keyId}'`);
    }
  }
  let event: UsageEvent;
  try {
    event = fromBinary(UsageEventSchema, env.payload);
  } catch (err) {
    return malformed("payload_malformed", `payload is not a UsageEvent: ${(err as Error).message}`);
  }
  if (event.vendorId !== key.vendorId) {
    return { ok: false, reason: "VENDOR_MISMATCH", check: "vendor_mismatch", detail: `payload names vendor '${event.vendorId}', the event is signed by '${key.vendorId}'` };
  }
  const recordKey = options.recordKey;
  if (recordKey !== undefined && recordKey !== null && event.kind !== UsageKind.RETRACTION && recordKey !== event.licenceId) {
    return malformed("record_key", `record key '${recordKey}' is not the event's licence '${event.licenceId}'`);
  }
  return { ok: true, vendorId: key.vendorId, event, envelope: env };
}
