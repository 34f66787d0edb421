// Byte identity with the Python SDK: test/vectors/python-sdk.json is what residuals_sdk
// makes of fixed inputs (scripts/make_vectors.py); the TypeScript SDK must make the same.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import * as events from "../src/events.js";
import { SignedUsageEventSchema, type UsageEvent } from "../src/gen/residuals/v1/usage_pb.js";
import { uuid7Millis } from "../src/ids.js";
import { batchMessage, rootFromPath, tree } from "../src/merkle.js";
import { SigningKey, envelopeBytes, payloadBytes, signBatch, signEvent, verifySignature } from "../src/signing.js";
import { chunks } from "../src/client.js";
import { PKG_ROOT, camel, hex, readJson, unhex } from "./helpers.js";

const V = readJson(join(PKG_ROOT, "test", "vectors", "python-sdk.json"));
const key = SigningKey.fromPrivateBytes(V.key.key_id, unhex(V.key.seed_hex));

const builders: Record<string, (args: any) => UsageEvent> = {
  render: events.render,
  view: events.view,
  ad_impression: events.adImpression,
  retraction: events.retraction,
};
const built = new Map<string, UsageEvent>();
for (const v of V.events) built.set(v.name, builders[v.builder]!(camel(v.args)));

describe("Python SDK vectors", () => {
  it("derives the same public key from the seed", () => {
    assert.equal(hex(key.publicKeyBytes()), V.key.public_key_hex);
  });

  for (const v of V.events) {
    it(`event ${v.name}: same payload, signature and envelope bytes`, () => {
      const event = built.get(v.name)!;
      assert.equal(hex(payloadBytes(event)), v.payload_hex);
      const signed = signEvent(event, key);
      assert.equal(hex(signed.signature), v.signature_hex);
      assert.equal(hex(envelopeBytes(signed)), v.envelope_hex);
      assert.equal(events.routingKey(event), v.routing_key);
      assert.ok(verifySignature(key.publicKeyBytes(), signed.payload, signed.signature));
    });
  }

  for (const v of V.invalid_events) {
    it(`refuses ${v.name} as Python does (${v.message})`, () => {
      const Expected = v.error === "TypeError" ? TypeError : RangeError;
      assert.throws(() => builders[v.builder]!(camel(v.args)), Expected);
    });
  }

  for (const b of V.batches) {
    it(`batch of ${b.events.length}: same root, signed message and envelopes`, () => {
      const evs = b.events.map((n: string) => built.get(n)!);
      const payloads = evs.map(payloadBytes);
      const { root } = tree(payloads);
      assert.equal(hex(root), b.root_hex);
      assert.equal(hex(batchMessage(payloads.length, root)), b.message_hex);
      const signed = signBatch(evs, key);
      assert.deepEqual(signed.map((s) => hex(envelopeBytes(s))), b.envelopes_hex);
      for (const s of b.envelopes_hex.map((h: string) => fromBinary(SignedUsageEventSchema, unhex(h)))) {
        const r = rootFromPath(s.payload, Number(s.batch!.leafIndex), Number(s.batch!.leafCount), s.batch!.auditPath);
        assert.ok(r && verifySignature(key.publicKeyBytes(), batchMessage(s.batch!.leafCount, r), s.signature));
      }
    });
  }

  it("Merkle trees of 1..17 leaves: same roots and audit paths; paths verify", () => {
    for (const t of V.merkle_trees) {
      const payloads = t.payloads_hex.map(unhex);
      const { root, paths } = tree(payloads);
      assert.equal(hex(root), t.root_hex);
      assert.deepEqual(paths.map((p) => p.map(hex)), t.paths_hex);
      payloads.forEach((p: Uint8Array, i: number) => {
        assert.equal(hex(rootFromPath(p, i, payloads.length, paths[i]!)!), t.root_hex);
        if (payloads.length > 1) {
          assert.equal(rootFromPath(p, i, payloads.length, paths[i]!.slice(1)), null, "short path");
        }
      });
    }
  });

  it("decimal text of amounts as Python's format(Decimal(x), 'f')", () => {
    for (const d of V.decimals) {
      if ("output" in d) assert.equal(events.decimalText("adRevenue", d.input), d.output, `input ${JSON.stringify(d.input)}`);
      else assert.throws(() => events.decimalText("adRevenue", d.input), RangeError, `input ${JSON.stringify(d.input)}`);
    }
  });

  it("chunks publishMany batches as Python's _chunks", () => {
    for (const c of V.chunks) assert.deepEqual(chunks(c.count, c.most), c.chunks);
  });

  it("reads the time of Python-made UUIDv7 ids", () => {
    for (const u of V.uuid7) assert.equal(uuid7Millis(u.id), u.millis);
  });
});
