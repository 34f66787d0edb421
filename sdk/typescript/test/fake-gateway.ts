// A fake ingest gateway (HTTP JSON mapping of IngestService.PublishBatch) for the tests:
// authenticates the API key, verifies every envelope's signature (per event, or batch root
// through the audit path), dedupes by event id as the platform does, and can be told to
// fail, delay or refuse.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { create, fromBinary, fromJson, toBinary, toJsonString } from "@bufbuild/protobuf";
import { RejectReason } from "../src/gen/residuals/v1/common_pb.js";
import {
  PublishBatchRequestSchema,
  PublishBatchResponseSchema,
  PublishResultSchema,
  PublishStatus,
  type PublishResult,
} from "../src/gen/residuals/v1/ingest_pb.js";
import { SignedUsageEventSchema, UsageEventSchema, type SignedUsageEvent } from "../src/gen/residuals/v1/usage_pb.js";
import { verifyEnvelope } from "../src/verify.js";

export interface Scripted {
  status: number;
  headers?: Record<string, string>;
  body?: string;
}

export interface RequestLog {
  at: number;
  status: number;
  events: number;
  headers: IncomingMessage["headers"];
  body: string;
}

export class FakeGateway {
  readonly server: Server;
  url = "";
  apiKey = "rsd_test_secret";
  /** The vendor the API key authenticates (its signing keys are registered to it). */
  vendorId = "vendor-acme";
  /** key id → raw public key. */
  keys = new Map<string, Uint8Array>();
  /** event id → accepted payload (hex). */
  accepted = new Map<string, string>();
  /** event id → times answered ACCEPTED (must stay 1). */
  acceptCount = new Map<string, number>();
  duplicates = 0;
  conflicts: string[] = [];
  requests: RequestLog[] = [];
  /** Answers for the next requests, in order, before normal processing. */
  script: Scripted[] = [];
  /** Event ids answered REJECTED (reason UNKNOWN_LICENCE) when this returns a detail. */
  reject: (eventId: string) => string | null = () => null;
  /** Milliseconds to wait before answering a request that is processed. */
  delayMs = 0;
  /** Called once a request's events are processed, before the answer is written. */
  onProcessed: (() => void) | null = null;

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const log: RequestLog = { at: Date.now(), status: 0, events: 0, headers: req.headers, body };
    this.requests.push(log);
    const send = (status: number, text: string, headers: Record<string, string> = {}) => {
      log.status = status;
      res.writeHead(status, { "content-type": "application/json", ...headers });
      res.end(text);
    };
    const problem = (status: number, title: string, detail: string) =>
      send(status, JSON.stringify({ type: "about:blank", title, status, detail }), { "content-type": "application/problem+json" });
    if (req.method !== "POST" || req.url !== "/v1/ingest:publishBatch") return problem(404, "Not Found", `no route ${req.method} ${req.url}`);
    try {
      log.events = (JSON.parse(body).events ?? []).length;
    } catch {
      log.events = 0;
    }
    const scripted = this.script.shift();
    if (scripted) return send(scripted.status, scripted.body ?? "", scripted.headers);
    if (req.headers.authorization !== `Bearer ${this.apiKey}`) return problem(401, "Unauthorized", "unknown API key");
    if (!String(req.headers["content-type"]).startsWith("application/json")) return problem(415, "Unsupported Media Type", "JSON only");
    let events: SignedUsageEvent[];
    try {
      events = fromJson(PublishBatchRequestSchema, JSON.parse(body)).events;
    } catch (err) {
      return problem(400, "Bad Request", (err as Error).message);
    }
    const results = events.map((e, index) => this.one(e, index));
    this.onProcessed?.();
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (res.destroyed) return;
    send(200, toJsonString(PublishBatchResponseSchema, create(PublishBatchResponseSchema, { results })));
  }

  private one(signed: SignedUsageEvent, index: number): PublishResult {
    const result = (status: PublishStatus, eventId = "", reason = RejectReason.UNSPECIFIED, detail = "") =>
      create(PublishResultSchema, { index, eventId, status, reason, detail });
    const verdict = verifyEnvelope(toBinary(SignedUsageEventSchema, signed), (keyId) => {
      const publicKey = this.keys.get(keyId);
      return publicKey && { keyId, vendorId: this.vendorId, publicKey };
    }, { authenticatedVendor: this.vendorId });
    if (!verdict.ok) return result(PublishStatus.REJECTED, "", RejectReason[verdict.reason], verdict.detail);
    const event = fromBinary(UsageEventSchema, signed.payload);
    const payload = Buffer.from(signed.payload).toString("hex");
    const seen = this.accepted.get(event.eventId);
    if (seen !== undefined) {
      if (seen !== payload) this.conflicts.push(event.eventId);
      this.duplicates += 1;
      return result(PublishStatus.DUPLICATE, event.eventId);
    }
    const why = this.reject(event.eventId);
    if (why !== null) return result(PublishStatus.REJECTED, event.eventId, RejectReason.UNKNOWN_LICENCE, why);
    this.accepted.set(event.eventId, payload);
    this.acceptCount.set(event.eventId, (this.acceptCount.get(event.eventId) ?? 0) + 1);
    return result(PublishStatus.ACCEPTED, event.eventId);
  }
}
