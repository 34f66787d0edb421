"""Setting up the licence registry the way an administrator does, and reading it back.

* the first admin API key with ``residuals licences bootstrap-admin`` (the CLI, straight
  into PostgreSQL: no key exists yet to call the service with);
* talents, avatars, vendors and payees over ``LicenceService`` (with display names);
* the month's licences with ``residuals licences create licences.yaml`` (the admin CLI);
* each vendor's Ed25519 signing key (``RegisterSigningKey``) and the API keys the services
  and users need (``CreateApiKey``);
* live changes (``RevokeLicence``) and, at the end, the licences as the registry holds
  them (``ListLicences``) for the exported case file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml

from residuals.codecs.timestamps import set_timestamp
from residuals.demo.scenario import LicenceChange, Scenario
from residuals.licensing import messages
from residuals.platform.auth import Role, bearer_metadata
from residuals.v1 import licence_pb2, licence_service_pb2, licence_service_pb2_grpc


class RegistryError(RuntimeError):
    """A registry step failed; the message says which and why."""


def plain(value: Any) -> Any:
    """Datetimes as ISO 8601 strings, recursively (YAML and JSON stay unambiguous)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(plain(data), sort_keys=False, allow_unicode=True, width=100)


def _cli(args: list[str], env: Mapping[str, str], what: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "residuals", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RegistryError(
            f"{what} failed (`residuals {' '.join(args)}`, exit {result.returncode}):\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def bootstrap_admin(database_url: str) -> str:
    """The first admin API key (``residuals licences bootstrap-admin``)."""
    out = _cli(
        ["licences", "bootstrap-admin", "--principal-id", "demo-admin", "--description", "demo"],
        {"DATABASE_URL": database_url},
        "bootstrap-admin",
    )
    key = out.strip().splitlines()[-1].strip() if out.strip() else ""
    if not key.startswith("rsd_"):
        raise RegistryError(f"bootstrap-admin printed no API key: {out!r}")
    return key


_PAYEE_KIND = {
    "talent": licence_pb2.Payee.KIND_TALENT,
    "agent": licence_pb2.Payee.KIND_AGENT,
    "estate": licence_pb2.Payee.KIND_ESTATE,
}


class RegistryClient:
    """``LicenceService`` with the admin key."""

    def __init__(self, address: str, admin_key: str, timeout: float = 15.0) -> None:
        self.address = address
        self.admin_key = admin_key
        self.channel = grpc.insecure_channel(address)
        self.stub = licence_service_pb2_grpc.LicenceServiceStub(self.channel)
        self.metadata = bearer_metadata(admin_key)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise RegistryError(
                f"LicenceService.{method}: {error.code().name}: {error.details()}"
            ) from None

    def _ensure(self, method: str, request: Any) -> None:
        try:
            getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise RegistryError(
                    f"LicenceService.{method}: {error.code().name}: {error.details()}"
                ) from None

    def create_parties(self, scenario: Scenario) -> None:
        rs = licence_service_pb2
        for talent in scenario.talents:
            self._ensure(
                "CreateTalent",
                rs.CreateTalentRequest(
                    talent=licence_pb2.Talent(talent_id=talent.talent_id, display_name=talent.name)
                ),
            )
            for avatar_id, name in talent.avatars:
                self._ensure(
                    "CreateAvatar",
                    rs.CreateAvatarRequest(
                        avatar=licence_pb2.Avatar(
                            avatar_id=avatar_id, talent_id=talent.talent_id, display_name=name
                        )
                    ),
                )
        for vendor in scenario.vendors:
            self._ensure(
                "CreateVendor",
                rs.CreateVendorRequest(
                    vendor=licence_pb2.Vendor(vendor_id=vendor.vendor_id, display_name=vendor.name)
                ),
            )
        for payee in scenario.payees:
            self._ensure("CreatePayee", rs.CreatePayeeRequest(payee=licence_pb2.Payee(
                payee_id=payee.payee_id, kind=_PAYEE_KIND[payee.kind], display_name=payee.name,
                talent_ids=list(payee.talent_ids))))  # fmt: skip

    def create_licences(self, path: Path, specs: list[dict[str, Any]]) -> list[str]:
        """Write ``specs`` to ``path`` and create them with the admin CLI."""
        path.write_text(
            "# The demo month's licences as they start the month (residuals licences create)\n"
            + dump_yaml(specs),
            encoding="utf-8",
        )
        out = _cli(
            ["licences", "create", str(path)],
            {"RESIDUALS_API_KEY": self.admin_key, "RESIDUALS_LICENSING_ADDR": self.address},
            "residuals licences create",
        )
        return [line for line in out.splitlines() if line.strip()]

    def register_signing_key(self, vendor_id: str, key_id: str, public_key: bytes) -> None:
        self._call(
            "RegisterSigningKey",
            licence_service_pb2.RegisterSigningKeyRequest(
                vendor_id=vendor_id, public_key=public_key, key_id=key_id
            ),
        )

    def api_key(
        self, principal_id: str, role: Role, *, vendor_id: str = "", talent_id: str = ""
    ) -> str:
        response = self._call(
            "CreateApiKey",
            licence_service_pb2.CreateApiKeyRequest(
                principal=licence_pb2.Principal(
                    principal_id=principal_id,
                    role=messages.role_to_proto(role),  # type: ignore[arg-type]
                    vendor_id=vendor_id,
                    talent_id=talent_id,
                ),
                description="residuals demo",
            ),
        )
        return str(response.secret)

    def apply(self, change: LicenceChange) -> licence_pb2.Licence:
        if change.action != "revoke":
            raise RegistryError(f"unknown licence change {change.action!r}")
        request = licence_service_pb2.RevokeLicenceRequest(
            licence_id=change.licence_id,
            wind_down_days=change.wind_down_days,
            reason=change.reason,
        )
        set_timestamp(request.revoked_at, change.effective)
        licence: licence_pb2.Licence = self._call("RevokeLicence", request).licence
        return licence

    def licences(self) -> Iterator[licence_pb2.Licence]:
        request = licence_service_pb2.ListLicencesRequest(page_size=1000)
        while True:
            page = self._call("ListLicences", request)
            yield from page.licences
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token
