"""`residuals licences ...` as an admin runs it: a subprocess talking gRPC to a real
service on PostgreSQL. Case files create their licences; errors are `field: message`
lines with a non-zero exit and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from residuals.domain.licence_spec import parse_licence
from residuals.stack.settings import StackSettings
from tests.support.licensing import new_prefix, reset_registry, start_service

CASES = Path(__file__).parents[1] / "data" / "royalty-cases"


@dataclass
class Cli:
    env: dict[str, str]

    def run(
        self, *args: str, key: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {**self.env, **(env or {})}
        if key is not None:
            environment["RESIDUALS_API_KEY"] = key
        result = subprocess.run(
            [sys.executable, "-m", "residuals", "licences", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@dataclass
class Setup:
    cli: Cli
    admin_key: str


@pytest.fixture(scope="module")
def setup(stack: StackSettings) -> Iterator[Setup]:
    reset_registry(stack.dsn)
    started = start_service(stack, new_prefix(), relay=False)
    env = {
        **{k: v for k, v in os.environ.items() if k != "RESIDUALS_API_KEY"},
        **stack.exports(),
        "RESIDUALS_LICENSING_ADDR": f"127.0.0.1:{started.service.app.port}",
    }
    cli = Cli(env)
    try:
        boot = cli.run("bootstrap-admin")
        assert boot.returncode == 0, boot.stderr
        key = boot.stdout.strip()
        assert key.startswith("rsd_") and "shown once" in boot.stderr
        yield Setup(cli, key)
    finally:
        started.close()


def test_bootstrap_refuses_a_second_admin_unless_forced(setup: Setup) -> None:
    again = setup.cli.run("bootstrap-admin")
    assert again.returncode == 1
    assert "an admin API key already exists" in again.stderr
    forced = setup.cli.run("bootstrap-admin", "--force", "--principal-id", "admin-2")
    assert forced.returncode == 0 and forced.stdout.startswith("rsd_")


def test_create_a_case_file_and_again(setup: Setup) -> None:
    case = str(CASES / "01-render-tiers.yaml")
    first = setup.cli.run("create", case, key=setup.admin_key)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("LIC-ANA-ACME: revision 1, 1 version(s)")
    again = setup.cli.run("create", case, key=setup.admin_key)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


def test_every_case_file_creates_its_licences_and_show_round_trips(setup: Setup) -> None:
    for path in sorted(CASES.glob("*.yaml")):
        result = setup.cli.run("create", str(path), key=setup.admin_key)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        for spec in yaml.safe_load(path.read_text())["licences"]:
            shown = setup.cli.run("show", spec["licence_id"], key=setup.admin_key)
            assert shown.returncode == 0, shown.stderr
            document = yaml.safe_load(shown.stdout)
            assert parse_licence(document) == parse_licence(spec), path.name
    amended = setup.cli.run("show", "LIC-FAY-LUMEN", key=setup.admin_key)
    document = yaml.safe_load(amended.stdout)
    assert document["status"] == "revoked" and document["revision"] == 3
    assert [a["version"] for a in document["amendments"]] == [2, 3]
    listed = setup.cli.run("list", "--vendor", "VEN-LUMEN", key=setup.admin_key)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:2] == ["LIC-FAY-LUMEN", "TAL-FAY"]


def test_amend_suspend_reinstate_revoke(setup: Setup, tmp_path: Path) -> None:
    cli, key = setup.cli, setup.admin_key
    assert cli.run("create", str(CASES / "02-views-and-impressions.yaml"), key=key).returncode == 0
    change = tmp_path / "cpm.yaml"
    change.write_text("rates:\n  view_cpm: '3.10'\nscope:\n  channels_allowed: [web]\n")
    amended = cli.run(
        "amend", "LIC-BO-PIXEL", str(change), "--effective-from", "2026-08-01T00:00:00Z",
        "--note", "renegotiated", key=key,
    )  # fmt: skip
    assert amended.returncode == 0, amended.stderr
    assert "version 2 from 2026-08-01" in amended.stdout
    shown = yaml.safe_load(cli.run("show", "LIC-BO-PIXEL", key=key).stdout)
    (amendment,) = shown["amendments"]
    assert amendment["rates"]["view_cpm"] == "3.10"
    assert amendment["rates"]["channel_multipliers"] == {"broadcast": "1.5"}  # kept
    assert amendment["scope"]["channels_allowed"] == ["web"]
    assert shown["recorded"][1]["note"] == "renegotiated"

    suspended = cli.run("suspend", "LIC-BO-PIXEL", "--reason", "talent complaint", key=key)
    assert suspended.returncode == 0 and "suspended" in suspended.stdout
    reinstated = cli.run("reinstate", "LIC-BO-PIXEL", "--note", "resolved", key=key)
    assert reinstated.returncode == 0 and "active" in reinstated.stdout
    revoked = cli.run("revoke", "LIC-BO-PIXEL", "--wind-down-days", "10", key=key)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    listed = cli.run("list", "--status", "revoked", key=key)
    assert "LIC-BO-PIXEL" in listed.stdout


def test_a_bad_licence_file_names_the_field(setup: Setup, tmp_path: Path) -> None:
    spec = yaml.safe_load((CASES / "01-render-tiers.yaml").read_text())
    spec["licences"][0]["rates"]["render_tiers"] = [
        {"up_to": 1000, "unit_price": "0.50"},
        {"up_to": 500, "unit_price": "0.40"},
        {"up_to": None, "unit_price": "0.30"},
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    result = setup.cli.run("create", str(bad), key=setup.admin_key)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "licences[0].rates.render_tiers[1].up_to: tiers must be ascending"
    )
    spec["licences"][0]["rates"]["render_tiers"] = [{"up_to": None, "unit_price": "0.50"}]
    spec["licences"][0]["scope"]["territories_allowed"] = ["UK"]
    bad.write_text(yaml.safe_dump(spec))
    result = setup.cli.run("create", str(bad), key=setup.admin_key)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "licences[0].scope.territories_allowed: 'UK' is not an ISO 3166-1 alpha-2 country code"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("licences: [\n")
    result = setup.cli.run("create", str(broken), key=setup.admin_key)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_server_side_rejections_print_field_and_message(setup: Setup) -> None:
    cli, key = setup.cli, setup.admin_key
    assert cli.run("create", str(CASES / "03-scope-violations.yaml"), key=key).returncode == 0
    result = cli.run(
        "suspend", "LIC-CY-NOVA", "--reason", "x",
        "--from", "2026-10-02T00:00:00Z", "--until", "2026-10-01T00:00:00Z", key=key,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "ends_at: must be after starts_at"
    missing = cli.run("show", "LIC-NOPE", key=key)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "NOT_FOUND: licence LIC-NOPE does not exist"


def test_keys_and_permissions(setup: Setup) -> None:
    cli = setup.cli
    assert (
        cli.run(
            "create", str(CASES / "04-quota-and-guarantee.yaml"), key=setup.admin_key
        ).returncode
        == 0
    )
    made = cli.run(
        "api-key", "create", "--role", "vendor", "--vendor", "VEN-QUILL", key=setup.admin_key
    )
    assert made.returncode == 0, made.stderr
    vendor_key = made.stdout.strip()
    listed = cli.run("list", key=vendor_key)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["LIC-DEV-QUILL"]
    denied = cli.run("create", str(CASES / "01-render-tiers.yaml"), key=vendor_key)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED: vendor:VEN-QUILL (principal vendor-VEN-QUILL) may not" in (
        denied.stderr
    )
    key_id = vendor_key.split("_")[1]
    assert cli.run("api-key", "revoke", key_id, key=setup.admin_key).returncode == 0
    revoked = cli.run("list", key=vendor_key)
    assert revoked.returncode == 1
    assert revoked.stderr.strip() == "UNAUTHENTICATED: unknown or revoked API key"


def test_missing_key_and_unreachable_service(setup: Setup) -> None:
    no_key = setup.cli.run("list")
    assert no_key.returncode == 2
    assert no_key.stderr.strip() == "RESIDUALS_API_KEY: is required (an admin API key, rsd_…)"
    down = setup.cli.run(
        "--timeout", "2", "list", key=setup.admin_key,
        env={"RESIDUALS_LICENSING_ADDR": "127.0.0.1:9"},
    )  # fmt: skip
    assert down.returncode == 1
    assert down.stderr.startswith("licensing service unavailable")


def test_suspender_keys_and_backdating_from_the_command_line(setup: Setup) -> None:
    cli, admin = setup.cli, setup.admin_key
    assert cli.run("create", str(CASES / "05-dedup-retraction-dlq.yaml"), key=admin).returncode == 0
    made = cli.run(
        "api-key", "create", "--role", "suspender", "--principal-id", "svc-alerts", key=admin
    )
    assert made.returncode == 0, made.stderr
    suspender = made.stdout.strip()
    denied = cli.run("list", key=suspender)
    assert denied.returncode == 1
    assert denied.stderr.startswith(
        "PERMISSION_DENIED: suspender (principal svc-alerts) may not call"
        " /residuals.v1.LicenceService/ListLicences"
    )
    by_hand = cli.run("suspend", "LIC-EVE-ORBIT", "--reason", "x", key=suspender)
    assert by_hand.returncode == 1 and "may not suspend by hand" in by_hand.stderr
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    registered = cli.run(
        "signing-key", "register", "--vendor", "VEN-ORBIT", "--public-key", public.hex(),
        "--key-id", "vk-cli-1", key=admin,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    june = "2026-06-01T00:00:00Z"
    backdated = cli.run("signing-key", "revoke", "vk-cli-1", "--at", june, key=admin)
    assert backdated.returncode == 2
    assert backdated.stderr.startswith("reason: is required when revoked_at is more than 0:05:00")
    revoked = cli.run(
        "signing-key", "revoke", "vk-cli-1", "--at", june, "--reason", "key leaked in June",
        key=admin,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked at {june}" in revoked.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "residuals", "audit", "--key", "vk-cli-1", "--json"],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (entry["action"], entry["actor"], entry["reason"], entry["effective_at"]) == (
        "revoke_signing_key",
        "admin",
        "key leaked in June",
        "2026-06-01T00:00:00+00:00",
    )
