-- 0013 approvals: review before use (docs/ROYALTY-RULES.md §5a, rules v1.1).
--
-- A vendor asks the talent to approve one use of a licence in an approval-required
-- category; the talent (or an agent holding a talent key) approves it, for a window and a
-- number of renders, or denies it with a reason. One row per request. A decision is final:
-- the trigger below lets a row change only from 'pending', once, so an approval that
-- reached the meter can never be quietly rewritten. Every change bumps revision and takes a
-- sequence number under the outbox lock (residuals.licensing.store.enqueue), so sequences
-- follow commit order: the resumable watch streams read "sequence > cursor" without gaps.
-- The change is published to residuals.approvals.v1 through the outbox, in the same
-- transaction, and recorded in audit_log.

CREATE SEQUENCE approval_change_seq;

CREATE TABLE approvals (
    approval_id       text        PRIMARY KEY CHECK (approval_id <> ''),
    licence_id        text        NOT NULL REFERENCES licences,
    talent_id         text        NOT NULL,
    vendor_id         text        NOT NULL,
    -- The vendor's idempotency key: one request per (vendor, request_id).
    request_id        text        NOT NULL CHECK (request_id <> ''),
    category          text        NOT NULL CHECK (category <> ''),
    -- The UseDescription as JSON: brief, script_sha256, media_sha256, territories, channels.
    use_description   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    renders_requested integer     NOT NULL CHECK (renders_requested >= 1),
    requested_from    timestamptz NOT NULL,
    requested_until   timestamptz,
    status            text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'approved', 'denied')),
    valid_from        timestamptz,
    valid_until       timestamptz,
    max_renders       integer     CHECK (max_renders >= 1),
    reason            text        NOT NULL DEFAULT '',
    requested_at      timestamptz NOT NULL,
    requested_by      text        NOT NULL CHECK (requested_by <> ''),
    decided_at        timestamptz,
    decided_by        text,
    revision          bigint      NOT NULL DEFAULT 1 CHECK (revision >= 1),
    sequence          bigint      NOT NULL,
    UNIQUE (vendor_id, request_id),
    CHECK (requested_until IS NULL OR requested_until > requested_from),
    CHECK ((status = 'pending') = (decided_at IS NULL)),
    CHECK ((status = 'pending') = (decided_by IS NULL)),
    CHECK ((status = 'approved') = (valid_from IS NOT NULL)),
    CHECK ((status = 'approved') = (max_renders IS NOT NULL)),
    CHECK (valid_from IS NULL OR valid_from >= decided_at),
    CHECK (valid_until IS NULL OR valid_until > valid_from),
    CHECK (status <> 'denied' OR reason <> '')
);

CREATE UNIQUE INDEX approvals_sequence_idx ON approvals (sequence);
CREATE INDEX approvals_licence_idx ON approvals (licence_id, sequence);
CREATE INDEX approvals_talent_idx ON approvals (talent_id, sequence);
CREATE INDEX approvals_vendor_idx ON approvals (vendor_id, sequence);

CREATE FUNCTION residuals_decide_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'approval % is decided (%): % refused', OLD.approval_id, OLD.status, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER approvals_decide_once
    BEFORE UPDATE OR DELETE ON approvals
    FOR EACH ROW EXECUTE FUNCTION residuals_decide_once();

-- Requests and decisions are audited like history changes of licences.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check CHECK (action IN (
    'suspend_licence', 'reinstate_licence', 'revoke_licence', 'revoke_signing_key',
    'request_approval', 'approve_use', 'deny_use'));

-- The registry writes approvals; the period close prices with the approvals granted
-- (payouts/adapters.py); CheckUse reads the ledger's running totals (ledger/directory.py).
SELECT residuals_grants('approvals', licensing => 'SELECT, INSERT, UPDATE', payouts => 'SELECT');
SELECT residuals_grants('approval_change_seq', licensing => 'USAGE');
SELECT residuals_grants('ledger_totals', ledger => 'SELECT, INSERT, UPDATE', licensing => 'SELECT');
