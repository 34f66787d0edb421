-- 0014 approval uses: the approval each stored use named (rules v1.1, §5a).
--
-- The period close prices with the approvals themselves (the events' payloads name them);
-- this column is for reading without decoding payloads: the pre-flight CheckUse estimates
-- how many renders an approval still covers from the renders the meter found approved
-- (outcome ACCEPTED, or HELD only for a quota), and operators can list an approval's uses.
ALTER TABLE usage_events ADD COLUMN approval_id text;

CREATE INDEX usage_events_approval_idx ON usage_events (approval_id)
    WHERE approval_id IS NOT NULL;

SELECT residuals_grants('usage_events', ledger => 'SELECT, INSERT', payouts => 'SELECT', licensing => 'SELECT');
