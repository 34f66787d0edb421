/**
 * Building `residuals.v1.UsageEvent` messages (mirrors residuals_sdk.events, same checks,
 * same messages, same bytes).
 *
 * The platform is the judge of every event. The checks here catch mistakes early, at the
 * call site, before anything is signed: wrong types, a time without a zone, a float for
 * money, an empty required field, a quantity out of range, and the platform's bounds of the
 * event model: ids and labels printable text of at most 128 characters; amounts finite with
 * at most 18 integer and 9 fraction digits; times between 2000-01-01 and 9999-12-31.
 * Optional fields are set only when they differ from their documented default, so equal
 * events serialize to equal bytes.
 */
import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { UsageKind } from "./gen/residuals/v1/common_pb.js";
import { UsageEventSchema, type UsageEvent } from "./gen/residuals/v1/usage_pb.js";

export const MAX_QUANTITY = 1_000_000;
export const MAX_ID_CHARS = 128;
export const MAX_INTEGER_DIGITS = 18;
export const MAX_FRACTION_DIGITS = 9;
/** 2000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z, as (seconds, nanos). */
const EARLIEST: readonly [bigint, number] = [946684800n, 0];
const LATEST: readonly [bigint, number] = [253402300799n, 999_999_000];

/** When a use happened: a `Date`, or RFC 3339 text with a zone ("2026-10-01T12:00:00.123456Z"). */
export type OccurredAt = Date | string;
/** A decimal amount: plain text ("12.40"), a bigint or an integer number; never a fraction. */
export type DecimalInput = string | bigint | number;

// Python's str.isprintable(): no control, format, surrogate, private-use or unassigned
// character, and no separator other than the ASCII space.
const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;
// Python's str.strip() whitespace (str.isspace: Unicode White_Space plus 0x1c-0x1f; not U+FEFF, unlike JavaScript's \s).
const WS = "\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const STRIP = new RegExp(`^[${WS}]+|[${WS}]+$`, "gu");

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (value instanceof Date) return "Date";
  return typeof value;
}

export function text(name: string, value: unknown, required = true): string {
  if (value === null || value === undefined) value = "";
  if (typeof value !== "string") throw new TypeError(`${name} must be a string, not ${typeName(value)}`);
  // As the platform reads it: surrounding whitespace is not part of an id.
  const stripped = value.replace(STRIP, "");
  if (required && !stripped) throw new RangeError(`${name} is required`);
  const chars = [...stripped].length;
  if (chars > MAX_ID_CHARS) {
    throw new RangeError(`${name} is ${chars.toLocaleString("en-US")} characters, the limit is ${MAX_ID_CHARS}`);
  }
  if (NON_PRINTABLE.test(stripped)) throw new RangeError(`${name} contains a non-printable character`);
  return value;
}

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?$/;

/** `occurredAt` as Timestamp fields; now when absent. */
export function occurred(value: OccurredAt | undefined | null): [bigint, number] {
  let seconds: bigint;
  let nanos: number;
  if (value === undefined || value === null) value = new Date();
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new RangeError("occurredAt is an invalid Date");
    const s = Math.floor(ms / 1000);
    seconds = BigInt(s);
    nanos = (ms - s * 1000) * 1_000_000;
  } else if (typeof value === "string") {
    const m = RFC3339.exec(value.trim());
    if (!m) throw new RangeError(`occurredAt ${JSON.stringify(value)} is not an RFC 3339 time`);
    if (!m[8] && !m[9]) throw new RangeError("occurredAt must be timezone-aware (end it in Z or +hh:mm)");
    const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
    const date = new Date(0);
    date.setUTCFullYear(y, mo - 1, d);
    date.setUTCHours(h, mi, s, 0);
    if (date.getUTCFullYear() !== y || date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d || h > 23 || mi > 59 || s > 59) {
      throw new RangeError(`occurredAt ${JSON.stringify(value)} is not a valid time`);
    }
    let offset = 0;
    if (m[9]) {
      const oh = Number(m[10]);
      const om = Number(m[11]);
      if (oh > 23 || om > 59) throw new RangeError(`occurredAt ${JSON.stringify(value)} has an invalid offset`);
      offset = (m[9] === "-" ? -1 : 1) * (oh * 3600 + om * 60);
    }
    seconds = BigInt(date.getTime() / 1000 - offset);
    nanos = Number((m[7] ?? "").padEnd(9, "0") || "0");
  } else {
    throw new TypeError(`occurredAt must be a Date or an RFC 3339 string, not ${typeName(value)}`);
  }
  const before = seconds < EARLIEST[0] || (seconds === EARLIEST[0] && nanos < EARLIEST[1]);
  const after = seconds > LATEST[0] || (seconds === LATEST[0] && nanos > LATEST[1]);
  if (before || after) throw new RangeError("occurredAt is outside 2000-01-01..9999-12-31");
  return [seconds, nanos];
}

