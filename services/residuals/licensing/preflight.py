"""Pre-flight ``CheckUse``: the verdict the meter would give a use, asked before rendering.

The answer is :func:`residuals.domain.preflight.check_use`, the meter's own rule run on a
copy of the state, so it cannot drift from the verdict the use will get. The state comes
from memory when the service keeps it (:mod:`residuals.licensing.preflight_cache`, dropped
as PostgreSQL notifies changes), else it is read in ONE round trip: the licence's revision
and tenants, the named approval, and the ledger's running totals (the quota used this
period, the renders that used the approval: :mod:`residuals.ledger.directory`'s
estimates, without uses still in flight). Licences are
decoded once per revision and kept in a bounded LRU, so a check costs one indexed query
and the rule; a licence changed in the registry is seen by the next check.

The query runs on a connection of the serving thread's own, in autocommit (a single
statement is its own snapshot): borrowing from the pool costs a liveness round trip and
a transaction two more, which at a thousand checks a second is most of the budget
(BENCHMARKS.md, "Pre-flight CheckUse"). It is prepared once per connection and run
through libpq itself (``PGconn.exec_prepared``, which waits for the answer without
holding the GIL), its row loaded by psycopg's own loaders: a third of the CPU of a
cursor's ``execute``. A connection that fails is dropped and the call answered
UNAVAILABLE; the next call on that thread connects again.

Callers: the licence's vendor (the usual case), its talent, finance and admin. A tenant
asking about a licence that is not theirs is refused as if it did not exist.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

from residuals.codecs.usage import kind_value, violation_value
from residuals.domain.approvals import Approval
from residuals.domain.bounds import text_problem
from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.metering import LicenceCounters
from residuals.domain.money import ZERO
from residuals.domain.period import Period
from residuals.domain.preflight import Answer, UseVerdict, check_use
from residuals.domain.validation import check_against
from residuals.domain.vocabulary import Kind, Violation
from residuals.ledger.directory import APPROVED_RENDERS_SQL, QUOTA_USED_SQL
from residuals.licensing import access, store
from residuals.licensing.errors import InvalidArgument, NotFound
from residuals.licensing.metrics import PreflightMetrics, default_preflight_metrics
from residuals.licensing.preflight_cache import StateCache
from residuals.platform.auth import Principal
from residuals.platform.errors import timestamp_field
from residuals.platform.postgres import Database
from residuals.v1 import approval_service_pb2

#: Decoded licences kept (each about a kilobyte).
DEFAULT_CACHE_SIZE = 20_000
MAX_QUANTITY = 1_000_000
_USES = (Kind.RENDER, Kind.VIEW, Kind.AD_IMPRESSION)
#: Stand-ins for the identity fields a use has only once it is sent (they decide nothing).
_PREFLIGHT_ID = "preflight"

_STATE_SQL = f"""
SELECT l.revision, l.talent_id, l.vendor_id,
       a.licence_id, a.category, a.status, a.valid_from, a.valid_until, a.max_renders,
       {QUOTA_USED_SQL}, {APPROVED_RENDERS_SQL}
