/**
 * The contract between UsageClient and a transport (mirrors residuals_sdk.transports.base).
 *
 * The client owns the spool, the retry schedule and the callbacks; a transport only moves
 * spooled envelopes and answers, per event, either a final status or "try again later".
 * A transport throws GatewayRefusedError for a refusal retrying cannot fix: the client then
 * keeps the events in the spool and stops sending.
 */
import type { DeliveryStatus } from "../report.js";
import type { SpooledEvent } from "../spool.js";

export interface Outcome {
  event: SpooledEvent;
  /** null: the attempt failed transiently; retry after at least `retryAfter` seconds. */
  status: DeliveryStatus | null;
  reason?: string;
  detail?: string;
  retryAfter?: number;
}

export interface Transport {
  /** "http", for logs. */
  readonly name: string;
  /** Most events in one request (a transport may lower it, e.g. after HTTP 413). */
  readonly maxBatchEvents: number;
  /** Most envelope bytes in one request. */
  readonly maxBatchBytes: number;
  /** One outcome per event, same order. Throws GatewayRefusedError only. */
  publish(events: readonly SpooledEvent[], signal: AbortSignal): Promise<Outcome[]>;
  close(): void;
}
