/**
 * HTTP transport: `POST {baseUrl}/v1/ingest:publishBatch` on the ingest gateway, the JSON
 * mapping of IngestService.PublishBatch.
 *
 * Request: `Content-Type: application/json`, `Authorization: Bearer <apiKey>`, body a
 * PublishBatchRequest in proto3 JSON (bytes base64, lowerCamelCase names). The envelopes
 * are the spooled SignedUsageEvent bytes: payload and signature go out exactly as signed.
 * Response: PublishBatchResponse JSON, one result per event (ACCEPTED and DUPLICATE are
 * done, REJECTED is final and reported with its reason, never retried).
 *
 * Failures: 429 and 503 (and 408, 500, 502, 504) and network errors/timeouts are retried by
 * the client with backoff, never below the server's `Retry-After` (seconds or HTTP date).
 * 413, or 429 without Retry-After (a batch over the gateway's batch limit), with more than
 * one event halves the batch size and re-sends. Any other 4xx is a
 * refusal retrying cannot fix (bad API key, forbidden): GatewayRefusedError with the RFC 9457
 * problem `detail`; the events stay in the spool.
 *
 * Plain http:// is allowed only to this machine (localhost, 127.0.0.0/8, ::1) unless
 * `insecure: true`.
 */
import { create, fromBinary, fromJson, toJsonString } from "@bufbuild/protobuf";
import { RejectReasonSchema } from "../gen/residuals/v1/common_pb.js";
import {
  PublishBatchRequestSchema,
  PublishBatchResponseSchema,
  PublishStatus,
  type PublishResult,
} from "../gen/residuals/v1/ingest_pb.js";
import { SignedUsageEventSchema } from "../gen/residuals/v1/usage_pb.js";
import { GatewayRefusedError, InsecureTransportError } from "../errors.js";
import { DeliveryStatus } from "../report.js";
import type { SpooledEvent } from "../spool.js";
import type { Outcome, Transport } from "./base.js";

export const PUBLISH_PATH = "/v1/ingest:publishBatch";
export const DEFAULT_MAX_BATCH_EVENTS = 500;
export const DEFAULT_MAX_BATCH_BYTES = 1024 * 1024;
const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);

export interface HttpTransportOptions {
  /** Allow plain http:// to a gateway that is not on this machine. */
  insecure?: boolean;
  maxBatchEvents?: number;
  maxBatchBytes?: number;
  /** Per-request timeout in milliseconds (default 30 s). */
  requestTimeoutMs?: number;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  userAgent?: string;
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h.endsWith(".localhost") || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** Seconds from a `Retry-After` value (delta-seconds or an HTTP date), 0 if absent/invalid. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number {
  if (!value) return 0;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? 0 : Math.max(0, (when - now) / 1000);
}

/** `REJECT_REASON_BAD_SIGNATURE` → `BAD_SIGNATURE`. */
export function reasonName(value: number): string {
  const v = RejectReasonSchema.values.find((x) => x.number === value);
  return v ? v.name.replace(/^REJECT_REASON_/, "") : `REASON_${value}`;
}

export class HttpTransport implements Transport {
  readonly name = "http";
  readonly url: string;
  readonly secure: boolean;
  maxBatchEvents: number;
  readonly maxBatchBytes: number;
  private readonly auth: string;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;
  private readonly userAgent: string;

  constructor(baseUrl: string, apiKey: string, options: HttpTransportOptions = {}) {
    if (!apiKey) throw new Error("apiKey is required (rsd_<key_id>_<secret>)");
    const base = new URL(baseUrl);
    if (base.protocol !== "https:" && base.protocol !== "http:") throw new Error(`baseUrl must be http(s), not ${base.protocol}`);
    this.secure = base.protocol === "https:";
    if (!this.secure && !isLoopback(base.hostname)) {
      if (!options.insecure) {
        throw new InsecureTransportError(
          `refusing plain http:// to ${base.host}, which is not this machine: use https://, or insecure: true for a test system you trust`,
        );
      }
      process.emitWarning(`residuals SDK: publishing to ${base.host} over plain http (insecure: true)`);
    }
    this.url = base.href.replace(/\/+$/, "") + PUBLISH_PATH;
    this.auth = `Bearer ${apiKey}`;
    this.maxBatchEvents = options.maxBatchEvents ?? DEFAULT_MAX_BATCH_EVENTS;
    this.maxBatchBytes = options.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES;
    if (this.maxBatchEvents < 1 || this.maxBatchBytes < 1024) throw new RangeError("batch limits must be positive");
    this.timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch;
    this.userAgent = options.userAgent ?? "residuals-sdk-typescript/0.1.0";
  }

