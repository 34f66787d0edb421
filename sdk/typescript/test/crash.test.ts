// Crash safety: a publisher killed with SIGKILL mid-publish loses nothing. Every event whose
// render() resolved is delivered after a restart on the same spool, exactly once from the
// gateway's view (it dedupes by event id), and re-sent events carry the same bytes.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { it } from "node:test";
import { SigningKey } from "../src/signing.js";
import { FakeGateway } from "./fake-gateway.js";

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "crash-child.js");

function run(args: string[]): { child: ChildProcess; lines: string[]; exited: Promise<number | string> } {
  const child = spawn(process.execPath, [CHILD, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  let buffered = "";
  child.stdout!.on("data", (d: Buffer) => {
    buffered += d.toString();
    const parts = buffered.split("\n");
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | string>((resolve) =>
    child.on("exit", (code, signal) => resolve(signal ?? (code === 0 ? 0 : `${code}: ${stderr}`))),
  );
  return { child, lines, exited };
}

it("SIGKILL mid-publish, restart: every queued event delivered exactly once, same bytes", async () => {
  const seed = randomBytes(32);
  const key = SigningKey.fromPrivateBytes("vk-crash", seed);
  const gateway = await new FakeGateway().start();
  gateway.keys.set(key.keyId, key.publicKeyBytes());
  const spool = mkdtempSync(join(tmpdir(), "residuals-crash-"));
  try {
    // The gateway processes (accepts) each request, then answers slowly; the child is killed
    // the moment the 5th request has been accepted but not yet answered.
    gateway.delayMs = 150;
    let first: ReturnType<typeof run>;
    gateway.onProcessed = () => {
      if (gateway.requests.length === 5) first.child.kill("SIGKILL");
    };
    first = run(["publish", gateway.url, spool, seed.toString("hex"), "400"]);
    assert.equal(await first.exited, "SIGKILL");
    const queued = first.lines.filter((l) => l.startsWith("queued ")).map((l) => l.slice(7));
    assert.ok(!first.lines.includes("all queued"), "killed mid-publish");
    assert.ok(queued.length > 0, "some events were queued before the kill");
    const acceptedBefore = new Set(gateway.accepted.keys());
    assert.ok(acceptedBefore.size > 0);
    assert.ok(readdirSync(spool).some((f) => f.endsWith(".batch")), "undelivered events are in the spool");

    gateway.delayMs = 0;
    gateway.onProcessed = null;
    const second = run(["drain", gateway.url, spool, seed.toString("hex"), "0"]);
    assert.equal(await second.exited, 0);
    assert.ok(second.lines.includes("closed 0"), second.lines.join("\n"));

    for (const id of queued) assert.ok(gateway.accepted.has(id), `queued event ${id} delivered`);
    for (const [id, n] of gateway.acceptCount) assert.equal(n, 1, `event ${id} accepted once`);
    // The batch accepted just before the kill was never answered: re-sent after the restart
    // with identical payload bytes (a different payload would be a conflict).
    assert.ok(gateway.duplicates > 0, "events accepted before the kill were re-sent");
    assert.deepEqual(gateway.conflicts, []);
    assert.deepEqual(readdirSync(spool).filter((f) => !f.startsWith("spool.lock")), []);
  } finally {
    await gateway.stop();
    rmSync(spool, { recursive: true, force: true });
  }
});
