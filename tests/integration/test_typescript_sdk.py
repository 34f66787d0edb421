"""The TypeScript SDK (``sdk/typescript``, npm package ``@residuals/sdk``): its own suite, and
publishing through the real HTTP gateway.

``npm test`` there checks that the generated protobuf code is fresh, compiles the SDK and its
tests, and runs them with node's test runner: byte identity with the Python SDK (the
``sdk/conformance`` vectors and its own Python-made vectors), the HTTP transport's retries
against a fake gateway, the durable spool, and a publisher killed with SIGKILL mid-publish
that loses nothing. ``npm ci`` runs first when ``node_modules`` is missing.

:func:`test_typescript_sdk_through_the_real_gateway` runs the SDK (a compiled script of its
tests, ``test/fixtures/real-gateway.ts``) against the HTTP gateway in front of the real
ingest service (local Kafka and PostgreSQL): every kind of event, a Merkle-batch-signed
``publishMany``, a REJECTED event, a re-sent DUPLICATE, and the usage topic holding exactly
the envelopes the SDK spooled.

Node.js and npm are required where this runs (CI has them): without them this test FAILS
with a message saying so, it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from residuals_sdk import uuid7

from residuals.gateway.app import GatewayApp
from residuals.gateway.settings import BackendSettings, GatewaySettings
from residuals.platform.config import TelemetrySettings
from residuals.stack.settings import StackSettings
from residuals.v1 import usage_pb2
from tests.support.ingest import Registry, Tenant, Topics, read_topic, start_ingest

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


# --- through the real gateway ------------------------------------------------------------


@dataclass
class Served:
    tenant: Tenant
    topics: Topics
    gateway: GatewayApp


@pytest.fixture(scope="module")
def served(stack: StackSettings) -> Iterator[Served]:
    run_id = uuid.uuid4().hex[:8]
    registry = Registry(stack.dsn, run_id)
    topics = Topics(stack, f"tssdk-{run_id}.").create()
    ingest = start_ingest(stack, topics)
    gateway = GatewayApp(
        GatewaySettings(
            telemetry=TelemetrySettings(service_name="gateway"),
            backends=BackendSettings(ingest=f"127.0.0.1:{ingest.port}"),
            host="127.0.0.1",
            port=0,
            timeout_seconds=20,
        )
    ).start()
    try:
        yield Served(registry.vendor("TSSDK"), topics, gateway)
    finally:
        gateway.stop()
        ingest.stop()
        topics.delete()


def _node_run(mode: str, env: dict[str, str]) -> list[dict[str, Any]]:
    node = _tool("node")
    script = SDK / "dist" / "test" / "fixtures" / "real-gateway.js"
    done = subprocess.run(
        [node, str(script), mode],
        cwd=SDK,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_typescript_sdk_through_the_real_gateway(served: Served, tmp_path: Path) -> None:
    npm = _tool("npm")
    if not (SDK / "node_modules").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
    _run([npm, "run", "build"], timeout=300)
    tenant = served.tenant
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(tenant.signing_key.private_pem())
    render_id = uuid7()
    env = {
        "RESIDUALS_GATEWAY_URL": f"http://127.0.0.1:{served.gateway.port}",
        "RESIDUALS_API_KEY": tenant.api_key,
        "RESIDUALS_VENDOR_ID": tenant.vendor_id,
        "RESIDUALS_KEY_ID": tenant.signing_key.key_id,
        "RESIDUALS_SIGNING_KEY_FILE": str(key_file),
        "RESIDUALS_LICENCE_ID": tenant.licence_id,
        "RESIDUALS_AVATAR_ID": tenant.avatar_id,
        "RESIDUALS_OCCURRED_AT": datetime.now(UTC).isoformat(),
        "RESIDUALS_RENDER_EVENT_ID": render_id,
        "RESIDUALS_SPOOL_DIR": str(tmp_path / "spool"),
    }

    lines = _node_run("publish", env)
    done = lines[-1]
    assert done["left"] == 0, lines
    ids = done["ids"]
    reports = {line["report"]["eventId"]: line["report"] for line in lines if "report" in line}
    assert not [line for line in lines if "error" in line]
    good = [ids["render"], ids["view"], ids["ad"], ids["retract"], *ids["many"]]
    assert ids["render"] == render_id
    for event_id in good:
        assert reports[event_id]["status"] == "DELIVERED", reports[event_id]
    bad = reports[ids["bad"]]
    assert bad["status"] == "REJECTED" and bad["reason"] and not bad["ok"], bad

    # The usage topic has each delivered event once, as the very envelope bytes signed by
    # the TypeScript SDK (batch proofs included), for this vendor.
    records = read_topic(served.topics.kafka, served.topics.usage, expect=len(good))
    by_id: dict[str, usage_pb2.SignedUsageEvent] = {}
    for record in records:
        signed = usage_pb2.SignedUsageEvent.FromString(record.value())
        event = usage_pb2.UsageEvent.FromString(signed.payload)
        assert event.event_id not in by_id, f"{event.event_id} twice on the topic"
        assert event.vendor_id == tenant.vendor_id
        by_id[event.event_id] = signed
    assert set(by_id) == set(good)
    assert by_id[ids["many"][0]].HasField("batch")
    assert by_id[ids["many"][0]].batch.leaf_count == 150  # 300 events sign as 150 + 150

    # The same render again, same id and bytes: DUPLICATE, and nothing new on the topic.
    again = _node_run("again", {**env, "RESIDUALS_SPOOL_DIR": str(tmp_path / "spool-2")})
    assert again[-1]["left"] == 0
    [report] = [line["report"] for line in again if "report" in line]
    assert report["eventId"] == render_id and report["status"] == "DUPLICATE", report
