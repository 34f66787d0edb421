/**
 * `UsageClient`: sign, spool, deliver and report usage events (mirrors
 * residuals_sdk.client.UsageClient).
 *
 * Life of an event:
 *
 *     await client.render({...})
 *       build UsageEvent (UUIDv7 id) → serialize once → Ed25519-sign → SignedUsageEvent
 *       → append to the spool (fsync'd) → resolve with the event id → hand to the sender
 *     await client.publishMany([...])
 *       the same for many events, with one spool write and one signature per chunk of up to
 *       `signatureBatchSize` events (the Merkle root of the chunk; each envelope carries its
 *       inclusion proof)
 *     sender (in the background, on the event loop)
 *       gateway answer ACCEPTED / DUPLICATE / REJECTED: delete from the spool, then call
 *       onDelivery; transient failure: re-send after exponential backoff with jitter
 *
 * At most `maxInFlight` events are held in memory; beyond that they wait in the spool and are
 * loaded in order as room frees up. A client started on a spool that still holds events (the
 * gateway was down, the process was killed) re-sends them first.
 *
 * Guarantee: every event a publishing call accepted (resolved with an id for) reaches the
 * platform at least once; the platform drops exact repeats by `(vendor_id, event_id)`.
 */
import { UsageKind } from "./gen/residuals/v1/common_pb.js";
import type { TraceContext } from "./gen/residuals/v1/common_pb.js";
import type { UsageEvent } from "./gen/residuals/v1/usage_pb.js";
import { ClientClosedError, GatewayRefusedError } from "./errors.js";
import * as build from "./events.js";
import { uuid7 } from "./ids.js";
import { DeliveryStatus, type DeliveryCallback, type DeliveryReport } from "./report.js";
import { RetryPolicy, type RetryOptions } from "./retry.js";
import { envelopeBytes, signBatch, type SigningKey } from "./signing.js";
import { Spool, type Durability, type NewEvent, type SpooledEvent } from "./spool.js";
import type { Outcome, Transport } from "./transports/base.js";
import { HttpTransport } from "./transports/http.js";

export const DEFAULT_MAX_IN_FLIGHT = 50_000;
/** Events per batch signature in publishMany: 256 leaves make 8-hash (~290-byte) proofs. */
export const DEFAULT_SIGNATURE_BATCH_SIZE = 256;
export const DEFAULT_MAX_CONCURRENT_REQUESTS = 2;

export interface ClientOptions {
  vendorId: string;
  signingKey: SigningKey;
  transport: Transport;
  spool: Spool;
  onDelivery?: DeliveryCallback;
  /** Called once when the gateway refuses the client for good (see GatewayRefusedError). */
  onError?: (error: Error) => void;
  retry?: RetryPolicy | RetryOptions;
  maxInFlight?: number;
  signatureBatchSize?: number;
  maxConcurrentRequests?: number;
  /** The trace context to put in each envelope (W3C traceparent), e.g. from OpenTelemetry. */
  traceContext?: () => TraceContext | undefined;
}

export interface HttpClientOptions extends Omit<ClientOptions, "transport" | "spool"> {
  /** The ingest gateway, e.g. `https://ingest.residuals.example`. */
  baseUrl: string;
  /** `rsd_<key_id>_<secret>`, sent as `Authorization: Bearer`. */
  apiKey: string;
  /** Where undelivered events are kept across restarts (one directory per client); null: memory only. */
  spoolDir: string | null;
  spoolMaxBytes?: number;
  spoolMaxEvents?: number;
  spoolDurability?: Durability;
  onSpoolCorrupt?: (path: string, reason: string) => void;
  insecure?: boolean;
  maxBatchEvents?: number;
  maxBatchBytes?: number;
  requestTimeoutMs?: number;
  fetch?: typeof fetch;
}

type Base = { occurredAt?: build.OccurredAt; quantity?: number; eventId?: string; approvalId?: string | null };
export type RenderArgs = Omit<build.RenderFields, "occurredAt" | "quantity" | "approvalId"> & Base;
export type ViewArgs = Omit<build.ViewFields, "occurredAt" | "quantity" | "approvalId"> & Base;
export type AdImpressionArgs = Omit<build.AdImpressionFields, "occurredAt" | "quantity" | "approvalId"> & Base;
export type RetractArgs = build.RetractionFields & { eventId?: string };

interface Entry {
  event: SpooledEvent;
  attempts: number;
}

const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/**
 * The trace context as sdk/SIGNING.md §4 wants it in an envelope: only with a well-formed
 * version-00 `traceparent` (else none); a `tracestate` over 512 characters or not printable
 * ASCII is dropped.
 */
