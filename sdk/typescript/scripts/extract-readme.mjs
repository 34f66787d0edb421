#!/usr/bin/env node
// Extract the README's examples (a ```ts block right after `<!-- example: NAME -->`) into
// test/readme/NAME.ts, so tsc type-checks them and test/readme.test.ts runs them.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(pkg, "test", "readme");
const text = readFileSync(join(pkg, "README.md"), "utf8");
const found = [...text.matchAll(/<!-- example: ([\w-]+) -->\s*```ts\n([\s\S]*?)```/g)];
if (found.length === 0) throw new Error("README.md has no examples");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const [, name, code] of found) {
  writeFileSync(join(out, `${name}.ts`), `// Extracted from README.md by scripts/extract-readme.mjs; do not edit.\n${code}`);
}
console.log(`extracted ${found.length} README examples: ${found.map((m) => m[1]).join(", ")}`);
