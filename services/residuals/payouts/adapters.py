"""The close's inputs read from the other services' stores, through their own loaders.

* Licences: the licensing service's tables via :func:`residuals.licensing.store.load_licences`
  (``LicenceRecord.to_domain``), so statements price with exactly the stored versions and
  suspension windows.
* Events: the ledger writer's tables (migration 0003) via :mod:`residuals.ledger.replay`:
  a period's own events in arrival order (``load_period_events``) and the late uses the
  ledger recorded as adjustments of a later open period (``load_adjustments``). Closing a
  period inserts it into the ledger's ``closed_periods`` under an EXCLUSIVE table lock:
  every ledger batch reads that table ``FOR SHARE`` (a ROW SHARE lock held to commit), so
  the lock waits for in-flight batches and holds new ones until the close commits. After
  it, no write can still land as the closed period's own, and its statement can be
  recomputed exactly forever after.
"""

from __future__ import annotations

from collections.abc import Sequence

from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.vocabulary import Kind
from residuals.ledger.replay import load_adjustments, load_period_events
from residuals.licensing import store as licensing_store
from residuals.payouts.sources import Conn, EventAccounting, Sources

PAGE = 1000


class LicensingLicences:
    """Every licence in the registry, all versions and windows (paged by licence id)."""

    def licences(self, conn: Conn) -> list[Licence]:
        out: list[Licence] = []
        after = ""
        while True:
            ids = licensing_store.licence_ids(conn, after=after, limit=PAGE)
            if not ids:
                return out
            out.extend(r.to_domain() for r in licensing_store.load_licences(conn, ids))
            after = ids[-1]


class LedgerEvents:
    """The ledger writer's stored events (see the module docstring)."""

    def mark_closed(self, conn: Conn, period: Period) -> None:
        conn.execute("LOCK TABLE closed_periods IN EXCLUSIVE MODE")
        conn.execute(
            "INSERT INTO closed_periods (period) VALUES (%s) ON CONFLICT DO NOTHING",
            (str(period),),
        )

    def period_events(
        self, conn: Conn, period: Period, through: Period | None = None
    ) -> Sequence[UsageEvent | Rejection]:
        events: list[UsageEvent | Rejection] = list(load_period_events(conn, period))
        if through is None:
            return events
        late: list[UsageEvent] = []
        later = period.next()
        while later <= through:
            late.extend(load_adjustments(conn, later))
            later = later.next()
        own = {
            e.identity
            for e in [*events, *late]
            if isinstance(e, UsageEvent) and e.kind is not Kind.RETRACTION
            and Period.containing(e.occurred_at) == period
        }  # fmt: skip
        for event in late:
            if event.kind is Kind.RETRACTION:
                if (event.vendor_id, event.original_event_id or "") in own:
                    events.append(event)
            elif Period.containing(event.occurred_at) == period:
                events.append(event)
        return events

    def late_periods(self, conn: Conn, period: Period) -> list[str]:
        rows = conn.execute(
            "SELECT period FROM usage_events WHERE adjustment_period = %(p)s"
            " UNION SELECT period FROM usage_repeats WHERE adjustment_period = %(p)s",
            {"p": str(period)},
        ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def accounting(self, conn: Conn, period: Period) -> EventAccounting:
        row = conn.execute(
            "SELECT"
            " (SELECT count(*) FROM usage_events WHERE period = %(p)s"
            "   AND adjustment_period IS NULL AND outcome IS DISTINCT FROM 'HELD'),"
            " (SELECT count(*) FROM usage_events WHERE period = %(p)s"
            "   AND adjustment_period IS NULL AND outcome = 'HELD'),"
            " (SELECT count(*) FROM dead_letters WHERE period = %(p)s),"
            " (SELECT count(*) FROM usage_repeats WHERE period = %(p)s"
            "   AND adjustment_period IS NULL)",
            {"p": str(period)},
        ).fetchone()
        assert row is not None
        ledgered, held, dead, duplicates = (int(x) for x in row)
        accepted = len(load_period_events(conn, period))
        return EventAccounting(
            accepted=accepted,
            ledgered=ledgered,
            held=held,
            dead=dead,
            duplicates=duplicates,
            detail={"replayed records": accepted},
        )


def stored_sources() -> Sources:
    return Sources(events=LedgerEvents(), licences=LicensingLicences())
