"""The TypeScript SDK (sdk/typescript) one demo vendor publishes with, built when needed.

``residuals demo`` runs ``sdk/typescript/scripts/demo-vendor.mjs`` under Node.js; that
program imports the compiled SDK (``dist/src``). On a fresh checkout the demo installs the
SDK's pinned dependencies (``npm ci``) and compiles it (``npm run build``); afterwards only
when a source file is newer than the build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from residuals.stack.settings import repo_root

#: engines.node of sdk/typescript/package.json.
NODE_MINIMUM = (20, 10)


class TypeScriptSdkMissing(RuntimeError):
    """Node.js/npm are missing, or the TypeScript SDK could not be built."""


def sdk_dir() -> Path:
    return repo_root() / "sdk" / "typescript"


def vendor_program() -> Path:
    return sdk_dir() / "scripts" / "demo-vendor.mjs"


def _stale(sdk: Path) -> bool:
    built = sdk / "dist" / "src" / "index.js"
    if not built.is_file():
        return True
    since = built.stat().st_mtime
    sources = [*(sdk / "src").rglob("*.ts"), sdk / "package-lock.json", sdk / "tsconfig.json"]
    return any(path.stat().st_mtime > since for path in sources)


def _npm(npm: str, sdk: Path, *args: str) -> None:
    result = subprocess.run(
        [npm, *args], cwd=sdk, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise TypeScriptSdkMissing(f"`npm {' '.join(args)}` in {sdk} failed:\n{output}")


def ensure_built(say: Callable[[str], None]) -> str:
    """The ``node`` executable, with the SDK built (installing and compiling it if needed)."""
    sdk = sdk_dir()
    if not (sdk / "package.json").is_file():
        raise TypeScriptSdkMissing(f"the TypeScript SDK is not in this checkout ({sdk})")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise TypeScriptSdkMissing(
            "one demo vendor publishes with the TypeScript SDK: install Node.js"
            f" {NODE_MINIMUM[0]}.{NODE_MINIMUM[1]} or later with npm"
            " (e.g. apt-get install nodejs npm, or https://nodejs.org)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    found = re.match(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < NODE_MINIMUM:
        raise TypeScriptSdkMissing(
            f"Node.js {version or '(unknown version)'} is too old for the TypeScript SDK:"
            f" {NODE_MINIMUM[0]}.{NODE_MINIMUM[1]} or later is needed"
        )
    if not (sdk / "node_modules").is_dir():
        say(f"installing the TypeScript SDK's dependencies (npm ci in {sdk})")
        _npm(npm, sdk, "ci", "--no-audit", "--no-fund")
    if _stale(sdk):
        say("building the TypeScript SDK (npm run build)")
        _npm(npm, sdk, "run", "build")
    return node
