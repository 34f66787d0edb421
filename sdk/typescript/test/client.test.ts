// UsageClient over the HTTP transport against a fake gateway: delivery, per-event answers,
// retries (429/503 with Retry-After, network errors), refusals, batching and the spool.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { fromBinary, fromJson } from "@bufbuild/protobuf";
import { UsageClient, type HttpClientOptions } from "../src/client.js";
import { GatewayRefusedError, InsecureTransportError, SpoolFullError } from "../src/errors.js";
import * as events from "../src/events.js";
import { PublishBatchRequestSchema } from "../src/gen/residuals/v1/ingest_pb.js";
import { UsageEventSchema } from "../src/gen/residuals/v1/usage_pb.js";
import { uuid7Millis } from "../src/ids.js";
import type { DeliveryReport } from "../src/report.js";
import { SigningKey } from "../src/signing.js";
import { parseRetryAfter } from "../src/transports/http.js";
import { FakeGateway } from "./fake-gateway.js";
import { sleep } from "./helpers.js";

const VENDOR = "vendor-acme";
const KEY = SigningKey.generate("vk-1");
const USE = { licenceId: "LIC-EVE-ORBIT", avatarId: "AV-EVE", renderId: "R-1", category: "product_demo", territory: "GB" };
const FAST = { initialBackoff: 0.02, maxBackoff: 0.1 };

let gateway: FakeGateway;
let dir: string;
const clients: UsageClient[] = [];

function client(extra: Partial<HttpClientOptions> = {}): UsageClient {
  const c = UsageClient.http({
    vendorId: VENDOR,
    signingKey: KEY,
    baseUrl: gateway.url,
    apiKey: gateway.apiKey,
    spoolDir: join(dir, "spool"),
    retry: FAST,
    ...extra,
  });
  clients.push(c);
  return c;
}

beforeEach(async () => {
  gateway = await new FakeGateway().start();
  gateway.keys.set(KEY.keyId, KEY.publicKeyBytes());
  dir = mkdtempSync(join(tmpdir(), "residuals-client-"));
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close(0);
  await gateway.stop();
  rmSync(dir, { recursive: true, force: true });
});
after(() => undefined);

