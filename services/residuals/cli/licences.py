"""``residuals licences ...``: the admin CLI of the licence registry (a gRPC client).

It talks to LicenceService at ``RESIDUALS_LICENSING_ADDR`` with the API key in
``RESIDUALS_API_KEY`` (never on the command line, where ``ps`` would show it). Licences are
written in the shape of the royalty cases' ``licences`` entries, so

    residuals licences create tests/data/royalty-cases/01-render-tiers.yaml

creates that case's licences with their amendments and suspension windows, registering
the talent, avatar, vendor and payees they name when missing. Files are validated locally
with the same parser and registry rules the service applies, so most mistakes are caught
before anything is sent. Errors print as ``field: message`` (exit 2 for invalid input, 1
for other failures), never as tracebacks.

Suspending, reinstating or revoking with ``--from``/``--at`` more than a few minutes in the
past (LICENSING_BACKDATE_SKEW_SECONDS) takes an admin key and a ``--reason``/``--note``;
such changes are written to the audit log (``residuals audit``).

``bootstrap-admin`` is the exception: it writes the first admin API key straight into
PostgreSQL (``DATABASE_URL``), since no key exists yet to call the service with.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_INVALID = 2
EXIT_FAILED = 1
DEFAULT_ADDR = "127.0.0.1:50051"


class CliError(Exception):
    """A failure to report as lines of text (each ``field: message`` when about a field)."""

    def __init__(self, lines: Sequence[str], exit_code: int = EXIT_FAILED) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)
        self.exit_code = exit_code


# --- registration ----------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "licences",
        help="manage licences in the registry (admin)",
        description="Admin commands of the licence registry. Environment: RESIDUALS_API_KEY "
        f"(required), RESIDUALS_LICENSING_ADDR (default {DEFAULT_ADDR}); TLS to any address "
        "but this machine's (system CAs, or RESIDUALS_TLS_CA; RESIDUALS_TLS_CERT and "
        "RESIDUALS_TLS_KEY for mTLS).",
    )
    add_connection_options(parser)
    sub = parser.add_subparsers(dest="licences_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create licences from a YAML file (case or list)")
    create.add_argument("file", type=Path)
    create.add_argument("--licence", help="only this licence id from the file")
    create.set_defaults(handler=_handler(_create))

    amend = sub.add_parser(
        "amend", help="record a new version: the YAML's terms laid over the latest version"
    )
    amend.add_argument("licence_id")
    amend.add_argument("file", type=Path, help="amendment YAML, e.g. {rates: {view_cpm: '2.40'}}")
    amend.add_argument("--effective-from", help="ISO 8601 (default: the file's effective_from)")
    amend.add_argument("--note", default="", help="why (recorded with the version)")
    amend.set_defaults(handler=_handler(_amend))

    suspend = sub.add_parser("suspend", help="suspend a licence")
    suspend.add_argument("licence_id")
    suspend.add_argument("--reason", required=True)
    suspend.add_argument("--from", dest="starts_at", help="ISO 8601 (default now)")
    suspend.add_argument("--until", dest="ends_at", help="ISO 8601 (default: until reinstated)")
    suspend.set_defaults(handler=_handler(_suspend))

    reinstate = sub.add_parser("reinstate", help="end the suspension in force")
    reinstate.add_argument("licence_id")
    reinstate.add_argument("--at", help="ISO 8601 (default now)")
    reinstate.add_argument("--note", default="", help="why (required when backdated)")
    reinstate.set_defaults(handler=_handler(_reinstate))

    revoke = sub.add_parser("revoke", help="revoke a licence (renders stop; views wind down)")
    revoke.add_argument("licence_id")
    revoke.add_argument("--at", help="ISO 8601 (default now)")
    revoke.add_argument("--wind-down-days", type=int, default=0)
    revoke.add_argument("--reason", default="", help="why (required when backdated)")
    revoke.set_defaults(handler=_handler(_revoke))

    show = sub.add_parser("show", help="a licence with every version (YAML, or --json)")
    show.add_argument("licence_id")
    show.add_argument("--as-of", help="status and version in force at this instant")
    show.add_argument("--json", action="store_true", help="the residuals.v1.Licence as JSON")
    show.set_defaults(handler=_handler(_show))

    listing = sub.add_parser("list", help="licences the key may see")
    listing.add_argument("--vendor")
    listing.add_argument("--talent")
    listing.add_argument("--avatar")
    listing.add_argument(
        "--status",
        action="append",
        default=[],
        choices=["pending", "active", "suspended", "revoked", "expired"],
    )
    listing.add_argument("--as-of")
    listing.add_argument("--page-size", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(handler=_handler(_list))

    key = sub.add_parser("api-key", help="create or revoke API keys")
    key_sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    key_create = key_sub.add_parser("create", help="a key for a principal (printed once)")
    key_create.add_argument(
        "--role",
        required=True,
        choices=["vendor", "talent", "finance", "admin", "suspender"],
        help="suspender: the alerts service's key, which may only record automatic"
        " suspensions (ALERTS_LICENSING_API_KEY)",
    )
    key_create.add_argument("--vendor", default="")
    key_create.add_argument("--talent", default="")
    key_create.add_argument("--principal-id", default="")
    key_create.add_argument("--description", default="")
    key_create.set_defaults(handler=_handler(_key_create))
    key_revoke = key_sub.add_parser("revoke", help="revoke a key by id")
    key_revoke.add_argument("api_key_id")
    key_revoke.set_defaults(handler=_handler(_key_revoke))

    signing = sub.add_parser("signing-key", help="register or revoke vendor signing keys")
    signing_sub = signing.add_subparsers(dest="signing_command", metavar="ACTION", required=True)
    register_key = signing_sub.add_parser("register", help="an Ed25519 public key for a vendor")
    register_key.add_argument("--vendor", required=True)
    register_key.add_argument("--public-key", required=True, help="32 bytes as hex")
    register_key.add_argument("--key-id", default="")
    register_key.set_defaults(handler=_handler(_signing_register))
    revoke_key = signing_sub.add_parser("revoke", help="revoke a signing key")
    revoke_key.add_argument("key_id")
    revoke_key.add_argument(
        "--at", help="ISO 8601 (default now; earlier than a few minutes ago: admin, --reason)"
    )
    revoke_key.add_argument("--reason", default="", help="why (required when backdated)")
    revoke_key.set_defaults(handler=_handler(_signing_revoke))

    bootstrap = sub.add_parser(
        "bootstrap-admin",
        help="create the first admin API key directly in PostgreSQL (DATABASE_URL); prints it once",
    )
    bootstrap.add_argument("--principal-id", default="admin")
    bootstrap.add_argument("--description", default="bootstrap admin key")
    bootstrap.add_argument(
        "--force", action="store_true", help="create one even if an admin key already exists"
    )
    bootstrap.set_defaults(handler=_handler(_bootstrap, needs_client=False))


# --- plumbing ----------------------------------------------------------------------------


def add_connection_options(parser: Any) -> None:
    """--plaintext, --addr, --timeout: how every licensing-service command connects
    (``residuals licences``, ``residuals approvals``)."""
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS even to another machine (a trusted network only: the API key travels "
        "in the clear)",
    )
    parser.add_argument(
        "--addr", help="licensing service host:port (default: $RESIDUALS_LICENSING_ADDR)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")


@dataclass
class Client:
    stub: Any
    metadata: tuple[tuple[str, str], ...]
    timeout: float

    def call(self, method: str, request: Any) -> Any:
        from residuals.platform.telemetry import inject_grpc_metadata

        metadata = inject_grpc_metadata(list(self.metadata))
        return getattr(self.stub, method)(request, metadata=metadata, timeout=self.timeout)


def _connect(
    args: argparse.Namespace, stub_class: Callable[[Any], Any] | None = None
) -> tuple[Any, Client]:
    """The channel (to close) and a client with the key from ``RESIDUALS_API_KEY``, for
    ``stub_class`` (default LicenceService's stub).

    Deliberately not a generator context manager: contextlib assigns ``__traceback__``
    on exceptions passing through, which the frozen ``SpecError`` dataclass refuses.
    """
    from residuals.platform.auth import bearer_metadata, parse_api_key
    from residuals.platform.grpc_server import operator_channel
    from residuals.v1 import licence_service_pb2_grpc

    key = os.environ.get("RESIDUALS_API_KEY", "").strip()
    if not key:
        raise CliError(["RESIDUALS_API_KEY: is required (an admin API key, rsd_…)"], EXIT_INVALID)
    if parse_api_key(key) is None:
        raise CliError(["RESIDUALS_API_KEY: is not an API key (rsd_<id>_<secret>)"], EXIT_INVALID)
    address = args.addr or os.environ.get("RESIDUALS_LICENSING_ADDR") or DEFAULT_ADDR

    def path(name: str) -> Path | None:
        value = os.environ.get(name, "").strip()
        return Path(value) if value else None

    channel = operator_channel(
        address,
        ca=path("RESIDUALS_TLS_CA"),
        cert=path("RESIDUALS_TLS_CERT"),
        key=path("RESIDUALS_TLS_KEY"),
        plaintext=args.plaintext,
    )
    stub = (stub_class or licence_service_pb2_grpc.LicenceServiceStub)(channel)
    return channel, Client(stub, bearer_metadata(key), args.timeout)


def _handler(
    action: Callable[..., int],
    *,
    needs_client: bool = True,
    stub_class: Callable[[], Callable[[Any], Any]] | None = None,
) -> Callable[[argparse.Namespace], int]:
    """Run ``action`` and turn every expected failure into text and an exit code.

    ``stub_class`` returns the gRPC stub class to call (imported lazily; default
    LicenceService's)."""

    def run(args: argparse.Namespace) -> int:
        import grpc

        from residuals.domain.licence_spec import SpecError

        try:
            if not needs_client:
                return action(args)
            channel, client = _connect(args, stub_class() if stub_class else None)
            try:
                return action(args, client)
            finally:
                channel.close()
        except CliError as error:
            for line in error.lines:
                print(line, file=sys.stderr)
            return error.exit_code
        except SpecError as error:
            print(str(error), file=sys.stderr)
            return EXIT_INVALID
        except grpc.RpcError as error:
            lines, code = rpc_error_lines(error)
            for line in lines:
                print(line, file=sys.stderr)
            return code
        except OSError as error:
            print(
                f"{getattr(error, 'filename', '') or 'error'}: {error.strerror or error}",
                file=sys.stderr,
            )
            return EXIT_FAILED

    return run


def rpc_error_lines(error: Any, prefix: str = "") -> tuple[list[str], int]:
    """``field: message`` lines from a failed call (BadRequest details when present)."""
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = error.code()
    lines: list[str] = []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                lines += [f"{prefix}{v.field}: {v.description}" for v in request.field_violations]
    if not lines:
        if code == grpc.StatusCode.UNAVAILABLE:
            lines = [f"{prefix}licensing service unavailable: {error.details()}"]
        else:
            lines = [f"{prefix}{code.name}: {error.details()}"]
    return lines, EXIT_INVALID if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED


def _time(text: str | None, option: str) -> datetime | None:
    from residuals.domain.events import parse_timestamp

    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise CliError([f"{option}: {text!r} is not an ISO 8601 timestamp"], EXIT_INVALID) from None


def _stamp(target: Any, value: datetime | None) -> None:
    from residuals.codecs.timestamps import set_timestamp

    if value is not None:
        set_timestamp(target, value)


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise CliError([f"{path}: not valid YAML: {error}"], EXIT_INVALID) from None


def licence_entries(data: Any, path: Path) -> list[tuple[str, Any]]:
    """``(field path, licence spec)`` for a case file, a list, or a single licence."""
    if isinstance(data, dict) and "licences" in data:
        items, root = data["licences"], "licences"
    elif isinstance(data, list):
        items, root = data, ""
    elif isinstance(data, dict):
        return [("licence", data)]
    else:
        raise CliError([f"{path}: expected a licence, a list of licences or a case file"], 2)
    if not isinstance(items, list) or not items:
        raise CliError([f"{path}: {root or '(root)'}: needs at least one licence"], EXIT_INVALID)
    return [(f"{root}[{i}]" if root else f"[{i}]", item) for i, item in enumerate(items)]


def validate_entry(spec: Any, path: str) -> Any:
    """The domain licence of one entry, checked like the service checks it."""
    from residuals.domain.licence_spec import SpecError, parse_licence
    from residuals.licensing import rules

    licence = parse_licence(spec, path)
    try:
        rules.check_licence(licence)
    except SpecError as error:
        raise SpecError(f"{path}.{error.path}", error.message) from None
    if isinstance(spec, dict) and (spec.get("reinstatements") or spec.get("reinstated_at")):
        raise SpecError(
            f"{path}.reinstatements",
            "reinstatements end automatic suspensions the alerting pipeline records;"
            " use `residuals licences reinstate` for a recorded suspension",
        )
    return licence


# --- commands ----------------------------------------------------------------------------------


def _ensure(client: Client, method: str, request: Any) -> None:
    """Create a party; one that already exists (even with other details) is fine."""
    import grpc

    try:
        client.call(method, request)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def _create(args: argparse.Namespace, client: Client) -> int:
    import grpc

    from residuals.codecs import licences as licence_codec
    from residuals.v1 import licence_pb2, licence_service_pb2

    entries = licence_entries(_load_yaml(args.file), args.file)
    if args.licence:
        entries = [
            (p, s)
            for p, s in entries
            if isinstance(s, dict) and s.get("licence_id") == args.licence
        ]
        if not entries:
            raise CliError([f"--licence: {args.licence} is not in {args.file}"], EXIT_INVALID)
    licences = [(path, validate_entry(spec, path)) for path, spec in entries]
    failures = 0
    for path, licence in licences:
        message = licence_codec.to_proto(licence)
        try:
            _ensure(
                client,
                "CreateTalent",
                licence_service_pb2.CreateTalentRequest(
                    talent=licence_pb2.Talent(talent_id=licence.talent_id)
                ),
            )
            _ensure(
                client,
                "CreateAvatar",
                licence_service_pb2.CreateAvatarRequest(
                    avatar=licence_pb2.Avatar(
                        avatar_id=licence.avatar_id, talent_id=licence.talent_id
                    )
                ),
            )
            _ensure(
                client,
                "CreateVendor",
                licence_service_pb2.CreateVendorRequest(
                    vendor=licence_pb2.Vendor(vendor_id=licence.vendor_id)
                ),
            )
            for payee in sorted({p for v in licence.versions for p, _ in v.splits}):
                kind = (
                    licence_pb2.Payee.KIND_TALENT
                    if payee == licence.talent_id
                    else licence_pb2.Payee.KIND_UNSPECIFIED
                )
                talents = [licence.talent_id] if payee == licence.talent_id else []
                _ensure(
                    client,
                    "CreatePayee",
                    licence_service_pb2.CreatePayeeRequest(
                        payee=licence_pb2.Payee(payee_id=payee, kind=kind, talent_ids=talents)
                    ),
                )
            current = client.call(
                "CreateLicence",
                licence_service_pb2.CreateLicenceRequest(
                    licence_id=licence.licence_id,
                    talent_id=licence.talent_id,
                    avatar_id=licence.avatar_id,
                    vendor_id=licence.vendor_id,
                    currency_code=licence.currency,
                    terms=message.versions[0],
                ),
            ).licence
            for index, version in enumerate(message.versions[1:], start=1):
                if len(current.versions) > index:
                    continue  # recorded by an earlier run of this file
                current = client.call(
                    "AmendLicence",
                    licence_service_pb2.AmendLicenceRequest(
                        licence_id=licence.licence_id,
                        terms=version,
                        effective_from=version.effective_from,
                        expected_revision=current.revision,
                        note=f"from {args.file.name}",
                    ),
                ).licence
            recorded = {
                (
                    w.starts_at.ToDatetime(),
                    w.ends_at.ToDatetime() if w.HasField("ends_at") else None,
                )
                for w in current.suspensions
            }
            for window in licence.suspensions:
                naive = (
                    window.start.replace(tzinfo=None),
                    window.end.replace(tzinfo=None) if window.end else None,
                )
                if naive in recorded:
                    continue
                request = licence_service_pb2.SuspendLicenceRequest(
                    licence_id=licence.licence_id, reason=f"from {args.file.name}"
                )
                _stamp(request.starts_at, window.start)
                _stamp(request.ends_at, window.end)
                current = client.call("SuspendLicence", request).licence
        except grpc.RpcError as error:
            lines, _ = rpc_error_lines(error, prefix=f"{path} ({licence.licence_id}): ")
            for line in lines:
                print(line, file=sys.stderr)
            failures += 1
            continue
        print(
            f"{licence.licence_id}: revision {current.revision},"
            f" {len(current.versions)} version(s), {len(current.suspensions)} suspension(s),"
            f" {_status(current.status)}"
        )
    return EXIT_FAILED if failures else 0


def _status(value: int) -> str:
    from residuals.v1 import licence_pb2

    return licence_pb2.LicenceStatus.Name(value).removeprefix("LICENCE_STATUS_").lower()  # type: ignore[arg-type]


def _amend(args: argparse.Namespace, client: Client) -> int:
    from residuals.codecs import licences as licence_codec
    from residuals.domain.licence_spec import SpecError
    from residuals.licensing import terms
    from residuals.v1 import licence_service_pb2

    data = _load_yaml(args.file)
    if not isinstance(data, dict) or not data:
        raise CliError([f"{args.file}: expected a mapping of the terms to change"], EXIT_INVALID)
    effective = _time(args.effective_from, "--effective-from")
    if effective is None:
        effective = _time(data.get("effective_from"), "effective_from")
    if effective is None:
        raise CliError(["effective_from: is required (in the file or --effective-from)"], 2)
    got = client.call(
        "GetLicence", licence_service_pb2.GetLicenceRequest(licence_id=args.licence_id)
    )
    current = licence_codec.from_proto(got.licence)
    identity = terms.Identity(
        current.licence_id,
        current.talent_id,
        current.avatar_id,
        current.vendor_id,
        current.currency,
    )
    history = [(v.effective_from, terms.complete_spec(v)) for v in current.versions]
    base = history[-1][1]
    change = {k: v for k, v in data.items() if k not in ("effective_from", "version")}
    merged = {
        **base,
        **{
            k: ({**base[k], **v} if k in ("scope", "rates") and isinstance(v, dict) else v)
            for k, v in change.items()
        },
    }
    try:
        licence = terms.validate(identity, [*history, (effective, merged)])
    except SpecError as error:
        prefix = f"amendments[{len(history) - 1}]."
        raise SpecError(f"{args.file}: {error.path.removeprefix(prefix)}", error.message) from None
    new_version = licence_codec.to_proto(licence).versions[-1]
    request = licence_service_pb2.AmendLicenceRequest(
        licence_id=args.licence_id,
        terms=new_version,
        expected_revision=got.licence.revision,
        note=args.note,
    )
    _stamp(request.effective_from, effective)
    result = client.call("AmendLicence", request).licence
    print(
        f"{args.licence_id}: version {len(result.versions)} from {effective.isoformat()}"
        f" (revision {result.revision})"
    )
    return 0


def _suspend(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    request = licence_service_pb2.SuspendLicenceRequest(
        licence_id=args.licence_id, reason=args.reason
    )
    _stamp(request.starts_at, _time(args.starts_at, "--from"))
    _stamp(request.ends_at, _time(args.ends_at, "--until"))
    result = client.call("SuspendLicence", request).licence
    print(f"{args.licence_id}: {_status(result.status)} (revision {result.revision})")
    return 0


def _reinstate(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    request = licence_service_pb2.ReinstateLicenceRequest(
        licence_id=args.licence_id, note=args.note
    )
    _stamp(request.at, _time(args.at, "--at"))
    result = client.call("ReinstateLicence", request).licence
    print(f"{args.licence_id}: {_status(result.status)} (revision {result.revision})")
    return 0


def _revoke(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    if args.wind_down_days < 0:
        raise CliError(["--wind-down-days: must be >= 0"], EXIT_INVALID)
    request = licence_service_pb2.RevokeLicenceRequest(
        licence_id=args.licence_id, wind_down_days=args.wind_down_days, reason=args.reason
    )
    _stamp(request.revoked_at, _time(args.at, "--at"))
    result = client.call("RevokeLicence", request).licence
    print(f"{args.licence_id}: {_status(result.status)} (revision {result.revision})")
    return 0


def licence_document(message: Any) -> dict[str, Any]:
    """A licence as the YAML shape ``create`` reads, plus registry facts (status, history)."""
    from residuals.codecs import licences as licence_codec
    from residuals.codecs.timestamps import optional_datetime
    from residuals.licensing import terms

    licence = licence_codec.from_proto(message)
    first, *later = licence.versions
    document: dict[str, Any] = {
        "licence_id": licence.licence_id,
        "talent_id": licence.talent_id,
        "avatar_id": licence.avatar_id,
        "vendor_id": licence.vendor_id,
        "currency": licence.currency,
        "status": _status(message.status),
        "as_of": optional_datetime(message, "as_of").isoformat(),  # type: ignore[union-attr]
        "revision": message.revision,
        "version": 1,
        **terms.complete_spec(first),
        "amendments": [
            {
                "effective_from": v.effective_from.isoformat() if v.effective_from else None,
                "version": v.version,
                **terms.complete_spec(v),
            }
            for v in later
        ],
        "suspensions": [
            {
                "from": optional_datetime(s, "starts_at").isoformat(),  # type: ignore[union-attr]
                "until": (
                    optional_datetime(s, "ends_at").isoformat()  # type: ignore[union-attr]
                    if s.HasField("ends_at")
                    else None
                ),
                "reason": s.reason,
                "automatic": s.automatic,
                "suspended_by": s.suspended_by,
                "reinstated_by": s.reinstated_by or None,
            }
            for s in message.suspensions
        ],
        "recorded": [
            {
                "version": v.version,
                "by": v.recorded_by,
                "at": v.recorded_at.ToDatetime().isoformat() + "Z",
                "note": v.note,
            }
            for v in message.versions
        ],
    }
    return document


def _show(args: argparse.Namespace, client: Client) -> int:
    import yaml
    from google.protobuf.json_format import MessageToJson

    from residuals.v1 import licence_service_pb2

    request = licence_service_pb2.GetLicenceRequest(licence_id=args.licence_id)
    _stamp(request.as_of, _time(args.as_of, "--as-of"))
    got = client.call("GetLicence", request)
    if args.json:
        print(MessageToJson(got.licence))
    else:
        print(yaml.safe_dump(licence_document(got.licence), sort_keys=False), end="")
    return 0


def _list(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_pb2, licence_service_pb2

    request = licence_service_pb2.ListLicencesRequest(
        vendor_id=args.vendor or "",
        talent_id=args.talent or "",
        avatar_id=args.avatar or "",
        statuses=[
            licence_pb2.LicenceStatus.Value(f"LICENCE_STATUS_{s.upper()}") for s in args.status
        ],
        page_size=args.page_size,
    )
    _stamp(request.as_of, _time(args.as_of, "--as-of"))
    rows = [("LICENCE", "TALENT", "AVATAR", "VENDOR", "CUR", "STATUS", "VERSIONS", "REVISION")]
    found: list[Any] = []
    while True:
        page = client.call("ListLicences", request)
        found.extend(page.licences)
        rows += [
            (
                lic.licence_id,
                lic.talent_id,
                lic.avatar_id,
                lic.vendor_id,
                lic.currency_code,
                _status(lic.status),
                str(len(lic.versions)),
                str(lic.revision),
            )
            for lic in page.licences
        ]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        from google.protobuf.json_format import MessageToDict

        from residuals.cli.output import print_json

        print_json({"licences": [MessageToDict(lic) for lic in found]})
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _key_create(args: argparse.Namespace, client: Client) -> int:
    from residuals.licensing import messages
    from residuals.platform.auth import Role
    from residuals.v1 import licence_pb2, licence_service_pb2

    request = licence_service_pb2.CreateApiKeyRequest(
        principal=licence_pb2.Principal(
            principal_id=args.principal_id,
            role=messages.role_to_proto(Role(args.role)),  # type: ignore[arg-type]
            vendor_id=args.vendor,
            talent_id=args.talent,
        ),
        description=args.description,
    )
    result = client.call("CreateApiKey", request)
    print(
        f"# API key {result.api_key.api_key_id} for {result.api_key.principal.principal_id}"
        " (shown once; store it now)",
        file=sys.stderr,
    )
    print(result.secret)
    return 0


def _key_revoke(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    result = client.call(
        "RevokeApiKey", licence_service_pb2.RevokeApiKeyRequest(api_key_id=args.api_key_id)
    )
    print(
        f"API key {result.api_key.api_key_id} revoked at {result.api_key.revoked_at.ToJsonString()}"
    )
    return 0


def _signing_register(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    try:
        public_key = bytes.fromhex(args.public_key)
    except ValueError:
        raise CliError(["--public-key: is not hexadecimal"], EXIT_INVALID) from None
    result = client.call(
        "RegisterSigningKey",
        licence_service_pb2.RegisterSigningKeyRequest(
            vendor_id=args.vendor, public_key=public_key, key_id=args.key_id
        ),
    )
    print(f"signing key {result.key.key_id} registered for vendor {result.key.vendor_id}")
    return 0


def _signing_revoke(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import licence_service_pb2

    request = licence_service_pb2.RevokeSigningKeyRequest(key_id=args.key_id, reason=args.reason)
    _stamp(request.revoked_at, _time(args.at, "--at"))
    result = client.call("RevokeSigningKey", request)
    print(f"signing key {result.key.key_id} revoked at {result.key.revoked_at.ToJsonString()}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    import psycopg

    from residuals.licensing import registry
    from residuals.licensing.errors import RegistryError
    from residuals.platform.auth import Principal, Role
    from residuals.platform.config import ConfigError, PostgresSettings, load

    try:
        settings = load(PostgresSettings)
        with psycopg.connect(settings.dsn, connect_timeout=10) as conn:
            if registry.active_admin_keys(conn) and not args.force:
                raise CliError(
                    [
                        "an admin API key already exists; create more with"
                        " `residuals licences api-key create --role admin`"
                        " (or pass --force)"
                    ]
                )
            principal = Principal(args.principal_id, Role.ADMIN)
            key, plaintext = registry.create_api_key(
                conn, principal, args.description, "bootstrap", registry.utc_now()
            )
    except (ConfigError, RegistryError) as error:
        raise CliError([str(error)]) from None
    except psycopg.Error as error:
        raise CliError([f"database: {str(error).strip()}"]) from None
    print(
        f"# admin API key {key.api_key_id} for principal {args.principal_id}; shown once,"
        " export it as RESIDUALS_API_KEY",
        file=sys.stderr,
    )
    print(plaintext)
    return 0
