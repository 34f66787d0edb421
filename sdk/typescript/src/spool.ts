/**
 * The bounded, durable local spool: accepted events survive outages, crashes and restarts
 * (the semantics of residuals_sdk.spool, on plain files: Node 20 has no SQLite).
 *
 * An event is written here (and, by default, fsync'd) BEFORE the publishing call resolves,
 * and deleted only after the gateway answered ACCEPTED, DUPLICATE or REJECTED for it. A
 * client that starts on a spool with records in it re-sends them, byte for byte (same
 * envelope, same signature; the platform drops repeats by `(vendor_id, event_id)`). So an
 * event the SDK accepted is delivered at least once, whatever happens in between.
 *
 * Layout of the directory (one per client):
 *
 * - `<seq>.batch`: the events of one append (one publishing call, or several that arrived
 *   while the previous file was being written: group commit), written to
 *   `<seq>.batch.tmp`, fsync'd, renamed, and the directory fsync'd: a batch file is whole or
 *   absent, never torn. `<seq>` is the first event's sequence number (16 digits).
 *   Header `RSPL`, version 1, event count (u32 BE), first seq (u64 BE); then per event:
 *   length (u32 BE), CRC-32 of the body (u32 BE), body = spooled-at ms (u64 BE),
 *   event id (u16 BE length + UTF-8), routing key (u16 BE length + UTF-8), envelope bytes
 *   (a SignedUsageEvent, exactly as it is sent).
 * - `<seq>.acks`: indexes (u32 BE) of that batch's events the gateway answered. When every
 *   event of a batch is answered, the batch file and then its acks file are deleted. Acks are
 *   not fsync'd: losing the last ones in a power cut only re-sends events the platform
 *   answers DUPLICATE.
 * - `spool.lock`: who holds the directory (pid, boot id, process start time). Node has no
 *   flock(), so the lock is a file created exclusively (link(2)); a lock whose process is
 *   gone (or from before a reboot, or from a reused pid) is stale and taken over.
 * - `corrupt/`: batch files that fail their checks (bad header, CRC, truncation) are moved
 *   here at start, reported through `onCorrupt`, and not sent; an operator decides.
 *
 * `durability`: `"power"` (default) fsyncs every append, so an OS crash or power cut loses
 * nothing accepted; `"process"` skips the fsyncs (a killed process still loses nothing).
 * The spool is bounded in events and bytes; an append beyond either raises SpoolFullError.
 * `dir: null` keeps the spool in memory: same bounds and behaviour, nothing survives.
 */
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import * as fs from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { SpoolFullError, SpoolLockedError } from "./errors.js";

export const LOCK_FILE = "spool.lock";
export const CORRUPT_DIR = "corrupt";
export const DEFAULT_MAX_BYTES = 256 * 1024 * 1024;
export const DEFAULT_MAX_EVENTS = 1_000_000;
/** Per-event overhead counted against the byte bound (ids, sequence, framing). */
export const ROW_OVERHEAD = 64;
const MAGIC = Buffer.from("RSPL");
const VERSION = 1;
const HEADER = 4 + 1 + 4 + 8;
const BATCH = /^(\d{16})\.batch$/;

export type Durability = "power" | "process";

/** What {@link Spool.appendMany} stores for one event. */
export interface NewEvent {
  eventId: string;
  routingKey: string;
  envelope: Uint8Array;
}

/** One event waiting for delivery: its envelope bytes exactly as they will be sent. */
export interface SpooledEvent extends NewEvent {
  seq: number;
  size: number;
}

export interface SpoolOptions {
  maxBytes?: number;
  maxEvents?: number;
  durability?: Durability;
  /** Called for every batch file moved to `corrupt/` at start (path, why). */
  onCorrupt?: (path: string, reason: string) => void;
}

interface Batch {
  start: number;
  count: number;
  /** 1 where the event was answered (or unreadable). */
  settled: Uint8Array;
  remaining: number;
  sizes: number[];
  /** In-memory spools keep the events here; file spools read them back when needed. */
  events?: SpooledEvent[];
}

