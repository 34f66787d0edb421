// The durable spool: persistence, partial acks, bounds, locking between clients and
// processes, stale locks, corruption handling.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, it } from "node:test";
import { SpoolFullError, SpoolLockedError } from "../src/errors.js";
import { Spool, type NewEvent } from "../src/spool.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "residuals-spool-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const ev = (i: number): NewEvent => ({ eventId: `e-${i}`, routingKey: "LIC-1", envelope: new Uint8Array([i, i, i]) });
const ids = (xs: { eventId: string }[]) => xs.map((x) => x.eventId);
const SPOOL_JS = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "spool.js");

describe("Spool", () => {
  it("keeps events across reopen, in order, with their bytes; forgets answered ones", async () => {
    let s = Spool.open(dir);
    const a = await s.appendMany([ev(1), ev(2), ev(3)]);
    await s.appendMany([ev(4)]);
    assert.equal(s.count, 4);
    s.delete([a[1]!]); // partial ack of the first batch
    s.close();
    s = Spool.open(dir);
    assert.equal(s.count, 3);
    const back = s.readAfter(0, 10);
    assert.deepEqual(ids(back), ["e-1", "e-3", "e-4"]);
    assert.deepEqual([...back[0]!.envelope], [1, 1, 1]);
    assert.deepEqual(ids(s.readAfter(back[0]!.seq, 1)), ["e-3"]);
    s.delete(back);
    assert.equal(s.count, 0);
    assert.equal(s.sizeBytes, 0);
    assert.deepEqual(readdirSync(dir).filter((f) => f !== "spool.lock"), [], "files of answered batches are deleted");
    s.close();
    assert.ok(!existsSync(join(dir, "spool.lock")), "close releases the lock");
  });

  it("new sequence numbers continue after what is spooled", async () => {
    let s = Spool.open(dir);
    const first = await s.appendMany([ev(1), ev(2)]);
    s.close();
    s = Spool.open(dir);
    const next = await s.appendMany([ev(3)]);
    assert.ok(next[0]!.seq > first[1]!.seq);
    s.close();
  });

  it("group-commits concurrent appends: fewer files, every event once, sequence in call order", async () => {
    const s = Spool.open(dir);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => s.appendMany([ev(i)])));
    const seqs = results.map((r) => r[0]!.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.equal(new Set(seqs).size, 50);
    const files = readdirSync(dir).filter((f) => f.endsWith(".batch"));
    assert.ok(files.length < 50, `${files.length} batch files for 50 concurrent appends`);
    s.close();
    const again = Spool.open(dir);
    assert.deepEqual(ids(again.readAfter(0, 100)), Array.from({ length: 50 }, (_, i) => `e-${i}`));
    again.close();
  });

  it("is bounded in events and bytes, all or nothing", async () => {
    const s = Spool.open(dir, { maxEvents: 3 });
    await s.appendMany([ev(1), ev(2)]);
    await assert.rejects(s.appendMany([ev(3), ev(4)]), SpoolFullError);
    assert.equal(s.count, 2);
    await s.appendMany([ev(3)]);
    s.close();
    const b = Spool.open(join(dir, "b"), { maxBytes: 100 });
    await assert.rejects(b.appendMany([{ eventId: "x", routingKey: "k", envelope: new Uint8Array(64) }]), SpoolFullError);
    b.close();
  });

  it("in memory: same behaviour, nothing on disk", async () => {
    const s = Spool.open(null);
    const a = await s.appendMany([ev(1), ev(2)]);
    s.delete([a[0]!]);
    assert.deepEqual(ids(s.readAfter(0, 10)), ["e-2"]);
    s.close();
  });

  it("refuses a second client on the same directory, in this process and in another", () => {
    const s = Spool.open(dir);
    assert.throws(() => Spool.open(dir), SpoolLockedError);
    const other = spawnSync(process.execPath, [
      "--input-type=module",
      "-e",
      `import { Spool } from ${JSON.stringify(SPOOL_JS)}; try { Spool.open(${JSON.stringify(dir)}); console.log("opened"); } catch (e) { console.log(e.name); }`,
    ]);
    assert.equal(other.stdout.toString().trim(), "SpoolLockedError", other.stderr.toString());
    s.close();
    const again = Spool.open(dir);
    again.close();
  });

  it("takes over a stale lock (its process is gone, or it predates a reboot)", async () => {
    const dead = spawnSync(process.execPath, ["-e", "console.log(process.pid)"]).stdout.toString().trim();
    writeFileSync(join(dir, "spool.lock"), JSON.stringify({ pid: Number(dead), host: hostname(), boot: "", start: "", token: "t1" }));
    let s = Spool.open(dir);
    s.close();
    writeFileSync(
      join(dir, "spool.lock"),
      JSON.stringify({ pid: process.pid, host: hostname(), boot: "another-boot", start: "", token: "t2" }),
    );
    s = Spool.open(dir);
    assert.ok(readFileSync(join(dir, "spool.lock"), "utf8").includes(String(process.pid)));
    s.close();
    writeFileSync(join(dir, "spool.lock"), "{half-writ");
    Spool.open(dir).close();
  });

  it("quarantines a corrupt batch file, keeps the others, drops unfinished writes", async () => {
    let s = Spool.open(dir);
    const a = await s.appendMany([ev(1), ev(2)]);
    await s.appendMany([ev(3)]);
    s.close();
    const file = join(dir, `${String(a[0]!.seq).padStart(16, "0")}.batch`);
    const data = readFileSync(file);
    data[data.length - 1] = data[data.length - 1]! ^ 0xff; // flip the bits of the last envelope byte
    writeFileSync(file, data);
    writeFileSync(join(dir, "0000000000000099.batch.tmp"), "torn");
    const seen: string[] = [];
    s = Spool.open(dir, { onCorrupt: (path, reason) => seen.push(`${path}: ${reason}`) });
    assert.deepEqual(ids(s.readAfter(0, 10)), ["e-3"]);
    assert.equal(s.count, 1);
    assert.equal(seen.length, 1);
    assert.match(seen[0]!, /corrupt\/0+1\.batch: checksum mismatch at event 1 of 2/);
    assert.deepEqual(s.quarantined.length, 1);
    assert.ok(!existsSync(join(dir, "0000000000000099.batch.tmp")));
    s.close();
  });
});
