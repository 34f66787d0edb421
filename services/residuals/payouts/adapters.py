"""The close's inputs read from the other services' stores, through their own loaders.

* Licences: the licensing service's tables via :func:`residuals.licensing.store.load_licences`
  (``LicenceRecord.to_domain``), so statements price with exactly the stored versions and
  suspension windows.
* Approvals: the approvals granted, via
  :func:`residuals.licensing.directory.granted_approvals`.
* Events: the ledger writer's tables (migration 0003) via :mod:`residuals.ledger.history`:
  a period's own events in arrival order (``load_period_events``) and the late uses the
  ledger recorded as adjustments of a later open period (``load_adjustments``); counts and
  the close mark via :mod:`residuals.ledger.directory`. Marking a period closed takes an
  EXCLUSIVE lock that every ledger batch's ROW SHARE read of the closed periods waits on,
  so the mark waits for in-flight batches and holds new ones until the close commits.
  After it, no write can still land as the closed period's own, and its statement can be
  recomputed exactly forever after.

One stored row cannot break the close for everyone. A licence whose rows do not load (a
value Python cannot hold, terms out of bounds) is left out; a usage row that does not load
(:mod:`residuals.ledger.history`) is a dead letter naming the row. Either way the row goes to
the quarantine table for an operator (consumer ``payouts-close``; usage rows by table and
arrival sequence, licences by table and a stable number derived from the licence id), the
events of a licence left out become ``UNPROCESSABLE`` dead letters naming it, and the
accounting moves every such row to "dead", so accepted = ledgered + held + dead +
duplicates still holds and every other licence and payee closes as usual.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import psycopg

from residuals.domain.approvals import Approval
from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.vocabulary import Kind
from residuals.ledger import directory as ledger
from residuals.ledger.history import Defect, Loaded, load_adjusting, load_period
from residuals.licensing import directory as licensing_directory
from residuals.licensing import store as licensing_store
from residuals.payouts.sources import Conn, EventAccounting, Sources
from residuals.platform.quarantine import Quarantined, describe, store_once
from residuals.platform.setaside import NO_PARTITION

PAGE = 1000
#: The consumer name of rows the close sets aside (quarantine table, metric).
CONSUMER = "payouts-close"
#: What a stored row that is not what the code expects raises: a value Python cannot hold
#: (DataError), JSON of another shape, terms out of bounds (SpecError is a ValueError). Not
#: a lost connection or a timeout: a licence must never be left out of an immutable
#: statement because the database hiccuped (the close fails and is retried instead).
ROW_ERRORS = (psycopg.DataError, LookupError, TypeError, ValueError, ArithmeticError)


class Unusable:
    """Licences the last pass could not load (licence id → why), shared by the adapters
    of one :class:`Sources`: the close and the reconciliation read licences first, then
    events, whose accounting must know which licences were left out."""

    def __init__(self) -> None:
        self.licences: dict[str, str] = {}


def _defect_record(defect: Defect) -> Quarantined:
    return Quarantined(
        consumer=CONSUMER,
        topic=defect.table,
        partition=NO_PARTITION,
        offset=defect.arrival_seq,
        key=f"{defect.vendor_id}/{defect.event_id}".encode(),
        value=defect.payload,
        error=defect.detail,
    )


def licence_number(licence_id: str) -> int:
    """A stable non-negative 63-bit number for a licence id (its quarantine position)."""
    return int.from_bytes(hashlib.sha256(licence_id.encode()).digest()[:8], "big") >> 1


class LicensingLicences:
    """Every licence in the registry, all versions and windows (paged by licence id);
    one that does not load is left out and quarantined (see the module docstring)."""

    def __init__(self, unusable: Unusable | None = None) -> None:
        self.unusable = unusable or Unusable()

    def licences(self, conn: Conn) -> list[Licence]:
        out: list[Licence] = []
        refused: dict[str, str] = {}
        after = ""
        while True:
            ids = licensing_store.licence_ids(conn, after=after, limit=PAGE)
            if not ids:
                break
            out.extend(self._page(conn, ids, refused))
            after = ids[-1]
        self.unusable.licences = refused
        if refused:
            store_once(
                conn,
                [
                    Quarantined(
                        consumer=CONSUMER,
                        topic="licences",
                        partition=NO_PARTITION,
                        offset=licence_number(licence_id),
                        key=licence_id.encode(),
                        value=None,
                        error=f"licence {licence_id} cannot be used: {why}",
                    )
                    for licence_id, why in sorted(refused.items())
                ],
            )
        return out

    def _page(self, conn: Conn, ids: Sequence[str], refused: dict[str, str]) -> list[Licence]:
        """The page's licences; when the page does not load, licence by licence."""
        try:
            with conn.transaction():  # a savepoint: a failed read leaves the close intact
                records = licensing_store.load_licences(conn, ids)
        except ROW_ERRORS:
            records = []
            for licence_id in ids:
                try:
                    with conn.transaction():
                        records.extend(licensing_store.load_licences(conn, [licence_id]))
                except ROW_ERRORS as error:
                    refused[licence_id] = describe(error)
        out: list[Licence] = []
        for record in records:
            try:
                out.append(record.to_domain())
            except ROW_ERRORS as error:
                refused[record.licence_id] = describe(error)
        return out


