// The README's examples, extracted by scripts/extract-readme.mjs and compiled with the tests,
// run as they are written (importing "@residuals/sdk") against a fake gateway.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { it } from "node:test";
import { SigningKey } from "../src/signing.js";
import { FakeGateway } from "./fake-gateway.js";

const HERE = join(dirname(fileURLToPath(import.meta.url)), "readme");

async function runExample(name: string, env: Record<string, string>, cwd: string): Promise<string> {
  const file = join(HERE, `${name}.js`);
  assert.ok(existsSync(file), `${file} (run the README extraction: npm test does)`);
  // Asynchronous spawn: the fake gateway lives in this process and must keep serving.
  const { spawn } = await import("node:child_process");
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file], { cwd, env: { ...process.env, ...env } });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`example ${name} exited ${code}:\n${out}${err}`))));
  });
}

it("README quick start runs and delivers its four events", async () => {
  const key = SigningKey.generate("vk-1");
  const gateway = await new FakeGateway().start();
  gateway.keys.set("vk-1", key.publicKeyBytes());
  const work = mkdtempSync(join(tmpdir(), "residuals-readme-"));
  try {
    writeFileSync(join(work, "key.pem"), key.privatePem());
    const out = await runExample(
      "quickstart",
      { RESIDUALS_SIGNING_KEY_FILE: join(work, "key.pem"), RESIDUALS_GATEWAY_URL: gateway.url, RESIDUALS_API_KEY: gateway.apiKey },
      work,
    );
    assert.equal(out.trim(), "all delivered");
    assert.equal(gateway.accepted.size, 4);
  } finally {
    await gateway.stop();
    rmSync(work, { recursive: true, force: true });
  }
});

it("README key generation example runs", () => {
  const run = spawnSync(process.execPath, [join(HERE, "keygen.js")], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
  const [pub, ok] = run.stdout.trim().split("\n");
  assert.equal(Buffer.from(pub!, "base64").length, 32);
  assert.equal(ok, "true");
});
