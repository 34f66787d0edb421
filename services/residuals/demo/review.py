"""Review before use in the demo: one talent reviews three vendors' sensitive uses, live.

Mai Tanaka licenses her likeness to three vendors, and her licences require her approval
of every ``insurance`` use (rules v1.1, §5a). While the services run, as the real users do:

* PixelForge checks the use with the SDK (``CheckUse``: NEEDS_APPROVAL), asks
  (``RequestApproval``) for three renders, and waits for the decision;
* MuseAI asks for a payday-loan spot;
* Mai's agent, who doesn't code, works her inbox with the CLI: ``residuals approvals
  list``, ``approve`` PixelForge's request for two renders, ``deny`` MuseAI's;
* PixelForge renders three times naming its approval: two are billed, the third is held
  (past ``max_renders``); MuseAI, denied, does not render; Dubly renders an insurance ad
  without asking: held, and Mai gets an ``UNAPPROVED_USE`` alert.

The uses happen now (an approval never starts before its decision), so they fall in the
current month; the ledger's verdicts are read back for the summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from residuals.demo.administration import RegistryClient
from residuals.demo.fleet import sdk_module
from residuals.ledger import directory as ledger
from residuals.platform.auth import Role

TALENT_ID = "TAL-MAI"
TALENT_NAME = "Mai Tanaka"
AVATAR_ID = "AVA-MAI-1"
CATEGORY = "insurance"
#: (vendor id, short name, licence id)
VENDORS = (
    ("VEN-PIXELFORGE", "PixelForge", "LIC-MAI-PIXEL"),
    ("VEN-MUSEAI", "MuseAI", "LIC-MAI-MUSE"),
    ("VEN-DUBLY", "Dubly", "LIC-MAI-DUBLY"),
)
APPROVED_RENDERS = 2
RENDERS = 3


class ReviewFailed(RuntimeError):
    """A step of the scene did not go as the product promises."""


def licence_specs(starts_at: datetime) -> list[dict[str, Any]]:
    """Mai's three licences (admin creates them with the others)."""
    return [
        {
            "licence_id": licence_id,
            "version": 1,
            "talent_id": TALENT_ID,
            "avatar_id": AVATAR_ID,
            "vendor_id": vendor_id,
            "currency": "USD",
            "starts_at": starts_at.isoformat().replace("+00:00", "Z"),
            "scope": {
                "categories_allowed": ["education", "product_demo", CATEGORY],
                "categories_forbidden": ["political", "adult", "gambling"],
                "approval_required": [CATEGORY],
                "territories_allowed": ["GB", "US", "JP"],
                "channels_allowed": ["web", "social"],
            },
            "rates": {
                "render_tiers": [{"up_to": None, "unit_price": "4.00"}],
                "view_cpm": "6.00",
            },
            "platform_fee": "0.10",
            "splits": {TALENT_ID: "1"},
        }
        for vendor_id, _name, licence_id in VENDORS
    ]


@dataclass
class Decision:
    vendor: str
    approval_id: str
    status: str
    detail: str


