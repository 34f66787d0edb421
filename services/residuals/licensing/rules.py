"""Registry-level rules on licence terms, beyond what :mod:`residuals.domain.licence_spec`
checks, in this one place.

The domain parser accepts any well-formed code: it must replay whatever a case file says.
The registry is stricter about what it *records*: a category, channel or territory that no
vendor will ever report is almost always a typo (``"corprate_training"``) that would turn
every use into a CATEGORY_NOT_LICENSED violation, so it is refused with the field named.
Both the licensing service and the admin CLI (before sending) call :func:`check_licence`.

Extending the vocabulary is a code change on purpose: vendors report these exact strings,
so a new category or channel is a contract change that the SDK documentation must follow.
"""

from __future__ import annotations

import re

from residuals.domain.licence_spec import SpecError
from residuals.domain.licences import Licence, LicenceVersion
from residuals.platform.errors import echo

#: Content categories a licence may allow or forbid (vendors report exactly these).
CATEGORIES: frozenset[str] = frozenset(
    {
        "advertising",
        "adult",
        "corporate_training",
        "customer_support",
        "education",
        "entertainment",
        "financial_advice",
        "gambling",
        "healthcare",
        "insurance",
        "news",
        "political",
        "product_demo",
        "public_service",
        "religious",
        "sports_betting",
    }
)

#: Distribution channels of views and ad impressions.
CHANNELS: frozenset[str] = frozenset(
    {"broadcast", "email", "in_app", "out_of_home", "social", "streaming", "web"}
)

# ISO 3166-1 alpha-2 codes: the 249 officially assigned ones (as in tzdata's iso3166.tab).
_COUNTRY_TABLE = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
COUNTRIES: frozenset[str] = frozenset(_COUNTRY_TABLE.split())

WORLDWIDE = "*"

#: Identifiers (licence, talent, avatar, vendor, payee, key ids): no spaces, no separators
#: that would need quoting in URLs, logs or Kafka keys.
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_identifier(path: str, value: str) -> None:
    if not IDENTIFIER.match(value):
        raise SpecError(
            path,
            f"{echo(value)} is not a valid identifier (letters, digits and . _ : -, "
            "starting with a letter or digit, at most 128 characters)",
        )


def _known(values: frozenset[str], vocabulary: frozenset[str], path: str, what: str) -> None:
    for value in sorted(values):
        if value not in vocabulary:
            raise SpecError(
                path, f"{value!r} is not a known {what} ({', '.join(sorted(vocabulary))})"
            )


def check_version(version: LicenceVersion, prefix: str = "") -> None:
    """Raise :class:`SpecError` (path under ``prefix``) for terms the registry refuses."""
    scope = version.scope
    _known(scope.categories_allowed, CATEGORIES, f"{prefix}scope.categories_allowed", "category")
    _known(
        scope.categories_forbidden, CATEGORIES, f"{prefix}scope.categories_forbidden", "category"
    )
    _known(scope.approval_required, CATEGORIES, f"{prefix}scope.approval_required", "category")
    both = scope.categories_allowed & scope.categories_forbidden
    if both:
        raise SpecError(
            f"{prefix}scope.categories_forbidden",
            f"{', '.join(sorted(both))} cannot be both allowed and forbidden",
        )
    for key, codes in (
        ("territories_allowed", scope.territories_allowed),
        ("territories_forbidden", scope.territories_forbidden),
    ):
        for code in sorted(codes):
            if code != WORLDWIDE and code not in COUNTRIES:
                raise SpecError(
                    f"{prefix}scope.{key}", f"{code!r} is not an ISO 3166-1 alpha-2 country code"
                )
    if WORLDWIDE in scope.territories_forbidden:
        raise SpecError(f"{prefix}scope.territories_forbidden", "'*' cannot be forbidden")
    _known(scope.channels_allowed, CHANNELS, f"{prefix}scope.channels_allowed", "channel")
    for channel in sorted(version.rates.channel_multipliers):
        if channel not in CHANNELS:
            raise SpecError(
                f"{prefix}rates.channel_multipliers.{channel}",
                f"{channel!r} is not a known channel",
            )
    for payee_id, _share in version.splits:
        check_identifier(f"{prefix}splits.{payee_id}.payee_id", payee_id)


def check_licence(licence: Licence) -> None:
    """Identifier formats, then :func:`check_version` for every version, with licence-spec
    paths (version 1 at the root, later versions under ``amendments[i].``)."""
    for key in ("licence_id", "talent_id", "avatar_id", "vendor_id"):
        check_identifier(key, getattr(licence, key))
    for index, version in enumerate(licence.versions):
        check_version(version, "" if index == 0 else f"amendments[{index - 1}].")