class LicensingApprovals:
    """The approvals granted, from the licensing service's ``approvals`` table."""

    def approvals(self, conn: Conn, licence_ids: Sequence[str]) -> list[Approval]:
        return licensing_directory.granted_approvals(conn, licence_ids)


class LedgerEvents:
    """The ledger writer's stored events (see the module docstring)."""

    def __init__(self, unusable: Unusable | None = None) -> None:
        self.unusable = unusable or Unusable()

    def _usable(self, conn: Conn, loaded: Loaded) -> Loaded:
        """``loaded`` with the licences left out excluded, its defects quarantined."""
        loaded.exclude_licences(self.unusable.licences)
        if loaded.defects:
            store_once(conn, [_defect_record(d) for d in loaded.defects])
        return loaded

    def mark_closed(self, conn: Conn, period: Period) -> None:
        ledger.mark_closed(conn, period)

    def period_events(
        self, conn: Conn, period: Period, through: Period | None = None
    ) -> Sequence[UsageEvent | Rejection]:
        events: list[UsageEvent | Rejection] = self._usable(conn, load_period(conn, period)).items
        if through is None:
            return events
        late: list[UsageEvent] = []
        later = period.next()
        while later <= through:
            adjusting = self._usable(conn, load_adjusting(conn, later)).items
            late.extend(e for e in adjusting if isinstance(e, UsageEvent))
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

    def part_events(
        self, conn: Conn, period: Period, licence_ids: Sequence[str]
    ) -> Sequence[UsageEvent | Rejection]:
        return self._usable(conn, load_period(conn, period, licence_ids)).items

    def late_periods(self, conn: Conn, period: Period) -> list[str]:
        return ledger.late_periods(conn, period)

    def accounting(self, conn: Conn, period: Period) -> EventAccounting:
        ledgered, held, dead, duplicates = ledger.period_counts(conn, period)
        loaded = self._usable(conn, load_period(conn, period))
        demoted = loaded.demoted
        unusable = sum(demoted.values())
        detail = {"replayed records": len(loaded.items)}
        if unusable:
            detail["rows that cannot be used (dead letters)"] = unusable
        return EventAccounting(
            accepted=len(loaded.items),
            ledgered=ledgered - demoted["ledgered"],
            held=held - demoted["held"],
            dead=dead + unusable,
            duplicates=duplicates - demoted["duplicates"],
            detail=detail,
        )


def stored_sources() -> Sources:
    unusable = Unusable()
    return Sources(
        events=LedgerEvents(unusable),
        licences=LicensingLicences(unusable),
        approvals=LicensingApprovals(),
    )