export function sanitizeTrace(trace: TraceContext | undefined): TraceContext | undefined {
  if (!trace || !TRACEPARENT.test(trace.traceparent)) return undefined;
  const state = trace.tracestate;
  const keep = state.length <= 512 && /^[\x20-\x7e]*$/.test(state);
  return { ...trace, tracestate: keep ? state : "" };
}

/**
 * `[lo, hi)` ranges splitting `count` items into the fewest chunks of at most `most`, of
 * near-equal sizes (257 events sign as 129 + 128, not 256 + a lone 1).
 */
export function chunks(count: number, most: number): [number, number][] {
  if (count === 0) return [];
  const n = Math.ceil(count / most);
  const size = Math.floor(count / n);
  const extra = count % n;
  const out: [number, number][] = [];
  let lo = 0;
  for (let i = 0; i < n; i++) {
    const hi = lo + size + (i < extra ? 1 : 0);
    out.push([lo, hi]);
    lo = hi;
  }
  return out;
}

export class UsageClient {
  readonly vendorId: string;
  readonly signingKey: SigningKey;
  readonly transport: Transport;
  readonly spool: Spool;
  readonly retry: RetryPolicy;
  readonly maxInFlight: number;
  readonly signatureBatchSize: number;
  readonly maxConcurrentRequests: number;
  private readonly onDelivery?: DeliveryCallback;
  private readonly onError?: (error: Error) => void;
  private readonly traceContext?: () => TraceContext | undefined;

  private readonly inFlight = new Map<number, Entry>();
  private ready: SpooledEvent[] = [];
  private loadedUpto = 0;
  private backlog: boolean;
  private active = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly abort = new AbortController();
  private waiters: (() => void)[] = [];
  private refused: GatewayRefusedError | null = null;
  private closing = false;
  private closed = false;
  private closePromise: Promise<number> | null = null;

  constructor(options: ClientOptions) {
    if (!options.vendorId) throw new Error("vendorId is required");
    this.vendorId = options.vendorId;
    this.signingKey = options.signingKey;
    this.transport = options.transport;
    this.spool = options.spool;
    this.onDelivery = options.onDelivery;
    this.onError = options.onError;
    this.traceContext = options.traceContext;
    this.retry = options.retry instanceof RetryPolicy ? options.retry : new RetryPolicy(options.retry);
    this.maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    this.signatureBatchSize = options.signatureBatchSize ?? DEFAULT_SIGNATURE_BATCH_SIZE;
    this.maxConcurrentRequests = options.maxConcurrentRequests ?? DEFAULT_MAX_CONCURRENT_REQUESTS;
    if (this.maxInFlight < 1) throw new RangeError("maxInFlight must be positive");
    if (this.signatureBatchSize < 1) throw new RangeError("signatureBatchSize must be positive (1: a signature per event)");
    if (this.maxConcurrentRequests < 1) throw new RangeError("maxConcurrentRequests must be positive");
    this.backlog = this.spool.count > 0;
    // Re-send what an earlier client left in the spool, after the caller's synchronous code.
    queueMicrotask(() => this.kick());
  }

  /**
   * A client publishing through the ingest gateway's HTTP API at `baseUrl`. Plain http:// is
   * allowed only to this machine unless `insecure: true`.
   */
  static http(options: HttpClientOptions): UsageClient {
    const spool = Spool.open(options.spoolDir, {
      maxBytes: options.spoolMaxBytes,
      maxEvents: options.spoolMaxEvents,
      durability: options.spoolDurability,
      onCorrupt: options.onSpoolCorrupt,
    });
    try {
      const transport = new HttpTransport(options.baseUrl, options.apiKey, {
        insecure: options.insecure,
        maxBatchEvents: options.maxBatchEvents,
        maxBatchBytes: options.maxBatchBytes,
        requestTimeoutMs: options.requestTimeoutMs,
        fetch: options.fetch,
      });
      return new UsageClient({ ...options, transport, spool });
    } catch (err) {
      spool.close();
      throw err;
    }
  }

  // --- publishing --------------------------------------------------------------------

  /** Report `quantity` rendered videos showing the avatar; resolves with the event id once spooled. */
  async render(args: RenderArgs): Promise<string> {
    return this.publish(build.render({ ...args, eventId: args.eventId ?? uuid7(), vendorId: this.vendorId }));
  }

  /** Report `quantity` views of the video `renderId`; resolves with the event id once spooled. */
  async view(args: ViewArgs): Promise<string> {
    return this.publish(build.view({ ...args, eventId: args.eventId ?? uuid7(), vendorId: this.vendorId }));
  }

  /** Report ad impressions and the revenue they earned (a decimal string, never a float). */
  async adImpression(args: AdImpressionArgs): Promise<string> {
    return this.publish(build.adImpression({ ...args, eventId: args.eventId ?? uuid7(), vendorId: this.vendorId }));
  }