  /** The request body for `events` (proto3 JSON of PublishBatchRequest). */
  static body(events: readonly SpooledEvent[]): string {
    const request = create(PublishBatchRequestSchema, {
      events: events.map((e) => fromBinary(SignedUsageEventSchema, e.envelope)),
    });
    return toJsonString(PublishBatchRequestSchema, request);
  }

  async publish(events: readonly SpooledEvent[], signal: AbortSignal): Promise<Outcome[]> {
    const retryAll = (detail: string, retryAfter = 0): Outcome[] =>
      events.map((event) => ({ event, status: null, detail, retryAfter }));
    let response: Response;
    let text: string;
    try {
      response = await this.fetchImpl(this.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, application/problem+json",
          authorization: this.auth,
          "user-agent": this.userAgent,
        },
        body: HttpTransport.body(events),
        signal: AbortSignal.any([signal, AbortSignal.timeout(this.timeoutMs)]),
      });
      text = await response.text();
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      return retryAll(`network error: ${e.cause?.code ?? e.name}: ${e.cause?.message ?? e.message}`);
    }
    const status = response.status;
    if (status === 200) return this.outcomes(events, text);
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    const problem = parseProblem(text);
    const detail = `HTTP ${status}${problem.title ? ` ${problem.title}` : ""}${problem.detail ? `: ${problem.detail}` : ""}`;
    // Over the gateway's limits: 413 (body too large), or 429 without a retry delay (the
    // service's RESOURCE_EXHAUSTED for a batch over its batch limit; a rate limit carries
    // Retry-After), as the Python SDK's gRPC transport reads RESOURCE_EXHAUSTED.
    const tooBig = status === 413 || (status === 429 && !response.headers.has("retry-after"));
    if (tooBig && events.length > 1) {
      this.maxBatchEvents = Math.max(1, Math.floor(events.length / 2));
      process.emitWarning(`residuals SDK: gateway refused a batch of ${events.length} events (${detail}); batches now at most ${this.maxBatchEvents}`);
      return retryAll(detail, retryAfter);
    }
    if (RETRYABLE.has(status) || status >= 500) return retryAll(detail, retryAfter);
    throw new GatewayRefusedError(status, problem.title || response.statusText, problem.detail, problem.type);
  }

  private outcomes(events: readonly SpooledEvent[], text: string): Outcome[] {
    let results: PublishResult[];
    try {
      results = fromJson(PublishBatchResponseSchema, JSON.parse(text), { ignoreUnknownFields: true }).results;
    } catch (err) {
      return events.map((event) => ({ event, status: null, detail: `unreadable gateway response: ${(err as Error).message}` }));
    }
    const byIndex = new Map(results.map((r) => [r.index, r]));
    return events.map((event, index): Outcome => {
      const r = byIndex.get(index);
      if (!r) return { event, status: null, detail: "gateway gave no result for the event" };
      switch (r.status) {
        case PublishStatus.ACCEPTED:
          return { event, status: DeliveryStatus.DELIVERED, detail: r.detail };
        case PublishStatus.DUPLICATE:
          return { event, status: DeliveryStatus.DUPLICATE, detail: r.detail };
        case PublishStatus.REJECTED:
          return { event, status: DeliveryStatus.REJECTED, reason: reasonName(r.reason), detail: r.detail };
        default:
          return { event, status: null, detail: `unknown publish status ${r.status}` };
      }
    });
  }

  close(): void {}
}

/** The RFC 9457 problem fields of an error body (empty when it is not one). */
export function parseProblem(text: string): { type: string; title: string; detail: string } {
  try {
    const body = JSON.parse(text) as Record<string, unknown>;
    const str = (v: unknown) => (typeof v === "string" ? v : "");
    return { type: str(body.type), title: str(body.title), detail: str(body.detail) };
  } catch {
    return { type: "", title: "", detail: text.slice(0, 500).trim() };
  }
}
