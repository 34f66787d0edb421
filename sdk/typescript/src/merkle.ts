/**
 * Merkle trees for batch signatures: RFC 9162 (Certificate Transparency 2.0) §2.1
 * (mirrors residuals_sdk.merkle byte for byte).
 *
 * Hashes (§2.1.1): a leaf is `SHA-256(0x00 || payload)`, an inner node
 * `SHA-256(0x01 || left || right)`; `n > 1` leaves split at `k`, the largest power of two
 * below `n`. The signature covers {@link batchMessage}: a domain prefix, the leaf count and
 * the root.
 */
import { createHash } from "node:crypto";

/** Prefix of the message a batch signature covers (then the leaf count and the root). */
export const BATCH_DOMAIN: Uint8Array = new TextEncoder().encode("residuals.usage-batch.v1\n");

const LEAF = Buffer.from([0x00]);
const NODE = Buffer.from([0x01]);

export function leafHash(payload: Uint8Array): Uint8Array {
  return createHash("sha256").update(LEAF).update(payload).digest();
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return createHash("sha256").update(NODE).update(left).update(right).digest();
}

/** The bytes a batch signature covers: domain, leafCount (8 bytes big-endian), root. */
export function batchMessage(leafCount: number | bigint, root: Uint8Array): Uint8Array {
  const count = Buffer.alloc(8);
  count.writeBigUInt64BE(BigInt(leafCount));
  return Buffer.concat([BATCH_DOMAIN, count, root]);
}

/** The largest power of two strictly below n (n >= 2). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/**
 * The root of `payloads` and every leaf's audit path (§2.1.3.1), in O(n log n).
 * Each path lists sibling hashes from the leaf up to the root.
 */
export function tree(payloads: readonly Uint8Array[]): { root: Uint8Array; paths: Uint8Array[][] } {
  if (payloads.length === 0) throw new Error("a batch needs at least one payload");
  const hashes = payloads.map(leafHash);
  const paths: Uint8Array[][] = hashes.map(() => []);
  const build = (lo: number, hi: number): Uint8Array => {
    if (hi - lo === 1) return hashes[lo]!;
    const mid = lo + split(hi - lo);
    const left = build(lo, mid);
    const right = build(mid, hi);
    // Deeper siblings were appended first: leaf-to-root order.
    for (let i = lo; i < mid; i++) paths[i]!.push(right);
    for (let i = mid; i < hi; i++) paths[i]!.push(left);
    return nodeHash(left, right);
  };
  return { root: build(0, hashes.length), paths };
}

/**
 * The root a leaf's audit path leads to (RFC 9162 §2.1.3.2), or null when the path has the
 * wrong length for `leafIndex` and `leafCount`. Receivers verify the batch signature over
 * `batchMessage(leafCount, root)`.
 */
export function rootFromPath(
  payload: Uint8Array,
  leafIndex: number,
  leafCount: number,
  path: readonly Uint8Array[],
): Uint8Array | null {
  if (leafIndex < 0 || leafIndex >= leafCount) return null;
  let fn = leafIndex;
  let sn = leafCount - 1;
  let r = leafHash(payload);
  for (const p of path) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}
