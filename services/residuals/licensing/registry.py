"""The licence registry's operations: authorise, validate, write, publish, in one transaction.

Each change runs in a single PostgreSQL transaction that (1) locks the licence row, (2)
writes the change (a new version row, a suspension window...), (3) rebuilds the licence's
full state from what the transaction wrote and (4) appends it to the outbox. Either all of
it commits or none, so the topic can never show a change the database does not have, nor
miss one it has. Every operation takes the acting :class:`Principal` and checks it against
:mod:`residuals.licensing.access` first, so no caller (gRPC, CLI) can forget to.

Validation problems come back as :class:`InvalidArgument` with the request's field paths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg.rows import dict_row

from residuals.codecs import licences as licence_codec
from residuals.domain.bounds import text_problem
from residuals.domain.licence_spec import SpecError
from residuals.domain.licences import Licence
from residuals.licensing import access, audit, backdating, messages, rules, store, terms
from residuals.licensing.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from residuals.licensing.snapshot import LicenceRecord, Status, SuspensionRow, to_message
from residuals.platform import topics
from residuals.platform.auth import (
    PermissionDenied,
    Principal,
    Role,
    format_api_key,
    generate_api_key,
    parse_api_key,
)
from residuals.platform.errors import timestamp_field
from residuals.platform.postgres import Database
from residuals.platform.telemetry import inject_kafka_headers
from residuals.v1 import licence_pb2, licence_service_pb2

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Longest reason or note a change may carry (printable text only).
MAX_REASON_CHARS = audit.MAX_REASON_CHARS


def utc_now() -> datetime:
    return datetime.now(UTC)


def _trace_headers() -> dict[str, str]:
    """The current trace context, stored with the outbox row so the record continues it."""
    return {k: v.decode("utf-8") for k, v in inject_kafka_headers()}


def _spec_error(
    error: SpecError, *, new_version_index: int, payees: Sequence[str]
) -> InvalidArgument:
    path = terms.request_path(error.path, new_version_index=new_version_index, payees=payees)
    return InvalidArgument.field(path, error.message)


def _request_terms(message: licence_pb2.LicenceVersion) -> terms.Spec:
    try:
        return licence_codec.request_spec(message)
    except SpecError as error:
        raise InvalidArgument.field(f"terms.{error.path}", error.message) from None


def _filter_id(path: str, value: str) -> str:
    """An optional id filter: empty (any) or a valid identifier (never echoed raw)."""
    value = value.strip()
    return _identifier(path, value) if value else ""


def _identifier(path: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument.field(path, "is required")
    try:
        rules.check_identifier(path, value)
    except SpecError as error:
        raise InvalidArgument.field(error.path, error.message) from None
    return value


def _ts(message: Any, field: str, default: datetime) -> datetime:
    value = timestamp_field(message, field)
    return default if value is None else value


_reason = audit.reason_text


@dataclass(frozen=True)
class Page:
    licences: list[licence_pb2.Licence]
    next_page_token: str


class Registry:
    """The registry's use cases over a :class:`Database`.

    ``on_api_key_revoked(key_id)`` lets the process drop the key from its authentication
    cache at once (other processes see the revocation within their cache TTL).
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_api_key_revoked: Callable[[str], None] | None = None,
        backdate_skew: timedelta = backdating.DEFAULT_SKEW,
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_api_key_revoked = on_api_key_revoked
        self.backdate_skew = backdate_skew

    # --- helpers ---------------------------------------------------------------------

    def _backdating(
        self,
        principal: Principal,
        field: str,
        effective: datetime,
        now: datetime,
        *,
        reason_field: str,
        reason: str,
    ) -> bool:
        """Refuse backdating the principal may not do; True when the change is audited."""
        return backdating.check(
            principal,
            backdating.Timing(field, effective, now),
            skew=self.backdate_skew,
            reason_field=reason_field,
            reason=reason,
        )

    def _publish_licence(
        self, conn: store.Conn, licence_id: str, now: datetime
    ) -> licence_pb2.Licence:
        """Rebuild the full state from this transaction's rows and append it to the outbox."""
        record = store.load_licence(conn, licence_id)
        assert record is not None
        message = to_message(record, now)
        store.enqueue(
            conn, topics.LICENCES.name, licence_id, message.SerializeToString(), _trace_headers()
        )
        return message

    def _locked(self, conn: store.Conn, principal: Principal, licence_id: str) -> LicenceRecord:
        """The licence, locked, if the principal may see it; refusals do not reveal existence."""
        record = store.load_licence(conn, licence_id, lock=True)
        if record is None or not access.sees_licence(
            principal, vendor_id=record.identity.vendor_id, talent_id=record.identity.talent_id
        ):
            if access.may_read_everything(principal):
                raise NotFound(f"licence {licence_id} does not exist")
            raise access.not_theirs(principal, licence_id)
        return record

    def _check_parties(
        self,
        conn: store.Conn,
        identity: terms.Identity,
        payees: Sequence[str],
        payee_field: Callable[[str], str],
    ) -> None:
        talent_of_avatar = store.avatar_talent(conn, identity.avatar_id)
        if not store.existing(conn, "talent", [identity.talent_id]):
            raise FailedPrecondition(
                f"talent_id: talent {identity.talent_id} is not registered (CreateTalent)",
                field="talent_id",
                subject=identity.talent_id,
            )
        if talent_of_avatar is None:
            raise FailedPrecondition(
                f"avatar_id: avatar {identity.avatar_id} is not registered (CreateAvatar)",
                field="avatar_id",
                subject=identity.avatar_id,
            )
        if talent_of_avatar != identity.talent_id:
            raise FailedPrecondition(
                f"avatar_id: avatar {identity.avatar_id} belongs to talent {talent_of_avatar},"
                f" not {identity.talent_id}",
                field="avatar_id",
                subject=identity.avatar_id,
            )
        if not store.existing(conn, "vendor", [identity.vendor_id]):
            raise FailedPrecondition(
                f"vendor_id: vendor {identity.vendor_id} is not registered (CreateVendor)",
                field="vendor_id",
                subject=identity.vendor_id,
            )
        known = store.existing(conn, "payee", payees)
        for payee in payees:
            if payee not in known:
                path = payee_field(payee)
                raise FailedPrecondition(
                    f"{path}: payee {payee} is not registered (CreatePayee)",
                    field=path,
                    subject=payee,
                )

    # --- licences ----------------------------------------------------------------------

    def create_licence(
        self, principal: Principal, request: licence_service_pb2.CreateLicenceRequest
    ) -> licence_pb2.Licence:
        access.require_admin(principal, "create licences")
        identity = terms.Identity(
            request.licence_id,
            request.talent_id,
            request.avatar_id,
            request.vendor_id,
            request.currency_code,
        )
        payees = [s.payee_id for s in request.terms.splits]
        spec = terms.apply_mask(terms.blank_spec(), _request_terms(request.terms), [])
        try:
            licence = terms.validate(identity, [(None, spec)])
        except SpecError as error:
            raise _spec_error(error, new_version_index=0, payees=payees) from None
        identity = terms.Identity(
            licence.licence_id,
            licence.talent_id,
            licence.avatar_id,
            licence.vendor_id,
            licence.currency,
        )
        first = licence.versions[0]
        canonical = terms.complete_spec(first)
        now = self.clock()
        with self.db.connection() as conn:
            self._check_parties(
                conn,
                identity,
                [p for p, _ in first.splits],
                lambda p: f"terms.splits[{payees.index(p)}].payee_id" if p in payees else "terms",
            )
            if not store.insert_licence(conn, identity, principal.principal_id, now):
                existing = store.load_licence(conn, identity.licence_id, lock=True)
                assert existing is not None
                if existing.identity == identity and existing.to_domain().versions[0] == first:
                    return to_message(existing, now)  # a retried create: nothing changes
                raise AlreadyExists(
                    f"licence {identity.licence_id} already exists with different terms;"
                    " amend it instead"
                )
            store.insert_version(
                conn, identity.licence_id, 1, None, canonical, actor=principal.principal_id, now=now
            )
            return self._publish_licence(conn, identity.licence_id, now)

    def amend_licence(
        self, principal: Principal, request: licence_service_pb2.AmendLicenceRequest
    ) -> licence_pb2.Licence:
        access.require_admin(principal, "amend licences")
        licence_id = _identifier("licence_id", request.licence_id)
        effective = timestamp_field(request, "effective_from")
        if effective is None:
            raise InvalidArgument.field("effective_from", "is required")
        update = _request_terms(request.terms)
        payees = [s.payee_id for s in request.terms.splits]
        now = self.clock()
        with self.db.connection() as conn:
            record = self._locked(conn, principal, licence_id)
            if request.expected_revision and request.expected_revision != record.revision:
                raise Aborted(
                    f"licence {licence_id} is at revision {record.revision}, not"
                    f" {request.expected_revision}; re-read it and retry"
                )
            try:
                spec = terms.apply_mask(
                    record.latest().spec, update, list(request.update_mask.paths)
                )
            except SpecError as error:
                raise InvalidArgument.field(error.path, error.message) from None
            licence = self._validate_next(record, effective, spec, payees)
            previous, new = licence.versions[-2], licence.versions[-1]
            if previous.revoked_at is not None and new.revoked_at != previous.revoked_at:
                raise FailedPrecondition(
                    f"terms.revoked_at: licence {licence_id} was revoked at"
                    f" {previous.revoked_at.isoformat()}; a revocation cannot be undone or moved",
                    field="terms.revoked_at",
                )
            self._append(conn, principal, record, effective, licence, payees, now, request.note)
            return self._publish_licence(conn, licence_id, now)

    def _validate_next(
        self,
        record: LicenceRecord,
        effective: datetime,
        spec: terms.Spec,
        payees: Sequence[str],
        *,
        effective_field: str = "effective_from",
    ) -> Licence:
        versions = [(v.effective_from, v.spec) for v in record.versions]
        try:
            return terms.validate(record.identity, [*versions, (effective, spec)])
        except SpecError as error:
            invalid = _spec_error(error, new_version_index=len(versions), payees=payees)
            violation = invalid.violations[0]
            if violation.field == "effective_from":
                last = record.latest().effective_from
                raise InvalidArgument.field(
                    effective_field,
                    f"{violation.description}: must be after version {record.latest().version}'s"
                    f" effective_from ({last.isoformat() if last else 'the start'})",
                ) from None
            raise invalid from None

    def _append(
        self,
        conn: store.Conn,
        principal: Principal,
        record: LicenceRecord,
        effective: datetime,
        licence: Licence,
        payees: Sequence[str],
        now: datetime,
        note: str,
    ) -> None:
        new = licence.versions[-1]
        self._check_parties(
            conn,
            record.identity,
            [p for p, _ in new.splits],
            lambda p: f"terms.splits[{payees.index(p)}].payee_id" if p in payees else "terms",
        )
        store.insert_version(
            conn,
            record.licence_id,
            new.version,
            effective,
            terms.complete_spec(new),
            actor=principal.principal_id,
            now=now,
            note=note,
        )
        store.bump_revision(conn, record.licence_id, now)

    def suspend_licence(
        self, principal: Principal, request: licence_service_pb2.SuspendLicenceRequest
    ) -> licence_pb2.Licence:
        access.require_suspend(principal, automatic=request.automatic)
        licence_id = _identifier("licence_id", request.licence_id)
        violations = []
        reason = request.reason.strip()
        if not reason:
            violations.append(FieldViolation("reason", "is required (why is it suspended?)"))
        elif (problem := text_problem(reason, MAX_REASON_CHARS)) is not None:
            violations.append(FieldViolation("reason", problem))
        alert_id = request.alert_id.strip()
        if request.automatic and not alert_id:
            violations.append(FieldViolation("alert_id", "is required for an automatic suspension"))
        elif alert_id and (problem := text_problem(alert_id)) is not None:
            violations.append(FieldViolation("alert_id", problem))
        now = self.clock()
        starts = _ts(request, "starts_at", now)
        ends = timestamp_field(request, "ends_at")
        if ends is not None and ends <= starts:
            violations.append(FieldViolation("ends_at", "must be after starts_at"))
        if violations:
            raise InvalidArgument(violations)
        audited = self._backdating(
            principal, "starts_at", starts, now, reason_field="reason", reason=reason
        )
        with self.db.connection() as conn:
            record = self._locked(conn, principal, licence_id)
            access.check_talent_owns(principal, licence_id, record.identity.talent_id)
            open_windows = [s for s in record.suspensions if s.ends_at is None]
            if request.automatic and (
                open_windows
                or any(s.automatic and s.alert_id == alert_id for s in record.suspensions)
                or not record.to_domain().version_at(starts).auto_suspend_on_critical
            ):
                # Already suspended, this alert already did, or the licence opts out of
                # automatic suspension (auto_suspend_on_critical false in the version in
                # force): nothing to record.
                return to_message(record, now)
            if open_windows and not request.automatic:
                window = open_windows[0]
                raise FailedPrecondition(
                    f"licence {licence_id} is already suspended until reinstated (suspension"
                    f" {window.suspension_id} since {window.starts_at.isoformat()})",
                    subject=window.suspension_id,
                )
            suspension_id = f"SUS-{uuid.uuid4().hex[:16]}"
            store.insert_suspension(
                conn,
                licence_id,
                SuspensionRow(
                    suspension_id=suspension_id,
                    starts_at=starts,
                    ends_at=ends,
                    reason=reason,
                    automatic=request.automatic,
                    alert_id=alert_id or None,
                    suspended_by=principal.principal_id,
                ),
                now,
            )
            if audited:
                detail = {
                    "suspension_id": suspension_id,
                    "ends_at": ends.isoformat() if ends else None,
                    "automatic": request.automatic,
                }
                action = audit.Action.SUSPEND_LICENCE
                _audit(conn, principal, record, action, starts, now, reason, detail)
            store.bump_revision(conn, licence_id, now)
            return self._publish_licence(conn, licence_id, now)

    def reinstate_licence(
        self, principal: Principal, request: licence_service_pb2.ReinstateLicenceRequest
    ) -> licence_pb2.Licence:
        access.require_talent_or_admin(principal, "reinstate licences")
        licence_id = _identifier("licence_id", request.licence_id)
        note = _reason("note", request.note)
        now = self.clock()
        at = _ts(request, "at", now)
        audited = self._backdating(principal, "at", at, now, reason_field="note", reason=note)
        with self.db.connection() as conn:
            record = self._locked(conn, principal, licence_id)
            access.check_talent_owns(principal, licence_id, record.identity.talent_id)
            closed = store.close_suspensions(
                conn, licence_id, at, actor=principal.principal_id, now=now, note=note
            )
            if not closed:
                raise FailedPrecondition(
                    f"at: licence {licence_id} is not suspended at {at.isoformat()}", field="at"
                )
            if audited:
                detail = {"suspension_ids": closed}
                _audit(
                    conn, principal, record, audit.Action.REINSTATE_LICENCE, at, now, note, detail
                )
            store.bump_revision(conn, licence_id, now)
            return self._publish_licence(conn, licence_id, now)

    def revoke_licence(
        self, principal: Principal, request: licence_service_pb2.RevokeLicenceRequest
    ) -> licence_pb2.Licence:
        access.require_talent_or_admin(principal, "revoke licences")
        licence_id = _identifier("licence_id", request.licence_id)
        reason = _reason("reason", request.reason)
        now = self.clock()
        revoked_at = _ts(request, "revoked_at", now)
        audited = self._backdating(
            principal, "revoked_at", revoked_at, now, reason_field="reason", reason=reason
        )
        with self.db.connection() as conn:
            record = self._locked(conn, principal, licence_id)
            access.check_talent_owns(principal, licence_id, record.identity.talent_id)
            latest = record.latest()
            if latest.spec["revoked_at"] is not None:
                raise FailedPrecondition(
                    f"licence {licence_id} was already revoked at {latest.spec['revoked_at']}",
                    field="licence_id",
                )
            spec = {
                **latest.spec,
                "revoked_at": revoked_at,
                "wind_down_days": request.wind_down_days,
            }
            licence = self._validate_next(
                record, revoked_at, spec, [], effective_field="revoked_at"
            )
            self._append(conn, principal, record, revoked_at, licence, [], now, reason or "revoked")
            if audited:
                detail = {
                    "version": licence.versions[-1].version,
                    "wind_down_days": request.wind_down_days,
                }
                action = audit.Action.REVOKE_LICENCE
                _audit(conn, principal, record, action, revoked_at, now, reason, detail)
            return self._publish_licence(conn, licence_id, now)

    def get_licence(
        self, principal: Principal, request: licence_service_pb2.GetLicenceRequest
    ) -> licence_service_pb2.GetLicenceResponse:
        access.require_reader(principal)
        licence_id = _identifier("licence_id", request.licence_id)
        as_of = _ts(request, "as_of", self.clock())
        with self.db.connection() as conn:
            record = store.load_licence(conn, licence_id)
        if record is None or not access.sees_licence(
            principal, vendor_id=record.identity.vendor_id, talent_id=record.identity.talent_id
        ):
            if access.may_read_everything(principal):
                raise NotFound(f"licence {licence_id} does not exist")
            raise access.not_theirs(principal, licence_id)
        licence = record.to_domain()
        message = to_message(record, as_of, licence)
        in_force = licence.versions.index(licence.version_at(as_of))
        return licence_service_pb2.GetLicenceResponse(
            licence=message, in_force=message.versions[in_force]
        )

    def list_licences(
        self, principal: Principal, request: licence_service_pb2.ListLicencesRequest
    ) -> Page:
        access.require_reader(principal)
        vendor_id, talent_id = (
            _filter_id("vendor_id", request.vendor_id),
            _filter_id("talent_id", request.talent_id),
        )
        if principal.role is Role.VENDOR:
            if vendor_id and vendor_id != principal.vendor_id:
                raise PermissionDenied(
                    f"{principal.describe()} may not list licences of vendor {vendor_id}:"
                    " a vendor sees only its own"
                )
            vendor_id = principal.vendor_id or ""
        if principal.role is Role.TALENT:
            if talent_id and talent_id != principal.talent_id:
                raise PermissionDenied(
                    f"{principal.describe()} may not list licences of talent {talent_id}:"
                    " a talent sees only their own"
                )
            talent_id = principal.talent_id or ""
        statuses: set[Status] = set()
        for i, value in enumerate(request.statuses):
            if value == licence_pb2.LICENCE_STATUS_UNSPECIFIED or (
                value not in licence_pb2.LicenceStatus.values()
            ):
                raise InvalidArgument.field(f"statuses[{i}]", f"{value} is not a licence status")
            statuses.add(Status.from_proto(value))
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        as_of_given = timestamp_field(request, "as_of")
        as_of = as_of_given or self.clock()
        avatar_id = _filter_id("avatar_id", request.avatar_id)
        query = {
            "talent": talent_id,
            "avatar": avatar_id,
            "vendor": vendor_id,
            "statuses": sorted(statuses),
            "as_of": as_of_given.isoformat() if as_of_given else "",
        }
        fingerprint = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
        after = _decode_token(request.page_token, fingerprint)
        found: list[licence_pb2.Licence] = []
        batch = min(max(page_size + 1, 50), MAX_PAGE_SIZE + 1)
        with self.db.connection() as conn:
            while len(found) <= page_size:
                ids = store.licence_ids(
                    conn,
                    talent_id=talent_id,
                    avatar_id=avatar_id,
                    vendor_id=vendor_id,
                    after=after,
                    limit=batch,
                )
                for record in store.load_licences(conn, ids):
                    message = to_message(record, as_of)
                    if not statuses or Status.from_proto(message.status) in statuses:
                        found.append(message)
                if len(ids) < batch:
                    break
                after = ids[-1]
        page = found[:page_size]
        token = _encode_token(page[-1].licence_id, fingerprint) if len(found) > page_size else ""
        return Page(page, token)

    # --- signing keys ------------------------------------------------------------------

    def register_signing_key(
        self, principal: Principal, request: licence_service_pb2.RegisterSigningKeyRequest
    ) -> licence_pb2.VendorSigningKey:
        vendor_id = request.vendor_id.strip()
        if not vendor_id and principal.role is Role.VENDOR:
            vendor_id = principal.vendor_id or ""
        vendor_id = _identifier("vendor_id", vendor_id)
        access.require_vendor_or_admin(principal, vendor_id, "register signing keys")
        public_key = bytes(request.public_key)
        if len(public_key) != 32:
            raise InvalidArgument.field(
                "public_key",
                f"must be a raw 32-byte Ed25519 public key, got {len(public_key)} bytes",
            )
        try:
            Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise InvalidArgument.field("public_key", "is not a valid Ed25519 public key") from None
        key_id = (
            _identifier("key_id", request.key_id)
            if request.key_id.strip()
            else f"vk-{secrets.token_hex(8)}"
        )
        now = self.clock()
        with self.db.connection() as conn:
            if not store.existing(conn, "vendor", [vendor_id]):
                raise FailedPrecondition(
                    f"vendor_id: vendor {vendor_id} is not registered", field="vendor_id"
                )
            cur = conn.cursor(row_factory=dict_row)
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"signing-key:{key_id}",))
            row = cur.execute(
                "SELECT * FROM vendor_signing_keys WHERE key_id = %s OR public_key = %s"
                " ORDER BY key_id = %s DESC",
                (key_id, public_key, key_id),
            ).fetchone()
            if row is not None:
                if (
                    row["key_id"] == key_id
                    and row["vendor_id"] == vendor_id
                    and bytes(row["public_key"]) == public_key
                ):
                    return messages.signing_key(row)  # a retried registration
                if row["key_id"] == key_id:
                    raise AlreadyExists(f"signing key {key_id} exists with another public key")
                raise AlreadyExists(
                    f"public_key: already registered as signing key {row['key_id']}"
                )
            row = cur.execute(
                "INSERT INTO vendor_signing_keys (key_id, vendor_id, public_key, created_at,"
                " created_by) VALUES (%s, %s, %s, %s, %s) RETURNING *",
                (key_id, vendor_id, public_key, now, principal.principal_id),
            ).fetchone()
            assert row is not None
            return self._publish_key(conn, row)

    def revoke_signing_key(
        self, principal: Principal, request: licence_service_pb2.RevokeSigningKeyRequest
    ) -> licence_pb2.VendorSigningKey:
        if principal.role not in (Role.ADMIN, Role.VENDOR):
            raise PermissionDenied(
                f"{principal.describe()} may not revoke signing keys:"
                " only admin or the vendor itself may"
            )
        key_id = _identifier("key_id", request.key_id)
        reason = _reason("reason", request.reason)
        now = self.clock()
        revoked_at = _ts(request, "revoked_at", now)
        audited = self._backdating(
            principal, "revoked_at", revoked_at, now, reason_field="reason", reason=reason
        )
        with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(
                "SELECT * FROM vendor_signing_keys WHERE key_id = %s FOR UPDATE", (key_id,)
            ).fetchone()
            if row is None or (
                principal.role is Role.VENDOR and row["vendor_id"] != principal.vendor_id
            ):
                if principal.role is Role.ADMIN:
                    raise NotFound(f"signing key {key_id} does not exist")
                raise PermissionDenied(
                    f"{principal.describe()} may not revoke signing key {key_id}:"
                    f" it is not a key of vendor {principal.vendor_id}"
                )
            if row["revoked_at"] is not None:
                return messages.signing_key(row)
            row = cur.execute(
                "UPDATE vendor_signing_keys SET revoked_at = %s, revoked_by = %s"
                " WHERE key_id = %s RETURNING *",
                (revoked_at, principal.principal_id, key_id),
            ).fetchone()
            assert row is not None
            if audited:
                audit.record(
                    conn,
                    principal,
                    audit.Action.REVOKE_SIGNING_KEY,
                    effective_at=revoked_at,
                    now=now,
                    reason=reason,
                    key_id=key_id,
                    vendor_id=row["vendor_id"],
                )
            return self._publish_key(conn, row)

    def _publish_key(self, conn: store.Conn, row: dict[str, Any]) -> licence_pb2.VendorSigningKey:
        message = messages.signing_key(row)
        store.enqueue(
            conn,
            topics.SIGNING_KEYS.name,
            message.key_id,
            message.SerializeToString(),
            _trace_headers(),
        )
        return message

    # --- API keys ------------------------------------------------------------------------

    def create_api_key(
        self, principal: Principal, request: licence_service_pb2.CreateApiKeyRequest
    ) -> tuple[licence_pb2.ApiKey, str]:
        access.require_admin(principal, "manage API keys")
        target = _target_principal(request.principal)
        with self.db.connection() as conn:
            return create_api_key(
                conn, target, request.description.strip(), principal.principal_id, self.clock()
            )

    def revoke_api_key(
        self, principal: Principal, request: licence_service_pb2.RevokeApiKeyRequest
    ) -> licence_pb2.ApiKey:
        access.require_admin(principal, "manage API keys")
        key_id = request.api_key_id.strip()
        parsed = parse_api_key(key_id)
        if parsed is not None:  # a whole key pasted: use its id, never log the secret
            key_id = parsed[0]
        key_id = _identifier("api_key_id", key_id)
        now = self.clock()
        with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s),"
                " revoked_by = coalesce(revoked_by, %s) WHERE key_id = %s RETURNING *",
                (now, principal.principal_id, key_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"API key {key_id} does not exist")
            owner = _load_principal(conn, row["principal_id"])
        if self.on_api_key_revoked is not None:
            self.on_api_key_revoked(key_id)
        return messages.api_key(row, owner)

    # --- parties -------------------------------------------------------------------------

    def create_talent(self, principal: Principal, talent: licence_pb2.Talent) -> licence_pb2.Talent:
        access.require_admin(principal, "register talent")
        values = {
            "talent_id": _identifier("talent.talent_id", talent.talent_id),
            "display_name": talent.display_name.strip(),
        }
        row = self._create_party(principal, "talent", values)
        return messages.talent(row)

    def create_avatar(self, principal: Principal, avatar: licence_pb2.Avatar) -> licence_pb2.Avatar:
        access.require_admin(principal, "register avatars")
        values = {
            "avatar_id": _identifier("avatar.avatar_id", avatar.avatar_id),
            "talent_id": _identifier("avatar.talent_id", avatar.talent_id),
            "display_name": avatar.display_name.strip(),
        }
        row = self._create_party(principal, "avatar", values, talents=[values["talent_id"]])
        return messages.avatar(row)

    def create_vendor(self, principal: Principal, vendor: licence_pb2.Vendor) -> licence_pb2.Vendor:
        access.require_admin(principal, "register vendors")
        values = {
            "vendor_id": _identifier("vendor.vendor_id", vendor.vendor_id),
            "display_name": vendor.display_name.strip(),
        }
        return messages.vendor(self._create_party(principal, "vendor", values))

    def create_payee(self, principal: Principal, payee: licence_pb2.Payee) -> licence_pb2.Payee:
        access.require_admin(principal, "register payees")
        if payee.kind not in messages.PAYEE_KINDS:
            raise InvalidArgument.field("payee.kind", f"{payee.kind} is not a payee kind")
        talent_ids = sorted(
            {_identifier(f"payee.talent_ids[{i}]", t) for i, t in enumerate(payee.talent_ids)}
        )
        values: dict[str, Any] = {
            "payee_id": _identifier("payee.payee_id", payee.payee_id),
            "kind": messages.PAYEE_KINDS[payee.kind],
            "display_name": payee.display_name.strip(),
            "talent_ids": talent_ids,
        }
        return messages.payee(self._create_party(principal, "payee", values, talents=talent_ids))

    def _create_party(
        self,
        principal: Principal,
        kind: str,
        values: dict[str, Any],
        *,
        talents: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Insert, or return the existing row when identical (ALREADY_EXISTS otherwise)."""
        _, column = store.PARTY_TABLES[kind]
        party_id = values[column]
        with self.db.connection() as conn:
            known = store.existing(conn, "talent", talents)
            for i, talent_id in enumerate(talents):
                if talent_id not in known:
                    path = f"{kind}.talent_id" if kind == "avatar" else f"{kind}.talent_ids[{i}]"
                    raise FailedPrecondition(
                        f"{path}: talent {talent_id} is not registered (CreateTalent)", field=path
                    )
            inserted = store.insert_party(
                conn,
                kind,
                {**values, "created_at": self.clock(), "created_by": principal.principal_id},
            )
            row = store.get_party(conn, kind, party_id)
        assert row is not None
        if not inserted:
            different = [k for k, v in values.items() if row.get(k) != v]
            if different:
                raise AlreadyExists(
                    f"{kind} {party_id} already exists with a different {', '.join(different)}"
                )
        return row


def _audit(
    conn: store.Conn,
    principal: Principal,
    record: LicenceRecord,
    action: audit.Action,
    effective_at: datetime,
    now: datetime,
    reason: str,
    detail: dict[str, Any],
) -> None:
    """Audit a change of ``record`` (in the change's transaction)."""
    audit.record(
        conn,
        principal,
        action,
        effective_at=effective_at,
        now=now,
        reason=reason,
        licence_id=record.licence_id,
        vendor_id=record.identity.vendor_id,
        detail=detail,
    )


# --- API keys (also used by `residuals licences bootstrap-admin`) --------------------------


def _target_principal(message: licence_pb2.Principal) -> Principal:
    role = messages.role_from_proto(message.role)
    if role is None:
        raise InvalidArgument.field(
            "principal.role",
            "is required: ROLE_VENDOR, ROLE_TALENT, ROLE_FINANCE, ROLE_ADMIN or ROLE_SUSPENDER",
        )
    vendor_id, talent_id = message.vendor_id.strip(), message.talent_id.strip()
    if role is Role.VENDOR:
        vendor_id = _identifier("principal.vendor_id", vendor_id)
    elif vendor_id:
        raise InvalidArgument.field("principal.vendor_id", "only ROLE_VENDOR acts for a vendor")
    if role is Role.TALENT:
        talent_id = _identifier("principal.talent_id", talent_id)
    elif talent_id:
        raise InvalidArgument.field("principal.talent_id", "only ROLE_TALENT acts for a talent")
    principal_id = message.principal_id.strip()
    if principal_id:
        principal_id = _identifier("principal.principal_id", principal_id)
    else:
        principal_id = f"{role}-{vendor_id or talent_id or secrets.token_hex(4)}"
    return Principal(principal_id, role, vendor_id or None, talent_id or None)


def _load_principal(conn: store.Conn, principal_id: str) -> Principal:
    row = conn.execute(
        "SELECT role, vendor_id, talent_id FROM principals WHERE principal_id = %s",
        (principal_id,),
    ).fetchone()
    assert row is not None
    return Principal(principal_id, Role(row[0]), row[1], row[2])


def create_api_key(
    conn: store.Conn, target: Principal, description: str, actor: str, now: datetime
) -> tuple[licence_pb2.ApiKey, str]:
    """Ensure the principal, add a key for it; returns the key and its plaintext (once)."""
    if target.vendor_id and not store.existing(conn, "vendor", [target.vendor_id]):
        raise FailedPrecondition(
            f"principal.vendor_id: vendor {target.vendor_id} is not registered",
            field="principal.vendor_id",
        )
    if target.talent_id and not store.existing(conn, "talent", [target.talent_id]):
        raise FailedPrecondition(
            f"principal.talent_id: talent {target.talent_id} is not registered",
            field="principal.talent_id",
        )
    conn.execute(
        "INSERT INTO principals (principal_id, role, vendor_id, talent_id, created_at, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (principal_id) DO NOTHING",
        (target.principal_id, str(target.role), target.vendor_id, target.talent_id, now, actor),
    )
    stored = _load_principal(conn, target.principal_id)
    if stored != target:
        raise AlreadyExists(
            f"principal {target.principal_id} already exists as {stored.describe()}"
        )
    key_id, plaintext, secret_hash = generate_api_key()
    prefix = plaintext[: len(format_api_key(key_id, "")) + 4]
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "INSERT INTO api_keys (key_id, principal_id, secret_sha256, prefix, description,"
        " created_at, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (key_id, target.principal_id, secret_hash, prefix, description, now, actor),
    ).fetchone()
    assert row is not None
    return messages.api_key(row, target), plaintext


def active_admin_keys(conn: store.Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM api_keys k JOIN principals p USING (principal_id)"
        " WHERE p.role = 'admin' AND k.revoked_at IS NULL"
    ).fetchone()
    return int(row[0]) if row else 0


# --- page tokens ---------------------------------------------------------------------------


def _encode_token(after: str, fingerprint: str) -> str:
    raw = json.dumps({"after": after, "query": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> str:
    """The licence id to continue after; INVALID_ARGUMENT for a foreign or damaged token."""
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, query = str(data["after"]), str(data["query"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument.field("page_token", "is not a token this service issued") from None
    if query != fingerprint:
        raise InvalidArgument.field(
            "page_token", "belongs to a listing with different filters; start without a token"
        )
    if not rules.IDENTIFIER.fullmatch(after):
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    return after
