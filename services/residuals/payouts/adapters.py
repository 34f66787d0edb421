"""The close's inputs read from the other services' stores (one converter each).

* Licences: the licensing service's tables through its own loader
  (:func:`residuals.licensing.store.load_licences` → ``LicenceRecord.to_domain``), so the
  statement prices with exactly the stored versions and suspension windows.
* Events: the ledger writer's tables (migration 0003) through its own replay loader, in
  arrival order (``arrival_seq``), with the ledger writer's outcome counts for the
  accepted = ledgered + held + dead + duplicates check.
"""

from __future__ import annotations

import importlib
from typing import Any

from residuals.domain.licences import Licence
from residuals.licensing import store as licensing_store
from residuals.payouts.sources import Conn, EventSource, Sources

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


def ledger_events() -> EventSource:
    """The ledger writer's event source (``residuals.ledger.replay``)."""
    module: Any = importlib.import_module("residuals.ledger.replay")
    source: EventSource = module.LedgerEventSource()
    return source


def stored_sources() -> Sources:
    return Sources(events=ledger_events(), licences=LicensingLicences())
