"""``residuals approvals ...``: review vendors' requests for approval from a terminal.

For the talent, or an agent holding a talent API key for them, who does not write code:

    residuals approvals list                       # pending requests of my licences
    residuals approvals approve apr-01J... --max-renders 2 --note "final cut only"
    residuals approvals deny apr-01J... --reason "not this advertiser"

It talks to the licensing service's ApprovalService exactly as ``residuals licences``
talks to LicenceService (``RESIDUALS_API_KEY``, ``RESIDUALS_LICENSING_ADDR``, the same TLS
options). Refusals print as ``field: message`` or ``CODE: message`` lines with exit 2 for
invalid input and 1 for every other failure.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from residuals.cli.licences import (
    EXIT_INVALID,
    Client,
    CliError,
    _handler,
    _stamp,
    _time,
    add_connection_options,
)

#: Longest brief shown in the table (the full text is in --json).
BRIEF_CHARS = 40


def _stub() -> Any:
    from residuals.v1 import approval_service_pb2_grpc

    return approval_service_pb2_grpc.ApprovalServiceStub


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "approvals",
        help="review requests for approval of uses (talent, or an agent with a talent key)",
        description="List, approve and deny vendors' requests to use a likeness in an"
        " approval-required category. Environment: RESIDUALS_API_KEY (required: a talent or"
        " admin key), RESIDUALS_LICENSING_ADDR.",
    )
    add_connection_options(parser)
    sub = parser.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="pending requests of your licences (--all: any status)")
    listing.add_argument("--all", action="store_true", help="decided requests too")
    listing.add_argument("--licence", default="", help="only this licence's requests")
    listing.add_argument("--json", action="store_true", help="one Approval as JSON per line")
    listing.set_defaults(handler=_handler(_list, stub_class=_stub))

    approve = sub.add_parser("approve", help="approve a pending request")
    approve.add_argument("approval_id")
    approve.add_argument("--from", dest="valid_from", help="ISO 8601 (default: as requested)")
    approve.add_argument("--until", dest="valid_until", help="ISO 8601 (default: as requested)")
    approve.add_argument(
        "--max-renders", type=int, default=0, help="renders approved (default: as requested)"
    )
    approve.add_argument("--note", default="", help="a note to the vendor")
    approve.set_defaults(handler=_handler(_approve, stub_class=_stub))

    deny = sub.add_parser("deny", help="deny a pending request")
    deny.add_argument("approval_id")
    deny.add_argument("--reason", required=True, help="why (shown to the vendor)")
    deny.set_defaults(handler=_handler(_deny, stub_class=_stub))


def _status(value: int) -> str:
    from residuals.codecs.approvals import STATUS_NAMES
    from residuals.v1 import approvals_pb2

    return STATUS_NAMES.get(approvals_pb2.ApprovalStatus.ValueType(value), "unknown")


def _when(stamp: Any, present: bool) -> str:
    if not present:
        return "open"
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M"))


def _window(approval: Any) -> str:
    if approval.HasField("valid_from"):
        return (
            f"{_when(approval.valid_from, True)} .. "
            f"{_when(approval.valid_until, approval.HasField('valid_until'))}"
        )
    return (
        f"{_when(approval.requested_from, approval.HasField('requested_from'))} .. "
        f"{_when(approval.requested_until, approval.HasField('requested_until'))}"
    )


def _brief(text: str) -> str:
    """One line, escaped and cut (a brief is the vendor's text: never raw to a terminal)."""
    from residuals.domain.bounds import printable

    return printable(" ".join(text.split()), BRIEF_CHARS)


def _renders(approval: Any) -> str:
    if approval.max_renders:
        return f"{approval.max_renders}/{approval.renders_requested}"
    return str(approval.renders_requested)


def _list(args: argparse.Namespace, client: Client) -> int:
    from google.protobuf import json_format

    from residuals.v1 import approval_service_pb2, approvals_pb2

    request = approval_service_pb2.ListApprovalsRequest(
        licence_id=args.licence,
        statuses=[] if args.all else [approvals_pb2.APPROVAL_STATUS_PENDING],
    )
    found = []
    while True:
        page = client.call("ListApprovals", request)
        found += list(page.approvals)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        for approval in found:
            print(json.dumps(json_format.MessageToDict(approval), sort_keys=True))
        return 0
    if not found:
        print("no pending requests" if not args.all else "no requests")
        return 0
    rows = [("ID", "LICENCE", "VENDOR", "CATEGORY", "BRIEF", "RENDERS", "WINDOW (UTC)", "STATUS")]
    rows += [
        (
            a.approval_id,
            a.licence_id,
            a.vendor_id,
            a.category,
            _brief(a.use.brief),
            _renders(a),
            _window(a),
            _status(a.status),
        )
        for a in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show(approval: Any) -> None:
    print(
        f"{approval.approval_id} {_status(approval.status)}: licence {approval.licence_id},"
        f" {approval.category}, renders {_renders(approval)}, window {_window(approval)} UTC"
    )


def _approve(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import approval_service_pb2

    if not 0 <= args.max_renders < 2**32:
        raise CliError(["--max-renders: must be at least 1 (0: as requested)"], EXIT_INVALID)
    request = approval_service_pb2.ApproveUseRequest(
        approval_id=args.approval_id, max_renders=args.max_renders, note=args.note
    )
    _stamp(request.valid_from, _time(args.valid_from, "--from"))
    _stamp(request.valid_until, _time(args.valid_until, "--until"))
    _show(client.call("ApproveUse", request).approval)
    return 0


def _deny(args: argparse.Namespace, client: Client) -> int:
    from residuals.v1 import approval_service_pb2

    request = approval_service_pb2.DenyUseRequest(approval_id=args.approval_id, reason=args.reason)
    _show(client.call("DenyUse", request).approval)
    return 0
