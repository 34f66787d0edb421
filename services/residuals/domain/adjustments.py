"""Adjustment lines: how a closed period is corrected without editing it.

A closed statement is immutable. When late events (or retractions of a closed period's
events) arrive, the closed period is computed again with them included, by the same
:func:`~residuals.domain.statement.compute_statement`, and the *difference* is posted, item
by item, as signed adjustment lines in the next open period. Each line names the period
and the line it corrects (:attr:`AdjustmentLine.ref`), so talent can audit it.

Everything here works on statement documents (the docs/ROYALTY-RULES.md §10 shape) so that the
stored statement (JSON in PostgreSQL) and a fresh computation are compared in one form:

* :func:`statement_items` flattens a document into keyed items (priced lines, held lines,
  settlement totals, allocations);
* :func:`with_adjustments` lays earlier adjustments over a stored statement (the baseline
  a further correction is measured against, so nothing is ever posted twice);
* :func:`diff_items` gives the signed lines that turn the baseline into the restatement.

The differences are exact: items are rounded amounts (minor units) on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from residuals.domain.money import ZERO, fmt

#: Item sections in statement order.
SECTIONS: tuple[str, ...] = ("line", "held", "settlement", "allocation")

#: Settlement totals of one licence that adjustments carry (docs/ROYALTY-RULES.md §8).
SETTLEMENT_FIELDS: tuple[str, ...] = (
    "earned",
    "minimum_guarantee_topup",
    "gross",
    "platform_fee",
    "net",
    "advance_recouped",
    "vendor_invoice",
)

ItemKey = tuple[str, str, str]  # (licence_id, section, ref)


@dataclass(frozen=True, slots=True)
class Item:
    """One amount of a statement: a line, a held line, a settlement total or an allocation."""

    currency: str
    units: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class AdjustmentLine:
    """A signed correction of one item of a closed period, posted in a later period.

    ``ref`` names the corrected item in the closed statement: ``RENDER/v1/tier-1``,
    ``VIEW/v2/web``, ``held/FORBIDDEN_CATEGORY/RENDER``, a settlement field such as
    ``vendor_invoice``, or a payee id for an allocation.
    """

    adjusts_period: str
    licence_id: str
    currency: str
    section: str
    ref: str
    units: int
    amount: Decimal

    @property
    def key(self) -> ItemKey:
        return (self.licence_id, self.section, self.ref)

    def to_document(self) -> dict[str, Any]:
        return {
            "adjusts_period": self.adjusts_period,
            "licence_id": self.licence_id,
            "currency": self.currency,
            "section": self.section,
            "ref": self.ref,
            "units": self.units,
            "amount": fmt(self.amount),
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> AdjustmentLine:
        return cls(
            adjusts_period=str(doc["adjusts_period"]),
            licence_id=str(doc["licence_id"]),
            currency=str(doc["currency"]),
            section=str(doc["section"]),
            ref=str(doc["ref"]),
            units=int(doc["units"]),
            amount=Decimal(str(doc["amount"])),
        )


def line_ref(line: Mapping[str, Any]) -> str:
    """``RENDER/v1/tier-1`` or ``VIEW/v2/web``: a priced line's identity in its statement."""
    kind = str(line["kind"])
    where = f"tier-{line['tier']}" if kind == "RENDER" else str(line.get("channel"))
    return f"{kind}/v{line['version']}/{where}"


def held_ref(held: Mapping[str, Any]) -> str:
    return f"held/{held['violation']}/{held['kind']}"


def statement_items(document: Mapping[str, Any]) -> dict[ItemKey, Item]:
    """Every amount of a §10 statement document, keyed by (licence, section, ref)."""
    items: dict[ItemKey, Item] = {}
    for lic in document.get("licences", []):
        licence_id = str(lic["licence_id"])
        currency = str(lic["currency"])
        for line in lic.get("lines", []):
            items[(licence_id, "line", line_ref(line))] = Item(
                currency, int(line["units"]), Decimal(str(line["amount"]))
            )
        for held in lic.get("held", []):
            items[(licence_id, "held", held_ref(held))] = Item(
                currency, int(held["units"]), Decimal(str(held["amount"]))
            )
        for name in SETTLEMENT_FIELDS:
            items[(licence_id, "settlement", name)] = Item(currency, 0, Decimal(str(lic[name])))
        for alloc in lic.get("allocations", []):
            items[(licence_id, "allocation", str(alloc["payee_id"]))] = Item(
                currency, 0, Decimal(str(alloc["amount"]))
            )
    return items


def with_adjustments(
    items: Mapping[ItemKey, Item], adjustments: Iterable[AdjustmentLine]
) -> dict[ItemKey, Item]:
    """``items`` with earlier adjustment lines added (the corrected view of a period)."""
    out = dict(items)
    for adj in adjustments:
        prior = out.get(adj.key)
        if prior is None:
            out[adj.key] = Item(adj.currency, adj.units, adj.amount)
        else:
            out[adj.key] = Item(prior.currency, prior.units + adj.units, prior.amount + adj.amount)
    return out


def _sort_key(key: ItemKey) -> tuple[str, int, str]:
    licence_id, section, ref = key
    return (licence_id, SECTIONS.index(section), ref)


def diff_items(
    adjusts_period: str, baseline: Mapping[ItemKey, Item], restated: Mapping[ItemKey, Item]
) -> list[AdjustmentLine]:
    """Signed lines turning ``baseline`` into ``restated``; nothing when they are equal.

    An item present on one side only counts as zero on the other (a line that appears
    because of a late event, or disappears because of a retraction).
    """
    lines: list[AdjustmentLine] = []
    for key in sorted(set(baseline) | set(restated), key=_sort_key):
        old, new = baseline.get(key), restated.get(key)
        ref_item = new or old
        assert ref_item is not None
        units = (new.units if new else 0) - (old.units if old else 0)
        amount = (new.amount if new else ZERO) - (old.amount if old else ZERO)
        if units == 0 and amount == 0:
            continue
        licence_id, section, ref = key
        lines.append(
            AdjustmentLine(
                adjusts_period=adjusts_period,
                licence_id=licence_id,
                currency=ref_item.currency,
                section=section,
                ref=ref,
                units=units,
                amount=amount,
            )
        )
    return lines


def settlement_delta(lines: Iterable[AdjustmentLine], field_name: str) -> Decimal:
    """Sum of the adjustment amounts of one settlement field (e.g. ``vendor_invoice``)."""
    return sum((a.amount for a in lines if a.section == "settlement" and a.ref == field_name), ZERO)
