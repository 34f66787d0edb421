/**
 * Exponential backoff with jitter for re-sending events the gateway could not take
 * (mirrors residuals_sdk.retry).
 *
 * "Equal jitter": the n-th retry waits between half and all of
 * `min(maxBackoff, initialBackoff * multiplier^(n-1))` seconds, so clients that failed
 * together do not retry in lock step, yet no retry comes back almost at once. The server's
 * own hint (HTTP `Retry-After`) raises the wait, never lowers it.
 */
export interface RetryOptions {
  /** Seconds before the first retry (ceiling; jittered down to half). Default 0.2. */
  initialBackoff?: number;
  /** Largest wait in seconds. Default 30. */
  maxBackoff?: number;
  /** Growth per failed attempt. Default 2. */
  multiplier?: number;
  /** Uniform [0, 1) source, for tests. */
  random?: () => number;
}

export class RetryPolicy {
  readonly initialBackoff: number;
  readonly maxBackoff: number;
  readonly multiplier: number;
  private readonly random: () => number;

  constructor(options: RetryOptions = {}) {
    this.initialBackoff = options.initialBackoff ?? 0.2;
    this.maxBackoff = options.maxBackoff ?? 30;
    this.multiplier = options.multiplier ?? 2;
    this.random = options.random ?? Math.random;
    if (!(this.initialBackoff > 0) || this.maxBackoff < this.initialBackoff) {
      throw new RangeError("need 0 < initialBackoff <= maxBackoff");
    }
    if (!(this.multiplier >= 1)) throw new RangeError("multiplier must be >= 1");
  }

  /** The un-jittered backoff (seconds) after `failures` (>= 1) failed attempts. */
  ceiling(failures: number): number {
    const exponent = Math.max(0, failures - 1);
    return Math.min(this.maxBackoff, this.initialBackoff * this.multiplier ** Math.min(exponent, 60));
  }

  /** Seconds to wait: equal jitter over {@link ceiling}, and never below `atLeast`. */
  delay(failures: number, atLeast = 0): number {
    const ceiling = this.ceiling(failures);
    return Math.max(atLeast, ceiling / 2 + this.random() * (ceiling / 2));
  }
}
