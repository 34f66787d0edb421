"""``residuals demo`` end to end on the real stack: a short month through every service.

The oracle is the offline replay: ``compute_statement`` over the events the demo's SDK
clients published (``events.jsonl``, in publishing order) with the licences the month was
meant to have (rebuilt here from the scenario module, not read back from the registry),
plus the dead letters only streaming checks can decide (the forged signature). The closed
statement exported by the payouts service must equal it byte for byte (same hash); the
finance CLI must reconcile the demo's database to zero; a second run with the same seed
must close to the same hash; and Ctrl-C must leave no process and no topic behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from residuals.demo import RUN_MARKER
from residuals.demo.environment import DATABASE, database_url
from residuals.demo.scenario import ATTACKER, GATEWAY, HTTP, build_scenario
from residuals.demo.timeline import Window
from residuals.domain.closing import content_hash
from residuals.domain.events import Rejection, parse_event
from residuals.domain.licence_spec import parse_licence
from residuals.domain.period import Period
from residuals.domain.statement import compute_statement
from residuals.domain.vocabulary import RejectReason
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin
from residuals.replay.casefile import load_case, read_event_lines
from residuals.stack.settings import StackSettings

SEED = 11
EVENTS = 3000


@dataclass
class Run:
    out: Path
    result: subprocess.CompletedProcess[str]
    manifest: dict[str, Any]

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


def demo(env: dict[str, str], out: Path, *args: str, timeout: float = 420) -> Run:
    result = subprocess.run(
        [sys.executable, "-m", "residuals", "demo", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    return Run(out, result, manifest)


def processes_of(run_id: str) -> list[str]:
    """Live processes carrying the demo run's marker in their environment."""
    found = []
    marker = f"{RUN_MARKER}={run_id}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()!r}")
        except OSError:
            continue
    return found


def topics_of(stack: StackSettings, run_id: str) -> list[str]:
    admin = make_admin(KafkaSettings(bootstrap_servers=stack.bootstrap_servers))
    prefix = f"demo-{run_id}."
    return [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]


