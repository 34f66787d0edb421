/**
 * Client-side event ids: UUIDv7 (RFC 9562), time-ordered and unique without coordination
 * (mirrors residuals_sdk.ids).
 *
 * An event's identity is `(vendor_id, event_id)` forever, so the id is fixed when the event
 * is created, before it is spooled or sent: every retry and every re-send after a restart
 * carries the same id, which is what lets the platform drop repeats.
 *
 * Layout: 48-bit Unix milliseconds, version 7, a 12-bit sub-millisecond counter seeded at
 * random each millisecond ("method 1" of RFC 9562 §6.2, so ids from one process sort in
 * creation order even within a millisecond), the variant, and 62 random bits. If the counter
 * overflows, or the clock steps back, the timestamp is advanced past the last id issued so
 * ids stay strictly increasing within the process.
 */
import { randomBytes } from "node:crypto";

const COUNTER_MAX = 0xfff;

/** Strictly increasing UUIDv7 strings. */
export class UUIDv7Generator {
  private lastMs = -1;
  private counter = 0;

  constructor(private readonly clock: () => number = Date.now) {}

  private nextFields(): [number, number] {
    const nowMs = Math.floor(this.clock());
    if (nowMs > this.lastMs) {
      this.lastMs = nowMs;
      // Seed below half the range so a burst within one millisecond has headroom.
      this.counter = randomBytes(2).readUInt16BE(0) & 0x7ff;
    } else {
      this.counter += 1;
      if (this.counter > COUNTER_MAX) {
        this.lastMs += 1;
        this.counter = 0;
      }
    }
    return [this.lastMs, this.counter];
  }

  /** The next id in canonical text form, e.g. `0192f1c3-7b2a-7c41-9d3e-5a1b2c3d4e5f`. */
  next(): string {
    const [millis, counter] = this.nextFields();
    const bytes = Buffer.alloc(16);
    bytes.writeUIntBE(millis % 2 ** 48, 0, 6);
    bytes.writeUInt16BE(0x7000 | counter, 6);
    const rand = randomBytes(8);
    rand[0] = (rand[0]! & 0x3f) | 0x80; // variant 0b10, then 62 random bits
    rand.copy(bytes, 8);
    const hex = bytes.toString("hex");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
}

const defaultGenerator = new UUIDv7Generator();

/** A new UUIDv7 in canonical text form. */
export function uuid7(): string {
  return defaultGenerator.next();
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The Unix millisecond timestamp inside a UUIDv7 string (for tests and debugging). */
export function uuid7Millis(value: string): number {
  const text = value.trim().replace(/^urn:uuid:/i, "").replace(/^\{(.*)\}$/, "$1");
  if (!UUID.test(text) || text[14] !== "7") throw new Error(`${value} is not a UUIDv7`);
  return parseInt(text.replace(/-/g, "").slice(0, 12), 16);
}
