// The official signing conformance vectors, sdk/conformance/ (sdk/SIGNING.md §7): the
// TypeScript SDK reproduces every positive vector byte for byte and its verifier refuses
// every negative one at its check.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { create, fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import * as events from "../src/events.js";
import { TraceContextSchema, UsageKind } from "../src/gen/residuals/v1/common_pb.js";
import { PublishBatchRequestSchema } from "../src/gen/residuals/v1/ingest_pb.js";
import { SignedUsageEventSchema, UsageEventSchema, type UsageEvent } from "../src/gen/residuals/v1/usage_pb.js";
import { BATCH_DOMAIN, batchMessage, leafHash, tree } from "../src/merkle.js";
import { SigningKey, envelopeBytes, payloadBytes, signBatch, signEvent } from "../src/signing.js";
import { HttpTransport } from "../src/transports/http.js";
import { verifyEnvelope, type RegisteredKey } from "../src/verify.js";
import { REPO_ROOT, camel, hex, readJson, unhex } from "./helpers.js";

const DIR = join(REPO_ROOT, "sdk", "conformance");
const KEYS = readJson(join(DIR, "keys.json"));
const EVENTS = readJson(join(DIR, "events.json"));
const BATCHES = readJson(join(DIR, "batches.json"));
const VERIFIER = readJson(join(DIR, "verifier.json"));
const FORMAT = "residuals.signing-conformance.v1";

const key = SigningKey.fromPrivateBytes(KEYS.signing_key.key_id, unhex(KEYS.signing_key.seed_hex));
const builders: Record<string, (args: any) => UsageEvent> = {
  "residuals_sdk.events.render": events.render,
  "residuals_sdk.events.view": events.view,
  "residuals_sdk.events.ad_impression": events.adImpression,
  "residuals_sdk.events.retraction": events.retraction,
};
const built = new Map<string, UsageEvent>();
const traces = new Map<string, any>();
for (const v of EVENTS.events) {
  built.set(v.name, builders[v.builder.function]!(camel(v.builder.arguments)));
  traces.set(v.name, v.trace ? create(TraceContextSchema, v.trace) : undefined);
}
const json = (value: unknown) => JSON.parse(JSON.stringify(value));

/** A UsageEvent from the vectors' `fields` (proto names, kind by enum name). */
function fromFields(fields: Record<string, any>): UsageEvent {
  const init: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(fields)) {
    const field = camel({ [name]: 0 });
    const k = Object.keys(field)[0]!;
    if (name === "kind") init[k] = UsageKind[String(value).replace(/^USAGE_KIND_/, "") as keyof typeof UsageKind];
    else if (name === "occurred_at") init[k] = create(TimestampSchema, { seconds: BigInt(value.seconds), nanos: value.nanos });
    else init[k] = value;
  }
  return create(UsageEventSchema, init as any);
}

