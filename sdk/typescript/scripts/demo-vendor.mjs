// A demo vendor publishing with this SDK over HTTP (`residuals demo`, services/residuals/demo/fleet.py).
//
// Reads JSON lines on stdin, one scripted event each ({"kind": "RENDER" | "VIEW" |
// "AD_IMPRESSION" | "RETRACTION", and the event's fields in the Python SDK's snake_case}),
// publishes them with UsageClient.http and writes JSON lines on stdout:
//   {"report": {"event_id", "status", "reason", "detail"}}  one per event, from onDelivery
//   {"error": "..."}                                          the gateway refused the client
//   {"closed": <events left in the spool>}                    last line, after stdin ends
//
// Lines that arrived together are published with one publishMany call, and each call is
// answered (flush) before the next is sent: a re-send is then never in flight with the event
// it repeats, so the gateway answers every exact re-send DUPLICATE, run after run.
//
// Configuration comes from the environment (never argv): RESIDUALS_GATEWAY_URL,
// RESIDUALS_API_KEY, RESIDUALS_VENDOR_ID, RESIDUALS_SIGNING_KEY_ID,
// RESIDUALS_SIGNING_KEY_FILE (PKCS#8 PEM), RESIDUALS_SPOOL_DIR, RESIDUALS_CLOSE_MS.

import { createInterface } from "node:readline";

import { SigningKey, UsageClient, events } from "../dist/src/index.js";

function required(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`demo-vendor: ${name} is not set\n`);
    process.exit(2);
  }
  return value;
}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

const vendorId = required("RESIDUALS_VENDOR_ID");
const client = UsageClient.http({
  vendorId,
  signingKey: SigningKey.fromPemFile(required("RESIDUALS_SIGNING_KEY_ID"), required("RESIDUALS_SIGNING_KEY_FILE")),
  baseUrl: required("RESIDUALS_GATEWAY_URL"),
  apiKey: required("RESIDUALS_API_KEY"),
  spoolDir: required("RESIDUALS_SPOOL_DIR"),
  spoolDurability: "process",
  maxConcurrentRequests: 1,
  onDelivery: (report) =>
    emit({ report: { event_id: report.eventId, status: report.status, reason: report.reason, detail: report.detail } }),
  onError: (error) => emit({ error: String(error.message ?? error) }),
});

/** The SDK's UsageEvent for one scripted event (the fields fleet.sdk_event passes to Python). */
function build(raw) {
  const ids = { eventId: raw.event_id, vendorId };
  if (raw.kind === "RETRACTION") {
    return events.retraction({
      ...ids,
      originalEventId: raw.original_event_id,
      licenceId: raw.licence_id ?? null,
      occurredAt: raw.occurred_at,
    });
  }
  const usage = {
    ...ids,
    licenceId: raw.licence_id,
    avatarId: raw.avatar_id,
    renderId: raw.render_id,
    category: raw.category,
    territory: raw.territory,
    occurredAt: raw.occurred_at,
    quantity: Number(raw.quantity ?? 1),
  };
  if (raw.kind === "RENDER") return events.render(usage);
  if (raw.kind === "VIEW") {
    return events.view({ ...usage, channel: raw.channel, viewable: raw.viewable ?? true, ivt: raw.ivt ?? false });
  }
  return events.adImpression({
    ...usage,
    channel: raw.channel,
    adRevenue: String(raw.ad_revenue),
    adRevenueCurrency: raw.ad_revenue_currency ?? "",
    ivt: raw.ivt ?? false,
  });
}

const queue = [];
let ended = false;
let wake = () => {};

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  if (!line.trim()) return;
  queue.push(JSON.parse(line));
  wake();
});
input.on("close", () => {
  ended = true;
  wake();
});

let failed = false;
try {
  for (;;) {
    if (queue.length === 0) {
      if (ended) break;
      await new Promise((resolve) => (wake = resolve));
      continue;
    }
    const batch = queue.splice(0, queue.length);
    await client.publishMany(batch.map(build));
    // Answered before the next call; once stdin ended, close() below waits (bounded).
    while ((await client.flush(1000)) > 0 && !ended);
  }
} catch (error) {
  failed = true;
  emit({ error: String(error?.message ?? error) });
}
const left = await client.close(Number(process.env.RESIDUALS_CLOSE_MS ?? 10_000));
emit({ closed: left });
process.exitCode = failed ? 1 : 0;