  /**
   * Withdraw this vendor's earlier event. `licenceId` is the original event's licence (it
   * routes the retraction to the original's partition); pass null only if truly unknown.
   */
  async retract(args: RetractArgs): Promise<string> {
    return this.publish(build.retraction({ ...args, eventId: args.eventId ?? uuid7(), vendorId: this.vendorId }));
  }

  /** Sign and publish a prepared UsageEvent as it is; resolves with its event id. */
  async publish(event: UsageEvent): Promise<string> {
    return (await this.publishMany([event]))[0]!;
  }

  /**
   * Sign and publish prepared events with ONE spool write; resolves with their ids. All or
   * nothing: if the spool cannot take them all, none is accepted (SpoolFullError). Events
   * are signed in chunks of at most `signatureBatchSize` with one signature each.
   */
  async publishMany(events: readonly UsageEvent[]): Promise<string[]> {
    if (this.closing) throw new ClientClosedError("the client is closed");
    const keys: string[] = [];
    for (const event of events) {
      if (event.vendorId !== this.vendorId) {
        throw new Error(`event vendorId ${JSON.stringify(event.vendorId)} is not this client's ${JSON.stringify(this.vendorId)}`);
      }
      if (!event.eventId) throw new Error("eventId is required (use uuid7())");
      if (event.kind === UsageKind.UNSPECIFIED) throw new Error("event kind is required");
      keys.push(build.routingKey(event));
    }
    const trace = sanitizeTrace(this.traceContext?.());
    const prepared: NewEvent[] = [];
    for (const [lo, hi] of chunks(events.length, this.signatureBatchSize)) {
      const chunk = events.slice(lo, hi);
      const signed = signBatch(chunk, this.signingKey, trace ? chunk.map(() => trace) : undefined);
      signed.forEach((envelope, i) =>
        prepared.push({ eventId: chunk[i]!.eventId, routingKey: keys[lo + i]!, envelope: envelopeBytes(envelope) }),
      );
    }
    await this.accept(prepared);
    return prepared.map((e) => e.eventId);
  }

  private async accept(events: NewEvent[]): Promise<void> {
    if (events.length === 0) return;
    const spooled = await this.spool.appendMany(events); // throws SpoolFullError
    if (this.closed) return; // closed while writing: the events stay spooled for the next client
    const direct = !this.backlog && this.inFlight.size + spooled.length <= this.maxInFlight;
    if (direct) {
      for (const e of spooled) {
        this.inFlight.set(e.seq, { event: e, attempts: 1 });
        this.ready.push(e);
      }
      this.loadedUpto = Math.max(this.loadedUpto, spooled[spooled.length - 1]!.seq);
    } else {
      this.backlog = true;
    }
    this.kick();
  }

  // --- delivery ------------------------------------------------------------------------

  private kick(): void {
    if (this.closed || this.refused) return;
    this.loadBacklog();
    while (this.ready.length > 0 && this.active < this.maxConcurrentRequests) {
      const batch = this.takeBatch();
      this.active += 1;
      this.transport
        .publish(batch, this.abort.signal)
        .then(
          (outcomes) => this.settle(outcomes),
          (err) => this.fail(batch, err as Error),
        )
        .finally(() => {
          this.active -= 1;
          this.kick();
        });
    }
  }

  private takeBatch(): SpooledEvent[] {
    // Oldest first (a retry goes back in sequence order among what is ready).
    this.ready.sort((a, b) => a.seq - b.seq);
    let size = 0;
    let n = 0;
    while (n < this.ready.length && n < this.transport.maxBatchEvents) {
      const framed = this.ready[n]!.envelope.length + 6;
      if (n > 0 && size + framed > this.transport.maxBatchBytes) break;
      size += framed;
      n += 1;
    }
    return this.ready.splice(0, n);
  }

  private loadBacklog(): void {
    const room = this.maxInFlight - this.inFlight.size;
    if (!this.backlog || room <= 0) return;
    const batch = this.spool.readAfter(this.loadedUpto, room).filter((e) => !this.inFlight.has(e.seq));
    for (const e of batch) {
      this.inFlight.set(e.seq, { event: e, attempts: 1 });
      this.ready.push(e);
    }
    if (batch.length > 0) this.loadedUpto = batch[batch.length - 1]!.seq;
    if (batch.length < room) this.backlog = false;
  }

