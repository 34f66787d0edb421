"""Statement documents: a payee's part of a closed statement as people read it (issue 17).

PDF and HTML (names, statement lines, held use and what would release it, breakdowns by
avatar, vendor, kind, territory and channel, misuse, carried balances, payouts, daily
charts, the hashes and how to verify them), CSV (one row per line, held line, breakdown
cell and payout) and JSON (the part itself, canonical). Callers use :func:`render_statement`
and :func:`client_talent_ids`; the modules are the pure model (:mod:`.model`, fed by
:mod:`.tally`), the database adapter (:mod:`.gather`), the charts (:mod:`.charts`) and the
formats (:mod:`.formats`, templates in ``templates/``).
"""

from residuals.payouts.documents.api import (
    CONTENT_TYPES,
    DocumentFormat,
    RenderedDocument,
    document_filename,
    render_statement,
)
from residuals.payouts.documents.gather import NoStatementPart, client_talent_ids

__all__ = [
    "CONTENT_TYPES",
    "DocumentFormat",
    "NoStatementPart",
    "RenderedDocument",
    "client_talent_ids",
    "document_filename",
    "render_statement",
]