export function quantity(value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(`quantity must be an integer, not ${typeof value === "number" ? value : typeName(value)}`);
  }
  if (value < 1 || value > MAX_QUANTITY) {
    throw new RangeError(`quantity ${value} outside 1..${MAX_QUANTITY.toLocaleString("en-US")}`);
  }
  return value;
}

const DECIMAL = /^([+-])?(?:(\d+)(?:\.(\d*))?|\.(\d+))(?:[eE]([+-]?\d+))?$/;
const SPECIAL = /^[+-]?(?:inf|infinity|s?nan\d*)$/i;

/**
 * A plain decimal string ("12.40") as Python's `format(Decimal(value), "f")` writes it;
 * fractional numbers are refused: money is never binary.
 */
export function decimalText(name: string, value: unknown): string {
  let raw: string;
  if (typeof value === "bigint") raw = value.toString();
  else if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new TypeError(`${name} must be a string, bigint or integer, never a float`);
    raw = String(value);
  } else if (typeof value === "string") raw = value.replace(STRIP, "").replace(/_/g, ""); // as Python's Decimal()
  else throw new TypeError(`${name} must be a string, bigint or integer, never a float`);
  if (SPECIAL.test(raw)) throw new RangeError(`${name} ${JSON.stringify(value)} is not finite`);
  const m = DECIMAL.exec(raw);
  if (!m) throw new RangeError(`${name} ${JSON.stringify(value)} is not a decimal number`);
  const negative = m[1] === "-";
  const intPart = m[2] ?? "";
  const fracPart = m[3] ?? m[4] ?? "";
  let exponent = Number(m[5] ?? "0") - fracPart.length;
  const digits = (intPart + fracPart).replace(/^0+/, "") || "0";
  if (negative && digits !== "0") throw new RangeError(`${name} must not be negative`);
  if (Math.max(0, digits.length + exponent) > MAX_INTEGER_DIGITS) {
    throw new RangeError(`${name} has more than ${MAX_INTEGER_DIGITS} integer digits`);
  }
  if (-exponent > MAX_FRACTION_DIGITS) {
    throw new RangeError(`${name} has more than ${MAX_FRACTION_DIGITS} fraction digits`);
  }
  if (digits === "0" && exponent > 0) exponent = 0; // Decimal("0e3") formats as "0"
  const dot = digits.length + exponent;
  let out: string;
  if (dot <= 0) out = `0.${"0".repeat(-dot)}${digits}`;
  else if (dot >= digits.length) out = digits + "0".repeat(dot - digits.length);
  else out = `${digits.slice(0, dot)}.${digits.slice(dot)}`;
  return (negative ? "-" : "") + out;
}

function base(kind: UsageKind, eventId: string, vendorId: string, occurredAt: OccurredAt | undefined, qty: number): UsageEvent {
  const event = create(UsageEventSchema, {
    eventId: text("eventId", eventId),
    vendorId: text("vendorId", vendorId),
    kind,
  });
  const [seconds, nanos] = occurred(occurredAt);
  event.occurredAt = create(TimestampSchema, { seconds, nanos });
  if (quantity(qty) !== 1) event.quantity = qty;
  return event;
}