FROM (SELECT 1) AS one
LEFT JOIN licences l ON l.licence_id = %(licence_id)s
LEFT JOIN approvals a ON a.approval_id = %(approval_id)s
"""

#: The state query as each connection prepares it: positional parameters, in this order.
_STATE_NAME = b"residuals_preflight_state"
_STATE_PARAMS = ("licence_id", "approval_id", "period", "kind")


def _positional(sql: str, names: tuple[str, ...]) -> str:
    for number, name in enumerate(names, 1):
        sql = sql.replace(f"%({name})s", f"${number}")
    if "%(" in sql:
        raise ValueError(f"a parameter of the state query is not among {names}")
    return sql


_STATE_PQ = _positional(_STATE_SQL, _STATE_PARAMS).encode()

_VERDICTS = {
    Answer.ALLOW: approval_service_pb2.USE_VERDICT_ALLOW,
    Answer.DENY: approval_service_pb2.USE_VERDICT_DENY,
    Answer.NEEDS_APPROVAL: approval_service_pb2.USE_VERDICT_NEEDS_APPROVAL,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class Preflight:
    """Answers CheckUse over the registry's database (thread-safe)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utc_now,
        cache_size: int = DEFAULT_CACHE_SIZE,
        metrics: PreflightMetrics | None = None,
        cache: StateCache | None = None,
    ) -> None:
        self.db = db
        #: The state in memory (None: every check runs the query).
        self.cache = cache
        counter = (metrics or default_preflight_metrics()).verdicts
        # Labelled once: every series exists from the start (at 0), and a check pays no
        # label lookup.
        self._verdicts = {answer: counter.labels(answer.value) for answer in Answer}
        reads = (metrics or default_preflight_metrics()).state_reads
        self._from_memory, self._from_database = reads.labels("memory"), reads.labels("database")
        self.clock = clock
        self.cache_size = cache_size
        self._licences: OrderedDict[str, tuple[int, Licence]] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._closed = False

    def check_use(
        self, principal: Principal, request: approval_service_pb2.CheckUseRequest
    ) -> approval_service_pb2.CheckUseResponse:
        access.require_reader(principal)
        use = _Use.of(request, self.clock())
        period = str(Period.containing(use.occurred_at))
        key = (use.licence_id, use.approval_id, period, use.kind.value)
        cache = self.cache
        row = cache.get(*key) if cache is not None else None
        session = self._session()
        try:
            if row is None:
                ticket = cache.ticket() if cache is not None else 0
                row = session.state(*key)
                self._from_database.inc()
                if cache is not None:
                    cache.store(ticket, *key, row)
            else:
                self._from_memory.inc()
            revision, talent_id, vendor_id = row[0], row[1], row[2]
            if revision is None or not access.sees_licence(
                principal, vendor_id=vendor_id, talent_id=talent_id
            ):
                if access.may_read_everything(principal):
                    raise NotFound(f"licence {use.licence_id} does not exist")
                raise access.not_theirs(principal, use.licence_id)
            licence = self._licence(session.conn, use.licence_id, int(revision))
        except psycopg.OperationalError:
            self._drop(session)
            raise
        event = use.event(licence.vendor_id)
        refused = check_against(event, licence)
        if refused is not None:
            raise InvalidArgument.field(_refused_field(refused.detail), refused.detail)
        counters = LicenceCounters(period=period, quota_used={use.kind.value: int(row[9] or 0)})
        approvals: dict[str, Approval] = {}
        if use.approval_id and row[5] == "approved":
            approvals[use.approval_id] = Approval(
                use.approval_id, row[3], row[4], row[6], row[7], int(row[8])
            )
            counters.approval_renders[use.approval_id] = int(row[10] or 0)
        verdict = check_use(event, licence, counters, approvals)
        self._verdicts[verdict.answer].inc()
        return _response(verdict, licence, event, approvals)

    def forget_approval(self, approval_id: str) -> None:
        """Drop an approval this process just decided from the cache (its notification
        follows; this makes the decider's own next check see the decision)."""
        if self.cache is not None:
            self.cache.forget_approval(approval_id)

    def _session(self) -> _Session:
        """The calling thread's connection (made on first use)."""
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None and not session.conn.closed:
            return session
        if self._closed:
            raise psycopg.OperationalError("the pre-flight check is closed")
        conn = self.db.connect(autocommit=True)
        try:
            session = _Session(conn)
        except BaseException:
            conn.close()
            raise
        self._local.session = session
        with self._lock:
            self._connections.append(conn)
        return session

    def _drop(self, session: _Session) -> None:
        """Forget a connection that failed (the thread's next call connects again)."""
        if getattr(self._local, "session", None) is session:
            self._local.session = None
        with self._lock:
            if session.conn in self._connections:
                self._connections.remove(session.conn)
        session.conn.close()

    def close(self) -> None:
        """Close every thread's connection (the service is stopping)."""
        if self.cache is not None:
            self.cache.close()
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _licence(self, conn: store.Conn, licence_id: str, revision: int) -> Licence:
        """The licence at ``revision``, decoded once per revision."""
        cached = self._licences.get(licence_id)
        if cached is not None and cached[0] == revision:
            with self._lock:
                if licence_id in self._licences:
                    self._licences.move_to_end(licence_id)
            return cached[1]
        with conn.transaction():  # versions and suspensions from one snapshot
            record = store.load_licence(conn, licence_id)
        if record is None:  # deleted meanwhile: licensing never deletes, but be exact
            raise NotFound(f"licence {licence_id} does not exist")
        licence = record.to_domain()
        with self._lock:
            self._licences[licence_id] = (revision, licence)
            self._licences.move_to_end(licence_id)
            while len(self._licences) > self.cache_size:
                self._licences.popitem(last=False)
        return licence


class _Session:
    """One thread's connection, with the state query prepared on it."""

    __slots__ = ("conn", "pgconn", "rows")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        #: psycopg's loaders for the query's columns (the same values a cursor returns).
        self.rows = Transformer(conn)
        self._check(self.pgconn.prepare(_STATE_NAME, _STATE_PQ), pq.ExecStatus.COMMAND_OK)

    def state(self, licence_id: str, approval_id: str, period: str, kind: str) -> tuple[Any, ...]:
        """The state row (one: the LEFT JOINs keep it)."""
        params = [licence_id.encode(), approval_id.encode(), period.encode(), kind.encode()]
        result = self.pgconn.exec_prepared(_STATE_NAME, params)
        self._check(result, pq.ExecStatus.TUPLES_OK)
        self.rows.set_pgresult(result)
        return self.rows.load_row(0, tuple)

    def _check(self, result: pq.abc.PGresult, expected: pq.ExecStatus) -> None:
        """Raise what psycopg would: OperationalError when the connection is lost (the
        caller drops it), else the error of the result's SQLSTATE."""
        if result.status == expected:
            return
        if self.pgconn.status != pq.ConnStatus.OK:
            message = self.pgconn.get_error_message(self.conn.info.encoding)
            raise psycopg.OperationalError(f"the connection was lost: {message}")
        raise psycopg.errors.error_from_result(result, encoding=self.conn.info.encoding)