describe("sdk/conformance vectors", () => {
  it("are the format this SDK implements", () => {
    for (const f of [KEYS, EVENTS, BATCHES, VERIFIER]) assert.equal(f.format, FORMAT);
    assert.equal(hex(BATCH_DOMAIN), BATCHES.batch_domain_hex);
  });

  it("keys: the seed gives the registered public key", () => {
    assert.equal(hex(key.publicKeyBytes()), KEYS.signing_key.public_key_hex);
    assert.equal(Buffer.from(key.publicKeyBytes()).toString("base64"), KEYS.signing_key.public_key_base64);
  });

  for (const v of EVENTS.events) {
    it(`event ${v.name}: builder and fields give the payload; signature, envelope and JSON match`, () => {
      const event = built.get(v.name)!;
      assert.equal(hex(payloadBytes(event)), v.payload_hex, "built with the SDK's builder");
      assert.equal(hex(toBinary(UsageEventSchema, fromFields(v.fields))), v.payload_hex, "built from fields");
      assert.equal(hex(leafHash(payloadBytes(event))), v.leaf_hash_hex);
      const signed = signEvent(event, key, traces.get(v.name));
      assert.equal(hex(signed.signature), v.signature_hex);
      assert.equal(hex(envelopeBytes(signed)), v.envelope_hex);
      assert.deepEqual(json(toJson(SignedUsageEventSchema, signed)), v.envelope_json);
      assert.equal(hex(toBinary(SignedUsageEventSchema, fromJson(SignedUsageEventSchema, v.envelope_json))), v.envelope_hex);
      assert.equal(events.routingKey(event), v.kafka_record.key);
    });
  }

  for (const b of BATCHES.batches) {
    it(`${b.name}: leaf hashes, root, signed message, signature, proofs, envelopes, request JSON`, () => {
      const evs = b.events.map((n: string) => built.get(n)!);
      const payloads = evs.map(payloadBytes);
      assert.deepEqual(payloads.map(leafHash).map(hex), b.leaf_hashes_hex);
      const { root, paths } = tree(payloads);
      assert.equal(hex(root), b.root_hex);
      if (b.signature_covers === "batch_message") assert.equal(hex(batchMessage(b.leaf_count, root)), b.signed_message_hex);
      else assert.equal(hex(payloads[0]!), b.signed_message_hex);
      // Batch envelopes carry no trace in the vectors (per-event ones may).
      const signed = signBatch(evs, key, b.leaf_count === 1 ? [traces.get(b.events[0])] : undefined);
      b.leaves.forEach((leaf: any, i: number) => {
        assert.equal(hex(signed[i]!.signature), b.signature_hex);
        assert.deepEqual(paths[i]!.map(hex), leaf.audit_path_hex);
        assert.equal(hex(envelopeBytes(signed[i]!)), leaf.envelope_hex, `leaf ${i}`);
        assert.deepEqual(json(toJson(SignedUsageEventSchema, signed[i]!)), leaf.envelope_json);
      });
      // The HTTP transport's body for these envelopes.
      const body = HttpTransport.body(signed.map((s, i) => ({ seq: i, eventId: "", routingKey: "", envelope: envelopeBytes(s), size: 0 })));
      assert.deepEqual(JSON.parse(body), b.publish_batch_request_json);
      const parsed = fromJson(PublishBatchRequestSchema, b.publish_batch_request_json);
      assert.deepEqual(parsed.events.map((e) => hex(toBinary(SignedUsageEventSchema, e))), b.leaves.map((l: any) => l.envelope_hex));
    });
  }

  const registry = new Map<string, RegisteredKey>(
    KEYS.registry.map((k: any) => [
      k.key_id,
      { keyId: k.key_id, vendorId: k.vendor_id, publicKey: unhex(k.public_key_hex), revokedAt: k.revoked_at ? new Date(k.revoked_at) : null },
    ]),
  );
  const judge = (c: any) =>
    verifyEnvelope(unhex(c.envelope_hex), (id) => registry.get(id), {
      authenticatedVendor: c.authenticated_vendor,
      recordKey: c.record_key,
      receivedAt: new Date(VERIFIER.received_at),
    });

  it(`verifier accepts all ${VERIFIER.accept.length} accept cases`, () => {
    for (const c of VERIFIER.accept) {
      const verdict = judge(c);
      assert.ok(verdict.ok, `${c.name}: ${verdict.ok || `${verdict.check}: ${verdict.detail}`}`);
      assert.equal(verdict.vendorId, c.expect.vendor_id, c.name);
    }
  });

  for (const c of VERIFIER.reject) {
    it(`verifier refuses ${c.name} at ${c.expect.check}`, () => {
      const verdict = judge(c);
      assert.equal(verdict.ok, false);
      if (verdict.ok) return;
      assert.equal(verdict.check, c.expect.check);
      assert.equal(verdict.reason, c.expect.reason);
      // Residuals' exact wording, except the protobuf library's own parse error text.
      if (c.expect.check === "payload_malformed") assert.match(verdict.detail, /^payload is not a UsageEvent: /);
      else assert.equal(verdict.detail, c.expect.detail);
    });
  }

  it("a per-event envelope parses back to the event the builder made", () => {
    const v = EVENTS.events[0];
    const env = fromBinary(SignedUsageEventSchema, unhex(v.envelope_hex));
    assert.equal(fromBinary(UsageEventSchema, env.payload).eventId, v.builder.arguments.event_id);
  });
});
