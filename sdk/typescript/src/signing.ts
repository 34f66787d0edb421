/**
 * Ed25519 signing of usage events, one by one or in batches (mirrors residuals_sdk.signing).
 *
 * A vendor registers the public half of a key with Residuals (it gets a `keyId`) and keeps
 * the private half. Every event is serialized ONCE and the signature covers exactly those
 * bytes; `SignedUsageEvent.payload` carries the same bytes, so a receiver verifies before
 * it parses and never re-serializes.
 *
 * {@link signEvent} signs one payload. {@link signBatch} signs the Merkle root of many
 * ({@link tree}) and puts each payload's inclusion proof in its envelope: one signature per
 * batch instead of one per event. Ed25519 is deterministic, so the same key and the same
 * payload give the same signature bytes as the Python SDK.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign as edSign,
  verify as edVerify,
  type KeyObject,
} from "node:crypto";
import { readFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import type { TraceContext } from "./gen/residuals/v1/common_pb.js";
import { TraceContextSchema } from "./gen/residuals/v1/common_pb.js";
import {
  BatchProofSchema,
  SignedUsageEventSchema,
  UsageEventSchema,
  type SignedUsageEvent,
  type UsageEvent,
} from "./gen/residuals/v1/usage_pb.js";
import { batchMessage, tree } from "./merkle.js";

// DER prefixes of an Ed25519 PKCS#8 private key (RFC 8410) and SubjectPublicKeyInfo.
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** A vendor's Ed25519 private key and the id Residuals registered it under. */
export class SigningKey {
  private constructor(
    readonly keyId: string,
    readonly privateKey: KeyObject,
  ) {
    if (!keyId) throw new Error("keyId is required (the id Residuals gave the registered key)");
    if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
      throw new Error(`key ${JSON.stringify(keyId)} is not an Ed25519 private key`);
    }
  }

  /** A fresh key (register {@link publicKeyBytes} with Residuals before use). */
  static generate(keyId: string): SigningKey {
    return new SigningKey(keyId, generateKeyPairSync("ed25519").privateKey);
  }

  /** A key from PKCS#8 PEM text (`openssl genpkey -algorithm ed25519`). */
  static fromPem(keyId: string, pem: string | Uint8Array, passphrase?: string): SigningKey {
    const key = createPrivateKey({ key: Buffer.from(pem), format: "pem", passphrase });
    return new SigningKey(keyId, key);
  }

  static fromPemFile(keyId: string, path: string, passphrase?: string): SigningKey {
    return SigningKey.fromPem(keyId, readFileSync(path), passphrase);
  }

  /** A key from its raw 32-byte seed. */
  static fromPrivateBytes(keyId: string, raw: Uint8Array): SigningKey {
    if (raw.length !== 32) throw new Error("an Ed25519 private key is 32 bytes");
    const der = Buffer.concat([PKCS8_PREFIX, raw]);
    return new SigningKey(keyId, createPrivateKey({ key: der, format: "der", type: "pkcs8" }));
  }

  /** The private key as unencrypted PKCS#8 PEM (store it like a password). */
  privatePem(): string {
    return this.privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  }

  /** The raw 32-byte public key, the form Residuals registers. */
  publicKeyBytes(): Uint8Array {
    const spki = createPublicKey(this.privateKey).export({ format: "der", type: "spki" });
    return new Uint8Array(spki.subarray(spki.length - 32));
  }

  /** The 64-byte Ed25519 signature of `payload`. */
  sign(payload: Uint8Array): Uint8Array {
    return new Uint8Array(edSign(null, payload, this.privateKey));
  }
}

/** The bytes a signature covers: one serialization, never redone. */
export function payloadBytes(event: UsageEvent): Uint8Array {
  return toBinary(UsageEventSchema, event);
}

function withTrace(signed: SignedUsageEvent, trace: TraceContext | null | undefined): SignedUsageEvent {
  if (trace && trace.traceparent) {
    signed.trace = create(TraceContextSchema, { traceparent: trace.traceparent, tracestate: trace.tracestate });
  }
  return signed;
}

/**
 * The envelope for `event`: payload bytes, their signature and the key id. The trace
 * context travels in the envelope but outside the signed payload.
 */
export function signEvent(event: UsageEvent, key: SigningKey, trace?: TraceContext | null): SignedUsageEvent {
  const payload = payloadBytes(event);
  return withTrace(create(SignedUsageEventSchema, { payload, signature: key.sign(payload), keyId: key.keyId }), trace);
}

/**
 * Envelopes for `events` under ONE signature of their Merkle root, in order. Each carries
 * its own payload, the shared signature, the key id and a BatchProof (leaf index, leaf
 * count, audit path). One event alone gets the plain {@link signEvent} envelope.
 */
export function signBatch(
  events: readonly UsageEvent[],
  key: SigningKey,
  traces?: readonly (TraceContext | null | undefined)[],
): SignedUsageEvent[] {
  if (traces && traces.length !== events.length) {
    throw new Error(`${traces.length} trace contexts for ${events.length} events`);
  }
  if (events.length <= 1) return events.map((e, i) => signEvent(e, key, traces?.[i]));
  const payloads = events.map(payloadBytes);
  const { root, paths } = tree(payloads);
  const signature = key.sign(batchMessage(payloads.length, root));
  return payloads.map((payload, index) =>
    withTrace(
      create(SignedUsageEventSchema, {
        payload,
        signature,
        keyId: key.keyId,
        batch: create(BatchProofSchema, {
          leafIndex: BigInt(index),
          leafCount: BigInt(payloads.length),
          auditPath: paths[index]!,
        }),
      }),
      traces?.[index],
    ),
  );
}

/** True when `signature` is `publicKey`'s Ed25519 signature of `payload`. */
export function verifySignature(publicKey: Uint8Array, payload: Uint8Array, signature: Uint8Array): boolean {
  try {
    if (publicKey.length !== 32) return false;
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return edVerify(null, payload, key, signature);
  } catch {
    return false;
  }
}

/** The envelope's bytes as spooled and sent (SignedUsageEvent binary). */
export function envelopeBytes(signed: SignedUsageEvent): Uint8Array {
  return toBinary(SignedUsageEventSchema, signed);
}