  private settle(outcomes: Outcome[]): void {
    if (this.closed) return;
    const done: Outcome[] = [];
    // The transient failures of one request retry together, after one backoff (by the most
    // attempts among them, never below the gateway's largest Retry-After), so they go back
    // as one batch instead of trickling out one jittered timer at a time.
    const again: Entry[] = [];
    let retryAfter = 0;
    for (const outcome of outcomes) {
      const entry = this.inFlight.get(outcome.event.seq);
      if (!entry) continue;
      if (outcome.status === null) {
        again.push(entry);
        retryAfter = Math.max(retryAfter, outcome.retryAfter ?? 0);
      } else done.push(outcome);
    }
    if (again.length > 0) {
      const attempts = Math.max(...again.map((e) => e.attempts));
      const ms = Math.round(this.retry.delay(attempts, retryAfter) * 1000);
      for (const e of again) e.attempts += 1;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.ready.push(...again.filter((e) => this.inFlight.has(e.event.seq)).map((e) => e.event));
        this.kick();
      }, ms);
      timer.unref();
      this.timers.add(timer);
    }
    if (done.length === 0) return;
    // Delete before announcing: a callback must never see an event a crash would re-send.
    this.spool.delete(done.map((o) => o.event));
    const reports: DeliveryReport[] = done.map((o) => {
      const attempts = this.inFlight.get(o.event.seq)!.attempts;
      this.inFlight.delete(o.event.seq);
      return {
        eventId: o.event.eventId,
        routingKey: o.event.routingKey,
        status: o.status!,
        reason: o.reason ?? "",
        detail: o.detail ?? "",
        attempts,
        ok: o.status !== DeliveryStatus.REJECTED,
      };
    });
    for (const report of reports) this.report(report);
    this.notify();
  }

  private fail(batch: SpooledEvent[], err: Error): void {
    if (this.closed) return;
    if (err instanceof GatewayRefusedError) {
      // Retrying cannot fix it (a bad key, a forbidden vendor): keep the events, stop, say so.
      this.ready.push(...batch);
      if (!this.refused) {
        this.refused = err;
        process.emitWarning(`residuals SDK: ${err.message}; events kept in the spool, sending stopped`);
        try {
          this.onError?.(err);
        } catch (cbErr) {
          process.emitWarning(`residuals SDK: onError callback threw: ${String(cbErr)}`);
        }
      }
      this.notify();
      return;
    }
    // A transport bug: treat as transient, never lose the events.
    this.settle(batch.map((event) => ({ event, status: null, detail: `transport error: ${err.message}` })));
  }

  private report(report: DeliveryReport): void {
    if (report.status === DeliveryStatus.REJECTED) {
      process.emitWarning(`residuals SDK: event ${report.eventId} rejected: ${report.reason} ${report.detail}`);
    }
    if (!this.onDelivery) return;
    try {
      this.onDelivery(report);
    } catch (err) {
      // A caller's bug must not stop delivery.
      process.emitWarning(`residuals SDK: onDelivery callback threw for event ${report.eventId}: ${String(err)}`);
    }
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  // --- flush / close -------------------------------------------------------------------

  /** Events accepted but not yet answered (still in the spool). */
  get pending(): number {
    return this.spool.count;
  }

  /** The gateway's refusal that stopped sending, if any. */
  get error(): GatewayRefusedError | null {
    return this.refused;
  }

  /**
   * Wait until every accepted event is answered or `timeoutMs` passes; resolves with how
   * many are still pending (0: all delivered or answered). Rejects with GatewayRefusedError
   * when the gateway refused the client (the events stay in the spool).
   */
  async flush(timeoutMs?: number): Promise<number> {
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    // A referenced timer keeps the process alive while the caller waits.
    const keepAlive = setInterval(() => {}, 1 << 30);
    try {
      while (this.spool.count > 0) {
        if (this.refused) throw this.refused;
        if (this.closed) break;
        const remaining = deadline - Date.now();
        if (remaining <= 0) break;
        await new Promise<void>((resolveWait) => {
          const timer = setTimeout(done, Math.min(remaining, 100));
          function done() {
            clearTimeout(timer);
            resolveWait();
          }
          this.waiters.push(done);
        });
      }
      return this.spool.count;
    } finally {
      clearInterval(keepAlive);
    }
  }

  /**
   * Flush for up to `timeoutMs` (default 30 s), then stop. Resolves with the events left
   * pending: they stay in the spool directory and are sent by the next client that opens it.
   * Idempotent.
   */
  close(timeoutMs = 30_000): Promise<number> {
    if (!this.closePromise) {
      this.closing = true;
      this.closePromise = (async () => {
        let left: number;
        try {
          left = await this.flush(timeoutMs);
        } catch {
          left = this.spool.count;
        }
        this.closed = true;
        this.abort.abort();
        for (const t of this.timers) clearTimeout(t);
        this.timers.clear();
        this.notify();
        this.transport.close();
        this.spool.close();
        if (left > 0) process.emitWarning(`residuals SDK: closed with ${left} undelivered events kept in the spool`);
        return left;
      })();
    }
    return this.closePromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
