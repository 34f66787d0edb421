"""Who may do what in the licence registry: the whole policy in one module.

* admin: everything, including keys and the parties (talent, avatars, vendors, payees);
* finance: reads every licence;
* vendor: reads its own licences, registers and revokes its own signing keys;
* talent: reads its own licences and may suspend, reinstate and revoke them (it is their
  likeness; reinstating lifts a suspension they or the system imposed);
* suspender (the alerts service): records automatic suspensions of any licence and
  nothing else, not even reads (the auth interceptor refuses it every other RPC, and
  :func:`require_suspend` every manual suspension);
* only admin creates and amends licences and manages API keys.

Approvals (review before use, docs/ROYALTY-RULES.md §5a; :mod:`residuals.licensing.approvals`):

* a vendor requests approval for uses of its own licences (admin for any licence);
* the licence's talent (or an agent holding a talent key for them) approves or denies,
  and so may admin; nobody else decides, not the vendor that asked nor finance;
* vendors read and watch the requests they made, talent those of their licences, finance
  and admin all of them; the talent's inbox (WatchApprovalRequests) is not for vendors.

When a change may take effect (no backdating but by admin) is
:mod:`residuals.licensing.backdating`'s rule.

A vendor or talent asking about a licence that is not theirs is refused the same way
whether or not it exists (PERMISSION_DENIED, AIP-211), so ids cannot be probed.
"""

from __future__ import annotations

from residuals.platform.auth import PermissionDenied, Principal, Role


def require_admin(principal: Principal, action: str) -> None:
    """``action`` reads like "create licences"."""
    if principal.role is not Role.ADMIN:
        raise PermissionDenied(f"{principal.describe()} may not {action}: only admin may")


def require_reader(principal: Principal) -> None:
    """Every role reads licences (within its tenant); kept explicit for new roles."""
    if principal.role not in (Role.ADMIN, Role.FINANCE, Role.VENDOR, Role.TALENT):
        raise PermissionDenied(f"{principal.describe()} may not read licences")


def sees_licence(principal: Principal, *, vendor_id: str, talent_id: str) -> bool:
    if principal.role in (Role.ADMIN, Role.FINANCE, Role.SUSPENDER):
        return True
    if principal.role is Role.VENDOR:
        return principal.vendor_id == vendor_id
    if principal.role is Role.TALENT:
        return principal.talent_id == talent_id
    return False


def not_theirs(principal: Principal, licence_id: str) -> PermissionDenied:
    """The refusal for a licence outside the caller's tenant (or one that does not exist)."""
    tenant = principal.vendor_id or principal.talent_id
    return PermissionDenied(
        f"{principal.describe()} may not access licence {licence_id}: "
        f"it is not a licence of {principal.role} {tenant}"
    )


def may_read_everything(principal: Principal) -> bool:
    """Admin, finance (and the suspender, which acts on any licence) get NOT_FOUND for
    unknown ids; tenants get PERMISSION_DENIED."""
    return principal.role in (Role.ADMIN, Role.FINANCE, Role.SUSPENDER)


def require_talent_or_admin(principal: Principal, action: str) -> None:
    """Role gate for suspend/reinstate/revoke; the tenant is checked against the licence."""
    if principal.role not in (Role.ADMIN, Role.TALENT):
        raise PermissionDenied(
            f"{principal.describe()} may not {action}: only admin or the licence's talent may"
        )


def require_suspend(principal: Principal, *, automatic: bool) -> None:
    """Role gate for SuspendLicence: by hand admin or talent (tenant checked against the
    licence); automatic (critical misuse, with an alert id) admin or the suspender."""
    if automatic:
        if principal.role not in (Role.ADMIN, Role.SUSPENDER):
            raise PermissionDenied(
                f"{principal.describe()} may not record an automatic suspension:"
                " only admin or the suspender (the alerting pipeline) may"
            )
        return
    if principal.role is Role.SUSPENDER:
        raise PermissionDenied(
            f"{principal.describe()} may not suspend by hand: the suspender role records"
            " automatic suspensions only (automatic with an alert_id)"
        )
    require_talent_or_admin(principal, "suspend licences")


def check_talent_owns(principal: Principal, licence_id: str, talent_id: str | None) -> None:
    """A talent principal acts only on its own licences (``talent_id`` None: no licence)."""
    if principal.role is Role.TALENT and principal.talent_id != talent_id:
        raise not_theirs(principal, licence_id)


def require_vendor_or_admin(principal: Principal, vendor_id: str, action: str) -> None:
    """Signing keys: admin for any vendor, a vendor for itself only."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is Role.VENDOR:
        if principal.vendor_id != vendor_id:
            raise PermissionDenied(
                f"{principal.describe()} may not {action} for vendor {vendor_id}: "
                "a vendor manages only its own signing keys"
            )
        return
    raise PermissionDenied(
        f"{principal.describe()} may not {action}: only admin or the vendor itself may"
    )


# --- approvals ---------------------------------------------------------------------------


def require_requester(principal: Principal) -> None:
    """Role gate for RequestApproval; the vendor is checked against the licence."""
    if principal.role not in (Role.ADMIN, Role.VENDOR):
        raise PermissionDenied(
            f"{principal.describe()} may not request approvals: only the licence's vendor"
            " (or admin) may"
        )


def require_decider(principal: Principal, action: str) -> None:
    """Role gate for ApproveUse/DenyUse; the talent is checked against the approval."""
    if principal.role not in (Role.ADMIN, Role.TALENT):
        raise PermissionDenied(
            f"{principal.describe()} may not {action}: only the licence's talent (or admin)"
            " may decide a request for approval"
        )


def require_approval_reader(principal: Principal) -> None:
    """Get/List/WatchApprovals: every tenant role reads its own approvals."""
    if principal.role not in (Role.ADMIN, Role.FINANCE, Role.VENDOR, Role.TALENT):
        raise PermissionDenied(f"{principal.describe()} may not read approvals")


def require_inbox_reader(principal: Principal) -> None:
    """WatchApprovalRequests is the talent's inbox: talent, finance and admin only."""
    if principal.role not in (Role.ADMIN, Role.FINANCE, Role.TALENT):
        raise PermissionDenied(
            f"{principal.describe()} may not watch requests for approval: it is the talent's"
            " inbox (vendors watch their requests' decisions with WatchApprovals)"
        )


def approval_not_theirs(principal: Principal, approval_id: str) -> PermissionDenied:
    """The refusal for an approval outside the caller's tenant (or one that does not exist)."""
    tenant = principal.vendor_id or principal.talent_id
    return PermissionDenied(
        f"{principal.describe()} may not access approval {approval_id}: "
        f"it is not an approval of {principal.role} {tenant}"
    )


def approval_scope(principal: Principal) -> tuple[str, str]:
    """``(vendor_id, talent_id)`` the caller's approval reads are limited to ('' = any)."""
    require_approval_reader(principal)
    if principal.role is Role.VENDOR:
        return principal.vendor_id or "", ""
    if principal.role is Role.TALENT:
        return "", principal.talent_id or ""
    return "", ""