export function eventSize(e: NewEvent): number {
  return e.envelope.length + Buffer.byteLength(e.routingKey) + Buffer.byteLength(e.eventId) + ROW_OVERHEAD;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function encodeBatch(start: number, events: readonly NewEvent[], now: number): Buffer {
  const parts: Buffer[] = [];
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header, 0);
  header.writeUInt8(VERSION, 4);
  header.writeUInt32BE(events.length, 5);
  header.writeBigUInt64BE(BigInt(start), 9);
  parts.push(header);
  for (const e of events) {
    const id = Buffer.from(e.eventId, "utf8");
    const key = Buffer.from(e.routingKey, "utf8");
    if (id.length > 0xffff || key.length > 0xffff) throw new RangeError("event id or routing key too long to spool");
    const body = Buffer.alloc(8 + 2 + id.length + 2 + key.length + e.envelope.length);
    let o = body.writeBigUInt64BE(BigInt(now), 0);
    o = body.writeUInt16BE(id.length, o);
    o += id.copy(body, o);
    o = body.writeUInt16BE(key.length, o);
    o += key.copy(body, o);
    Buffer.from(e.envelope.buffer, e.envelope.byteOffset, e.envelope.length).copy(body, o);
    const frame = Buffer.alloc(8);
    frame.writeUInt32BE(body.length, 0);
    frame.writeUInt32BE(crc32(body), 4);
    parts.push(frame, body);
  }
  return Buffer.concat(parts);
}

/** The events of a batch file; throws with the reason when anything is off. */
export function decodeBatch(data: Buffer, expectedStart?: number): SpooledEvent[] {
  if (data.length < HEADER || !data.subarray(0, 4).equals(MAGIC)) throw new Error("not a spool batch file");
  if (data.readUInt8(4) !== VERSION) throw new Error(`unknown spool batch version ${data.readUInt8(4)}`);
  const count = data.readUInt32BE(5);
  const start = Number(data.readBigUInt64BE(9));
  if (expectedStart !== undefined && start !== expectedStart) throw new Error(`header says seq ${start}, name says ${expectedStart}`);
  const out: SpooledEvent[] = [];
  let o = HEADER;
  for (let i = 0; i < count; i++) {
    if (o + 8 > data.length) throw new Error(`truncated at event ${i} of ${count}`);
    const len = data.readUInt32BE(o);
    const crc = data.readUInt32BE(o + 4);
    o += 8;
    if (o + len > data.length) throw new Error(`truncated at event ${i} of ${count}`);
    const body = data.subarray(o, o + len);
    o += len;
    if (crc32(body) !== crc) throw new Error(`checksum mismatch at event ${i} of ${count}`);
    let p = 8;
    const idLen = body.readUInt16BE(p);
    p += 2;
    const eventId = body.toString("utf8", p, p + idLen);
    p += idLen;
    const keyLen = body.readUInt16BE(p);
    p += 2;
    const routingKey = body.toString("utf8", p, p + keyLen);
    p += keyLen;
    if (p > body.length) throw new Error(`malformed event ${i} of ${count}`);
    const envelope = new Uint8Array(body.subarray(p));
    const e = { seq: start + i, eventId, routingKey, envelope, size: 0 };
    e.size = eventSize(e);
    out.push(e);
  }
  if (o !== data.length) throw new Error("trailing bytes after the last event");
  return out;
}

const name = (start: number) => `${String(start).padStart(16, "0")}.batch`;
const acksName = (start: number) => `${String(start).padStart(16, "0")}.acks`;

// Directories locked by this process (a second client here must not open them either).
const lockedHere = new Set<string>();

function bootId(): string {
  try {
    return fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "";
  }
}

