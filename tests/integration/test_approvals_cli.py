"""`residuals approvals ...` as a talent's agent runs it: a subprocess talking gRPC to a
real licensing service on PostgreSQL. Errors are precise lines with a non-zero exit and
never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from residuals.stack.settings import StackSettings
from residuals.v1 import approvals_pb2
from tests.support.approvals import World, start_world


@dataclass
class Cli:
    env: dict[str, str]

    def run(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        environment = dict(self.env)
        if key is not None:
            environment["RESIDUALS_API_KEY"] = key
        result = subprocess.run(
            [sys.executable, "-m", "residuals", "approvals", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture(scope="module")
def setup(stack: StackSettings) -> Iterator[tuple[World, Cli]]:
    for world in start_world(stack):
        env = {
            **{k: v for k, v in os.environ.items() if k != "RESIDUALS_API_KEY"},
            **stack.exports(),
            "RESIDUALS_LICENSING_ADDR": f"127.0.0.1:{world.port}",
        }
        yield world, Cli(env)


def test_list_approve_and_deny(setup: tuple[World, Cli]) -> None:
    world, cli = setup
    talent = world.keys["A"]["talent"]
    first = world.request(use=approvals_pb2.UseDescription(brief="Vote YES on 7 " * 20))
    second = world.request(category="insurance")
    world.request(tenant="B")

    listed = cli.run("list", key=talent)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "LICENCE", "VENDOR", "CATEGORY"]
    assert len(lines) == 3 and "LIC-APR-B" not in listed.stdout
    assert first.approval_id in listed.stdout and "Vote YES on 7" in lines[1]
    assert "…" in lines[1] and len(lines[1]) < 250  # long briefs are cut
    assert "pending" in lines[1] and "VEN-A" in lines[1]

    approved = cli.run(
        "approve", first.approval_id, "--max-renders", "2", "--note", "ok", key=talent
    )
    assert approved.returncode == 0, approved.stderr
    assert f"{first.approval_id} approved" in approved.stdout
    denied = cli.run("deny", second.approval_id, "--reason", "not insurance", key=talent)
    assert denied.returncode == 0 and f"{second.approval_id} denied" in denied.stdout

    assert "no pending requests" in cli.run("list", key=talent).stdout
    everything = cli.run("list", "--all", "--json", "--licence", "LIC-APR-A", key=talent)
    decoded = [json.loads(line) for line in everything.stdout.splitlines()]
    statuses = {d["approvalId"]: d["status"] for d in decoded}
    assert statuses[first.approval_id] == "APPROVAL_STATUS_APPROVED"
    assert statuses[second.approval_id] == "APPROVAL_STATUS_DENIED"


def test_errors_are_precise_with_exit_codes(setup: tuple[World, Cli]) -> None:
    world, cli = setup
    talent = world.keys["A"]["talent"]
    pending = world.request()
    past = cli.run("approve", pending.approval_id, "--from", "2020-01-01T00:00:00Z", key=talent)
    assert past.returncode == 2
    assert past.stderr.startswith("valid_from: is before the decision")
    bad_time = cli.run("approve", pending.approval_id, "--until", "tomorrow", key=talent)
    assert (bad_time.returncode, bad_time.stderr.strip()) == (
        2,
        "--until: 'tomorrow' is not an ISO 8601 timestamp",
    )
    other = cli.run("deny", pending.approval_id, "--reason", "x", key=world.keys["B"]["talent"])
    assert other.returncode == 1 and other.stderr.startswith("PERMISSION_DENIED: ")
    cli.run("deny", pending.approval_id, "--reason", "no", key=talent)
    final = cli.run("approve", pending.approval_id, key=talent)
    assert final.returncode == 1
    assert final.stderr.startswith("FAILED_PRECONDITION: ") and "already denied" in final.stderr
    missing = cli.run("deny", pending.approval_id, "--reason", "x")
    assert missing.returncode == 2 and "RESIDUALS_API_KEY" in missing.stderr
    reason = cli.run("deny", pending.approval_id, key=talent)
    assert reason.returncode == 2 and "--reason" in reason.stderr
