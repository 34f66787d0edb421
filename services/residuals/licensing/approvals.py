"""Approvals' use cases (review before use, docs/ROYALTY-RULES.md §5a): request, approve,
deny, get, list; the watch streams are :mod:`residuals.licensing.approval_watch`.

Like the licence registry's changes, each change runs in one transaction that locks what
it changes (the licence for a request, the approval for a decision), validates against the
licence version in force, writes the row (revision bumped, a sequence taken under the
outbox lock so sequences follow commit order), appends the full ``Approval`` record to the
outbox for ``residuals.approvals.v1`` and writes an audit_log row. Every operation checks
the caller against :mod:`residuals.licensing.access` first.

Requests are idempotent on (vendor, request_id) and decisions on their content: repeating
the same request or decision returns the stored state unchanged, anything else that
conflicts is ALREADY_EXISTS (a request) or FAILED_PRECONDITION (a decision is final).

The pure checks (:func:`use_description`, :func:`requested_window`,
:func:`decision_window`, :func:`category_problem`...) take ``now`` and the skew as
arguments so they are unit-tested without a database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from residuals.codecs.approvals import STATUS_NAMES
from residuals.domain.bounds import text_problem
from residuals.domain.licence_spec import SpecError
from residuals.domain.licences import LicenceVersion
from residuals.licensing import access, approval_store, audit, backdating, rules, store
from residuals.licensing.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from residuals.licensing.registry import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    _identifier,
    _trace_headers,
    utc_now,
)
from residuals.licensing.snapshot import LicenceRecord
from residuals.platform import topics
from residuals.platform.auth import Principal
from residuals.platform.errors import enum_filters, timestamp_field
from residuals.platform.postgres import Database
from residuals.v1 import approval_service_pb2, approvals_pb2

#: Longest brief (UseDescription.brief), in characters.
MAX_BRIEF_CHARS = 2000
#: Most renders a request may ask for or an approval grant.
MAX_RENDERS = 1_000_000
#: Most territories or channels a use description lists (informative fields).
MAX_LISTED = 300
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
APPROVAL_ID_PREFIX = "apr-"


def new_approval_id(now: datetime) -> str:
    """``apr-`` + 26 Crockford base-32 characters: 48 bits of milliseconds then 80 random
    bits (ULID layout), so ids sort roughly by creation and cannot be guessed."""
    value = (int(now.timestamp() * 1000) & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return APPROVAL_ID_PREFIX + "".join(reversed(chars))


# --- pure checks --------------------------------------------------------------------------


def use_description(use: approvals_pb2.UseDescription, path: str = "use") -> dict[str, Any]:
    """The use as stored (stripped, deduplicated lists); INVALID_ARGUMENT names the field."""
    problems: list[FieldViolation] = []
    brief = use.brief.strip()
    if (problem := text_problem(brief, MAX_BRIEF_CHARS)) is not None:
        problems.append(FieldViolation(f"{path}.brief", problem))
    for name in ("script_sha256", "media_sha256"):
        value = getattr(use, name)
        if value and not SHA256.match(value):
            problems.append(
                FieldViolation(f"{path}.{name}", "must be empty or 64 lower-case hex characters")
            )
    for name, known, what in (
        ("territories", rules.COUNTRIES | {rules.WORLDWIDE}, "an ISO 3166-1 alpha-2 code"),
        ("channels", rules.CHANNELS, "a known channel"),
    ):
        values = list(getattr(use, name))
        if len(values) > MAX_LISTED:
            problems.append(FieldViolation(f"{path}.{name}", f"lists more than {MAX_LISTED}"))
            continue
        for i, value in enumerate(values):
            if value not in known:
                problems.append(
                    FieldViolation(f"{path}.{name}[{i}]", f"{_echo(value)} is not {what}")
                )
    if problems:
        raise InvalidArgument(problems)
    return {
        "brief": brief,
        "script_sha256": use.script_sha256,
        "media_sha256": use.media_sha256,
        "territories": sorted(set(use.territories)),
        "channels": sorted(set(use.channels)),
    }


def renders(value: int, field: str, default: int) -> int:
    """0 means ``default``; at most :data:`MAX_RENDERS`."""
    if value > MAX_RENDERS:
        raise InvalidArgument.field(field, f"is {value:,}; at most {MAX_RENDERS:,}")
    return value or default


def category(value: str) -> str:
    """A category the registry knows (vendors report exactly these strings)."""
    value = value.strip()
    if not value:
        raise InvalidArgument.field("category", "is required")
    if value not in rules.CATEGORIES:
        raise InvalidArgument.field(
            "category",
            f"{_echo(value)} is not a known category ({', '.join(sorted(rules.CATEGORIES))})",
        )
    return value


def category_problem(version: LicenceVersion, category: str) -> str | None:
    """Why a use in ``category`` cannot be approved under ``version`` (None: it can)."""
    scope = version.scope
    if category in scope.categories_forbidden:
        return f"category {category} is forbidden by the licence"
    if category not in scope.categories_allowed and "*" not in scope.categories_allowed:
        return f"category {category} is not licensed"
    if category not in scope.approval_required:
        return f"category {category} needs no approval: the licence allows it outright"
    return None


@dataclass(frozen=True)
class Window:
    starts: datetime
    ends: datetime | None  # exclusive; None: open


def requested_window(
    requested_from: datetime | None,
    requested_until: datetime | None,
    now: datetime,
    skew: timedelta,
) -> Window:
    """The window a vendor asks for: from now at the earliest (clients' clocks may lag by
    ``skew``; earlier than that is asking after the fact), ending after it starts and
    after now."""
    starts = now if requested_from is None else requested_from
    if starts < now - skew:
        raise InvalidArgument.field(
            "requested_from",
            f"is {backdating.describe_span(now - starts)} in the past: approval is asked"
            " before the use, not after the fact",
        )
    starts = max(starts, now)
    if requested_until is not None:
        if requested_from is not None and requested_until <= requested_from:
            raise InvalidArgument.field("requested_until", "is not after requested_from")
        if requested_until <= now:
            raise InvalidArgument.field("requested_until", "is in the past")
    return Window(starts, requested_until)


def decision_window(
    valid_from: datetime | None,
    valid_until: datetime | None,
    requested: Window,
    now: datetime,
    skew: timedelta,
) -> Window:
    """The approved window: the request's by default, never starting before the decision
    (within ``skew`` it is clamped to now), ending after it starts and after now."""
    if valid_from is None:
        starts = max(requested.starts, now)
    else:
        if valid_from < now - skew:
            raise InvalidArgument.field(
                "valid_from",
                f"is before the decision ({backdating.describe_span(now - valid_from)} ago):"
                " an approval cannot cover uses already made",
            )
        starts = max(valid_from, now)
    ends = requested.ends if valid_until is None else valid_until
    field = "valid_until"
    if ends is not None:
        if ends <= now:
            raise InvalidArgument.field(
                field,
                "is in the past"
                + ("" if valid_until is not None else " (the requested window has ended)"),
            )
        if ends <= starts:
            raise InvalidArgument.field(field, "is not after valid_from")
    return Window(starts, ends)


def _echo(value: str) -> str:
    from residuals.platform.errors import echo

    return echo(value)


def _note(field: str, text: str, *, required: bool) -> str:
    text = audit.reason_text(field, text)
    if required and not text:
        raise InvalidArgument.field(field, "is required (shown to the vendor)")
    return text


# --- use cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    approvals: list[approvals_pb2.Approval]
    next_page_token: str


class Approvals:
    """Approvals' use cases over a :class:`Database` (the licensing service owns them)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utc_now,
        backdate_skew: timedelta = backdating.DEFAULT_SKEW,
    ) -> None:
        self.db = db
        self.clock = clock
        self.backdate_skew = backdate_skew

    # --- request ------------------------------------------------------------------------

    def request_approval(
        self, principal: Principal, request: approval_service_pb2.RequestApprovalRequest
    ) -> approvals_pb2.Approval:
        access.require_requester(principal)
        request_id = _identifier("request_id", request.request_id)
        licence_id = _identifier("licence_id", request.licence_id)
        wanted = category(request.category)
        use = use_description(request.use)
        renders_requested = renders(request.renders_requested, "renders_requested", 1)
        requested_from = timestamp_field(request, "requested_from")
        requested_until = timestamp_field(request, "requested_until")
        now = self.clock()
        with self.db.connection() as conn:
            record = self._licence(conn, principal, licence_id, lock=True)
            existing = approval_store.by_request(conn, record.identity.vendor_id, request_id)
            if existing is not None:
                same = (
                    existing["licence_id"] == licence_id
                    and existing["category"] == wanted
                    and existing["use_description"] == use
                    and existing["renders_requested"] == renders_requested
                    and existing["requested_until"] == requested_until
                    and existing["requested_from"]
                    == max(requested_from or existing["requested_at"], existing["requested_at"])
                )
                if same:
                    return approval_store.to_message(existing)  # a retried request
                raise AlreadyExists(
                    f"request_id: {request_id} was used for another request"
                    f" ({existing['approval_id']}); use a new request_id"
                )
            window = requested_window(requested_from, requested_until, now, self.backdate_skew)
            self._check_category(record, wanted, window.starts, "category")
            row = approval_store.insert(
                conn,
                {
                    "approval_id": new_approval_id(now),
                    "licence_id": licence_id,
                    "talent_id": record.identity.talent_id,
                    "vendor_id": record.identity.vendor_id,
                    "request_id": request_id,
                    "category": wanted,
                    "use_description": use,
                    "renders_requested": renders_requested,
                    "requested_from": window.starts,
                    "requested_until": window.ends,
                    "requested_at": now,
                    "requested_by": principal.principal_id,
                },
            )
            return self._publish(
                conn, principal, row, audit.Action.REQUEST_APPROVAL, window.starts, now, ""
            )

    # --- decisions ------------------------------------------------------------------------

    def approve_use(
        self, principal: Principal, request: approval_service_pb2.ApproveUseRequest
    ) -> approvals_pb2.Approval:
        access.require_decider(principal, "approve uses")
        approval_id = _identifier("approval_id", request.approval_id)
        valid_from = timestamp_field(request, "valid_from")
        valid_until = timestamp_field(request, "valid_until")
        renders(request.max_renders, "max_renders", 1)  # bounds only; 0 = as requested
        note = _note("note", request.note, required=False)
        now = self.clock()
        with self.db.connection() as conn:
            row = self._decidable(conn, principal, approval_id)
            if row["status"] == "approved":
                if self._same_approval(row, request, valid_from, valid_until, note):
                    return approval_store.to_message(row)  # a repeated decision
                raise _decided(row)
            if row["status"] == "denied":
                raise _decided(row)
            window = decision_window(
                valid_from,
                valid_until,
                Window(row["requested_from"], row["requested_until"]),
                now,
                self.backdate_skew,
            )
            max_renders = renders(request.max_renders, "max_renders", row["renders_requested"])
            record = store.load_licence(conn, row["licence_id"])
            assert record is not None
            self._check_category(record, row["category"], window.starts, "approval_id")
            row = approval_store.decide(
                conn,
                approval_id,
                {
                    "status": "approved",
                    "valid_from": window.starts,
                    "valid_until": window.ends,
                    "max_renders": max_renders,
                    "reason": note,
                    "decided_at": now,
                    "decided_by": principal.principal_id,
                },
            )
            return self._publish(
                conn, principal, row, audit.Action.APPROVE_USE, window.starts, now, note
            )

    def deny_use(
        self, principal: Principal, request: approval_service_pb2.DenyUseRequest
    ) -> approvals_pb2.Approval:
        access.require_decider(principal, "deny uses")
        approval_id = _identifier("approval_id", request.approval_id)
        reason = _note("reason", request.reason, required=True)
        now = self.clock()
        with self.db.connection() as conn:
            row = self._decidable(conn, principal, approval_id)
            if row["status"] == "denied" and row["reason"] == reason:
                return approval_store.to_message(row)  # a repeated decision
            if row["status"] != "pending":
                raise _decided(row)
            row = approval_store.decide(
                conn,
                approval_id,
                {
                    "status": "denied",
                    "reason": reason,
                    "decided_at": now,
                    "decided_by": principal.principal_id,
                },
            )
            return self._publish(conn, principal, row, audit.Action.DENY_USE, now, now, reason)

    @staticmethod
    def _same_approval(
        row: approval_store.Row,
        request: approval_service_pb2.ApproveUseRequest,
        valid_from: datetime | None,
        valid_until: datetime | None,
        note: str,
    ) -> bool:
        """Whether every field the request sets equals what was approved (a valid_from
        clamped to the decision time counts as equal)."""
        decided_at = row["decided_at"]
        return (
            (valid_from is None or max(valid_from, decided_at) == row["valid_from"])
            and (valid_until is None or valid_until == row["valid_until"])
            and (not request.max_renders or request.max_renders == row["max_renders"])
            and (not note or note == row["reason"])
        )

    # --- reads ----------------------------------------------------------------------------

    def get_approval(self, principal: Principal, approval_id: str) -> approvals_pb2.Approval:
        access.require_approval_reader(principal)
        approval_id = _identifier("approval_id", approval_id)
        with self.db.connection() as conn:
            row = self._visible(conn, principal, approval_id)
        return approval_store.to_message(row)

    def list_approvals(
        self, principal: Principal, request: approval_service_pb2.ListApprovalsRequest
    ) -> Page:
        scope = self.scope(principal, request.licence_id)
        statuses = enum_filters("statuses", list(request.statuses), STATUS_NAMES)
        scope = approval_store.Scope(
            scope.vendor_id,
            scope.talent_id,
            scope.licence_id,
            tuple(sorted({STATUS_NAMES[s] for s in statuses})),
        )
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"is at most {MAX_PAGE_SIZE}")
        size = request.page_size or DEFAULT_PAGE_SIZE
        fingerprint = hashlib.sha256(
            json.dumps(scope.params(), sort_keys=True).encode()
        ).hexdigest()[:16]
        after = decode_page_token(request.page_token, fingerprint)
        with self.db.connection() as conn:
            rows = approval_store.page(conn, scope, after=after, limit=size + 1)
        found = rows[:size]
        token = encode_page_token(found[-1]["sequence"], fingerprint) if len(rows) > size else ""
        return Page([approval_store.to_message(r) for r in found], token)

    def scope(self, principal: Principal, licence_id: str) -> approval_store.Scope:
        """What the caller may read, narrowed to ``licence_id`` when given: a tenant naming
        another tenant's licence (or none) is refused, as for licences."""
        vendor_id, talent_id = access.approval_scope(principal)
        licence_id = licence_id.strip()
        if licence_id:
            licence_id = _identifier("licence_id", licence_id)
            if vendor_id or talent_id:
                with self.db.connection() as conn:
                    self._licence(conn, principal, licence_id, lock=False)
        return approval_store.Scope(vendor_id, talent_id, licence_id)

    # --- helpers --------------------------------------------------------------------------

    def _licence(
        self, conn: store.Conn, principal: Principal, licence_id: str, *, lock: bool
    ) -> LicenceRecord:
        """The licence if the principal may see it; refusals do not reveal existence."""
        record = store.load_licence(conn, licence_id, lock=lock)
        if record is None or not access.sees_licence(
            principal, vendor_id=record.identity.vendor_id, talent_id=record.identity.talent_id
        ):
            if access.may_read_everything(principal):
                raise NotFound(f"licence {licence_id} does not exist")
            raise access.not_theirs(principal, licence_id)
        return record

    def _visible(
        self, conn: store.Conn, principal: Principal, approval_id: str, *, lock: bool = False
    ) -> approval_store.Row:
        row = approval_store.load(conn, approval_id, lock=lock)
        if row is None or not access.sees_licence(
            principal, vendor_id=row["vendor_id"], talent_id=row["talent_id"]
        ):
            if access.may_read_everything(principal):
                raise NotFound(f"approval {approval_id} does not exist")
            raise access.approval_not_theirs(principal, approval_id)
        return row

    def _decidable(
        self, conn: store.Conn, principal: Principal, approval_id: str
    ) -> approval_store.Row:
        """The approval, locked, if the principal may decide it: admin any, a talent those
        of its licences (vendors and finance were refused by the role gate)."""
        return self._visible(conn, principal, approval_id, lock=True)

    def _check_category(self, record: LicenceRecord, wanted: str, at: datetime, field: str) -> None:
        try:
            licence = record.to_domain()
        except SpecError as error:  # a stored row the domain refuses: say so, never crash
            raise FailedPrecondition(
                f"licence {record.licence_id} cannot be read: {error}", field="licence_id"
            ) from None
        version = licence.version_at(at)
        problem = category_problem(version, wanted)
        if problem is not None:
            raise FailedPrecondition(
                f"{problem} (licence {record.licence_id} version {version.version},"
                f" in force at {at.isoformat()})",
                field=field,
                subject=wanted,
            )

    def _publish(
        self,
        conn: store.Conn,
        principal: Principal,
        row: approval_store.Row,
        action: audit.Action,
        effective_at: datetime,
        now: datetime,
        reason: str,
    ) -> approvals_pb2.Approval:
        """Outbox record and audit row of the change, in its transaction."""
        message = approval_store.to_message(row)
        store.enqueue(
            conn,
            topics.APPROVALS.name,
            message.approval_id,
            message.SerializeToString(),
            _trace_headers(),
        )
        audit.record(
            conn,
            principal,
            action,
            effective_at=effective_at,
            now=now,
            reason=reason,
            licence_id=message.licence_id,
            vendor_id=message.vendor_id,
            detail={
                "approval_id": message.approval_id,
                "request_id": message.request_id,
                "category": message.category,
                "status": row["status"],
                "revision": message.revision,
            },
        )
        return message


def _decided(row: approval_store.Row) -> FailedPrecondition:
    by = f" by {row['decided_by']} at {row['decided_at'].isoformat()}"
    return FailedPrecondition(
        f"approval {row['approval_id']} is already {row['status']}{by}; a decision is final",
        field="approval_id",
        subject=row["approval_id"],
    )


# --- page tokens ------------------------------------------------------------------------------


def encode_page_token(after: int, fingerprint: str) -> str:
    """Opaque: the last sequence sent, bound to the listing's filters."""
    raw = json.dumps({"after": after, "query": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> int:
    """The sequence to continue after; INVALID_ARGUMENT for a foreign or damaged token."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, query = data["after"], str(data["query"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument.field("page_token", "is not a token this service issued") from None
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63:
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    if query != fingerprint:
        raise InvalidArgument.field(
            "page_token", "belongs to a listing with different filters; start without a token"
        )
    return after
