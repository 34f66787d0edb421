-- 0009 audit: who made a licence's or a signing key's history change in the past, and why.
--
-- Suspending, reinstating or revoking a licence, and revoking a vendor signing key, at a
-- time in the past reclassifies usage that may already be billed. Only admin may backdate
-- such a change beyond LICENSING_BACKDATE_SKEW_SECONDS, and only with a reason; every
-- change of this kind by admin, and every one by anyone that takes effect before it was
-- requested, gets a row here in the same transaction as the change (residuals.licensing.
-- backdating). Append-only: UPDATE and DELETE are refused. `residuals audit` lists it.

CREATE TABLE audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The server's clock when the change was made (the transaction's "now").
    recorded_at  timestamptz NOT NULL,
    actor        text        NOT NULL CHECK (actor <> ''),
    actor_role   text        NOT NULL,
    action       text        NOT NULL CHECK (action IN (
                     'suspend_licence', 'reinstate_licence', 'revoke_licence',
                     'revoke_signing_key')),
    licence_id   text,
    key_id       text,
    vendor_id    text,
    -- When the change takes effect (starts_at, at, revoked_at of the request, or now).
    effective_at timestamptz NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    -- What else identifies the change: suspension ids, ends_at, wind-down days.
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((licence_id IS NULL) <> (key_id IS NULL))
);

CREATE INDEX audit_log_licence_idx ON audit_log (licence_id, id) WHERE licence_id IS NOT NULL;
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id);
CREATE INDEX audit_log_recorded_idx ON audit_log (recorded_at);

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_change();

-- The alerts service's narrow role: it may only record automatic suspensions.
ALTER TABLE principals DROP CONSTRAINT principals_role_check;
ALTER TABLE principals ADD CONSTRAINT principals_role_check
    CHECK (role IN ('vendor', 'talent', 'finance', 'admin', 'suspender'));