function usage(
  event: UsageEvent,
  f: { licenceId: string; avatarId: string; renderId: string; category: string; territory: string; approvalId?: string | null | undefined },
  channel: string | null,
): UsageEvent {
  event.licenceId = text("licenceId", f.licenceId);
  event.avatarId = text("avatarId", f.avatarId);
  event.renderId = text("renderId", f.renderId);
  event.category = text("category", f.category);
  event.territory = text("territory", f.territory);
  if (channel !== null) event.channel = text("channel", channel);
  if (f.approvalId !== undefined && f.approvalId !== null) event.approvalId = text("approvalId", f.approvalId);
  return event;
}

/** Fields every usage (not retraction) event has. */
export interface UsageFields {
  licenceId: string;
  avatarId: string;
  renderId: string;
  category: string;
  territory: string;
  occurredAt?: OccurredAt;
  quantity?: number;
  /** The talent's approval, where the licence requires one for the category. */
  approvalId?: string | null;
}
export interface RenderFields extends UsageFields {}
export interface ViewFields extends UsageFields {
  channel: string;
  viewable?: boolean;
  ivt?: boolean;
}
export interface AdImpressionFields extends UsageFields {
  channel: string;
  adRevenue: DecimalInput;
  adRevenueCurrency?: string;
  ivt?: boolean;
}
export interface RetractionFields {
  originalEventId: string;
  /** The ORIGINAL event's licence (routes the retraction to its partition); null if unknown. */
  licenceId: string | null;
  occurredAt?: OccurredAt;
}
interface Ids {
  eventId: string;
  vendorId: string;
}

/** A RENDER event: the avatar was rendered into `quantity` videos. */
export function render(f: RenderFields & Ids): UsageEvent {
  const event = base(UsageKind.RENDER, f.eventId, f.vendorId, f.occurredAt, f.quantity ?? 1);
  return usage(event, f, null);
}

/** A VIEW event: `quantity` views of the video `renderId` on `channel`. */
export function view(f: ViewFields & Ids): UsageEvent {
  const event = base(UsageKind.VIEW, f.eventId, f.vendorId, f.occurredAt, f.quantity ?? 1);
  const channel = text("channel", f.channel);
  usage(event, f, channel);
  const viewable = f.viewable ?? true;
  const ivt = f.ivt ?? false;
  if (typeof viewable !== "boolean" || typeof ivt !== "boolean") throw new TypeError("viewable and ivt must be boolean");
  if (!viewable) event.viewable = false;
  if (ivt) event.ivt = true;
  return event;
}

/** An AD_IMPRESSION event with the revenue the impressions earned (licence currency). */
export function adImpression(f: AdImpressionFields & Ids): UsageEvent {
  const event = base(UsageKind.AD_IMPRESSION, f.eventId, f.vendorId, f.occurredAt, f.quantity ?? 1);
  const channel = text("channel", f.channel);
  usage(event, f, channel);
  event.adRevenue = decimalText("adRevenue", f.adRevenue);
  event.adRevenueCurrency = text("adRevenueCurrency", f.adRevenueCurrency ?? "", false);
  const ivt = f.ivt ?? false;
  if (typeof ivt !== "boolean") throw new TypeError("ivt must be boolean");
  if (ivt) event.ivt = true;
  return event;
}

/** A RETRACTION withdrawing this vendor's earlier event `originalEventId`. */
export function retraction(f: RetractionFields & Ids): UsageEvent {
  const event = base(UsageKind.RETRACTION, f.eventId, f.vendorId, f.occurredAt, 1);
  event.originalEventId = text("originalEventId", f.originalEventId);
  if (f.licenceId !== undefined && f.licenceId !== null) event.licenceId = text("licenceId", f.licenceId);
  return event;
}

/** The usage topic key: the licence id, else the vendor id. */
export function routingKey(event: UsageEvent): string {
  return event.licenceId || event.vendorId;
}