@dataclass
class ReviewScene:
    """Runs the scene against the running services; :meth:`summary` reads the outcome."""

    licensing_address: str
    admin_key: str
    bootstrap_servers: str
    usage_topic: str
    signing: Mapping[str, Any]
    database_url: str
    say: Callable[[str], None]
    run_id: str
    #: API keys: the talent's agent ("talent") and each vendor's (by vendor id).
    keys: dict[str, str] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    #: render id -> the event id the SDK gave it.
    renders: dict[str, str] = field(default_factory=dict)
    #: The raw events published (the replay's shape), and the approvals granted.
    published: list[dict[str, Any]] = field(default_factory=list)
    granted: list[dict[str, Any]] = field(default_factory=list)

    def parties(self, registry: RegistryClient) -> dict[str, str]:
        """The talent, her avatar and payee; returns API keys (talent, and per vendor)."""
        from residuals.v1 import licence_pb2, licence_service_pb2

        rs = licence_service_pb2
        registry._ensure(
            "CreateTalent",
            rs.CreateTalentRequest(
                talent=licence_pb2.Talent(talent_id=TALENT_ID, display_name=TALENT_NAME)
            ),
        )
        registry._ensure(
            "CreateAvatar",
            rs.CreateAvatarRequest(
                avatar=licence_pb2.Avatar(
                    avatar_id=AVATAR_ID, talent_id=TALENT_ID, display_name="Mai (spokesperson)"
                )
            ),
        )
        registry._ensure(
            "CreatePayee",
            rs.CreatePayeeRequest(
                payee=licence_pb2.Payee(
                    payee_id=TALENT_ID,
                    kind=licence_pb2.Payee.KIND_TALENT,
                    display_name=TALENT_NAME,
                    talent_ids=[TALENT_ID],
                )
            ),
        )
        self.keys["talent"] = registry.api_key("mai-agent", Role.TALENT, talent_id=TALENT_ID)
        for vendor_id, name, _licence in VENDORS:
            self.keys[vendor_id] = registry.api_key(
                f"review-{name.lower()}", Role.VENDOR, vendor_id=vendor_id
            )
        return self.keys

    # --- the scene ------------------------------------------------------------------------

    def run(self) -> None:
        sdk = sdk_module()
        pixel, muse, dubly = VENDORS
        until = datetime.now(UTC) + timedelta(days=14)
        with self._approvals(pixel[0]) as client:
            check = client.check_use(
                licence_id=pixel[2], avatar_id=AVATAR_ID, category=CATEGORY, territory="GB"
            )
            self.say(f"  {pixel[1]}: CheckUse({CATEGORY}) → {check.verdict} ({check.explanation})")
            asked = client.request_approval(
                request_id=f"{self.run_id}-pixel-home-spot",
                licence_id=pixel[2],
                category=CATEGORY,
                brief="30-second spot for Harbour Home Insurance, UK web and social",
                renders=RENDERS,
                territories=["GB"],
                channels=["web", "social"],
                window_until=until,
            )
            self.say(f"  {pixel[1]}: RequestApproval → {asked.approval_id} ({asked.status})")
        with self._approvals(muse[0]) as client:
            denied_ask = client.request_approval(
                request_id=f"{self.run_id}-muse-payday",
                licence_id=muse[2],
                category=CATEGORY,
                brief="Payday-loan protection insurance, 6 social cut-downs",
                renders=6,
                territories=["GB", "US"],
                channels=["social"],
                window_until=until,
            )
            self.say(
                f"  {muse[1]}: RequestApproval → {denied_ask.approval_id} ({denied_ask.status})"
            )
        inbox = self._cli(["approvals", "list"])
        self.say(f"  {TALENT_NAME}'s agent: `residuals approvals list`")
        for line in inbox.strip().splitlines():
            self.say(f"    {line}")
        self._cli(
            [
                "approvals",
                "approve",
                asked.approval_id,
                "--max-renders",
                str(APPROVED_RENDERS),
                "--note",
                "two renders; UK only",
            ]
        )
        self.say(
            f"  `residuals approvals approve {asked.approval_id} --max-renders {APPROVED_RENDERS}`"
        )
        self._cli(
            [
                "approvals",
                "deny",
                denied_ask.approval_id,
                "--reason",
                "no payday-loan products under my name",
            ]
        )
        self.say(f"  `residuals approvals deny {denied_ask.approval_id} --reason ...`")
        with self._approvals(pixel[0]) as client:
            approval = client.wait_for_approval(asked.approval_id, timeout=30)
        with self._approvals(muse[0]) as client:
            denial = client.wait_for_approval(denied_ask.approval_id, timeout=30)
        self.decisions = [
            Decision(
                pixel[1], approval.approval_id, approval.status, f"{approval.max_renders} renders"
            ),
            Decision(muse[1], denial.approval_id, denial.status, denial.reason),
        ]
        self.granted.append(
            {
                "approval_id": approval.approval_id,
                "licence_id": approval.licence_id,
                "category": approval.category,
                "valid_from": _iso(approval.valid_from),
                "valid_until": _iso(approval.valid_until),
                "max_renders": approval.max_renders,
            }
        )
        self.say(
            f"  {pixel[1]}: WaitForApproval → APPROVED, {approval.max_renders} renders until"
            f" {approval.valid_until:%Y-%m-%d}; {muse[1]}: DENIED ({denial.reason})"
        )
        for n in range(RENDERS):
            self._render(sdk, pixel, f"harbour-spot-{n + 1}", approval.approval_id)
        self._render(sdk, dubly, "dubly-insurance-dub", None)
        self.say(
            f"  {pixel[1]} renders {RENDERS} naming {approval.approval_id};"
            f" {muse[1]} does not render; {dubly[1]} renders an {CATEGORY} ad without asking"
        )

    def _render(
        self, sdk: Any, vendor: tuple[str, str, str], render_id: str, approval: str | None
    ) -> None:
        vendor_id, _name, licence_id = vendor
        occurred = datetime.now(UTC)
        with sdk.UsageClient.kafka(
            vendor_id=vendor_id,
            signing_key=self.signing[vendor_id],
            bootstrap_servers=self.bootstrap_servers,
            topic=self.usage_topic,
            spool_dir=None,
            producer_config={"client.id": f"demo-review-{vendor_id}"},
        ) as client:
            event_id = client.render(
                licence_id=licence_id,
                avatar_id=AVATAR_ID,
                render_id=render_id,
                category=CATEGORY,
                territory="GB",
                occurred_at=occurred,
                approval_id=approval,
            )
            if client.flush(30):
                raise ReviewFailed(f"{render_id} was not delivered in 30 s")
        self.renders[render_id] = event_id
        raw: dict[str, Any] = {
            "event_id": event_id,
            "vendor_id": vendor_id,
            "kind": "RENDER",
            "licence_id": licence_id,
            "avatar_id": AVATAR_ID,
            "render_id": render_id,
            "category": CATEGORY,
            "territory": "GB",
            "occurred_at": _iso(occurred),
        }
        if approval:
            raw["approval_id"] = approval
        self.published.append(raw)

    # --- the outcome ----------------------------------------------------------------------

    def verdicts(self) -> dict[str, tuple[str, str]]:
        """render id -> (outcome, violation) as the ledger stored them."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return ledger.render_verdicts(conn, AVATAR_ID)

    def summary(self, unapproved_alerts: int) -> list[str]:
        verdicts = self.verdicts()
        lines = [f"Review before use ({TALENT_NAME}: every {CATEGORY} use needs her approval)"]
        lines.append("  approvals by outcome:")
        for status in ("APPROVED", "DENIED"):
            chosen = [d for d in self.decisions if d.status == status]
            for d in chosen:
                lines.append(f"    {status.lower():<9} {d.approval_id}  {d.vendor}: {d.detail}")
        lines.append("    unasked   Dubly rendered without asking")
        billed = sum(
            1 for r, (o, _v) in verdicts.items() if r.startswith("harbour") and o == "ACCEPTED"
        )
        held = sorted(r for r, (o, v) in verdicts.items() if v == "UNAPPROVED_USE")
        lines.append(
            f"  renders: {billed} of {RENDERS} approved renders billed; held as UNAPPROVED_USE:"
            f" {', '.join(held) or 'none'}; {unapproved_alerts} UNAPPROVED_USE alerts streamed"
        )
        return lines

    def check(self) -> None:
        """The scene's promises, checked against the ledger (the demo fails otherwise)."""
        verdicts = self.verdicts()
        expected = {f"harbour-spot-{n + 1}": ("ACCEPTED", "") for n in range(APPROVED_RENDERS)}
        expected.update(
            {
                f"harbour-spot-{n + 1}": ("HELD", "UNAPPROVED_USE")
                for n in range(APPROVED_RENDERS, RENDERS)
            }
        )
        expected["dubly-insurance-dub"] = ("HELD", "UNAPPROVED_USE")
        wrong = {r: verdicts.get(r) for r, v in expected.items() if verdicts.get(r) != v}
        if wrong:
            raise ReviewFailed(f"review-before-use renders got unexpected verdicts: {wrong}")

    # --- plumbing -------------------------------------------------------------------------

    def _approvals(self, vendor_id: str) -> Any:
        return sdk_module().ApprovalsClient(
            target=self.licensing_address, api_key=self.keys[vendor_id]
        )

    def _cli(self, args: list[str]) -> str:
        env = {
            **os.environ,
            "RESIDUALS_API_KEY": self.keys["talent"],
            "RESIDUALS_LICENSING_ADDR": self.licensing_address,
        }
        result = subprocess.run(
            [sys.executable, "-m", "residuals", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ReviewFailed(
                f"`residuals {' '.join(args)}` failed (exit {result.returncode}):"
                f" {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