@pytest.fixture(scope="module")
def first(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("demo") / "output"
    yield demo(stack_env, out, "--seed", str(SEED), "--events", str(EVENTS), "--seconds", "20")


def _window(manifest: dict[str, Any]) -> Window:
    return Window(
        Period.parse(manifest["period"]),
        datetime.fromisoformat(manifest["window"][0]),
        datetime.fromisoformat(manifest["window"][1]),
    )


def test_statement_equals_the_offline_replay_of_what_was_published(first: Run) -> None:
    m = first.manifest
    scenario = build_scenario(SEED, EVENTS, _window(m))
    intended = sorted(
        (parse_licence(s) for s in scenario.expected_licence_specs()),
        key=lambda lic: lic.licence_id,
    )
    # The registry ends the month with the licences the scenario meant (the revocation
    # recorded as a version; automatic suspensions add windows the rules re-derive).
    case = load_case(first.out / "case.yaml")
    assert [(lic.licence_id, lic.versions) for lic in case.licences] == [
        (lic.licence_id, lic.versions) for lic in intended
    ]
    # What the SDK clients published is the scenario, minus the forger's event and the
    # exact re-sends the gateway (gRPC or HTTP) answered DUPLICATE.
    published = list(read_event_lines(first.out / "events.jsonl"))
    scripted = [parse_event(e.raw) for e in scenario.events if e.sender != ATTACKER]
    parsed = [parse_event(raw) for raw in published]
    assert not Counter(parsed) - Counter(scripted)
    transport = {v.vendor_id: v.transport for v in scenario.vendors}
    seen: set[tuple[str, str]] = set()
    resent: Counter[str] = Counter()  # exact re-sends through a gateway, per sender
    for e in scenario.events:
        if transport.get(e.sender) in GATEWAY:
            key = (e.sender, json.dumps(e.raw, sort_keys=True, default=str))
            resent[e.sender] += key in seen
            seen.add(key)
    assert 0 <= len(scripted) - len(parsed) <= resent.total()
    # One vendor published with the TypeScript SDK over HTTP; its events were rated like
    # the others' (they are in the statement, which equals the replay below), and the HTTP
    # gateway answered each of its exact re-sends DUPLICATE (one request at a time).
    http_vendor = next(v for v in scenario.vendors if v.transport == HTTP)
    over_http = m["typescript_sdk"][http_vendor.vendor_id]
    ours = [e for e in scenario.events if e.sender == http_vendor.vendor_id]
    assert over_http["published"] == len(ours) and over_http["delivered"] > 0
    assert over_http.get("duplicate", 0) == resent[http_vendor.vendor_id]
    assert (
        sum(1 for e in parsed if e.vendor_id == http_vendor.vendor_id)
        == len(ours) - resent[http_vendor.vendor_id]
    )
    assert (
        f"TypeScript SDK over HTTP: {http_vendor.name.split(' ')[0]} ({http_vendor.vendor_id})"
        f" published {len(ours):,} events" in first.output
    )
    forged = [json.loads(line) for line in (first.out / "streaming-rejections.jsonl").open()]
    assert [f["reason"] for f in forged] == ["BAD_SIGNATURE"]
    # The hostile vendor's poison: every record dead-lettered with the reason the rules
    # give; those counted in this period are dead letters of its statement too.
    hostile = [json.loads(line) for line in (first.out / "hostile.jsonl").open()]
    assert len(hostile) >= 40
    assert [h["reason"] for h in hostile] == [h["expected"] for h in hostile]
    counted = [
        Rejection(RejectReason(h["reason"]), h["detail"]) for h in hostile if h["in_statement"]
    ]
    assert f"{len(hostile)} of {len(hostile)} dead-lettered with the reason" in first.output

    oracle = compute_statement(
        Period.parse(m["period"]),
        intended,
        [*parsed, *(Rejection(RejectReason.BAD_SIGNATURE, "forged") for _ in forged), *counted],
        thresholds={c: Decimal(v) for c, v in scenario.thresholds.items()},
    ).to_document()
    exported = (first.out / "statements" / f"residuals-{m['period']}.json").read_bytes()
    assert json.loads(exported) == json.loads(json.dumps(oracle, default=str))
    assert content_hash(oracle) == m["content_hash"] == m["replay_hash"]
    rated = {
        lic["licence_id"]: sum(line["units"] for line in lic["lines"])
        for lic in json.loads(exported)["licences"]
    }
    http_licences = [
        lic["licence_id"] for lic in scenario.licences if lic["vendor_id"] == http_vendor.vendor_id
    ]
    assert http_licences and all(rated.get(licence, 0) > 0 for licence in http_licences), rated
    assert f"statement content hash: {m['content_hash']}" in first.output

    # Anyone can check it with the CLI from the output folder.
    check = subprocess.run(
        [sys.executable, "-m", "residuals", "replay", str(first.out / "case.yaml"),
         "--events", str(first.out / "events.jsonl"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_reconciled_paid_and_alerted(first: Run, stack: StackSettings) -> None:
    m = first.manifest
    assert m["reconciled"] is True
    assert "reconciled: no differences" in (first.out / "reconciliation.txt").read_text()
    env = {**os.environ, "DATABASE_URL": database_url(stack.dsn, DATABASE)}
    finance = subprocess.run(
        [sys.executable, "-m", "residuals", "finance", "reconcile", "--period", m["period"]],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert finance.returncode == 0, finance.stdout + finance.stderr
    assert "reconciled: no differences" in finance.stdout

    document = json.loads((first.out / "statements" / f"residuals-{m['period']}.json").read_text())
    payable = {
        (p["payee_id"], p["currency"]): Decimal(p["payable"])
        for p in document["payees"]
        if Decimal(p["payable"]) > 0
    }
    instructions = [json.loads(p.read_text()) for p in (first.out / "payouts").glob("*.json")]
    assert {(i["payee_id"], i["currency"]): Decimal(i["amount"]) for i in instructions} == payable
    csv = (first.out / "statements" / f"residuals-{m['period']}.csv").read_text()
    assert csv.startswith("period,record,licence_id") and ",allocation," in csv

    alerts = [json.loads(line) for line in (first.out / "alerts.jsonl").open()]
    raised = Counter(a["kind"] for a in alerts if a["change"] == "RAISED")
    for kind in (
        "FORBIDDEN_CATEGORY",
        "USE_AFTER_REVOCATION",
        "TERRITORY_NOT_LICENSED",
        "CHANNEL_NOT_LICENSED",
        "QUOTA_EXCEEDED",
        "DUPLICATE_CONFLICT",
        "LICENCE_SUSPENDED",
    ):
        assert raised[kind] >= 1, (kind, raised)
    suspended = {a["licence_id"] for a in alerts if a["change"] == "LICENCE_SUSPENDED"}
    assert suspended == {"LIC-KOFI-CASTLY", "LIC-JUNE-MUSE"}
    assert "Violations" in first.output and "TAL-AMARA Amara Okafor" in first.output
    # Review before use: one approved, one denied, one unasked; past max_renders held.
    unapproved = [a for a in alerts if a["change"] == "RAISED" and a["kind"] == "UNAPPROVED_USE"]
    assert sorted(a["licence_id"] for a in unapproved) == ["LIC-MAI-DUBLY", "LIC-MAI-PIXEL"]
    review = first.output[first.output.index("Review before use") :]
    assert re.search(r"approved +apr-\S+ +PixelForge: 2 renders", review), review[:800]
    assert re.search(r"denied +apr-\S+ +MuseAI: no payday-loan", review), review[:800]
    assert "unasked   Dubly rendered without asking" in review
    assert "2 of 3 approved renders billed" in review

    assert processes_of(m["run_id"]) == []
    assert topics_of(stack, m["run_id"]) == []


def test_every_payee_reads_their_statement_and_one_is_proved(first: Run) -> None:
    """Each payee's PDF and HTML under statements/<payee>/, with their name and the same
    payable as the closed statement; one talent's evidence verified offline."""
    m = first.manifest
    document = json.loads((first.out / "statements" / f"residuals-{m['period']}.json").read_text())
    talents = build_scenario(SEED, EVENTS, _window(m)).talents
    scenario_names = {t.talent_id: t.name for t in talents}
    for payee in {p["payee_id"] for p in document["payees"]}:
        folder = first.out / "statements" / payee
        pdf = folder / f"residuals-{m['period']}-payee-{payee}.pdf"
        assert pdf.read_bytes().startswith(b"%PDF-"), pdf
        assert (folder / pdf.with_suffix(".html").name).read_bytes().lstrip().startswith(b"<!")
        text = subprocess.run(
            ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
        ).stdout
        if payee in scenario_names:
            assert scenario_names[payee] in text, payee
        for p in document["payees"]:
            if p["payee_id"] == payee:
                shown = format(Decimal(p["payable"]), ",")  # grouped, as people read it
                assert f"{shown} {p['currency']}" in text, (payee, p)
    proved = first.output[first.output.index("Evidence for ") :]
    assert "residuals verify: VERIFIED offline" in proved, proved[:600]
    bundles = list((first.out / "evidence").glob("*.residuals-evidence.tar.gz"))
    assert len(bundles) == 1
    verify = subprocess.run(
        [sys.executable, "-m", "residuals", "verify", str(bundles[0])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_talent_and_a_vendor_hear_by_webhook(first: Run) -> None:
    """Kofi's receiver got signed notices of the misuse of his avatar (the political render
    and the suspension it caused), his statement and his payout; the poisoning vendor's
    receiver listed its own rejected events with reason and event id, and nothing else's."""
    hooks = first.manifest["webhooks"]
    assert hooks["talent"]["bad_signatures"] == 0 and hooks["vendor"]["bad_signatures"] == 0
    talent = [json.loads(line) for line in (first.out / "webhooks" / "talent.jsonl").open()]
    vendor = [json.loads(line) for line in (first.out / "webhooks" / "vendor.jsonl").open()]
    types = {m["type"] for m in talent}
    assert {"alert.raised", "licence.suspended", "statement.ready", "payout.paid"} <= types
    assert all(m["data"].get("talent_id", "TAL-KOFI") == "TAL-KOFI" for m in talent)
    political = [m for m in talent if m["type"] == "alert.raised"
                 and m["data"]["kind"] == "FORBIDDEN_CATEGORY"]  # fmt: skip
    assert political and political[0]["data"]["severity"] == "CRITICAL"
    assert len({m["webhook_id"] for m in talent}) == len(talent)  # each message kept once
    rejected = [m for m in vendor if m["type"] == "usage.rejected"]
    assert rejected, vendor[:3]
    vendor_id = rejected[0]["data"]["vendor_id"]
    assert all(m["data"]["vendor_id"] == vendor_id for m in vendor)
    assert all(m["data"]["reason"] and "event_id" in m["data"] for m in rejected)
    assert "Kofi's receiver:" in first.output and "poisoning vendor's receiver:" in first.output


def test_same_seed_same_statement(first: Run, stack_env: dict[str, str], tmp_path: Path) -> None:
    again = demo(
        stack_env, tmp_path / "again", "--seed", str(SEED), "--events", str(EVENTS),
        "--seconds", "8",
    )  # fmt: skip
    assert again.manifest["period"] == first.manifest["period"]
    assert again.manifest["content_hash"] == first.manifest["content_hash"]
    assert again.manifest["run_id"] != first.manifest["run_id"]


def test_ctrl_c_stops_everything(
    first: Run, stack: StackSettings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "residuals", "demo", "--out", str(tmp_path / "interrupted"),
         "--events", "3000", "--seconds", "300"],
        env=stack_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    run_id = ""
    deadline = time.monotonic() + 240
    try:
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"'demo-([0-9a-f]{8})\.'", line)
            run_id = found.group(1) if found else run_id
            if line.startswith("[demo] day") and "published 0/" not in line:
                break  # the month is being published
            assert time.monotonic() < deadline, "".join(lines)
        assert run_id and processes_of(run_id), "".join(lines)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 130, output[-4000:]
    assert "interrupted: stopping everything the demo started" in output
    assert processes_of(run_id) == [], output[-4000:]
    assert topics_of(stack, run_id) == []
