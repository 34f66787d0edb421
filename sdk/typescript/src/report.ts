/** What the SDK tells the caller about each event once its fate is known. */

/** The final answer for one event; the event leaves the spool with it. */
export const DeliveryStatus = {
  /** The gateway ACCEPTED it: durably written to the usage topic. */
  DELIVERED: "DELIVERED",
  /** The gateway had already accepted this event id with the same payload. */
  DUPLICATE: "DUPLICATE",
  /** Refused for good (gateway verdict); see `reason`. Re-sending will not help. */
  REJECTED: "REJECTED",
} as const;
export type DeliveryStatus = (typeof DeliveryStatus)[keyof typeof DeliveryStatus];

/** One event's outcome, passed to the client's `onDelivery` callback. */
export interface DeliveryReport {
  eventId: string;
  /** The usage topic key: the licence id (for a retraction, the original's), else the vendor id. */
  routingKey: string;
  status: DeliveryStatus;
  /** For REJECTED: a reject reason name without its prefix (e.g. `BAD_SIGNATURE`). */
  reason: string;
  detail: string;
  /** Send attempts it took (1 = first try). */
  attempts: number;
  /** True when the platform has the event (delivered now or before). */
  ok: boolean;
}

export type DeliveryCallback = (report: DeliveryReport) => void;