class _Use(NamedTuple):
    """The request's use, checked field by field (every error names its field)."""

    kind: Kind
    licence_id: str
    avatar_id: str
    category: str
    territory: str
    channel: str
    approval_id: str
    occurred_at: datetime
    quantity: int

    @classmethod
    def of(cls, request: approval_service_pb2.CheckUseRequest, now: datetime) -> _Use:
        kind = _USE_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument.field(
                "kind", "must be USAGE_KIND_RENDER, USAGE_KIND_VIEW or USAGE_KIND_AD_IMPRESSION"
            )
        required = ["licence_id", "avatar_id", "category", "territory"]
        if kind is not Kind.RENDER:
            required.append("channel")
        values = {f: _text(f, getattr(request, f), required=f in required) for f in _TEXTS}
        quantity = request.quantity or 1
        if quantity > MAX_QUANTITY:
            raise InvalidArgument.field("quantity", f"must be at most {MAX_QUANTITY:,}")
        occurred_at = timestamp_field(request, "occurred_at") or now
        return cls(kind=kind, occurred_at=occurred_at, quantity=quantity, **values)

    def event(self, vendor_id: str) -> UsageEvent:
        """The usage event the vendor would send, as the meter reads it (every field was
        checked as :func:`~residuals.domain.events.parse_event` checks it; built directly,
        which at a thousand checks a second saves a tenth of the budget)."""
        return UsageEvent(
            event_id=_PREFLIGHT_ID,
            vendor_id=vendor_id,
            kind=self.kind,
            occurred_at=self.occurred_at,
            licence_id=self.licence_id,
            avatar_id=self.avatar_id,
            render_id=_PREFLIGHT_ID,
            category=self.category,
            territory=self.territory,
            channel=self.channel or None,
            quantity=self.quantity,
            # The floor prices an impression; revenue decides no verdict.
            ad_revenue=ZERO if self.kind is Kind.AD_IMPRESSION else None,
            approval_id=self.approval_id or None,
        )


#: The wire's usage kinds a check may ask about.
_USE_KINDS = {kind_value(kind.value): kind for kind in _USES}
_TEXTS = ("licence_id", "avatar_id", "category", "territory", "channel", "approval_id")


def _text(field: str, value: str, *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidArgument.field(field, "is required")
        return ""
    problem = text_problem(value, 128)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return value


def _refused_field(detail: str) -> str:
    """The request field a licence check refers to (vendor mismatches cannot happen: the
    use is checked as the licence's own vendor's)."""
    return "avatar_id" if detail.startswith("avatar") else "(use)"


def _response(
    verdict: UseVerdict, licence: Licence, event: UsageEvent, approvals: Mapping[str, Approval]
) -> approval_service_pb2.CheckUseResponse:
    response = approval_service_pb2.CheckUseResponse(
        verdict=_VERDICTS[verdict.answer],
        licence_version=licence.version_at(event.occurred_at).version,
        explanation=_explain(verdict, event, approvals),
    )
    if verdict.violation is not None:
        response.violation = violation_value(verdict.violation)
    if verdict.quota_remaining is not None:
        response.quota_remaining = verdict.quota_remaining
    if verdict.approved_renders_remaining is not None:
        response.approved_renders_remaining = verdict.approved_renders_remaining
    return response


def _explain(verdict: UseVerdict, event: UsageEvent, approvals: Mapping[str, Approval]) -> str:
    """The verdict in words, for logs and people (clients act on the enums)."""
    if verdict.answer is Answer.ALLOW:
        return "billed under the licence"
    if verdict.answer is Answer.NEEDS_APPROVAL:
        approval = approvals.get(event.approval_id or "")
        if not event.approval_id:
            return f"category {event.category} needs the talent's approval (RequestApproval)"
        if approval is None:
            return f"{event.approval_id} is not an approval granted for this licence"
        if not approval.covers(event):
            return f"{event.approval_id} does not cover this licence, category and time"
        return f"{event.approval_id} has no renders left"
    assert verdict.violation is not None
    if verdict.violation is Violation.QUOTA_EXCEEDED:
        return f"{event.kind.value.lower()} quota of the period used up: units past it are held"
    return f"held as {verdict.violation.value}: outside the licence's scope"
