/** Exceptions the SDK raises to its caller (mirrors residuals_sdk.errors). */

/** Base class of every SDK error. */
export class ResidualsError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The local spool reached its size bound; the event was NOT accepted.
 *
 * Events pile up in the spool while the gateway cannot be reached. Wait for delivery
 * (`flush()`), give the spool more room (`spoolMaxBytes` / `spoolMaxEvents`), or shed load.
 */
export class SpoolFullError extends ResidualsError {}

/**
 * Another live client (in this or another process) already uses this spool directory.
 * Two clients draining one spool would both send its events; give each its own directory.
 */
export class SpoolLockedError extends ResidualsError {}

/**
 * The transport would talk plaintext to a gateway that is not on this machine.
 * Use an https:// base URL, or pass `insecure: true` for a test system you trust.
 */
export class InsecureTransportError extends ResidualsError {}

/** The client was closed; create a new one (its spool keeps undelivered events). */
export class ClientClosedError extends ResidualsError {}

/**
 * The gateway refused a request for a reason retrying cannot fix (HTTP 4xx other than
 * 408/429: a bad API key, a forbidden vendor, a malformed request). The events stay in the
 * spool, the client stops sending until it is restarted (with a fixed configuration), and
 * `flush()` rejects with this error. `detail` is the RFC 9457 problem detail, when given.
 */
export class GatewayRefusedError extends ResidualsError {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly problemType: string = "",
  ) {
    super(`gateway refused the request: HTTP ${status}${title ? ` ${title}` : ""}${detail ? `: ${detail}` : ""}`);
  }
}