describe("UsageClient over HTTP", () => {
  it("delivers render, view, adImpression and retract; reports each; empties the spool", async () => {
    const reports: DeliveryReport[] = [];
    const c = client({ onDelivery: (r) => reports.push(r) });
    const r = await c.render({ ...USE, quantity: 3 });
    const v = await c.view({ ...USE, channel: "web", viewable: false });
    const a = await c.adImpression({ ...USE, channel: "web", adRevenue: "12.40", adRevenueCurrency: "GBP" });
    const x = await c.retract({ originalEventId: r, licenceId: USE.licenceId });
    assert.equal(await c.flush(5000), 0);
    assert.equal(c.pending, 0);
    assert.deepEqual(new Set(gateway.accepted.keys()), new Set([r, v, a, x]));
    assert.deepEqual(reports.map((p) => [p.eventId, p.status, p.ok, p.attempts]).sort(), [r, v, a, x].map((id) => [id, "DELIVERED", true, 1]).sort());
    for (const id of [r, v, a, x]) assert.ok(Math.abs(uuid7Millis(id) - Date.now()) < 60_000);
    const req = gateway.requests[0]!;
    assert.equal(req.headers["content-type"], "application/json");
    assert.equal(req.headers.authorization, `Bearer ${gateway.apiKey}`);
    // proto3 JSON, lowerCamelCase, bytes base64; the payload is the signed UsageEvent.
    const body = JSON.parse(req.body);
    assert.equal(typeof body.events[0].payload, "string");
    assert.equal(body.events[0].keyId, "vk-1");
    const parsed = fromJson(PublishBatchRequestSchema, body).events.map((e) => fromBinary(UsageEventSchema, e.payload));
    const first = parsed.find((e) => e.eventId === r)!;
    assert.equal(first.quantity, 3);
    assert.equal(first.vendorId, VENDOR);
    const ad = parsed.find((e) => e.eventId === a) ?? fromBinary(UsageEventSchema, Buffer.from(gateway.accepted.get(a)!, "hex"));
    assert.equal(ad.adRevenue, "12.40");
  });

  it("surfaces REJECTED with its reason, never retries it, and drops it from the spool", async () => {
    const reports: DeliveryReport[] = [];
    gateway.reject = (id) => (id === "bad-1" ? "no such licence" : null);
    const c = client({ onDelivery: (r) => reports.push(r) });
    await c.render({ ...USE, eventId: "bad-1" });
    await c.render({ ...USE, eventId: "good-1" });
    assert.equal(await c.flush(5000), 0);
    await sleep(100);
    const bad = reports.find((r) => r.eventId === "bad-1")!;
    assert.equal(bad.status, "REJECTED");
    assert.equal(bad.ok, false);
    assert.equal(bad.reason, "UNKNOWN_LICENCE");
    assert.equal(bad.detail, "no such licence");
    const sent = gateway.requests.reduce((n, q) => n + q.events, 0);
    assert.equal(sent, 2, "each event sent once");
  });

  it("answers DUPLICATE for an event id the gateway already has", async () => {
    const reports: DeliveryReport[] = [];
    const c = client({ onDelivery: (r) => reports.push(r) });
    const event = events.render({ ...USE, eventId: "dup-1", vendorId: VENDOR, occurredAt: "2026-10-01T12:00:00Z" });
    await c.publish(event);
    await c.flush(5000);
    await c.publish(event);
    await c.flush(5000);
    assert.deepEqual(reports.map((r) => r.status), ["DELIVERED", "DUPLICATE"]);
    assert.deepEqual(gateway.conflicts, []);
  });

  it("retries 429 and 503, honouring Retry-After in seconds and as an HTTP date", async () => {
    gateway.script = [
      { status: 429, headers: { "retry-after": "1" }, body: '{"title":"Too Many Requests"}' },
      { status: 503, headers: { "retry-after": new Date(Date.now() + 3000).toUTCString() } },
      { status: 503 },
    ];
    const reports: DeliveryReport[] = [];
    const c = client({ onDelivery: (r) => reports.push(r) });
    const t0 = Date.now();
    await c.render(USE);
    assert.equal(await c.flush(10_000), 0);
    const at = gateway.requests.map((r) => r.at - t0);
    assert.equal(gateway.requests.length, 4);
    assert.ok(at[1]! - at[0]! >= 950, `waited ${at[1]! - at[0]!} ms after 429 Retry-After: 1`);
    assert.ok(at[2]! - at[1]! >= 800, `waited ${at[2]! - at[1]!} ms after 503 with an HTTP date ~1-2 s ahead`);
    assert.ok(at[3]! - at[2]! < 900, "a 503 without Retry-After backs off briefly");
    assert.equal(reports[0]!.attempts, 4);
  });

  it("retries network errors until the gateway is up", async () => {
    // A port with nothing listening, then a gateway on it.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const c = client({ baseUrl: `http://127.0.0.1:${port}` });
    await c.render(USE);
    await sleep(300);
    assert.equal(c.pending, 1);
    await gateway.stop();
    gateway = new FakeGateway();
    gateway.keys.set(KEY.keyId, KEY.publicKeyBytes());
    await new Promise<void>((r) => gateway.server.listen(port, "127.0.0.1", r));
    gateway.url = `http://127.0.0.1:${port}`;
    assert.equal(await c.flush(10_000), 0);
    assert.equal(gateway.accepted.size, 1);
  });

  it("does not retry other 4xx: flush rejects with the problem detail, events stay spooled", async () => {
    const errors: Error[] = [];
    const c = client({ apiKey: "rsd_wrong_key", onError: (e) => errors.push(e) });
    await c.render(USE);
    await c.render(USE);
    await assert.rejects(c.flush(5000), (err: unknown) => {
      assert.ok(err instanceof GatewayRefusedError);
      assert.equal(err.status, 401);
      assert.equal(err.detail, "unknown API key");
      return true;
    });
    await sleep(300);
    assert.equal(gateway.requests.length, 1, "not retried");
    assert.equal(errors.length, 1);
    assert.equal(c.pending, 2);
    assert.equal(await c.close(0), 2);
    // Fixed configuration, same spool: delivered.
    const fixed = client();
    assert.equal(await fixed.flush(5000), 0);
    assert.equal(gateway.accepted.size, 2);
  });

  it("publishMany: one spool write, Merkle-batch signatures the gateway verifies, batched requests", async () => {
    const c = client({ maxBatchEvents: 500 });
    const evs = Array.from({ length: 600 }, (_, i) =>
      events.view({ ...USE, eventId: `m-${i}`, vendorId: VENDOR, channel: "web", occurredAt: new Date() }),
    );
    const ids = await c.publishMany(evs);
    assert.equal(ids.length, 600);
    assert.equal(await c.flush(10_000), 0);
    assert.equal(gateway.accepted.size, 600);
    assert.ok(gateway.requests.length >= 2 && gateway.requests.every((r) => r.events <= 500));
    const body = JSON.parse(gateway.requests[0]!.body);
    assert.equal(body.events[0].batch.leafCount, "200", "600 events sign as 3 chunks of 200");
  });

  it("halves the batch after HTTP 413, or 429 without Retry-After, and re-sends", async () => {
    gateway.script = [
      { status: 413, body: '{"title":"Payload Too Large","detail":"body over 4 MiB"}' },
      { status: 429, body: '{"title":"Too Many Requests","detail":"at most 10 events per batch"}' },
    ];
    const c = client({ maxConcurrentRequests: 1 }); // one request at a time: 40, 20, then 10s
    await c.publishMany(Array.from({ length: 40 }, (_, i) => events.render({ ...USE, eventId: `b-${i}`, vendorId: VENDOR })));
    assert.equal(await c.flush(5000), 0);
    assert.equal(gateway.accepted.size, 40);
    assert.deepEqual(gateway.requests.map((r) => r.events).slice(0, 2), [40, 20]);
    assert.ok(gateway.requests.slice(2).every((r) => r.events <= 10));
  });

  it("validates at the call site, as the Python SDK", async () => {
    const c = client();
    await assert.rejects(c.render({ ...USE, quantity: 0 }), RangeError);
    await assert.rejects(c.adImpression({ ...USE, channel: "web", adRevenue: 1.5 }), TypeError);
    await assert.rejects(c.publish(events.render({ ...USE, eventId: "x", vendorId: "other" })), /not this client's/);
    assert.equal(c.pending, 0);
  });

  it("refuses events beyond the spool bound, all or nothing", async () => {
    gateway.script = Array.from({ length: 50 }, () => ({ status: 503 }));
    const c = client({ spoolMaxEvents: 5 });
    await c.publishMany(Array.from({ length: 4 }, (_, i) => events.render({ ...USE, eventId: `s-${i}`, vendorId: VENDOR })));
    await assert.rejects(
      c.publishMany(Array.from({ length: 2 }, (_, i) => events.render({ ...USE, eventId: `t-${i}`, vendorId: VENDOR }))),
      SpoolFullError,
    );
    assert.equal(c.pending, 4);
  });

  it("refuses plain http to another machine unless insecure", () => {
    assert.throws(() => client({ baseUrl: "http://gateway.example.com" }), InsecureTransportError);
  });

  it("puts the caller's trace context in the envelope (outside the signature), only when well-formed", async () => {
    let trace = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "a=1" };
    const c = client({ traceContext: () => trace as any });
    await c.render(USE);
    trace = { traceparent: "01-not-a-traceparent", tracestate: "a=1" };
    await c.render(USE);
    assert.equal(await c.flush(5000), 0);
    const sent = gateway.requests.flatMap((r) => JSON.parse(r.body).events);
    assert.deepEqual(sent[0].trace, { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "a=1" });
    assert.equal(sent[1].trace, undefined);
  });

  it("parses Retry-After", () => {
    assert.equal(parseRetryAfter("3"), 3);
    assert.equal(parseRetryAfter(null), 0);
    assert.equal(parseRetryAfter("soon"), 0);
    const now = Date.parse("2026-10-01T12:00:00Z");
    assert.equal(parseRetryAfter("Thu, 01 Oct 2026 12:00:05 GMT", now), 5);
    assert.equal(parseRetryAfter("Thu, 01 Oct 2026 11:00:00 GMT", now), 0);
  });
});
