"""The TypeScript SDK (``sdk/typescript``, npm package ``@residuals/sdk``) passes its own suite.

``npm test`` there checks that the generated protobuf code is fresh, compiles the SDK and its
tests, and runs them with node's test runner: byte identity with the Python SDK (the
``sdk/conformance`` vectors and its own Python-made vectors), the HTTP transport's retries
against a fake gateway, the durable spool, and a publisher killed with SIGKILL mid-publish
that loses nothing. ``npm ci`` runs first when ``node_modules`` is missing.

Node.js and npm are required where this runs (CI has them): without them this test FAILS
with a message saying so, it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SDK = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
MIN_NODE_MAJOR = 20


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the TypeScript SDK test needs Node.js >= {MIN_NODE_MAJOR}"
            " and npm on PATH (install them; this test does not skip)",
            pytrace=False,
        )
    return path


def _run(args: list[str], timeout: float) -> None:
    done = subprocess.run(
        args, cwd=SDK, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(args[1:])}` in sdk/typescript exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}",
            pytrace=False,
        )


def test_typescript_sdk_npm_test() -> None:
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= MIN_NODE_MAJOR, f"Node.js {version.stdout.strip()} is older than v20"
    if not (SDK / "node_modules").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
    _run([npm, "test"], timeout=600)


def test_typescript_sdk_python_vectors_are_fresh() -> None:
    """sdk/typescript/test/vectors/python-sdk.json is what the Python SDK makes today."""
    root = SDK.parents[1]
    script = SDK / "scripts" / "make_vectors.py"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "services"), str(root / "sdk/python/src")]),
    }
    done = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