function startTime(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
  } catch {
    return "";
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

interface LockInfo {
  pid: number;
  host: string;
  boot: string;
  start: string;
  token: string;
}

function holderAlive(info: LockInfo): boolean {
  if (info.host !== hostname()) return true; // a shared disk: cannot tell, assume alive
  if (info.boot && bootId() && info.boot !== bootId()) return false;
  if (!alive(info.pid)) return false;
  const now = startTime(info.pid);
  return !(info.start && now && info.start !== now);
}

export class Spool {
  readonly dir: string | null;
  readonly maxBytes: number;
  readonly maxEvents: number;
  readonly durability: Durability;
  /** Batch files moved to `corrupt/` when this spool was opened. */
  readonly quarantined: string[] = [];
  private batches = new Map<number, Batch>();
  /** Batch starts, ascending. */
  private starts: number[] = [];
  private nextSeq = 1;
  private countValue = 0;
  private bytesValue = 0;
  private closed = false;
  private lockPath: string | null = null;
  private pendingAppends: {
    events: readonly NewEvent[];
    sizes: number[];
    size: number;
    resolve: (events: SpooledEvent[]) => void;
    reject: (err: Error) => void;
  }[] = [];
  private writing = false;
  private lockToken = "";

  private constructor(dir: string | null, options: SpoolOptions) {
    this.dir = dir === null ? null : resolve(dir);
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    this.maxEvents = options.maxEvents ?? DEFAULT_MAX_EVENTS;
    this.durability = options.durability ?? "power";
    if (!(this.maxBytes > 0) || !(this.maxEvents > 0)) throw new RangeError("spool bounds must be positive");
    if (this.durability !== "power" && this.durability !== "process") {
      throw new RangeError('durability must be "power" or "process"');
    }
  }

  /** Open (and lock) the spool in `dir`, creating it; `null` for an in-memory spool. */
  static open(dir: string | null, options: SpoolOptions = {}): Spool {
    const spool = new Spool(dir, options);
    if (spool.dir !== null) {
      fs.mkdirSync(spool.dir, { recursive: true });
      spool.acquire();
      try {
        spool.load(options.onCorrupt);
      } catch (err) {
        spool.release();
        throw err;
      }
    }
    return spool;
  }

  // --- locking -------------------------------------------------------------------------

  private acquire(): void {
    const dir = this.dir!;
    const real = fs.realpathSync(dir);
    if (lockedHere.has(real)) {
      throw new SpoolLockedError(`spool ${dir} is in use by another client in this process; give each client its own spool directory`);
    }
    const path = join(dir, LOCK_FILE);
    const token = randomBytes(12).toString("hex");
    const info: LockInfo = { pid: process.pid, host: hostname(), boot: bootId(), start: startTime(process.pid), token };
    const tmp = join(dir, `${LOCK_FILE}.${token}`);
    fs.writeFileSync(tmp, JSON.stringify(info) + "\n");
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          fs.linkSync(tmp, path); // atomic: fails if a lock exists
          this.lockPath = path;
          this.lockToken = token;
          lockedHere.add(real);
          return;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        }
        let holder: LockInfo | null = null;
        try {
          holder = JSON.parse(fs.readFileSync(path, "utf8")) as LockInfo;
        } catch {
          holder = null; // unreadable or half-written by a process that died: stale
        }
        if (holder && holderAlive(holder)) {
          throw new SpoolLockedError(
            `spool ${dir} is in use by another client (pid ${holder.pid} on ${holder.host}); give each client its own spool directory`,
          );
        }
        // Stale: move it aside (only one contender's rename succeeds), then retry the link.
        const aside = join(dir, `${LOCK_FILE}.stale-${token}`);
        try {
          fs.renameSync(path, aside);
          const moved = fs.readFileSync(aside, "utf8");
          fs.unlinkSync(aside);
          if (holder && !moved.includes(holder.token)) {
            // Another contender replaced the stale lock between our read and rename: give it back.
            try {
              fs.writeFileSync(path, moved, { flag: "wx" });
            } catch {
              /* someone holds it again; the next round sees who */
            }
          }
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        }
      }
      throw new SpoolLockedError(`spool ${dir}: could not take the lock (contended)`);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }

  private release(): void {
    if (this.lockPath === null) return;
    try {
      const text = fs.readFileSync(this.lockPath, "utf8");
      if (text.includes(this.lockToken)) fs.unlinkSync(this.lockPath);
    } catch {
      /* already gone */
    }
    lockedHere.delete(fs.realpathSync(this.dir!));
    this.lockPath = null;
  }

  // --- start ---------------------------------------------------------------------------

  private load(onCorrupt?: (path: string, reason: string) => void): void {
    const dir = this.dir!;
    const names = fs.readdirSync(dir).sort();
    const starts: number[] = [];
    for (const f of names) {
      if (f.endsWith(".batch.tmp")) fs.rmSync(join(dir, f), { force: true }); // never acknowledged to a caller
      const m = BATCH.exec(f);
      if (m) starts.push(Number(m[1]));
    }
    for (const start of starts) {
      const path = join(dir, name(start));
      let events: SpooledEvent[];
      try {
        events = decodeBatch(fs.readFileSync(path), start);
      } catch (err) {
        const reason = (err as Error).message;
        fs.mkdirSync(join(dir, CORRUPT_DIR), { recursive: true });
        const target = join(dir, CORRUPT_DIR, name(start));
        fs.renameSync(path, target);
        fs.rmSync(join(dir, acksName(start)), { force: true });
        this.quarantined.push(target);
        if (onCorrupt) onCorrupt(target, reason);
        else process.emitWarning(`residuals spool: ${path} is corrupt (${reason}); moved to ${target}, its events are not sent`);
        continue;
      }
      const batch: Batch = {
        start,
        count: events.length,
        settled: new Uint8Array(events.length),
        remaining: events.length,
        sizes: events.map((e) => e.size),
      };
      const acks = join(dir, acksName(start));
      if (fs.existsSync(acks)) {
        const data = fs.readFileSync(acks);
        for (let o = 0; o + 4 <= data.length; o += 4) {
          const i = data.readUInt32BE(o);
          if (i < batch.count && !batch.settled[i]) {
            batch.settled[i] = 1;
            batch.remaining -= 1;
          }
        }
      }
      this.nextSeq = Math.max(this.nextSeq, start + batch.count);
      if (batch.remaining === 0) {
        fs.rmSync(path, { force: true });
        fs.rmSync(acks, { force: true });
        continue;
      }
      this.addBatch(batch);
      this.countValue += batch.remaining;
      batch.sizes.forEach((s, i) => {
        if (!batch.settled[i]) this.bytesValue += s;
      });
    }
    // Acks files whose batch is gone (a crash between the two deletes).
    for (const f of fs.readdirSync(dir)) {
      const m = /^(\d{16})\.acks$/.exec(f);
      if (m && !this.batches.has(Number(m[1]))) fs.rmSync(join(dir, f), { force: true });
    }
  }

  // --- size ----------------------------------------------------------------------------

  /** Events in the spool (waiting or in flight). */
  get count(): number {
    return this.countValue;
  }

  /** Bytes counted against `maxBytes`. */
  get sizeBytes(): number {
    return this.bytesValue;
  }

  // --- operations ----------------------------------------------------------------------

  /**
   * Store events (all or none), durably before the promise resolves; returns them with
   * their sequence numbers. Raises SpoolFullError when they do not fit.
   *
   * Group commit: one batch file is written at a time; appends that arrive meanwhile are
   * written together in the next file, with one fsync for all of them.
   */
  appendMany(events: readonly NewEvent[]): Promise<SpooledEvent[]> {
    this.ensureOpen();
    if (events.length === 0) return Promise.resolve([]);
    const sizes = events.map(eventSize);
    const size = sizes.reduce((a, b) => a + b, 0);
    if (this.countValue + events.length > this.maxEvents || this.bytesValue + size > this.maxBytes) {
      return Promise.reject(
        new SpoolFullError(
          `spool full (${this.countValue.toLocaleString("en-US")} events, ${this.bytesValue.toLocaleString("en-US")} bytes of ` +
            `${this.maxEvents.toLocaleString("en-US")} / ${this.maxBytes.toLocaleString("en-US")}): events are not being ` +
            "delivered fast enough (is the gateway reachable?); the event was not accepted",
        ),
      );
    }
    // Reserve synchronously, so concurrent appends cannot overshoot the bounds.
    this.countValue += events.length;
    this.bytesValue += size;
    return new Promise((resolve, reject) => {
      this.pendingAppends.push({ events, sizes, size, resolve, reject });
      void this.commit();
    });
  }

  private async commit(): Promise<void> {
    if (this.writing || this.pendingAppends.length === 0) return;
    this.writing = true;
    const group = this.pendingAppends.splice(0);
    const start = this.nextSeq;
    const all: SpooledEvent[] = [];
    const slices: SpooledEvent[][] = [];
    for (const append of group) {
      const mine = append.events.map((e, i) => ({
        seq: start + all.length + i,
        eventId: e.eventId,
        routingKey: e.routingKey,
        envelope: e.envelope,
        size: append.sizes[i]!,
      }));
      all.push(...mine);
      slices.push(mine);
    }
    this.nextSeq += all.length;
    const batch: Batch = {
      start,
      count: all.length,
      settled: new Uint8Array(all.length),
      remaining: all.length,
      sizes: all.map((e) => e.size),
    };
    try {
      if (this.dir === null) batch.events = all;
      else await this.writeBatch(start, encodeBatch(start, all, Date.now()));
      if (this.closed) throw new Error("spool is closed");
      this.addBatch(batch);
      group.forEach((append, i) => append.resolve(slices[i]!));
    } catch (err) {
      for (const append of group) {
        this.countValue -= append.events.length;
        this.bytesValue -= append.size;
        append.reject(err as Error);
      }
    } finally {
      this.writing = false;
    }
    void this.commit();
  }

  private async writeBatch(start: number, data: Buffer): Promise<void> {
    const dir = this.dir!;
    const final = join(dir, name(start));
    const tmp = `${final}.tmp`;
    const sync = this.durability === "power";
    const handle = await fsp.open(tmp, "wx");
    try {
      await handle.writeFile(data);
      if (sync) await handle.sync();
    } catch (err) {
      await handle.close();
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    await handle.close();
    await fsp.rename(tmp, final);
    if (sync) {
      const d = await fsp.open(dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    }
  }

  /** Up to `limit` unanswered events with a sequence number above `seq`, oldest first. */
  readAfter(seq: number, limit: number): SpooledEvent[] {
    this.ensureOpen();
    const out: SpooledEvent[] = [];
    for (let k = Math.max(0, this.indexOf(seq)); k < this.starts.length; k++) {
      const start = this.starts[k]!;
      if (out.length >= limit) break;
      const batch = this.batches.get(start)!;
      if (start + batch.count - 1 <= seq) continue;
      const events = batch.events ?? decodeBatch(fs.readFileSync(join(this.dir!, name(start))), start);
      for (let i = 0; i < events.length && out.length < limit; i++) {
        if (events[i]!.seq > seq && !batch.settled[i]) out.push(events[i]!);
      }
    }
    return out;
  }

  /** Forget answered events. */
  delete(events: Iterable<{ seq: number }>): void {
    this.ensureOpen();
    const byBatch = new Map<number, number[]>();
    for (const e of events) {
      const start = this.starts[this.indexOf(e.seq)];
      if (start === undefined || e.seq >= start + this.batches.get(start)!.count) continue;
      const list = byBatch.get(start) ?? [];
      list.push(e.seq - start);
      byBatch.set(start, list);
    }
    for (const [start, indexes] of byBatch) {
      const batch = this.batches.get(start)!;
      const fresh = indexes.filter((i) => !batch.settled[i]);
      if (fresh.length === 0) continue;
      for (const i of fresh) {
        batch.settled[i] = 1;
        batch.remaining -= 1;
        this.countValue -= 1;
        this.bytesValue -= batch.sizes[i]!;
      }
      if (this.dir === null) {
        if (batch.remaining === 0) this.removeBatch(start);
        continue;
      }
      if (batch.remaining === 0) {
        this.removeBatch(start);
        fs.rmSync(join(this.dir, name(start)), { force: true });
        fs.rmSync(join(this.dir, acksName(start)), { force: true });
      } else {
        const data = Buffer.alloc(4 * fresh.length);
        fresh.forEach((i, k) => data.writeUInt32BE(i, 4 * k));
        fs.appendFileSync(join(this.dir, acksName(start)), data);
      }
    }
  }

  /** Index in `starts` of the batch that would hold `seq` (the last start <= seq), or -1. */
  private indexOf(seq: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! <= seq) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }

  private addBatch(batch: Batch): void {
    this.batches.set(batch.start, batch);
    this.starts.splice(this.indexOf(batch.start) + 1, 0, batch.start);
  }

  private removeBatch(start: number): void {
    this.batches.delete(start);
    const i = this.indexOf(start);
    if (this.starts[i] === start) this.starts.splice(i, 1);
  }

  private ensureOpen(): void {
    if (this.closed) throw new Error("spool is closed");
  }

  /** Release the directory lock (the files stay). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.dir !== null) this.release();
  }
}
