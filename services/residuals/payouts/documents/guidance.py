"""What a statement document says about each violation: why the use was held and what
would release it (docs/ROYALTY-RULES.md §5, §5a, §6, §9), in words for the payee.

Honest about today's system: held money is never paid by the period close. A resolution
(settle, waive, dispute) is recorded on the use's alert by the alerts service, but the
close does not apply resolutions yet, and a closed statement never changes.
"""

from __future__ import annotations

from residuals.domain.vocabulary import Violation

#: Printed once beside the held lines.
HELD_MONEY = (
    "Held uses were outside what the licence allows. They are priced at the normal rate "
    "times the licence's unlicensed-use multiplier (2 unless the licence says otherwise), "
    "are not part of earned and are not paid: the period close does not pay held money. "
    "Each held use raised an alert, which the alerts service lets you settle (the vendor is "
    "to pay the held amount) or waive, and the vendor dispute; the resolution is recorded on "
    "the alert, but the close does not apply resolutions yet, and a closed statement never "
    "changes."
)

_RELEASE: dict[Violation, str] = {
    Violation.LICENCE_SUSPENDED: (
        "Used while the licence was suspended (by a person, or automatically after critical "
        "misuse). Reinstating the licence bills later uses again; it does not release these. "
        "Settle or dispute the alert with the vendor."
    ),
    Violation.USE_AFTER_REVOCATION: (
        "Used after the licence was revoked (renders from the revocation, views and "
        "impressions after the wind-down). This suspended the licence automatically unless "
        "the licence opts out. Settle or dispute the alert with the vendor."
    ),
    Violation.USE_BEFORE_START: (
        "Used before the licence term started. An amendment applies only from its own "
        "effective time and does not re-price a closed period. Settle or dispute the alert."
    ),
    Violation.USE_AFTER_EXPIRY: (
        "Used after the licence term ended. Extending the term by an amendment applies only "
        "from its effective time and does not re-price a closed period. Settle or dispute "
        "the alert."
    ),
    Violation.FORBIDDEN_CATEGORY: (
        "Used in a category the licence forbids. This suspended the licence automatically "
        "unless the licence opts out; later uses are held as suspended until you reinstate "
        "it. Settle, waive or dispute the alert."
    ),
    Violation.CATEGORY_NOT_LICENSED: (
        "Used in a category the licence does not allow. To allow it for future uses, amend "
        "the licence's scope; these uses stay held. Settle, waive or dispute the alert."
    ),
    Violation.TERRITORY_NOT_LICENSED: (
        "Used in a territory the licence does not cover. To allow it for future uses, amend "
        "the licence's territories; these uses stay held. Settle, waive or dispute the alert."
    ),
    Violation.CHANNEL_NOT_LICENSED: (
        "Shown on a channel the licence does not allow. To allow it for future uses, amend "
        "the licence's channels; these uses stay held. Settle, waive or dispute the alert."
    ),
    Violation.UNAPPROVED_USE: (
        "Needed your approval and had none that was live (§5a). Nobody can approve a use "
        "after the fact; approve the vendor's request before it renders to bill such uses. "
        "Settle, waive or dispute the alert."
    ),
    Violation.QUOTA_EXCEEDED: (
        "Units over the licence's quota for the period (on_exceed: block). A higher quota "
        "applies from the amendment's effective time. Settle, waive or dispute the alert."
    ),
    Violation.UNREPORTED_RENDER: (
        "Views or impressions of a render no accepted render event reported. Nothing is "
        "held for it; ask the vendor to report the render."
    ),
    Violation.QUOTA_NEAR: "Usage reached 80 % of a quota. A notice: nothing is held.",
    Violation.DUPLICATE_CONFLICT: (
        "A vendor re-sent an event id with a different payload; the first send counts."
    ),
}


def releases(violation: Violation | str) -> str:
    """Why uses with ``violation`` were held (or flagged) and what would release them."""
    return _RELEASE[Violation(violation)]
